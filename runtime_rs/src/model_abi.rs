//! The C ABI of a compiled model (Python through cffi `dlopen`, the browser through
//! web_shell/wasm_runtime.js). Compiled only in the crate the compiler emits, where
//! `model_gen.rs` (the generated schedule) exists.
//!
//! Every function returns a status: 0 ok, 1 bad input (message in `mono_model_last_error`),
//! 2 an internal error (a caught panic), 3 the context is full (sequence_len reached; the cache
//! is unchanged). No panic crosses the boundary. Token ids are passed as little-endian u32 bytes
//! (no alignment needed, so a wasm host can pass any `mono_alloc` buffer). Returned arrays point
//! into the model and stay valid until the next call on the same model.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine::{step_json, Engine};
use crate::model_gen::{run, INFO};
use crate::sampler::{Sampler, SamplerConfig};

pub const MONO_OK: i32 = 0;
pub const MONO_ERROR: i32 = 1;
pub const MONO_PANIC: i32 = 2;
pub const MONO_CONTEXT_FULL: i32 = 3;

pub struct MonoModel {
    engine: Engine,
    out_f32: Vec<f32>,
    out_bytes: Vec<u8>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::new("").unwrap());
}

fn set_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

fn guarded<F: FnOnce() -> Result<(), String>>(body: F) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MONO_OK,
        Ok(Err(message)) => {
            let code = if message.starts_with("context full") { MONO_CONTEXT_FULL } else { MONO_ERROR };
            set_error(&message);
            code
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_error(&format!("internal error (panic): {}", what));
            MONO_PANIC
        }
    }
}

unsafe fn bytes<'a>(ptr: *const u8, len: usize) -> Result<&'a [u8], String> {
    if len == 0 {
        Ok(&[])
    } else if ptr.is_null() {
        Err("null pointer with a non-zero length".to_string())
    } else {
        Ok(std::slice::from_raw_parts(ptr, len))
    }
}

unsafe fn ids(ptr: *const u8, n: usize) -> Result<Vec<u32>, String> {
    let b = bytes(ptr, n.checked_mul(4).ok_or("too many ids")?)?;
    Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

unsafe fn model<'a>(h: *mut MonoModel) -> Result<&'a mut MonoModel, String> {
    h.as_mut().ok_or_else(|| "null model handle".to_string())
}

/// The message of the last failed call on this thread.
#[no_mangle]
pub extern "C" fn mono_model_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn mono_model_new(out: *mut *mut MonoModel) -> i32 {
    guarded(|| {
        let m = Box::new(MonoModel { engine: Engine::new(&INFO, run), out_f32: Vec::new(), out_bytes: Vec::new() });
        *out = Box::into_raw(m);
        Ok(())
    })
}

/// # Safety
/// `h` must come from `mono_model_new` and be freed once.
#[no_mangle]
pub unsafe extern "C" fn mono_model_free(h: *mut MonoModel) {
    if !h.is_null() {
        drop(Box::from_raw(h));
    }
}

/// Parse and check manifest.json; writes the number of weight shards to add.
///
/// # Safety
/// Pointers valid for their lengths; `out_shards` writable.
#[no_mangle]
pub unsafe extern "C" fn mono_model_load_manifest(h: *mut MonoModel, ptr: *const u8, len: usize, out_shards: *mut u32) -> i32 {
    guarded(|| {
        let n = model(h)?.engine.load_manifest(bytes(ptr, len)?)?;
        *out_shards = n as u32;
        Ok(())
    })
}

/// Check weight shard `index` (size, sha256, header) and copy its tensors in.
///
/// # Safety
/// Pointers valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn mono_model_add_shard(h: *mut MonoModel, index: u32, ptr: *const u8, len: usize) -> i32 {
    guarded(|| model(h)?.engine.add_shard(index as usize, bytes(ptr, len)?))
}

/// Check tokenizer.json against the manifest and load it.
///
/// # Safety
/// Pointers valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn mono_model_load_tokenizer(h: *mut MonoModel, ptr: *const u8, len: usize) -> i32 {
    guarded(|| model(h)?.engine.load_tokenizer(bytes(ptr, len)?))
}

/// Every shard is in: the model is ready to run.
///
/// # Safety
/// `h` valid.
#[no_mangle]
pub unsafe extern "C" fn mono_model_finish(h: *mut MonoModel) -> i32 {
    guarded(|| model(h)?.engine.finish())
}

/// {"vocab", "seq_len", "chunk", "pos", "ready", "weights", "kernels"} as JSON ("kernels": the
/// int8 kernel set, `kernels::kernel_set`).
///
/// # Safety
/// `h` valid; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_model_info(h: *mut MonoModel, out: *mut *const u8, out_len: *mut usize) -> i32 {
    guarded(|| {
        let m = model(h)?;
        let i = m.engine.info;
        let text = format!(
            "{{\"vocab\":{},\"seq_len\":{},\"chunk\":{},\"pos\":{},\"ready\":{},\"weights\":{},\"kernels\":\"{}\"}}",
            i.vocab,
            i.seq_len,
            i.chunk,
            m.engine.pos(),
            m.engine.ready(),
            i.specs.len(),
            crate::kernels::kernel_set()
        );
        m.out_bytes = text.into_bytes();
        *out = m.out_bytes.as_ptr();
        *out_len = m.out_bytes.len();
        Ok(())
    })
}

/// Empty the context (the KV cache).
///
/// # Safety
/// `h` valid.
#[no_mangle]
pub unsafe extern "C" fn mono_model_reset(h: *mut MonoModel) -> i32 {
    guarded(|| {
        model(h)?.engine.reset();
        Ok(())
    })
}

/// Append `n` token ids to the context; the logits of every new position (`all` != 0, n x vocab)
/// or of the last one come back in `out`/`out_len` (f32). Status 3 when the context would
/// pass sequence_len (nothing is run then).
///
/// # Safety
/// `ids_le` holds 4n bytes; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_model_forward(h: *mut MonoModel, ids_le: *const u8, n: usize, all: i32, out: *mut *const f32, out_len: *mut usize) -> i32 {
    guarded(|| {
        let m = model(h)?;
        let ids = ids(ids_le, n)?;
        m.out_f32 = m.engine.forward(&ids, all != 0)?;
        *out = m.out_f32.as_ptr();
        *out_len = m.out_f32.len();
        Ok(())
    })
}

/// Set the sampler: temperature 0 is greedy; top_k 0 and top_p outside (0, 1) are off;
/// repetition_penalty 1 is off.
///
/// # Safety
/// `h` valid.
#[no_mangle]
pub unsafe extern "C" fn mono_model_set_sampler(h: *mut MonoModel, temperature: f32, top_k: u32, top_p: f32, repetition_penalty: f32, seed: u32) -> i32 {
    guarded(|| {
        let cfg = SamplerConfig { temperature, top_k, top_p, repetition_penalty, seed: seed as u64 };
        model(h)?.engine.sampler = Sampler::new(cfg);
        Ok(())
    })
}

/// Decode step: sample the next token from the last logits, append it to the context, and
/// write its id. Status 3 when the context is full.
///
/// # Safety
/// `h` valid; `out_id` writable.
#[no_mangle]
pub unsafe extern "C" fn mono_model_next_token(h: *mut MonoModel, out_id: *mut u32) -> i32 {
    guarded(|| {
        *out_id = model(h)?.engine.next_token()?;
        Ok(())
    })
}

/// Start the assistant's turn after the prompt ids (the conversation so far, ending with
/// `<|assistant_start|>`); tokens already in the cache are reused.
///
/// # Safety
/// `ids_le` holds 4n bytes.
#[no_mangle]
pub unsafe extern "C" fn mono_chat_start(h: *mut MonoModel, ids_le: *const u8, n: usize, max_tokens: u32) -> i32 {
    guarded(|| {
        let m = model(h)?;
        let ids = ids(ids_le, n)?;
        m.engine.chat_start(&ids, max_tokens as usize)
    })
}

/// Start the assistant's turn after a conversation given as JSON messages
/// (`[{"role": "user", "content": "..."}, ...]`, or `{"messages", "enable_thinking"}`), rendered
/// with the model's chat template (the manifest's).
///
/// # Safety
/// Pointers valid for their lengths.
#[no_mangle]
pub unsafe extern "C" fn mono_chat_start_messages(h: *mut MonoModel, ptr: *const u8, len: usize, max_tokens: u32) -> i32 {
    guarded(|| {
        let m = model(h)?;
        let text = std::str::from_utf8(bytes(ptr, len)?).map_err(|_| "messages are not UTF-8".to_string())?;
        let request = crate::chat::request_from_json(&crate::json::parse(text)?)?;
        let tok = m.engine.tokenizer.as_ref().ok_or("load the tokenizer first")?;
        let template = request.template.as_ref().unwrap_or(&m.engine.template);
        let prompt = crate::chat::render_for_completion(tok, template, &request.messages, request.thinking)?;
        m.engine.chat_start(&prompt, max_tokens as usize)
    })
}

/// One token of the turn as JSON: {"token", "pieces": [["thought"|"answer", text], ...],
/// "done": null | "stop" | "max_tokens" | "context"}.
///
/// # Safety
/// `h` valid; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_chat_step(h: *mut MonoModel, out: *mut *const u8, out_len: *mut usize) -> i32 {
    guarded(|| {
        let m = model(h)?;
        let step = m.engine.chat_step()?;
        m.out_bytes = step_json(&step).into_bytes();
        *out = m.out_bytes.as_ptr();
        *out_len = m.out_bytes.len();
        Ok(())
    })
}

/// SHA-256 of `len` bytes into `out` (32 bytes): the digest the loader checks files with,
/// exported so tests can hold it against another implementation.
///
/// # Safety
/// `ptr` valid for `len` bytes; `out` writable for 32.
#[no_mangle]
pub unsafe extern "C" fn mono_sha256(ptr: *const u8, len: usize, out: *mut u8) -> i32 {
    guarded(|| {
        let digest = crate::sha256::sha256(bytes(ptr, len)?);
        std::ptr::copy_nonoverlapping(digest.as_ptr(), out, 32);
        Ok(())
    })
}

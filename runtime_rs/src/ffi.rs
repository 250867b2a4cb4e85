//! The C ABI, used by Python (cffi) and by the browser's hand-written wasm glue.
//!
//! Conventions: functions return `MONO_OK` (0), `MONO_ERROR` (1: bad input; the message is in
//! `mono_last_error()`) or `MONO_PANIC` (2: a bug; the panic message is in `mono_last_error()`).
//! No panic crosses the boundary. Objects are created and freed explicitly; buffers returned
//! through out-pointers belong to the caller, who frees them with `mono_free_bytes` /
//! `mono_free_u32s` (passing the length it got). Text is UTF-8 given as pointer + length.

use std::cell::RefCell;
use std::ffi::CString;
use std::os::raw::c_char;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::bpe::{AllowedSpecial, Tokenizer};
use crate::chat;
use crate::json::{self, Json};
use crate::pretokenize::SplitPattern;
use crate::tokenizer_file;
use crate::train::Trainer;

pub const MONO_OK: i32 = 0;
pub const MONO_ERROR: i32 = 1;
pub const MONO_PANIC: i32 = 2;

/// An opaque tokenizer handle.
pub struct MonoTokenizer {
    inner: Tokenizer,
}

/// An opaque trainer handle.
pub struct MonoTrainer {
    inner: Trainer,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::new("").unwrap());
}

fn set_last_error(message: &str) {
    let message = CString::new(message.replace('\0', "\\0")).unwrap();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
}

/// Run `body`, turning an `Err` or a panic into a status code and the last error message.
fn guarded<F: FnOnce() -> Result<(), String>>(body: F) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => MONO_OK,
        Ok(Err(message)) => {
            set_last_error(&message);
            MONO_ERROR
        }
        Err(panic) => {
            let what = if let Some(s) = panic.downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = panic.downcast_ref::<String>() {
                s.clone()
            } else {
                "unknown panic".to_string()
            };
            set_last_error(&format!("internal error (panic): {}", what));
            MONO_PANIC
        }
    }
}

unsafe fn bytes_arg<'a>(ptr: *const u8, len: usize) -> &'a [u8] {
    if len == 0 {
        &[]
    } else {
        std::slice::from_raw_parts(ptr, len)
    }
}

unsafe fn str_arg<'a>(ptr: *const u8, len: usize, what: &str) -> Result<&'a str, String> {
    std::str::from_utf8(bytes_arg(ptr, len)).map_err(|e| format!("{} is not valid UTF-8: {}", what, e))
}

/// Texts packed in one buffer: text i is `buf[offsets[i]..offsets[i + 1]]`.
unsafe fn texts_arg<'a>(buf: *const u8, offsets: *const usize, n_texts: usize) -> Result<Vec<&'a str>, String> {
    let offsets = std::slice::from_raw_parts(offsets, n_texts + 1);
    let buf = str_arg(buf, offsets[n_texts], "text")?;
    let mut texts = Vec::with_capacity(n_texts);
    for w in offsets.windows(2) {
        if w[0] > w[1] || w[1] > buf.len() || !buf.is_char_boundary(w[0]) || !buf.is_char_boundary(w[1]) {
            return Err("bad text offsets".to_string());
        }
        texts.push(&buf[w[0]..w[1]]);
    }
    Ok(texts)
}

/// Hand a vector to the caller as pointer + length.
unsafe fn give<T>(v: Vec<T>, out_ptr: *mut *mut T, out_len: *mut usize) {
    let boxed = v.into_boxed_slice();
    *out_len = boxed.len();
    *out_ptr = Box::into_raw(boxed) as *mut T;
}

unsafe fn tokenizer<'a>(handle: *const MonoTokenizer) -> Result<&'a Tokenizer, String> {
    handle.as_ref().map(|h| &h.inner).ok_or_else(|| "null tokenizer handle".to_string())
}

/// The message of the last failed call on this thread (valid until the next call that fails).
#[no_mangle]
pub extern "C" fn mono_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Allocate `len` bytes for the caller to fill (used by wasm hosts to pass arguments in).
#[no_mangle]
pub extern "C" fn mono_alloc(len: usize) -> *mut u8 {
    let boxed = vec![0u8; len].into_boxed_slice();
    Box::into_raw(boxed) as *mut u8
}

/// Whether decode reads the weight stream a block ahead (1) or leaves it to the hardware
/// prefetcher (0), for every model of this runtime (`kernels::fixed::set_touching`; wasm only,
/// where there is no prefetch instruction). The same tokens either way.
#[cfg(target_arch = "wasm32")]
#[no_mangle]
pub extern "C" fn mono_set_touching(on: i32) {
    crate::kernels::fixed::set_touching(on != 0)
}

/// # Safety
/// `ptr`/`len` must come from `mono_alloc` or a returned byte buffer, and be freed once.
#[no_mangle]
pub unsafe extern "C" fn mono_free_bytes(ptr: *mut u8, len: usize) {
    if !ptr.is_null() {
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
    }
}

/// # Safety
/// `ptr`/`len` must come from a returned id buffer, and be freed once.
#[no_mangle]
pub unsafe extern "C" fn mono_free_u32s(ptr: *mut u32, len: usize) {
    if !ptr.is_null() {
        drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)));
    }
}

/// Load a tokenizer from the text of a tokenizer.json.
///
/// # Safety
/// Pointers must be valid for the given lengths; `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_from_json(json_text: *const u8, len: usize, out: *mut *mut MonoTokenizer) -> i32 {
    guarded(|| {
        let text = str_arg(json_text, len, "tokenizer.json")?;
        let inner = tokenizer_file::from_json(text)?;
        *out = Box::into_raw(Box::new(MonoTokenizer { inner }));
        Ok(())
    })
}

/// # Safety
/// `handle` must come from this library and be freed once.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_free(handle: *mut MonoTokenizer) {
    if !handle.is_null() {
        drop(Box::from_raw(handle));
    }
}

/// The tokenizer.json text of a tokenizer.
///
/// # Safety
/// `handle` must be valid; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_to_json(handle: *const MonoTokenizer, out: *mut *mut u8, out_len: *mut usize) -> i32 {
    guarded(|| {
        let text = tokenizer_file::to_json(tokenizer(handle)?);
        give(text.into_bytes(), out, out_len);
        Ok(())
    })
}

/// One more than the largest token id.
///
/// # Safety
/// `handle` must be valid or null (gives 0).
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_vocab_size(handle: *const MonoTokenizer) -> u32 {
    handle.as_ref().map(|h| h.inner.vocab_size() as u32).unwrap_or(0)
}

/// Encode text. `allowed_json` says which special tokens are recognised: `"all"`, `"none"` or
/// a JSON list of names (empty = none). Unrecognised special-token text is ordinary text.
///
/// # Safety
/// Pointers must be valid for the given lengths; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_encode(
    handle: *const MonoTokenizer,
    text: *const u8,
    text_len: usize,
    allowed_json: *const u8,
    allowed_len: usize,
    out_ids: *mut *mut u32,
    out_len: *mut usize,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let text = str_arg(text, text_len, "text")?;
        let allowed = json::parse(str_arg(allowed_json, allowed_len, "allowed_special")?)?;
        let names: Vec<String>;
        let allowed = match &allowed {
            Json::String(s) if s == "all" => AllowedSpecial::All,
            Json::String(s) if s == "none" => AllowedSpecial::None,
            Json::Array(items) => {
                names = items
                    .iter()
                    .map(|i| i.as_str().map(str::to_string).ok_or("allowed_special names must be strings"))
                    .collect::<Result<_, _>>()?;
                AllowedSpecial::Some(&names)
            }
            _ => return Err("allowed_special must be \"all\", \"none\" or a list of names".to_string()),
        };
        give(tok.encode(text, allowed), out_ids, out_len);
        Ok(())
    })
}

/// Encode text, never recognising special tokens.
///
/// # Safety
/// Pointers must be valid for the given lengths; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_encode_ordinary(
    handle: *const MonoTokenizer,
    text: *const u8,
    text_len: usize,
    out_ids: *mut *mut u32,
    out_len: *mut usize,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let text = str_arg(text, text_len, "text")?;
        give(tok.encode_ordinary(text), out_ids, out_len);
        Ok(())
    })
}

/// `mono_tokenizer_encode_ordinary` of many texts at once, spread over threads: text i is
/// `buf[offsets[i]..offsets[i + 1]]` (`n_texts + 1` offsets). The ids of all texts come back
/// concatenated in `out_ids`, with each text's count in `out_counts` (`n_texts` values).
///
/// # Safety
/// `buf` must hold `offsets[n_texts]` bytes; `offsets` must hold `n_texts + 1` values;
/// out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_encode_ordinary_batch(
    handle: *const MonoTokenizer,
    buf: *const u8,
    offsets: *const usize,
    n_texts: usize,
    out_ids: *mut *mut u32,
    out_len: *mut usize,
    out_counts: *mut *mut u32,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let texts = texts_arg(buf, offsets, n_texts)?;
        let encoded = tok.encode_ordinary_batch(&texts);
        let counts: Vec<u32> = encoded.iter().map(|ids| ids.len() as u32).collect();
        let mut counts_len = 0;
        give(counts, out_counts, &mut counts_len);
        give(encoded.concat(), out_ids, out_len);
        Ok(())
    })
}

/// The bytes of a token id sequence (may be invalid UTF-8 when it ends mid-character).
///
/// # Safety
/// Pointers must be valid for the given lengths; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_tokenizer_decode(
    handle: *const MonoTokenizer,
    ids: *const u32,
    n_ids: usize,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let ids: &[u32] = if n_ids == 0 { &[] } else { std::slice::from_raw_parts(ids, n_ids) };
        give(tok.decode_bytes(ids)?, out, out_len);
        Ok(())
    })
}

/// Render a conversation to ids and the training mask (same length). The JSON is a list of
/// messages (this project's layout) or `{"messages", "template", "enable_thinking"}` (chat.rs).
///
/// # Safety
/// Pointers must be valid for the given lengths; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_render_conversation(
    handle: *const MonoTokenizer,
    messages_json: *const u8,
    len: usize,
    out_ids: *mut *mut u32,
    out_mask: *mut *mut u8,
    out_len: *mut usize,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let request = chat::request_from_json(&json::parse(str_arg(messages_json, len, "conversation")?)?)?;
        let template = request.template.unwrap_or_else(chat::Template::nanochat);
        let (ids, mask) = chat::render_conversation(tok, &template, &request.messages)?;
        let mut mask_len = 0;
        give(mask, out_mask, &mut mask_len);
        give(ids, out_ids, out_len);
        Ok(())
    })
}

/// Render a prompt for the assistant's next turn (ends with the template's generation prompt);
/// the JSON as for `mono_render_conversation`.
///
/// # Safety
/// Pointers must be valid for the given lengths; out-pointers writable.
#[no_mangle]
pub unsafe extern "C" fn mono_render_for_completion(
    handle: *const MonoTokenizer,
    messages_json: *const u8,
    len: usize,
    out_ids: *mut *mut u32,
    out_len: *mut usize,
) -> i32 {
    guarded(|| {
        let tok = tokenizer(handle)?;
        let request = chat::request_from_json(&json::parse(str_arg(messages_json, len, "conversation")?)?)?;
        let template = request.template.unwrap_or_else(chat::Template::nanochat);
        give(chat::render_for_completion(tok, &template, &request.messages, request.thinking)?, out_ids, out_len);
        Ok(())
    })
}

/// A trainer for the given split pattern (empty = nanochat's).
///
/// # Safety
/// Pointers must be valid for the given lengths; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mono_trainer_new(pattern: *const u8, len: usize, out: *mut *mut MonoTrainer) -> i32 {
    guarded(|| {
        let pattern = str_arg(pattern, len, "pattern")?;
        let pattern = if pattern.is_empty() { SplitPattern::default() } else { SplitPattern::parse(pattern)? };
        *out = Box::into_raw(Box::new(MonoTrainer { inner: Trainer::new(pattern) }));
        Ok(())
    })
}

/// # Safety
/// `handle` must come from this library and be freed once.
#[no_mangle]
pub unsafe extern "C" fn mono_trainer_free(handle: *mut MonoTrainer) {
    if !handle.is_null() {
        drop(Box::from_raw(handle));
    }
}

/// Count the pre-tokens of a batch of texts: text i is `buf[offsets[i]..offsets[i + 1]]`
/// (`n_texts + 1` offsets).
///
/// # Safety
/// `buf` must hold `offsets[n_texts]` bytes; `offsets` must hold `n_texts + 1` values.
#[no_mangle]
pub unsafe extern "C" fn mono_trainer_feed(handle: *mut MonoTrainer, buf: *const u8, offsets: *const usize, n_texts: usize) -> i32 {
    guarded(|| {
        let trainer = handle.as_mut().ok_or("null trainer handle")?;
        trainer.inner.feed(&texts_arg(buf, offsets, n_texts)?);
        Ok(())
    })
}

/// Train a tokenizer of `vocab_size` ids (ranks + specials); `specials_json` is a JSON list of
/// special-token names, which get the ids after the last rank in that order.
///
/// # Safety
/// Pointers must be valid for the given lengths; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn mono_trainer_train(
    handle: *const MonoTrainer,
    vocab_size: u32,
    specials_json: *const u8,
    len: usize,
    out: *mut *mut MonoTokenizer,
) -> i32 {
    guarded(|| {
        let trainer = handle.as_ref().ok_or("null trainer handle")?;
        let specials = match json::parse(str_arg(specials_json, len, "special tokens")?)? {
            Json::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or("special token names must be strings"))
                .collect::<Result<Vec<String>, _>>()?,
            _ => return Err("special tokens must be a JSON list of names".to_string()),
        };
        let inner = trainer.inner.train(vocab_size as usize, &specials)?;
        *out = Box::into_raw(Box::new(MonoTokenizer { inner }));
        Ok(())
    })
}

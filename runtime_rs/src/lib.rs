//! Monologue's runtime library: the compiled model's engine, kernels and weights, the tokenizers
//! and the chat template, behind a C ABI shared by Python (cffi) and wasm.
//! Zero crate dependencies; builds with Rust 1.63 (Debian's wasm32 toolchain).

#[cfg(all(target_arch = "x86_64", monologue_vnni))]
pub mod amx;
pub mod base64;
pub mod bpe;
pub mod chat;
pub mod elementwise;
pub mod engine;
pub mod ffi;
pub mod fxhash;
pub mod hf_tokenizer;
pub mod json;
pub mod normalize;
pub mod normalize_tables;
pub mod kernels;
pub mod math;
pub mod pages;
pub mod parallel;
pub mod precompiled;
pub mod pretokenize;
pub mod regex;
pub mod sampler;
pub mod sha256;
pub mod think;
pub mod tokenizer_file;
pub mod tokenizers_tables;
pub mod train;
pub mod weights;
pub mod unicode_tables;

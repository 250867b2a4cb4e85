//! Sets `monologue_vnni` where the compiler has the VNNI intrinsics (`vpdpwssd`, stable since Rust
//! 1.89): the x86 kernels then pick AVX-512 VNNI or AVX-VNNI at run time where the CPU has them.
//! Debian's Rust 1.63 (which builds the wasm32 runtime, and natively where it is the only Rust)
//! lacks them and builds the AVX2 kernels alone. Runs nothing but `$RUSTC --version`.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|v| v.split_whitespace().nth(1)?.split('.').nth(1)?.parse::<u32>().ok())
        .unwrap_or(0);
    if minor >= 80 {
        println!("cargo:rustc-check-cfg=cfg(monologue_vnni)");
    }
    if minor >= 89 {
        println!("cargo:rustc-cfg=monologue_vnni");
    }
}

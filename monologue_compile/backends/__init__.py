"""Backends that run a compiled model outside the numpy interpreter (the Rust crate, its native build)."""

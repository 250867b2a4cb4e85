#!/usr/bin/env bash
# Monologue's two commands (and one for scripts):
#   ./run.sh          set up, then the demo: train the built-in model (once), compile, verify, serve
#   ./run.sh build    the same without serving, for scripts
#   ./run.sh test     set up, then the whole test suite
# Set-up is idempotent and fast when already done: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")"

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
STAMP_DIR=.monologue
mkdir -p "$STAMP_DIR"

# --- system packages -------------------------------------------------------------------------
# lavapipe (CPU Vulkan) runs the WGSL kernels, Chromium runs the page, and a Rust toolchain with the
# wasm32 target builds runtime.wasm. rustup cannot download wasm32 here, so when the active
# toolchain lacks it we use Debian's Rust 1.63, which ships the target as a package.
rust_has_wasm32() {
    command -v rustc >/dev/null 2>&1 || return 1
    [ -d "$(rustc --print sysroot 2>/dev/null)/lib/rustlib/wasm32-unknown-unknown" ] && return 0
    [ -d /usr/lib/rustlib/wasm32-unknown-unknown ] && command -v /usr/bin/cargo >/dev/null 2>&1
}

missing_debian_packages() {
    local wanted=(mesa-vulkan-drivers chromium)
    command -v cargo >/dev/null 2>&1 || wanted+=(rustc cargo)
    rust_has_wasm32 || wanted+=(rustc cargo libstd-rust-dev-wasm32 lld)
    local p
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done | sort -u
}

install_debian_packages() {
    local missing
    missing=$(missing_debian_packages | tr '\n' ' ')
    [ -z "${missing// /}" ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing system packages: ${missing}. Install them (Debian/Ubuntu: sudo apt-get install ${missing}) and run again."
    fi
    say "installing Debian packages: ${missing}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends ${missing} >/dev/null
}

# --- Python package --------------------------------------------------------------------------
# The editable install builds the Rust extension (maturin). Re-run it only when the build inputs
# change: a stamp holds a hash of pyproject.toml and the Rust sources.
python_inputs_hash() {
    { cat pyproject.toml; find runtime_rs -type f \( -name '*.rs' -o -name 'Cargo.toml' \) -print0 | sort -z | xargs -0 cat; } \
        | sha256sum | cut -d' ' -f1
}

install_python_package() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "Python >= 3.10 is required ($("$PYTHON" --version 2>&1))"
    local want have
    want=$(python_inputs_hash)
    have=$(cat "$STAMP_DIR/python-install" 2>/dev/null || true)
    # imported from / (not this folder, which python -c puts on sys.path) and found in this checkout:
    # an editable install made from another copy of the repository does not count
    local here
    here=$(pwd -P)
    if [ "$want" = "$have" ] && (cd / && "$PYTHON" -c 'import pathlib, sys, monologue_compile._runtime, training
sys.exit(not pathlib.Path(monologue_compile.__file__).resolve().is_relative_to(sys.argv[1]))' "$here") 2>/dev/null; then
        return 0
    fi
    say "installing the Python package (pip install -e '.[dev]'; builds the Rust extension)"
    # torch is pinned to 2.13.0 in pyproject.toml, so a CPU-only machine gets the CPU build.
    "$PYTHON" -m pip install --disable-pip-version-check -q -e '.[dev]'
    echo "$want" >"$STAMP_DIR/python-install"
}

setup() {
    install_debian_packages
    install_python_package
}

# The browser tests' JavaScript (axe-core for the accessibility scan), pinned in tests/package-lock.json.
install_test_js() {
    [ -f tests/node_modules/axe-core/axe.min.js ] && return 0
    if ! command -v npm >/dev/null 2>&1; then
        say "npm not found: the accessibility test (axe-core) will be skipped"
        return 0
    fi
    say "installing the browser tests' JavaScript (npm ci in tests/)"
    npm ci --prefix tests --no-audit --no-fund --silent
}

# --- entry points ----------------------------------------------------------------------------
DEMO_RUN=runs/demo
DIST=dist

# Everything but serving: tokenizer demo, the demo model (trained once, then reused), a compile
# into dist/ with the parity report, and one question answered in the terminal.
build_demo() {
    say "tokenizer: train a byte-level BPE on the built-in corpus"
    "$PYTHON" -m monologue_compile.tokenizer demo
    if [ -f "$DEMO_RUN/checkpoint.pt" ]; then
        say "demo model: reusing $DEMO_RUN/checkpoint.pt (delete it to train again)"
    else
        say "demo model: training into $DEMO_RUN (10-30 minutes on 2 CPU cores, by their speed)"
        "$PYTHON" -m monologue_compile train --preset demo --out "$DEMO_RUN"
    fi
    say "compile: $DEMO_RUN/checkpoint.pt -> $DIST/ (int8, WGSL plan, runtime.wasm, web page) with parity checks"
    "$PYTHON" -m monologue_compile compile "$DEMO_RUN/checkpoint.pt" -o "$DIST" --verify
    sed -n '1,12p' "$DIST/parity.md"
    say "ask the compiled model (native Rust runtime, greedy)"
    "$PYTHON" -m monologue_compile chat "$DIST" --backend native --prompt "What is 47 + 38?"
}

case "${1:-demo}" in
    test)
        setup
        install_test_js
        shift || true
        say "running the test suite"
        exec "$PYTHON" -m pytest -q "$@"
        ;;
    build)
        setup
        build_demo
        ;;
    demo | "")
        setup
        build_demo
        say "serving $DIST/ — open the address below in a browser with WebGPU (or any browser: wasm)"
        exec "$PYTHON" -m monologue_compile serve "$DIST"
        ;;
    *)
        die "unknown command '$1' (use: ./run.sh, ./run.sh build, ./run.sh test)"
        ;;
esac

"""runtime_rs builds for wasm32-unknown-unknown with Debian's Rust 1.63 toolchain, offline; the
module needs no imports and, driven through its C ABI (as the browser glue does), tokenizes and
renders chats exactly like the Python extension. The Rust unit tests pass on that toolchain, and the
kernel tests also as wasm32 with SIMD128 under Node (the SIMD128 kernels against the scalar ones)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from monologue_compile.resources import runtime_rs_dir
from monologue_compile.tokenizer import Tokenizer

DEBIAN_CARGO = Path("/usr/bin/cargo")
DEBIAN_RUSTC = Path("/usr/bin/rustc")
WASM_STD = Path("/usr/lib/rustlib/wasm32-unknown-unknown")
WASI_STD = Path("/usr/lib/rustlib/wasm32-wasi")

pytestmark = pytest.mark.skipif(
    not (DEBIAN_CARGO.exists() and DEBIAN_RUSTC.exists() and WASM_STD.exists()),
    reason="Debian's rustc/cargo with libstd-rust-dev-wasm32 is not installed",
)


def debian_cargo(workdir: Path, *args, rustflags: str = ""):
    """Run Debian's cargo (offline) on a copy of the crate in `workdir`; returns (crate, process)."""
    crate = workdir / "runtime_rs"
    if not crate.exists():
        shutil.copytree(runtime_rs_dir(), crate, ignore=shutil.ignore_patterns("target"))
    env = {
        "PATH": "/usr/bin:/bin",  # Debian's toolchain, not rustup's
        "RUSTC": str(DEBIAN_RUSTC),
        "CARGO_HOME": str(workdir / "cargo_home"),
        "HOME": str(workdir),
        "RUSTFLAGS": rustflags,
    }
    result = subprocess.run(
        [str(DEBIAN_CARGO), *args, "--offline", "--locked"], cwd=crate, env=env, capture_output=True, text=True
    )
    return crate, result


@pytest.fixture(scope="module")
def wasm_path(tmp_path_factory):
    crate, result = debian_cargo(tmp_path_factory.mktemp("wasm"), "build", "--release", "--target", "wasm32-unknown-unknown")
    assert result.returncode == 0, result.stderr[-3000:]
    return crate / "target/wasm32-unknown-unknown/release/runtime_rs.wasm"


def test_builds_for_wasm32_with_rust_1_63(wasm_path):
    wasm = wasm_path.read_bytes()
    assert wasm[:4] == b"\0asm"
    for export in (b"mono_tokenizer_from_json", b"mono_tokenizer_encode", b"mono_render_for_completion", b"mono_alloc"):
        assert export in wasm


# Loads the module with no imports, then tokenizes and renders through the C ABI, as the page does.
NODE_DRIVER = r"""
import fs from 'fs';
const [wasmPath, tokenizerPath, text, conversation] = process.argv.slice(2);
const mod = await WebAssembly.compile(fs.readFileSync(wasmPath));
const { exports: w } = await WebAssembly.instantiate(mod, {});
const put = (bytes) => {
  const p = w.mono_alloc(bytes.length);
  new Uint8Array(w.memory.buffer, p, bytes.length).set(bytes);
  return [p, bytes.length];
};
const utf8 = (s) => new TextEncoder().encode(s);
const out = w.mono_alloc(8);  // two out-pointers of 4 bytes
const ids = () => {
  const [p, n] = new Uint32Array(w.memory.buffer, out, 2);
  return Array.from(new Uint32Array(w.memory.buffer, p, n));
};
const check = (rc) => { if (rc !== 0) throw new Error('status ' + rc); };
check(w.mono_tokenizer_from_json(...put(utf8(fs.readFileSync(tokenizerPath, 'utf8'))), out));
const tok = new Uint32Array(w.memory.buffer, out, 1)[0];
const all = put(utf8('"all"'));
check(w.mono_tokenizer_encode(tok, ...put(utf8(text)), ...all, out, out + 4));
const encoded = ids();
check(w.mono_render_for_completion(tok, ...put(utf8(conversation)), out, out + 4));
console.log(JSON.stringify({ imports: WebAssembly.Module.imports(mod).length, encoded, prompt: ids() }));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_wasm_tokenizes_like_the_python_extension(wasm_path, tmp_path):
    tok = Tokenizer.train(["Hello world, how are you? Ça va très bien, 谢谢! 12345 "] * 30, vocab_size=320)
    tokenizer_path = tmp_path / "tokenizer.json"
    tok.save(tokenizer_path)
    driver = tmp_path / "driver.mjs"
    driver.write_text(NODE_DRIVER, encoding="utf-8")
    text = "Hello <|bos|> world 🙂, ça va? 2024"
    conversation = [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "thought": "greet back", "content": "Hi, how are you?"},
        {"role": "user", "content": "très bien"},
    ]
    result = subprocess.run(
        ["node", str(driver), str(wasm_path), str(tokenizer_path), text, json.dumps(conversation)],
        capture_output=True,
        text=True,
        check=True,
    )
    from_wasm = json.loads(result.stdout)
    assert from_wasm == {"imports": 0, "encoded": tok.encode(text), "prompt": tok.render_for_completion(conversation)}


ENCODE_DRIVER = NODE_DRIVER.split("const all = ")[0] + r"""
const texts = JSON.parse(fs.readFileSync(text, 'utf8'));
const all = put(utf8('"all"'));
const result = texts.map((t) => {
  check(w.mono_tokenizer_encode(tok, ...put(utf8(t)), ...all, out, out + 4));
  return ids();
});
console.log(JSON.stringify(result));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
@pytest.mark.parametrize("style", ["llama3", "o200k", "qwen2", "digits", "metaspace_always_split"])
def test_wasm_reads_a_hugging_face_tokenizer_json_like_the_tokenizers_library(wasm_path, tmp_path, style):
    pytest.importorskip("tokenizers")
    from test_tokenizer_hf import hard_strings, train_hf

    texts = hard_strings(300, seed=3)
    hf = train_hf(style, texts)
    tokenizer_path = tmp_path / "tokenizer.json"
    hf.save(str(tokenizer_path))
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    driver = tmp_path / "driver.mjs"
    driver.write_text(ENCODE_DRIVER, encoding="utf-8")
    result = subprocess.run(
        ["node", str(driver), str(wasm_path), str(tokenizer_path), str(tmp_path / "texts.json")],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(result.stdout) == [hf.encode(t, add_special_tokens=False).ids for t in texts]


def test_unit_tests_pass_with_rust_1_63(tmp_path):
    _, result = debian_cargo(tmp_path, "test", "--lib")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "test result: ok" in result.stdout


# Runs a wasm32-wasi test binary: Node's WASI with the test harness's arguments.
WASI_RUNNER = r"""
import fs from 'fs';
import { WASI } from 'node:wasi';
const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, returnOnExit: true });
const instance = await WebAssembly.instantiate(await WebAssembly.compile(fs.readFileSync(file)), wasi.getImportObject());
process.exitCode = wasi.start(instance);
"""


@pytest.mark.skipif(shutil.which("node") is None or not WASI_STD.exists(), reason="no Node, or no wasm32-wasi std")
def test_kernel_unit_tests_pass_as_wasm_simd128(tmp_path):
    # the page's kernels are the SIMD128 ones: the same bits as the scalar kernels (prefill, decode,
    # int4, tiles), checked where they run, not only on this machine's AVX2; and exp and tanh
    # (math.rs) as accurate there, against wasm's own f64 libm
    crate, result = debian_cargo(tmp_path, "test", "--lib", "--no-run", "--target", "wasm32-wasi",
                                 rustflags="-C target-feature=+simd128")
    assert result.returncode == 0, result.stderr[-3000:]
    (wasm,) = (crate / "target/wasm32-wasi/debug/deps").glob("runtime_rs-*.wasm")
    (tmp_path / "run.mjs").write_text(WASI_RUNNER)
    r = subprocess.run(["node", "--no-warnings", str(tmp_path / "run.mjs"), str(wasm), "kernels::tests", "math::tests",
                        "--test-threads=1"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "prefill_gives_the_per_token_bits ... ok" in r.stdout and "test result: ok" in r.stdout
    assert "tanhf_is_within_half_an_ulp_and_a_little ... ok" in r.stdout

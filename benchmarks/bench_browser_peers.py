"""Our page's wasm and WebGPU backends beside wllama and transformers.js in headless Chromium, on
the same weights (issue 18, item 1, the browser half of benchmarks/bench_peers.py).

    python benchmarks/bench_browser_peers.py --install-npm     # once: the pinned npm packages below
    python benchmarks/bench_browser_peers.py [--models llama-30m,qwen2.5-0.5b] [--rounds 3] [--json out.json]
        [--skip webgpu,...] [--ours-dist LABEL=DIST ...]

For each model, bench_peers.py's Hugging Face folder with random weights (cached under
~/.cache/monologue-peers) and, from that same folder:
  ours:            `monologue-compile FOLDER -o dist-web` (int8, with runtime.wasm), the page's two
                   engines (web_shell/engine.js) in the page's main thread: wasm (one thread) and
                   WebGPU (in this headless Chromium SwiftShader: a CPU emulating a GPU);
  wllama:          @wllama/wllama on the Q8_0 and Q4_0 GGUFs bench_peers writes with llama.cpp's
                   converter; its single-thread build (n_threads 1, no WebGPU layers, and the page is
                   not cross-origin isolated); prefill and decode tok/s are llama.cpp's own timings
                   (llama-server's `timings`) of one completion of the prompt's token ids;
  transformers.js: @huggingface/transformers on peers.onnx_folder's export (the layout it loads:
                   config.json, onnx/model_quantized.onnx = its "q8", dynamic int8, and
                   onnx/model_q4.onnx = its "q4", 4-bit blocks of 32 with f32 activations) on its
                   wasm backend (ONNX Runtime Web, one thread), and "q4" on its WebGPU backend;
                   timed with a streamer around model.generate: prefill is the first token's wait;
  llama.cpp:       native llama-bench on the same Q8_0 / Q4_0 GGUFs, one thread, for the ratio the
                   issue asks for (our page's wasm against llama.cpp's native one-thread decode).
Prompt 128 random token ids, 64 greedy tokens, batch 1; every engine once per round (interleaved:
a quiet moment on a shared machine then favours no engine), best/median of the rounds. Each engine
has its own browser context (a renderer of its own), loads its model once, and is first probed
with a 2-token prompt and 2 steps: one whose run would take over BUDGET_S even so (a 2-token
prefill + 64 steps) is one line saying so, as is every engine that cannot run here (npm packages
not installed, no Chromium, no GGUF, ...).
The roofline column is decode tok/s x the bytes a token reads in that engine's format / the memcpy
bandwidth Python measures natively in the same run: a browser's wasm reaches less than that.

The npm packages go into ~/.cache/monologue-peers/npm (`npm install --prefix`, install scripts
off), never into the repository; nothing here is needed by the tests or CI.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "benchmarks", ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import bench_peers  # noqa: E402

from monologue_compile import peers  # noqa: E402
from monologue_compile.peers import PROMPT, STEPS, CannotRun  # noqa: E402
from monologue_compile.serve import SiteHandler  # noqa: E402
from web_helpers import CHROMIUM, CHROMIUM_ARGS, running  # noqa: E402

NPM_PACKAGES = {"@wllama/wllama": "3.13.0", "@huggingface/transformers": "4.3.2"}
NPM = peers.CACHE / "npm"
BUDGET_S = 300  # an engine whose run would take longer (at the least, from a probe) is reported, not timed
OURS_WASM = "ours wasm int8 (Chromium)"

PAGE_HTML = """<!doctype html>
<meta charset="utf-8"><title>Monologue beside the browser peers</title>
<script type="module" src="bench.js"></script>
"""

# window.setup(maker, options) loads one engine in this page and returns a line describing it;
# window.run(ids, steps) then prefills the ids and decodes `steps` greedy tokens:
# {prefill_ms, decode_ms, n_prefill, n_decode}.
PAGE_JS = r"""
const now = () => performance.now();
const abs = (path) => new URL(path, location.href).href;

async function adapterName() {
  const a = await navigator.gpu?.requestAdapter();
  return a ? `${a.info.vendor} ${a.info.architecture} ${a.info.description}`.trim() : "no adapter";
}

const makers = {
  async ours({ kind, site }) {
    const { createEngine, probeBackends } = await import(abs(site + "engine.js"));
    const { loadModel } = await import(abs(site + "loader.js"));
    const model = await loadModel(abs(site), () => {});
    const probe = (await probeBackends(model.manifest, model.files)).find((b) => b.kind === kind);
    if (!probe.ok) throw new Error(probe.reason);
    const engine = await createEngine(kind, model, () => {});
    const run = async (ids, steps) => {
      engine.reset({ temperature: 0, topK: 0, topP: 1, seed: 0 });
      const t0 = now();
      await engine.prefill(ids);
      const t1 = now();
      for (let i = 0; i < steps; i++) await engine.step();
      return { prefill_ms: t1 - t0, decode_ms: now() - t1, n_prefill: ids.length, n_decode: steps };
    };
    return [run, kind === "webgpu" ? await adapterName() : "wasm"];
  },

  // wllama takes text only (a token-id prompt is refused): a text of as many tokens, see text_prompt();
  // and it fails on a reply that is not UTF-8, which random weights write: `ascii` are the ids
  // favoured so that every token is one ASCII byte (a 128-entry logit bias; the work is the same)
  async wllama({ npm, gguf, ascii }) {
    const { Wllama } = await import(abs(npm + "@wllama/wllama/esm/index.js"));
    const w = new Wllama({ default: abs(npm + "@wllama/wllama/esm/wasm/wllama.wasm") }, { suppressNativeLog: true });
    const blob = await (await fetch(gguf)).blob();
    await w.loadModel([blob], { n_threads: 1, n_gpu_layers: 0, n_ctx: 512 });
    if (w.isMultithread()) throw new Error("wllama chose its multi-thread build");
    const run = async (ids, steps, text) => {
      const t = (await w.createCompletion({ prompt: text, max_tokens: steps, temperature: 0, ignore_eos: true,
                                            cache_prompt: false, logit_bias: ascii.map((id) => [id, 100]) })).timings;
      return { prefill_ms: t.prompt_ms, decode_ms: t.predicted_ms, n_prefill: t.prompt_n, n_decode: t.predicted_n };
    };
    return [run, `${w.getNumThreads()} thread`];
  },

  async transformersJs({ npm, models, id, device, dtype }) {
    const tjs = await import(abs(npm + "@huggingface/transformers/dist/transformers.js"));
    const { env } = tjs;
    env.allowRemoteModels = false;
    env.allowLocalModels = true;
    env.localModelPath = abs(models);
    env.useBrowserCache = false;
    const ort = env.backends.onnx;
    const want = (await (await fetch(abs(npm + "onnxruntime-web/package.json"))).json()).version;
    if (ort.versions?.web !== want) throw new Error(`its ONNX Runtime Web is ${ort.versions?.web}, npm installed ${want}`);
    ort.wasm.wasmPaths = abs(npm + "onnxruntime-web/dist/");  // not the CDN it defaults to
    ort.wasm.numThreads = 1;
    const model = await tjs.AutoModelForCausalLM.from_pretrained(id, { device, dtype });
    const run = async (ids, steps) => {
      const times = [];
      const streamer = { put() { times.push(now()); }, end() {} };  // the prompt, then each new token
      const n = ids.length;
      const input_ids = new tjs.Tensor("int64", BigInt64Array.from(ids, BigInt), [1, n]);
      const attention_mask = new tjs.Tensor("int64", new BigInt64Array(n).fill(1n), [1, n]);
      await model.generate({ input_ids, attention_mask, max_new_tokens: steps + 1, min_new_tokens: steps + 1,
                             do_sample: false, streamer });
      return { prefill_ms: times[1] - times[0], decode_ms: times.at(-1) - times[1], n_prefill: n, n_decode: times.length - 2 };
    };
    return [run, device === "webgpu" ? await adapterName() : "wasm"];
  },
};

let run = null;
window.setup = async (maker, options) => {
  let info;
  [run, info] = await makers[maker](options);
  return info;
};
window.run = (ids, steps, text) => run(ids, steps, text);
window.benchReady = true;
"""


def install_npm() -> None:
    NPM.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--prefix", str(NPM), "--ignore-scripts", "--no-audit", "--no-fund",
                    "--omit=optional", *(f"{n}@{v}" for n, v in NPM_PACKAGES.items())], check=True)


def npm_package(name: str) -> None:
    """Raises CannotRun unless NAME is installed under NPM at its pinned version."""
    pkg = NPM / "node_modules" / name / "package.json"
    have = json.loads(pkg.read_text())["version"] if pkg.exists() else None
    if have != NPM_PACKAGES[name]:
        raise CannotRun(f"{name}@{NPM_PACKAGES[name]} is not installed in {NPM} ({'version ' + have if have else 'absent'}; "
                        "benchmarks/bench_browser_peers.py --install-npm)")


def text_prompt(folder: Path, n: int) -> str:
    """A text of N tokens in FOLDER's tokenizer (random lowercase letters: one pre-tokenizer word,
    so llama.cpp's BPE over the GGUF's copy of the vocabulary splits it the same way)."""
    import numpy as np
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(folder / "tokenizer.json"))
    letters = "".join(np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz"), 64 * n))
    lo, hi = 1, len(letters)  # the shortest prefix of N tokens
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tk.encode(letters[:mid], add_special_tokens=False).ids) >= n:
            hi = mid
        else:
            lo = mid + 1
    if len(tk.encode(letters[:lo], add_special_tokens=False).ids) != n:
        raise CannotRun(f"no text of exactly {n} tokens found for {folder}'s tokenizer")
    return letters[:lo]


def ascii_ids(folder: Path) -> list[int]:
    """The ids of FOLDER's byte-level BPE vocabulary that stand for one ASCII byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    ids = [i for t, i in vocab.items() if len(t) == 1 and chars.get(t, 128) < 128]
    if not ids:
        raise CannotRun(f"{folder}: not a byte-level BPE vocabulary (no one-byte ASCII tokens)")
    return ids


def serving(roots: dict[str, Path]):
    """`monologue serve`'s handler over several folders, /NAME/... from roots[NAME]; yields the URL.
    No COOP/COEP headers: the page is not cross-origin isolated, so every engine has one thread."""

    class Handler(SiteHandler):
        def send_head(self):
            first = self.path.lstrip("/").partition("/")[0]
            if first not in roots:
                self.send_error(404, "Not found")
                return None
            self.directory = str(roots[first])
            return super().send_head()

        def translate_path(self, path):
            return super().translate_path("/" + path.lstrip("/").partition("/")[2])

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    return running(server)


class Browser(peers.Engine):
    """One engine in a page of its own browser context: loaded once, timed by window.run."""

    def __init__(self, browser, url: str, name: str, family: str, maker: str, options: dict, bytes_per_token: int,
                 vocab: int, texts: dict[int, str] | None = None):
        self.name, self.family, self.bytes_per_token = name, family, bytes_per_token
        self.prompt = peers.prompt_ids(vocab)
        self.texts = texts
        self.context = browser.new_context()
        try:
            page = self.context.new_page()
            page.goto(url + "bench/index.html")
            page.wait_for_function("window.benchReady === true")
            self.page = page
            info = self._call("([m, o]) => window.setup(m, o)", [maker, options])
            if "webgpu" in name.lower():
                self.threads = len(os.sched_getaffinity(0))  # SwiftShader runs its own threads
                emulated = any(k in info.lower() for k in ("swiftshader", "llvmpipe", "lavapipe"))
                self.name = f"{name} ({info}{', CPU-emulated' if emulated else ''})"
            # A lower bound of a run: a 128-token prefill costs at least a 2-token one (WebGPU's
            # costs as much up to its 64-token chunk), plus the decode steps. The first probe may
            # compile (WebGPU pipelines), so the second one counts, unless the first already says no.
            for _ in range(2):
                t0 = time.perf_counter()
                r = self._run(self.prompt[:2], 2)
                if time.perf_counter() - t0 > BUDGET_S:
                    break
            least = (r["prefill_ms"] + STEPS * r["decode_ms"] / r["n_decode"]) / 1000
            if least > BUDGET_S:
                raise CannotRun(f"a run would take at least ~{least:.0f} s here: a 2-token prefill {r['prefill_ms'] / 1000:.1f} s, "
                                f"a decode step {r['decode_ms'] / r['n_decode'] / 1000:.1f} s (budget {BUDGET_S} s)")
        except BaseException:
            self.close()
            raise

    def _call(self, js: str, arg):
        from playwright.sync_api import Error

        try:
            return self.page.evaluate(js, arg)
        except Error as e:  # the page's exception, as one line
            raise CannotRun(peers._one_line(Exception(str(e).removeprefix("Error: ")))) from None

    def _run(self, ids: list[int], steps: int) -> dict:
        return self._call("([i, s, t]) => window.run(i, s, t)", [ids, steps, (self.texts or {}).get(len(ids), "")])

    def measure(self):
        r = self._run(self.prompt, STEPS)
        # a text prompt may gain a BOS token; a completion may stop a token early
        if abs(r["n_prefill"] - PROMPT) > 1 or abs(r["n_decode"] - STEPS) > 1:
            raise RuntimeError(f"ran {r['n_prefill']} prompt tokens and {r['n_decode']} new ones, not {PROMPT} and {STEPS}")
        return 1000 * r["n_prefill"] / r["prefill_ms"], 1000 * r["n_decode"] / r["decode_ms"]

    def close(self):
        self.context.close()


def engines(browser, url: str, folder: Path, dist: Path | None, ggufs: dict, onnx: Path | None,
            why_not: dict[str, str], skip: list[str], more: dict[str, Path]) -> tuple[list[peers.Engine], list[str]]:
    """Every engine of the table on one model; those that cannot run as lines. MORE: label -> a
    prebuilt dist of the same folder whose page's wasm is timed too (served at /ours-LABEL/)."""
    from monologue_compile.artifact import load_model

    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    made, failed = [], []

    def add(label: str, make) -> None:
        skipped = [w for w in skip if w.lower() in label.lower()]
        if skipped:
            failed.append(f"{label}: skipped (--skip {skipped[0]})")
            return
        try:
            made.append(make())
        except Exception as e:  # a peer that is not installed or cannot load the model
            failed.append(f"{label}: could not run: {peers._one_line(e)}")

    def ours(kind: str, label: str, site: str = "ours", at: Path | None = dist):
        if at is None:
            raise CannotRun(why_not.get("dist", "no dist"))
        return Browser(browser, url, label, "ours", "ours", {"kind": kind, "site": f"/{site}/"},
                       peers.graph_bytes_per_token(load_model(at)[0]), vocab)

    def wllama(q: str):
        npm_package("@wllama/wllama")
        if q not in ggufs:
            raise CannotRun(why_not.get("gguf", f"no {q} GGUF"))
        return Browser(browser, url, f"wllama {q} (wasm)", "wllama", "wllama",
                       {"npm": "/npm/", "gguf": f"/gguf/{ggufs[q].name}", "ascii": ascii_ids(folder)},
                       peers.gguf_bytes_per_token(ggufs[q]), vocab, {n: text_prompt(folder, n) for n in (2, PROMPT)})

    def transformers_js(device: str, dtype: str, graph: str):
        npm_package("@huggingface/transformers")
        if onnx is None:
            raise CannotRun(why_not.get("onnx", "no ONNX export"))
        return Browser(browser, url, f"transformers.js {dtype} ({device})", "transformers.js", "transformersJs",
                       {"npm": "/npm/", "models": "/onnx/", "id": onnx.name, "device": device, "dtype": dtype},
                       peers.onnx_bytes_per_token(onnx / "onnx" / graph), vocab)

    def llama_cpp(q: str):
        if q not in ggufs:
            raise CannotRun(why_not.get("gguf", f"no {q} GGUF"))
        e = peers.LlamaCpp(ggufs[q], q, 1)
        e.name = f"llama.cpp {q} (native)"
        return e

    for name, at in more.items():
        add(f"{OURS_WASM[:-1]}, {name})", lambda name=name, at=at: ours("wasm", f"{OURS_WASM[:-1]}, {name})", f"ours-{name}", at))
    if not more:
        add(OURS_WASM, lambda: ours("wasm", OURS_WASM))
        add("ours WebGPU int8", lambda: ours("webgpu", "ours WebGPU int8"))
    for q in ("Q8_0", "Q4_0"):
        add(f"wllama {q} (wasm)", lambda q=q: wllama(q))
    add("transformers.js q8 (wasm)", lambda: transformers_js("wasm", "q8", "model_quantized.onnx"))
    add("transformers.js q4 (wasm)", lambda: transformers_js("wasm", "q4", "model_q4.onnx"))
    add("transformers.js q4 (webgpu)", lambda: transformers_js("webgpu", "q4", "model_q4.onnx"))
    for q in ("Q8_0", "Q4_0"):
        add(f"llama.cpp {q} (native, 1 thread)", lambda q=q: llama_cpp(q))
    return made, failed


def bench_model(name: str, rounds: int, browser, log, skip: list[str], more: dict[str, Path]) -> tuple[str, dict]:
    folder, n_params = bench_peers.hf_folder(name)
    why_not: dict[str, str] = {}
    dist = None if more else folder.parent / "dist-web"
    if dist:
        log("compiling ours (with runtime.wasm)")
        why = bench_peers.compile_dist(folder, dist, wasm=True)
        if why:
            why_not["dist"], dist = f"could not build: {why[:300]}", None
    log("preparing the peers' forms of the folder (GGUF, ONNX)")
    ggufs, onnx = {}, None
    try:
        ggufs = peers.gguf_files(folder)
    except CannotRun as e:
        why_not["gguf"] = str(e)
    try:
        onnx = peers.onnx_folder(folder)
    except CannotRun as e:
        why_not["onnx"] = str(e)
    page = Path(tempfile.mkdtemp(prefix="monologue-browser-peers-"))
    (page / "index.html").write_text(PAGE_HTML)
    (page / "bench.js").write_text(PAGE_JS)
    roots = {"bench": page, "npm": NPM / "node_modules", "onnx": peers.CACHE / "onnx"}
    if dist:
        roots["ours"] = dist
    roots.update({f"ours-{label}": at for label, at in more.items()})
    if ggufs:
        roots["gguf"] = ggufs["Q8_0"].parent
    with serving(roots) as url, contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, page, ignore_errors=True)
        log("loading every engine in its own page")
        made, failed = engines(browser, url, folder, dist, ggufs, onnx, why_not, skip, more)
        title = (f"{name}: {n_params / 1e6:.1f}M parameters (random weights), {folder}; headless Chromium "
                 f"{browser.version}, WebGPU there is SwiftShader (a CPU emulating a GPU)")
        ours = f"{OURS_WASM[:-1]}, {next(iter(more))})" if more else OURS_WASM
        ratios = (("pre/wasm", ours, "prefill_best"), ("dec/wasm", ours, "decode_best"),
                  ("dec/Q8", "llama.cpp Q8_0 (native)", "decode_best"))
        return peers.compare(made, failed, rounds, title, log, ratios)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="llama-30m", help=f"comma-separated, of {', '.join(bench_peers.MODELS)}")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per model (best and median)")
    ap.add_argument("--install-npm", action="store_true", help="install the pinned npm packages, then exit")
    ap.add_argument("--skip", default="", help="comma-separated: leave out the engines whose names contain these "
                                                "(e.g. webgpu: minutes a probe on a CPU-emulated adapter)")
    ap.add_argument("--ours-dist", action="append", default=[], metavar="LABEL=DIST",
                    help="time our page's wasm from DIST, compiled from the model's folder by some revision, instead of "
                         "compiling dist-web (and no WebGPU row); repeatable, the first is the /wasm columns' reference; "
                         "one model only")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    a = ap.parse_args()
    more = dict((label, Path(at)) for label, _, at in (d.partition("=") for d in a.ours_dist))
    if more and "," in a.models:
        sys.exit("bench_browser_peers.py: --ours-dist goes with one model (its dists are compiled from that folder)")
    if a.install_npm:
        install_npm()
        return
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("bench_browser_peers.py: playwright is not installed (pip install playwright)")
    if not Path(CHROMIUM).exists():
        sys.exit(f"bench_browser_peers.py: no Chromium at {CHROMIUM}: no browser engine can run")
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for name in a.models.split(","):
                log = lambda m, name=name: print(f"  [{name} {time.strftime('%H:%M:%S')}] {m}",  # noqa: E731
                                                 file=sys.stderr, flush=True)
                text, results[name] = bench_model(name, a.rounds, browser, log, [w for w in a.skip.split(",") if w], more)
                print(text + "\n", flush=True)
        finally:
            browser.close()
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()

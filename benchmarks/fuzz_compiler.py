"""Fuzz the compiler's inputs through the `monologue` CLI: checkpoints with mutated pickle opcodes,
perturbed zip structure, changed state-dict keys and dtypes, configs with wrong types and ranges,
mutated tokenizer files, and hostile output/input paths.

    python benchmarks/fuzz_compiler.py [--count 10000] [--seed 0] [--timeout 60] [--memory-gb 3]

Each case runs in its own process (forked from this one after the imports, so a case costs
milliseconds rather than an interpreter start), limited in address space and killed after
--timeout seconds. The promise under test: every case either compiles (exit 0) or is refused with
one line `error: ...` and exit code 2. (A case that loads exactly the seed's model, such as a
reordered zip, stops after loading and counts as `same_as_seed`: the seed itself is compiled in full
first, and the rest of the compile is a pure function of the loaded model; path cases always run to
the end.) Anything else is counted: a traceback, a crash (a signal),
a hang (the timeout), an internal error (exit 70: a bug reported in one line), or another exit.
Prints one JSON line: the counts, per kind, and the first few failures to look at.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # no thread pool in the parent: forked children stay sane

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

from conftest import byte_tokenizer_json, tiny_model  # noqa: E402
from monologue_compile.cli import main as cli_main  # noqa: E402

torch.set_num_threads(1)
warnings.filterwarnings("ignore", "Duplicate name", UserWarning)  # the zip cases write duplicates on purpose

# The smallest model the byte tokenizer fits: a compile that survives every check stays quick.
SEED_MODEL = dict(sequence_len=16, vocab_size=288, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
BAD_VALUES = [None, True, False, "2", "", "nan", 0, -1, 1, 3, 2**31, 2**32 + 5, 10**12, 10**30, -(10**30), 0.0, 0.5,
              1.5, -1.5, math.nan, math.inf, -math.inf, 1e308, [], [2], {}, {"a": 1}]
OUTCOMES = ("compiled", "same_as_seed", "rejected", "traceback", "crash", "hang", "internal_error", "other")
KINDS = ("pickle", "zip", "state_dict", "config", "config_json", "tokenizer", "paths")


class Seeds:
    """The valid inputs every mutation starts from, written once."""

    def __init__(self, work: Path, warm: bool = True):
        self.model = tiny_model(seed=1, **SEED_MODEL)
        self.sd = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.config = self.model.config.to_dict()
        self.tokenizer = byte_tokenizer_json(SEED_MODEL["vocab_size"])
        self.checkpoint = self.save(work / "seed.pt", self.obj())
        self.raw = self.checkpoint.read_bytes()
        with zipfile.ZipFile(self.checkpoint) as z:
            self.entries = [(i, z.read(i)) for i in z.infolist()]
        self.warm = warm
        # One compile here, before any fork: torch.export's one-time set-up (imports, caches) is then
        # inherited by every case instead of paid again by each that compiles.
        if warm:
            from monologue_compile.driver import compile_to

            compile_to(self.checkpoint, work / "warm")
        from monologue_compile.frontend.load import load

        self.loaded = load(self.checkpoint)

    def same_model(self, m) -> bool:
        """Whether a case loaded exactly the seed's model (a reordered zip, a harmless flip): the rest
        of the compile is a pure function of it, and the seed compiled in full above."""
        s = self.loaded
        return (m.arch == s.arch and m.config == s.config and m.tokenizer_json == s.tokenizer_json
                and m.state_dict.keys() == s.state_dict.keys()
                and all(torch.equal(m.state_dict[k], v) for k, v in s.state_dict.items()))

    def obj(self, **changes) -> dict:
        obj = {"model_config": dict(self.config), "model": dict(self.sd), "tokenizer": self.tokenizer, "meta": {}}
        obj.update(changes)
        return obj

    @staticmethod
    def save(path: Path, obj) -> Path:
        torch.save(obj, path)
        return path


def _mutate_bytes(rng: random.Random, data: bytes, n: int | None = None) -> bytes:
    b = bytearray(data)
    for _ in range(n or rng.randint(1, 4)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1) if b else 0
        if op == 0 and b:
            b[min(i, len(b) - 1)] = rng.randrange(256)
        elif op == 1:
            b[i:i] = bytes([rng.randrange(256)])
        elif op == 2 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op == 3:
            b = b[:i]
        else:  # a pickle opcode or an interesting byte run
            b[i:i] = rng.choice([b"(", b".", b"}", b"]", b"q\x00", b"X\xff\xff\xff\x7f", b"c", b"R", b"\x80\x02",
                                 b"\x94", b"N", b"\x8c\x05torch", b"J\xff\xff\xff\xff", b"\x00" * 16])
    return bytes(b)


def _rezip(entries, path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for info, data in entries:
            z.writestr(info, data)
    return path


def case_pickle(rng, seeds: Seeds, d: Path) -> list[str]:
    """The checkpoint's data.pkl with mutated opcodes, in an otherwise valid zip (fresh CRCs)."""
    entries = [(i, _mutate_bytes(rng, data) if i.filename.endswith("data.pkl") else data) for i, data in seeds.entries]
    return ["compile", str(_rezip(entries, d / "c.pt")), "-o", str(d / "out"), "--no-wasm"]


def case_zip(rng, seeds: Seeds, d: Path) -> list[str]:
    """The zip container itself: raw byte flips, truncations, entries dropped, duplicated, renamed,
    emptied or reordered, a tiny pickle instead of a zip."""
    op = rng.randrange(6)
    path = d / "c.pt"
    if op == 0:
        path.write_bytes(_mutate_bytes(rng, seeds.raw, rng.randint(1, 16)))
    elif op == 1:
        path.write_bytes(seeds.raw[:rng.randrange(len(seeds.raw))])
    else:
        entries = list(seeds.entries)
        k = rng.randrange(len(entries))
        if op == 2:
            del entries[k]
        elif op == 3:
            entries.append(entries[k])
        elif op == 4:
            info = zipfile.ZipInfo(rng.choice(["x", entries[k][0].filename + "x", "../evil", "c/data/99"]))
            entries[k] = (info, entries[k][1])
        else:
            entries[k] = (entries[k][0], entries[k][1][:rng.randrange(len(entries[k][1]) + 1)])
            rng.shuffle(entries)
        _rezip(entries, path)
    return ["compile", str(path), "-o", str(d / "out"), "--no-wasm"]


def case_state_dict(rng, seeds: Seeds, d: Path) -> list[str]:
    sd = dict(seeds.sd)
    key = rng.choice(sorted(sd))
    op = rng.randrange(8)
    if op == 0:
        sd[rng.choice([7, -1, None, (1, 2), 1.5, b"k", True])] = torch.zeros(2)
    elif op == 1:
        sd[key] = sd[key].to(rng.choice([torch.int64, torch.int8, torch.bool, torch.uint8, torch.float16,
                                         torch.bfloat16, torch.complex64, torch.float64]))
    elif op == 2:
        sd["_orig_mod." + key] = torch.zeros_like(sd[key])
    elif op == 3:
        sd[key] = torch.zeros(tuple(rng.randint(0, 40) for _ in range(rng.randint(0, 3))))
    elif op == 4:
        del sd[key]
    elif op == 5:
        sd[rng.choice(["extra.weight", "transformer.h.9.attn.c_q.weight", ""])] = torch.zeros(3)
    elif op == 6:
        sd[key] = rng.choice(["a string", [1, 2], None, 3, {"t": torch.zeros(1)}])
    else:
        sd[key] = torch.full_like(sd[key], rng.choice([math.nan, math.inf, 1e38, 0.0]))
    top = rng.randrange(4)
    obj = seeds.obj(model=sd) if top < 3 else sd  # a bare state dict needs --config/--tokenizer: refused
    return ["compile", str(Seeds.save(d / "c.pt", obj)), "-o", str(d / "out"), "--no-wasm"]


def case_config(rng, seeds: Seeds, d: Path) -> list[str]:
    cfg = dict(seeds.config)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(cfg) + ["window_pattern", "unknown_key"])
        if rng.random() < 0.15:
            cfg.pop(key, None)
        else:
            cfg[key] = rng.choice(BAD_VALUES + [rng.uniform(-1e3, 1e5), rng.randint(-5, 100)])
    obj = seeds.obj(model_config=cfg if rng.random() < 0.95 else rng.choice(BAD_VALUES))
    return ["compile", str(Seeds.save(d / "c.pt", obj)), "-o", str(d / "out"), "--no-wasm"]


def case_config_json(rng, seeds: Seeds, d: Path) -> list[str]:
    """A bare state dict with --config: the JSON text itself mutated, nested, or not UTF-8."""
    sd = Seeds.save(d / "sd.pt", seeds.sd)
    (d / "tok.json").write_text(seeds.tokenizer)
    text = json.dumps(seeds.config).encode()
    op = rng.randrange(4)
    if op == 0:
        text = _mutate_bytes(rng, text)
    elif op == 1:
        n = rng.choice([10, 1000, 100000])
        text = b'{"model_config": ' * rng.randint(0, 1) + b"[" * n + b"]" * n * rng.randint(0, 1)
    elif op == 2:
        text = text.replace(b'"n_layer"', '"n_layer\udcff"'.encode("utf-8", "surrogatepass"))
    else:
        text = json.dumps({"model_config": {**seeds.config, rng.choice(sorted(seeds.config)): rng.choice(
            [v for v in BAD_VALUES if not (isinstance(v, float) and not math.isfinite(v))])}}).encode()
    (d / "cfg.json").write_bytes(text)
    return ["compile", str(sd), "--config", str(d / "cfg.json"), "--tokenizer", str(d / "tok.json"),
            "-o", str(d / "out"), "--no-wasm"]


def case_tokenizer(rng, seeds: Seeds, d: Path) -> list[str]:
    """--tokenizer FILE: the seed tokenizer's JSON mutated as text or as a document, under several names."""
    doc = json.loads(seeds.tokenizer)
    op = rng.randrange(3)
    if op == 0:
        data = _mutate_bytes(rng, seeds.tokenizer.encode())
    elif op == 1:
        field = rng.choice(["format", "version", "pattern", "ranks", "special_tokens"])
        if field == "ranks" and rng.random() < 0.5:
            ranks = list(doc["ranks"])
            i = rng.randrange(len(ranks))
            ranks[i] = rng.choice([ranks[(i + 1) % len(ranks)], "!!notbase64", "", 5])
            doc["ranks"] = ranks
        elif field == "special_tokens" and rng.random() < 0.7:
            name = rng.choice(sorted(doc["special_tokens"]))
            doc["special_tokens"][name] = rng.choice([0, -1, 287, 288, 2**31, 2**32 - 1, 60_000_000, "1", None, 1.5])
        else:
            doc[field] = rng.choice(BAD_VALUES)
        data = json.dumps(doc).encode()
    else:
        data = rng.choice([b"", b"\x80\x04N.", b"\x80\x02}q\x00.", b"\xff\xfe", b"[" * 50000, b"null"])
    name = rng.choice(["tok.json", "tok.txt", "tok.pkl", "tokenizer"])
    (d / name).write_bytes(data)
    ckpt = Seeds.save(d / "c.pt", seeds.obj())
    return ["compile", str(ckpt), "--tokenizer", str(d / name), "-o", str(d / "out"), "--no-wasm"]


def case_paths(rng, seeds: Seeds, d: Path) -> list[str]:
    """Hostile or careless paths for the input and for -o."""
    ckpt = d / "c.pt"
    shutil.copyfile(seeds.checkpoint, ckpt)
    (d / "notes").mkdir()
    (d / "notes" / "mine.txt").write_text("keep")
    (d / "report.pdf").write_bytes(b"%PDF")
    op = rng.randrange(10)
    if op == 0:
        return ["compile", str(ckpt), "-o", rng.choice([str(d), str(ckpt), str(d / "notes"), str(d / "report.pdf")]),
                "--no-wasm"]
    if op == 1:
        return ["compile", str(ckpt), "-o", str(d / ("x" * rng.choice([200, 300, 5000]))), "--no-wasm"]
    if op == 2:
        return ["compile", str(ckpt), "-o", str(d / "report.pdf" / "sub"), "--no-wasm"]
    if op == 3:
        os.mkfifo(d / "fifo.pt")
        return ["compile", str(d / "fifo.pt"), "-o", str(d / "out"), "--no-wasm"]
    if op == 4:
        return ["compile", rng.choice(["/dev/zero", "/dev/null", "/proc/self/status", "/", str(d / "missing.pt")]),
                "-o", str(d / "out"), "--no-wasm"]
    if op == 5:
        (d / "link").symlink_to(d / "notes")
        return ["compile", str(ckpt), "-o", str(d / "link"), "--no-wasm"]
    if op == 6:
        return ["compile", str(ckpt), "-o", str(d / "out"), "--no-wasm", "--tokenizer",
                rng.choice([str(d), "/dev/null", str(d / "notes" / "mine.txt"), str(d / "nope.json")])]
    if op == 7:
        return ["compile", str(ckpt), "-o", str(d / "out"), "--no-wasm", "--quant",
                rng.choice(["int4", "", "int8-g0", "int8-g-1", "none" * 50])]
    if op == 8:
        return ["compile", str(ckpt), "-o", str(d / "out"), "--no-wasm", "--eval-per-family",
                rng.choice(["-1", "nan", "1e9", "x"]), "--verify"]
    return ["compile", str(ckpt), "-o", str(d / "dir\nwith newline"), "--no-wasm"]


CASES = {"pickle": case_pickle, "zip": case_zip, "state_dict": case_state_dict, "config": case_config,
         "config_json": case_config_json, "tokenizer": case_tokenizer, "paths": case_paths}


SAME_AS_SEED = 97  # a child's exit code: it loaded the seed's model and stopped there


def _child(args: list[str], d: Path, memory: int, seeds: Seeds | None) -> None:
    """In the forked child: bounded memory, output to files, the CLI, exit with its code. With
    `seeds`, a case that loads exactly the seed's model stops after loading (see Seeds.same_model)."""
    if seeds is not None:
        import monologue_compile.driver as driver

        real_load = driver.load

        def load_or_stop(*a, **k):
            m = real_load(*a, **k)
            if seeds.same_model(m):
                os._exit(SAME_AS_SEED)
            return m

        driver.load = load_or_stop
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _vm_size() + memory
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    out = os.open(d / "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    err = os.open(d / "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
    os.chdir(d)
    code = 0
    try:
        cli_main(args, prog_name="monologue")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001 -- what escaped the CLI is exactly what this harness looks for
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _vm_size() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def run_case(args: list[str], d: Path, timeout: float, memory: int,
             seeds: Seeds | None = None) -> tuple[str, str]:
    """(outcome, stderr tail) of one case in a forked child."""
    pid = os.fork()
    if pid == 0:
        try:
            _child(args, d, memory, seeds)
        finally:
            os._exit(99)
    t0 = time.monotonic()
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - t0 > timeout:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang", ""
        time.sleep(0.005)
    err = (d / "stderr").read_text(errors="replace") if (d / "stderr").exists() else ""
    if os.WIFSIGNALED(status):
        return "crash", f"signal {os.WTERMSIG(status)}: {err[-300:]}"
    code = os.WEXITSTATUS(status)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in err:
        return "traceback", err[-600:]
    if code == 0:
        return "compiled", ""
    if code == SAME_AS_SEED:
        return "same_as_seed", ""
    if code == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "rejected", lines[0][:300]
    if code == 70:
        return "internal_error", err[-300:]
    return "other", f"exit {code}: {err[-300:]}"


def run(count: int, seed: int, timeout: float, memory_gb: float, kinds=KINDS, progress: int = 0,
        warm: bool = True) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="monologue-fuzz-"))
    try:
        seeds = Seeds(work, warm)
        counts: dict[str, int] = {}
        per_kind: dict[str, dict[str, int]] = {k: {} for k in kinds}
        failures = []
        t0 = time.perf_counter()

        def summary(n):
            return {"cases": n, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                    **{k: counts.get(k, 0) for k in OUTCOMES}, "per_kind": per_kind, "failures": failures}

        for i in range(count):
            kind = kinds[i % len(kinds)]
            d = work / f"case-{i}"
            d.mkdir()
            try:
                args = CASES[kind](random.Random(rng.getrandbits(64)), seeds, d)
                # paths cases go all the way: what they test (writing the output) comes after loading
                outcome, detail = run_case(args, d, timeout, int(memory_gb * 2**30),
                                           seeds if seeds.warm and kind != "paths" else None)
            finally:
                shutil.rmtree(d, ignore_errors=True)
            counts[outcome] = counts.get(outcome, 0) + 1
            per_kind[kind][outcome] = per_kind[kind].get(outcome, 0) + 1
            if outcome not in ("compiled", "same_as_seed", "rejected") and len(failures) < 20:
                failures.append({"case": i, "kind": kind, "outcome": outcome, "args": args[1:], "detail": detail})
            if progress and (i + 1) % progress == 0 and i + 1 < count:
                print(json.dumps(summary(i + 1)), file=sys.stderr, flush=True)
        return summary(count)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per case before it counts as a hang")
    ap.add_argument("--memory-gb", type=float, default=3.0, help="address space a case may add to this process's")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    ap.add_argument("--progress", type=int, default=0, help="print the counts so far to stderr every N cases")
    ap.add_argument("--no-warm", action="store_true",
                    help="skip compiling the seed first (and so compile every case that loads it in full)")
    a = ap.parse_args()
    stats = run(a.count, a.seed, a.timeout, a.memory_gb, tuple(a.kinds.split(",")), a.progress, not a.no_warm)
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()

"""Training throughput of the demo model under each CPU thread policy, on an idle machine and beside
one competing busy process (a Python loop pinned to nothing, as another job on the machine would be).

    python benchmarks/bench_train_threads.py [--steps 12] [--json out.json]

Each configuration runs in a fresh subprocess, since OpenMP reads its wait policy when torch loads:
threads (1 or every core) x OMP_WAIT_POLICY (ACTIVE: idle threads spin; PASSIVE: they sleep), and
"auto": what `monologue train` does (PASSIVE, threads = cores less the cores other work keeps busy,
measured from /proc/stat and re-chosen every few steps by training.train.ThreadPolicy). A step
is the demo preset's forward, backward and optimizer step on a batch of random tokens; tokens/s is
over the timed steps after two warm-up steps. The ratios compare each policy with and without the
competitor, measured in the same run. Other load on the machine counts too: the load average is printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent

STEPS = """
import sys, time, torch
from training.presets import PRESETS
from monologue_compile.models.gpt import GPT
from training.train import ThreadPolicy, cpu_threads, make_optimizer
cfg = PRESETS["demo"]
auto = sys.argv[1] == "auto"
torch.set_num_threads(cpu_threads() if auto else int(sys.argv[1]))
policy = ThreadPolicy(every=4) if auto else None
torch.manual_seed(0)
model = GPT(cfg.model).init_weights()
optimizer = make_optimizer(model, cfg)
x = torch.randint(0, cfg.model.vocab_size, (cfg.batch_size, cfg.model.sequence_len))
def step():
    loss = model(x, x)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
for _ in range(2):
    step()
start = time.perf_counter()
for i in range(int(sys.argv[2])):
    step()
    if policy:
        policy.after_step(i + 1)
print(torch.get_num_threads(), int(sys.argv[2]) * x.numel() / (time.perf_counter() - start))
"""


def tokens_per_second(threads: int | str, policy: str, steps: int) -> tuple[float, int]:
    """tokens/s over the timed steps, and the thread count at the end."""
    env = {k: v for k, v in os.environ.items() if k != "MONOLOGUE_THREADS"}
    env.update(OMP_WAIT_POLICY=policy, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", STEPS, str(threads), str(steps)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    threads_at_end, rate = out.stdout.split()[-2:]
    return float(rate), int(threads_at_end)


@click.command()
@click.option("--steps", type=int, default=12, show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None)
def main(steps, json_out):
    cores = os.cpu_count() or 1
    configs = [(t, p) for t in sorted({1, cores}) for p in ("ACTIVE", "PASSIVE")] + [("auto", "PASSIVE")]
    results = {}
    for busy in (False, True):
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads, policy in configs:
                load = os.getloadavg()[0]
                rate, used = tokens_per_second(threads, policy, steps)
                results[threads, policy, busy] = rate
                print(f"threads {threads!s:4s} {policy:7s} {'beside a busy process' if busy else 'alone':22s} "
                      f"{rate:8,.0f} tok/s  ({used} at the end; load average {load:.1f})", flush=True)
        finally:
            if competitor:
                competitor.kill()
                competitor.wait()
    print("\nslow-down from one competing busy process:")
    for threads, policy in configs:
        print(f"threads {threads!s:4s} {policy:7s} {results[threads, policy, False] / results[threads, policy, True]:5.2f}x")
    if json_out:
        Path(json_out).write_text(json.dumps([{"threads": t, "policy": p, "busy": b, "tokens_per_second": r}
                                              for (t, p, b), r in results.items()], indent=1))


if __name__ == "__main__":
    main()

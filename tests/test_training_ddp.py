"""The same command under torchrun: two CPU processes (gloo) train exactly like one process with
the two ranks' rows in a single batch."""

import os
import subprocess
import sys

import torch

from training.presets import get_preset
from training.train import train


def test_torchrun_two_processes_match_one_process_with_double_batch(tmp_path):
    env = {**os.environ, "MONOLOGUE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "training", "train", "--preset", "tiny", "--out", str(tmp_path / "ddp"), "--steps", "4", "--batch-size", "4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("saved ") == 1  # rank 0 reports and saves

    previous = os.environ.get("MONOLOGUE_THREADS")
    os.environ["MONOLOGUE_THREADS"] = "1"
    try:
        train(get_preset("tiny", steps=4, batch_size=8), tmp_path / "single", seed=0, quiet=True)
    finally:
        os.environ.pop("MONOLOGUE_THREADS") if previous is None else os.environ.update(MONOLOGUE_THREADS=previous)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["model"]
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)["model"]
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], atol=1e-5, rtol=1e-4)

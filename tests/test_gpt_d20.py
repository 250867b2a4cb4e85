"""The seeds' 560M "d20" preset: its size always, one CPU training step when memory allows."""

import math

import pytest
import torch

from monologue_compile.models.gpt import GPT
from training.presets import get_preset
from training.train import make_optimizer

D20_PARAMS = 560_988_160


def test_d20_has_560m_parameters():
    with torch.device("meta"):  # shapes only: no memory for the weights
        model = GPT(get_preset("d20").model)
    assert abs(model.num_params() - D20_PARAMS) <= 0.01 * D20_PARAMS


def _available_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) for line in f}
        return info["MemAvailable"] / 2**20
    except OSError:
        return 0.0


# About 10 GiB at peak (weights, gradients, two AdamW moments); 15-25 s on 2 cores.
@pytest.mark.skipif(_available_gib() < 14, reason="needs ~14 GiB of free memory")
def test_d20_trains_one_step_on_cpu():
    cfg = get_preset("d20")
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights()
    optimizer = make_optimizer(model, cfg)
    x = torch.randint(0, cfg.model.vocab_size, (1, 64))
    # nanochat's init zeroes lm_head and the residual projections, so the first step moves lm_head only
    before = model.lm_head.weight.clone()
    loss = model(x, x)
    loss.backward()
    optimizer.step()
    assert loss.item() == pytest.approx(math.log(cfg.model.vocab_size), rel=1e-4)
    assert not torch.equal(before, model.lm_head.weight)

"""A seconds-long training run: loss falls, checkpoints are atomic, loadable and exactly resumable."""

import io
import os

import pytest
import torch

from monologue_compile.errors import MonologueError
from monologue_compile.tokenizer import Tokenizer
from training import train as train_module
from training.data.shards import ShardDataset
from monologue_compile.models.gpt import GPT, GPTConfig
from training.presets import get_preset
from training.train import atomic_save, lr_multiplier, make_optimizer, train


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models train fastest on one thread (train() reads MONOLOGUE_THREADS)."""
    threads, previous = torch.get_num_threads(), os.environ.get("MONOLOGUE_THREADS")
    os.environ["MONOLOGUE_THREADS"] = "1"
    yield
    torch.set_num_threads(threads)
    if previous is None:
        del os.environ["MONOLOGUE_THREADS"]
    else:
        os.environ["MONOLOGUE_THREADS"] = previous


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    meta = train(get_preset("tiny"), out, seed=0, preset="tiny", quiet=True)
    return out, meta


def fixed_batch_loss(model, out):
    x, y = ShardDataset(out / "data", model.config.sequence_len).batch(0, 8, seed=123)
    with torch.no_grad():
        return model(x, y).item()


def test_loss_falls(trained):
    out, meta = trained
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    torch.manual_seed(0)
    untrained = GPT(model.config).init_weights()
    assert fixed_batch_loss(model, out) < 0.7 * fixed_batch_loss(untrained, out)
    assert meta["step"] == get_preset("tiny").steps


def test_checkpoint_is_the_compiler_contract(trained):
    out, _ = trained
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(checkpoint) == {"model_config", "model", "tokenizer", "meta"}
    assert GPTConfig.from_dict(checkpoint["model_config"]) == get_preset("tiny").model
    assert all(t.dtype == torch.float32 for t in checkpoint["model"].values())
    assert "lm_head.weight" in checkpoint["model"] and "cos" not in checkpoint["model"]
    assert {"step", "preset", "val_loss"} <= set(checkpoint["meta"])
    about = checkpoint["meta"]["about"]  # trained on the built-in corpus: it says what the model can do
    assert "count" in about["summary"] and about["examples"]
    tokenizer = Tokenizer.from_json(checkpoint["tokenizer"])
    assert tokenizer.vocab_size <= checkpoint["model_config"]["vocab_size"]
    assert not [p for p in os.listdir(out) if "tmp" in p]


def test_tokenizer_keeps_digits_single(trained):
    out, _ = trained
    tokenizer = Tokenizer.load(str(out / "tokenizer.json"))
    assert len(tokenizer.encode_ordinary("12345 + 678")) == len("12345") + 2 + len("678")


def test_interrupt_saves_and_resume_matches_a_straight_run(tmp_path, monkeypatch, trained):
    straight_out, _ = trained
    cfg = get_preset("tiny")
    real_batch = ShardDataset.batch

    def interrupt_at_step_12(self, step, *args, **kwargs):
        if step == 12:
            raise KeyboardInterrupt
        return real_batch(self, step, *args, **kwargs)

    monkeypatch.setattr(ShardDataset, "batch", interrupt_at_step_12)
    with pytest.raises(MonologueError, match="interrupted at step 12") as interrupted:
        train(cfg, tmp_path, seed=0, quiet=True)
    assert interrupted.value.exit_code == 130
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["meta"]["step"] == 12
    monkeypatch.setattr(ShardDataset, "batch", real_batch)

    train(cfg, tmp_path, seed=0, resume=True, quiet=True)
    resumed = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    straight = torch.load(straight_out / "checkpoint.pt", weights_only=True)["model"]
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5)


def test_resume_without_a_run_is_a_user_error(tmp_path):
    with pytest.raises(MonologueError, match="nothing to resume"):
        train(get_preset("tiny", steps=2), tmp_path, resume=True, quiet=True)


def test_a_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"x": torch.ones(3)}, path)

    def broken_save(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"x": torch.zeros(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.ones(3))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_learning_rate_warms_up_then_decays():
    cfg = get_preset("tiny", steps=100, warmup_steps=10)
    values = [lr_multiplier(s, cfg) for s in range(100)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[-1] == pytest.approx(cfg.min_lr_frac, abs=0.01)


def test_same_seed_same_weights(tmp_path):
    cfg = get_preset("tiny", steps=3)
    train(cfg, tmp_path / "a", seed=4, quiet=True)
    train(cfg, tmp_path / "b", seed=4, quiet=True)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_muon_option_trains(tmp_path):
    cfg = get_preset("tiny", optimizer="muon", steps=16)
    train(cfg, tmp_path / "straight", seed=0, quiet=True)
    state = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=True)
    assert len(state["optimizer"]["optimizers"]) == 2  # AdamW for embeddings, Muon for matrices
    model = GPT(cfg.model)
    model.load_state_dict(torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"])
    torch.manual_seed(0)
    assert fixed_batch_loss(model, tmp_path / "straight") < 0.8 * fixed_batch_loss(GPT(cfg.model).init_weights(), tmp_path / "straight")


def test_unknown_optimizer_is_a_user_error():
    with pytest.raises(MonologueError, match="optimizer"):
        get_preset("tiny", optimizer="sgd")


def test_muon_state_round_trips():
    cfg = get_preset("tiny", optimizer="muon")
    torch.manual_seed(0)
    model = GPT(cfg.model).init_weights(zero_init_outputs=False)
    optimizer = make_optimizer(model, cfg)
    model(torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))).backward()
    optimizer.step()
    restored = make_optimizer(model, cfg)
    restored.load_state_dict(optimizer.state_dict())
    for a, b in zip(optimizer.optimizers, restored.optimizers):
        for p in model.parameters():
            if p in a.state:
                assert all(torch.equal(a.state[p][k], b.state[p][k]) for k in a.state[p] if torch.is_tensor(a.state[p][k]))


def test_cpu_threads_leave_the_cores_other_work_keeps_busy(monkeypatch):
    monkeypatch.delenv("MONOLOGUE_THREADS", raising=False)
    monkeypatch.setattr(train_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert train_module.cpu_threads(0.2) == 4
    assert train_module.cpu_threads(1.1) == 3  # one busy process
    assert train_module.cpu_threads(9.0) == 1
    monkeypatch.setenv("MONOLOGUE_THREADS", "2")
    assert train_module.cpu_threads(9.0) == 2


def test_other_work_is_the_machine_busy_time_less_this_process(monkeypatch):
    """Two reads of /proc/stat 2 s apart: the machine was busy 3.2 core-seconds, this process used
    1.2 of them, so other work kept 1.0 core busy. Idle and iowait are not busy."""
    clock = {"t": 100.0, "own": 5.0}
    ticks = [[1000, 0, 200, 9000, 50, 0, 0, 0, 0, 0]]
    monkeypatch.setattr(train_module.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(train_module.time, "process_time", lambda: clock["own"])
    monkeypatch.setattr(train_module.os, "sysconf", lambda name: 100)
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO("cpu  " + " ".join(map(str, ticks[-1])) + "\n"))
    watch = train_module.OtherWork()
    clock.update(t=102.0, own=6.2)
    ticks.append([1250, 0, 270, 9100, 90, 0, 0, 0, 0, 0])  # +320 busy ticks, +140 idle/iowait ticks
    assert watch.busy_cores() == pytest.approx(1.0)
    clock.update(t=103.0, own=7.2)
    ticks.append([1350, 0, 270, 9200, 90, 0, 0, 0, 0, 0])  # busy only with this process
    assert watch.busy_cores() == pytest.approx(0.0)


def test_thread_policy_gives_a_core_back_to_other_work_and_takes_it_again(monkeypatch):
    monkeypatch.delenv("MONOLOGUE_THREADS", raising=False)
    monkeypatch.setattr(train_module.os, "sched_getaffinity", lambda pid: {0, 1})
    policy = train_module.ThreadPolicy(every=10)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(policy.watch, "busy_cores", lambda: 1.0)
        assert policy.after_step(5) is None  # only every 10 steps
        assert "2 -> 1" in policy.after_step(10) and torch.get_num_threads() == 1
        assert policy.after_step(20) is None
        monkeypatch.setattr(policy.watch, "busy_cores", lambda: 0.1)
        assert "1 -> 2" in policy.after_step(30) and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

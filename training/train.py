"""The train loop: data preparation, AdamW (or Muon for the block matrices) with warmup + cosine decay, checkpoints, evaluation.

    train(get_preset("demo"), "runs/demo")

writes `runs/demo/checkpoint.pt` (the compiler's input: model_config, fp32 state dict, tokenizer
JSON, meta) and `runs/demo/train_state.pt` (optimizer and step, for `resume=True`). Both are written
atomically; Ctrl-C saves before exiting. Under torchrun (WORLD_SIZE > 1) the same call trains with
DistributedDataParallel; rank 0 prepares data, logs and saves.

Determinism: the initial weights depend only on `seed`, and the batch of each step is a function of
(step, seed, rank), so a run and its resumed twin see the same data.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from monologue_compile.errors import MonologueError

from .data.reasoning import heldout_conversations, training_conversations
from .data.shards import ShardDataset, has_shards, write_shards
from .evaluate import evaluate, format_report, validation_loss
from monologue_compile.models.gpt import GPT, GPTConfig
from .muon import Muon, Optimizers
from .presets import TrainConfig

CHECKPOINT = "checkpoint.pt"
TRAIN_STATE = "train_state.pt"
TOKENIZER = "tokenizer.json"


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world_size > 1:
            dist.barrier()


def setup_distributed(device: str | None = None) -> Distributed:
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; without them this is a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if world_size > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo")
        return Distributed(dist.get_rank(), world_size, torch.device(f"cuda:{local_rank}" if cuda else "cpu"))
    return Distributed(device=torch.device(device or ("cuda" if cuda else "cpu")))


class OtherWork:
    """How many cores other processes keep busy, measured rather than guessed: the machine's busy CPU
    time between two reads of /proc/stat, less this process's own CPU time, over the wall time between.
    The load average is the fallback where /proc/stat is missing; it lags by minutes and counts work
    that has already ended (a build that just finished made the demo train on one core of an idle
    two-core machine, at 1.9k instead of 3.2k tok/s)."""

    def __init__(self):
        self._last = self._read()

    @staticmethod
    def _read():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # user..steal less idle and iowait
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.monotonic()

    def busy_cores(self) -> float:
        """Cores other work kept busy since the last call (or since this object was made)."""
        now = self._read()
        if now is None or self._last is None:
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        (busy0, own0, t0), (busy1, own1, t1) = self._last, now
        self._last = now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-3)


def cpu_threads(other_busy_cores: float | None = None) -> int:
    """MONOLOGUE_THREADS, or the cores this process may use (up to 16) less those other work keeps
    busy (measured over 0.3 s unless given), at least 1. On an idle 2-core machine 2 threads train
    the demo ~1.7x faster than 1; beside a busy process a thread waiting for the taken core stalls
    the others at every parallel region, and one thread goes faster (benchmarks/bench_train_threads.py).
    The CLI also sets OMP_WAIT_POLICY=PASSIVE before torch loads, so idle threads sleep instead of
    spinning on a core another process needs."""
    if os.environ.get("MONOLOGUE_THREADS"):
        return max(1, int(os.environ["MONOLOGUE_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if other_busy_cores is None:
        watch = OtherWork()
        time.sleep(0.3)
        other_busy_cores = watch.busy_cores()
    return max(1, min(cores, 16) - int(other_busy_cores + 0.5))


def set_cpu_threads():
    torch.set_num_threads(cpu_threads())


class ThreadPolicy:
    """Re-chooses the CPU thread count every `every` steps from the work the rest of the machine did
    meanwhile, so a job that starts (or ends) beside a long training run changes its thread count
    within a minute (cpu_threads keeps a count MONOLOGUE_THREADS fixes)."""

    def __init__(self, every: int = 20):
        self.every, self.watch = every, OtherWork()

    def after_step(self, step: int) -> str | None:
        if step % self.every:
            return None
        others = self.watch.busy_cores()
        threads, before = cpu_threads(others), torch.get_num_threads()
        if threads == before:
            return None
        torch.set_num_threads(threads)
        return f"threads {before} -> {threads}: other work keeps {others:.1f} cores busy"


# --- data ------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on text with the digits removed, so every digit stays one token."""
    from monologue_compile.tokenizer import Tokenizer

    return Tokenizer.train([re.sub(r"[0-9]", " ", t) for t in texts], vocab_size)


def prepare_builtin_data(cfg: TrainConfig, out_dir: Path, seed: int):
    """Train (or reuse) the tokenizer and tokenize the built-in corpus into out_dir/data."""
    from monologue_compile.tokenizer import Tokenizer

    tokenizer_path, data_dir = out_dir / TOKENIZER, out_dir / "data"
    if tokenizer_path.is_file():
        tokenizer = Tokenizer.load(str(tokenizer_path))
    else:
        sample = training_conversations(min(cfg.train_conversations, 20_000), seed)
        tokenizer = train_tokenizer([f"{c.user}\n{c.thought}\n{c.answer}" for c in sample], cfg.tokenizer_vocab)
        tmp = out_dir / (TOKENIZER + ".tmp")
        tokenizer.save(str(tmp))
        os.replace(tmp, tokenizer_path)
    if not has_shards(data_dir):
        documents = (tokenizer.render_conversation(c.messages()) for c in training_conversations(cfg.train_conversations, seed))
        write_shards(documents, data_dir, tokenizer.vocab_size, tokenizer.token_id("<|bos|>"), source="builtin", seed=seed)
    return tokenizer, data_dir


# --- optimization ------------------------------------------------------------------------------------


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to min_lr_frac at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: GPT, cfg: TrainConfig, fused: bool = False) -> Optimizers:
    """AdamW for embeddings and lm_head (own, higher learning rate, no weight decay); the block
    matrices get AdamW too, or Muon with `cfg.optimizer == "muon"`."""
    embedding_ids = {id(model.transformer.wte.weight), id(model.lm_head.weight)}
    embeddings = [p for p in model.parameters() if id(p) in embedding_ids]
    matrices = [p for p in model.parameters() if id(p) not in embedding_ids]
    embedding_group = {"params": embeddings, "lr": cfg.embedding_lr, "base_lr": cfg.embedding_lr, "weight_decay": 0.0}
    if cfg.optimizer == "muon":
        return Optimizers(
            torch.optim.AdamW([embedding_group], betas=cfg.betas, eps=1e-8, fused=fused),
            Muon([{"params": matrices, "lr": cfg.muon_lr, "base_lr": cfg.muon_lr}]),
        )
    matrix_group = {"params": matrices, "lr": cfg.lr, "base_lr": cfg.lr, "weight_decay": cfg.weight_decay}
    return Optimizers(torch.optim.AdamW([matrix_group, embedding_group], betas=cfg.betas, eps=1e-8, fused=fused))


# --- checkpoints ---------------------------------------------------------------------------------------


def atomic_save(obj, path: Path):
    """torch.save to a temp file in the same directory, then rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(out_dir: Path, model: GPT, tokenizer, meta: dict, optimizer=None, train_config: dict | None = None):
    """Write train_state.pt (if an optimizer is given) first, then checkpoint.pt; both atomic."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if optimizer is not None:
        atomic_save({"optimizer": optimizer.state_dict(), "step": meta["step"], "train_config": train_config}, out_dir / TRAIN_STATE)
    atomic_save({"model_config": model.config.to_dict(), "model": state, "tokenizer": tokenizer.to_json(), "meta": meta}, out_dir / CHECKPOINT)


def load_for_resume(out_dir: Path, model: GPT, optimizer, device) -> int:
    """Restore weights and optimizer from out_dir; returns the step to continue from."""
    checkpoint_path, state_path = out_dir / CHECKPOINT, out_dir / TRAIN_STATE
    if not checkpoint_path.is_file() or not state_path.is_file():
        raise MonologueError(f"{out_dir}: nothing to resume (needs {CHECKPOINT} and {TRAIN_STATE})")
    checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=True)
    state = torch.load(state_path, map_location=device, weights_only=True)
    if GPTConfig.from_dict(checkpoint["model_config"]) != model.config:
        raise MonologueError(f"{checkpoint_path}: its model_config differs from the preset being resumed")
    if state["step"] != checkpoint["meta"]["step"]:
        raise MonologueError(f"{state_path}: step {state['step']} does not match {CHECKPOINT} step {checkpoint['meta']['step']}")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


# --- the loop --------------------------------------------------------------------------------------------


def train(
    cfg: TrainConfig,
    out_dir,
    seed: int = 0,
    resume: bool = False,
    preset: str = "custom",
    device: str | None = None,
    data_dir=None,
    tokenizer=None,
    quiet: bool = False,
) -> dict:
    """Train `cfg` into out_dir; returns the final meta (step, losses, eval figures)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    out_dir = Path(out_dir)
    ddp = setup_distributed(device)
    thread_policy = ThreadPolicy() if ddp.device.type == "cpu" and ddp.world_size == 1 else None
    if ddp.device.type == "cpu":
        set_cpu_threads()
    console = Console(quiet=quiet or not ddp.is_main, stderr=True)
    if (tokenizer is None) != (data_dir is None):
        raise ValueError("give both tokenizer and data_dir (from `monologue data prepare`), or neither")
    builtin_data = data_dir is None
    if ddp.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if data_dir is None:
            tokenizer, data_dir = prepare_builtin_data(cfg, out_dir, seed)
    ddp.barrier()
    if data_dir is None:
        tokenizer, data_dir = prepare_builtin_data(cfg, out_dir, seed)  # other ranks reuse rank 0's files
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise MonologueError(f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.model.vocab_size}")
    dataset = ShardDataset(data_dir, cfg.model.sequence_len)

    torch.manual_seed(seed)
    model = GPT(cfg.model).init_weights().to(ddp.device)
    optimizer = make_optimizer(model, cfg, fused=ddp.device.type == "cuda")
    step = load_for_resume(out_dir, model, optimizer, ddp.device) if resume else 0
    train_model = torch.nn.parallel.DistributedDataParallel(model) if ddp.world_size > 1 else model
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ddp.device.type == "cuda" else contextlib.nullcontext)
    val_conversations = heldout_conversations(max(cfg.eval_per_family, 4), seed=1)

    meta = {"step": step, "preset": preset, "seed": seed, "val_loss": math.nan, "train_loss": math.nan}
    if builtin_data:
        from .data.reasoning import ABOUT

        meta["about"] = ABOUT

    def checkpoint():
        if ddp.is_main:
            save_checkpoint(out_dir, model, tokenizer, meta, optimizer, cfg.to_dict())

    def periodic_eval():
        model.eval()
        result = evaluate(model, tokenizer, cfg.eval_per_family, seed=2, with_loss=False)
        meta["val_loss"] = validation_loss(model, tokenizer, val_conversations)
        meta["eval"] = {f: s["accuracy"] for f, s in result["families"].items()} | {"well_formed": result["well_formed"]}
        model.train()
        sample = result["examples"][step % len(result["examples"])] if result["examples"] else None
        console.print(f"step {step}: val_loss {meta['val_loss']:.4f}\n{format_report(result)}")
        if sample:
            console.print(f"[dim]sample: {sample['user']!r} -> think {sample['thought']!r} answer {sample['answer']!r}[/dim]")

    tokens_per_step = cfg.batch_size * cfg.model.sequence_len * ddp.world_size
    progress = Progress(
        TextColumn("[bold]train[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )
    model.train()
    log_every = max(1, cfg.steps // 50)  # progress lines for logs (the bar only shows on a terminal)
    start_time, smoothed = time.time(), None
    try:
        with progress:
            task = progress.add_task("train", total=cfg.steps, completed=step, status="")
            while step < cfg.steps:
                t0 = time.time()
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * lr_multiplier(step, cfg)
                x, y = dataset.batch(step, cfg.batch_size, seed, ddp.rank, ddp.world_size)
                x, y = x.to(ddp.device, non_blocking=True), y.to(ddp.device, non_blocking=True)
                with autocast():
                    logits = train_model(x)
                # Mean over the trained tokens of all ranks (DDP averages gradients over ranks), so
                # N processes take exactly the step one process would take on their N batches.
                targets = torch.tensor(float((y >= 0).sum()), device=ddp.device)
                if ddp.world_size > 1:
                    dist.all_reduce(targets)
                loss_sum = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-1, reduction="sum")
                (loss_sum * ddp.world_size / targets.clamp(min=1)).backward()
                loss = loss_sum.detach() / max(1, int((y >= 0).sum()))
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if thread_policy and (change := thread_policy.after_step(step)):
                    console.print(f"step {step}: {change}")
                loss_value = loss.item()
                smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
                meta.update(step=step, train_loss=smoothed, train_seconds=meta.get("train_seconds", 0.0) + time.time() - t0)
                tokens_per_second = tokens_per_step / (time.time() - t0)
                progress.update(task, completed=step, status=f"loss {smoothed:.3f}  {tokens_per_second:,.0f} tok/s")
                if step % log_every == 0:
                    console.print(f"step {step}/{cfg.steps} loss {smoothed:.4f} lr x{lr_multiplier(step - 1, cfg):.2f} "
                                  f"{tokens_per_second:,.0f} tok/s {time.time() - start_time:.0f}s")
                if ddp.is_main and (step % cfg.eval_every == 0 or step == cfg.steps):
                    periodic_eval()
                if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                    checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise MonologueError(f"interrupted at step {step}; saved {out_dir / CHECKPOINT} (continue with --resume)", exit_code=130) from None
    finally:
        if ddp.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()
    meta["wall_seconds"] = time.time() - start_time
    return meta

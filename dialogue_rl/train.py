"""The shared training loop of every offline learner.

AdamW with linear warmup and cosine decay, gradient clipping, gradient accumulation,
bf16 autocast on CUDA, tqdm progress, periodic evaluation and logging, atomic
checkpoints, exact resume, a guard against non-finite losses, and data-parallel
training over ``torch.distributed`` (see :mod:`dialogue_rl.distributed`).

Batches are drawn per step from a generator keyed by ``(seed, step)``, so the data a
step sees does not depend on what ran before it: a run resumed from a checkpoint at
step ``k`` (weights, optimiser and RNG state restored) continues exactly like the
uninterrupted run. Under ``torchrun`` every rank draws the same global batch and
trains on its contiguous shard; only rank 0 logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dialogue_rl import checkpoint as ckpt
from dialogue_rl.algos.base import Learner
from dialogue_rl.distributed import SINGLE, DistContext

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32  # the global batch (summed over processes under torchrun)
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 50
    eval_every: int = 0
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    amp: bool = True
    # > 1: draw group_by_length * batch_size rows, sort them by length and train on one
    # batch-sized run of them (less padding; every row stays equally likely). 0: off.
    group_by_length: int = 0


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf (the message names the step, the term and the last checkpoint)."""


class OutputDirError(RuntimeError):
    """The output directory cannot hold the run (not writable, or not enough free space)."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(
    n: int, batch_size: int, seed: int, step: int, lengths: np.ndarray | None = None, group: int = 0
) -> np.ndarray:
    """The dataset rows of ``step``: a draw keyed by ``(seed, step)`` only.

    With ``group > 1`` and ``lengths`` (tokens per row), length-grouped: draw ``group``
    batches' worth of rows, sort them by length, cut them into ``group`` runs and return
    one run chosen at random (in length order). Each row is still drawn with probability
    ``batch_size / n``; a batch pads to a similar length instead of the longest of a
    uniform draw. Falls back to the plain draw when ``n`` holds fewer than two batches.
    """
    rng = np.random.default_rng([seed, step])
    k = min(group, n // batch_size) if lengths is not None else 0
    if k < 2:
        return rng.choice(n, size=min(batch_size, n), replace=False)
    pool = rng.choice(n, size=k * batch_size, replace=False)
    pool = pool[np.argsort(np.asarray(lengths)[pool], kind="stable")]
    run = int(rng.integers(k))
    return pool[run * batch_size : (run + 1) * batch_size]


def example_lengths(examples: Sequence[Any]) -> np.ndarray:
    """Tokens per example (``examples.lengths`` when the container has them)."""
    lengths = getattr(examples, "lengths", None)
    if lengths is not None and len(lengths) == len(examples):
        return np.asarray(lengths)
    try:
        return np.asarray([len(e["input_ids"]) for e in examples], dtype=np.int64)
    except (KeyError, TypeError):
        raise ValueError("train.group_by_length needs examples with 'input_ids'; "
                         "this learner's examples have none: set train.group_by_length=0") from None


def make_optimizer(learner: Learner, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in learner.trainable_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def checkpoint_bytes(learner: Learner, keep: int) -> int:
    """Disk space ``keep`` checkpoints plus the one being written take (weights + AdamW moments)."""
    weights = sum(t.numel() * t.element_size() for t in learner.state_dict().values())
    moments = 2 * sum(p.numel() * 4 for p in learner.trainable_parameters())
    return (max(1, keep) + 1) * (weights + moments)


def check_output_dir(path: str | Path, need_bytes: int = 0) -> None:
    """Fail before any work if ``path`` cannot be created and written, or has under ``need_bytes`` free."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write_probe_") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OutputDirError(
            f"{path}: output directory is not writable ({e.strerror or e}); "
            "fix: pick another hydra.run.dir or fix its permissions"
        ) from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise OutputDirError(
            f"{path}: only {free / 2**20:.1f} MiB free on disk, the checkpoints need about "
            f"{need_bytes / 2**20:.1f} MiB; fix: free disk space, lower train.keep_checkpoints "
            "or pick another hydra.run.dir"
        )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _LossModule(nn.Module):
    """``forward(batch) = learner.loss(batch)``: DDP synchronises gradients around ``forward``."""

    def __init__(self, learner: Learner) -> None:
        super().__init__()
        self.learner = learner

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.learner.loss(batch)


def _wrap(learner: Learner, dist: DistContext, device: torch.device) -> Callable[..., Any]:
    """The loss function to call: the learner's own, or through DistributedDataParallel."""
    if not dist.enabled:
        return learner.loss
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(_LossModule(learner), device_ids=ids)


def _non_finite(step: int, metrics: dict[str, float], checkpoint_dir: str | Path | None) -> NonFiniteLossError:
    bad = [n for n, v in metrics.items() if not math.isfinite(v)] or ["loss"]
    last = ckpt.latest(checkpoint_dir) if checkpoint_dir else None
    where = f"last good checkpoint: {last}" if last else "no checkpoint written yet"
    return NonFiniteLossError(
        f"non-finite loss at step {step} (term: {', '.join(bad)}); {where}; "
        "fix: lower train.lr or raise train.grad_clip, then resume=true from that checkpoint"
    )


def fit(
    learner: Learner,
    examples: list[dict],
    collate: Callable[[list[dict]], dict[str, torch.Tensor]],
    cfg: TrainConfig,
    device: torch.device,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    log_fn: Callable[[dict[str, Any], int], None] | None = None,
    eval_fn: Callable[[int], dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    progress: bool = True,
    dist: DistContext = SINGLE,
) -> dict[str, Any]:
    """Train ``learner`` for ``cfg.steps`` optimiser steps; return train statistics.

    Under ``dist`` (torchrun) every rank calls this with the same arguments; ``log_fn``,
    ``eval_fn`` and checkpoints run on rank 0 only, and the returned metrics are global.
    """
    if not examples:
        raise ValueError("no training examples (empty dataset after filtering)")
    if min(len(examples), cfg.batch_size) < dist.world_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} and {len(examples)} examples: "
                         f"both must be >= the {dist.world_size} processes")
    learner.to(device)
    if checkpoint_dir is not None and dist.is_main:
        check_output_dir(checkpoint_dir, checkpoint_bytes(learner, cfg.keep_checkpoints))
    optimizer = make_optimizer(learner, cfg)
    state = ckpt.resume(checkpoint_dir, learner, optimizer) if resume and checkpoint_dir is not None else None
    start = int(state["step"]) if state is not None else 0
    loss_fn = _wrap(learner, dist, device)
    use_amp = cfg.amp and device.type == "cuda"
    # N processes with grad_accum A run the micro-batches of one process with grad_accum A * N
    micro = max(1, cfg.batch_size // (cfg.grad_accum * dist.world_size))
    tokens, t0 = 0, time.perf_counter()
    # disable=None: quiet when stderr is not a terminal
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {learner.name}",
               disable=True if not (progress and dist.is_main) else None)
    metrics: dict[str, Any] = {}
    lengths = example_lengths(examples) if cfg.group_by_length > 1 else None
    for step in range(start, cfg.steps):
        learner.train()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        idx = batch_indices(len(examples), cfg.batch_size, seed, step, lengths, cfg.group_by_length)
        mine = idx[dist.shard(len(idx))]
        chunks = [mine[k : k + micro] for k in range(0, len(mine), micro)]
        optimizer.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for i, chunk in enumerate(chunks):
            batch = _to(collate([examples[j] for j in chunk]), device)
            last_chunk = i == len(chunks) - 1
            sync = contextlib.nullcontext() if last_chunk or not dist.enabled else loss_fn.no_sync()
            with sync:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss, m = loss_fn(batch)
                if dist.all_min(float(torch.isfinite(loss)), device) < 1:
                    raise _non_finite(step, m, checkpoint_dir)
                # the weight makes the (rank-averaged) gradient the global batch's
                (loss * len(chunk) * dist.world_size / len(idx)).backward()
            tokens += int(batch["attention_mask"].sum())
            for n, v in m.items():
                acc[n] = acc.get(n, 0.0) + v * len(chunk) / len(idx)
        if cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(learner.trainable_parameters(), cfg.grad_clip))
        optimizer.step()
        learner.after_step()
        done = step + 1
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            acc = dist.all_sum({**acc, "_tokens": float(tokens)}, device)
            total_tokens = acc.pop("_tokens")
            if cfg.grad_clip > 0:
                acc["grad_norm"] = grad_norm
            elapsed = time.perf_counter() - t0
            metrics = {**acc, "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": total_tokens / max(elapsed, 1e-9)}
            bar.set_postfix(loss=f"{acc.get('loss', float('nan')):.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if log_fn and dist.is_main:
                log_fn({f"train/{k}": v for k, v in metrics.items()}, done)
        if eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            if dist.is_main:
                eval_fn(done)
            dist.barrier()
        if checkpoint_dir is not None and dist.is_main and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            ckpt.save(checkpoint_dir, done, learner, optimizer, extra, keep=cfg.keep_checkpoints)
    bar.close()
    wall = time.perf_counter() - t0
    total = dist.all_sum({"tokens": float(tokens)}, device)["tokens"]
    return {
        "steps": cfg.steps, "start_step": start, "wall_s": wall,
        "tokens_per_s": total / max(wall, 1e-9), "final_metrics": metrics,
    }

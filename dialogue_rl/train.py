"""The shared training loop of every offline learner.

AdamW with linear warmup and cosine decay, gradient clipping, gradient accumulation,
bf16 autocast on CUDA, tqdm progress, periodic evaluation and logging, atomic
checkpoints and exact resume.

Batches are drawn per step from a generator keyed by ``(seed, step)``, so the data a
step sees does not depend on what ran before it: a run resumed from a checkpoint at
step ``k`` (weights, optimiser and RNG state restored) continues exactly like the
uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from dialogue_rl import checkpoint as ckpt
from dialogue_rl.algos.base import Learner

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
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


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or inf."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr`` then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The dataset rows of ``step``: a draw keyed by ``(seed, step)`` only."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=min(batch_size, n), replace=False)


def make_optimizer(learner: Learner, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in learner.trainable_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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
) -> dict[str, Any]:
    """Train ``learner`` for ``cfg.steps`` optimiser steps; return train statistics."""
    if not examples:
        raise ValueError("no training examples (empty dataset after filtering)")
    learner.to(device)
    optimizer = make_optimizer(learner, cfg)
    start = 0
    if resume and checkpoint_dir is not None:
        path = ckpt.latest(checkpoint_dir)
        if path is not None:
            state = ckpt.load(path, learner, optimizer, restore_rng=True)
            start = int(state["step"])
            log.info("resumed from %s (step %d)", path, start)
        else:
            log.info("resume=true but no checkpoint in %s: starting from scratch", checkpoint_dir)
    use_amp = cfg.amp and device.type == "cuda"
    micro = max(1, cfg.batch_size // cfg.grad_accum)
    tokens, t0 = 0, time.perf_counter()
    # disable=None: quiet when stderr is not a terminal
    bar = tqdm(total=cfg.steps, initial=start, desc=f"train {learner.name}",
               disable=None if progress else True)
    metrics: dict[str, Any] = {}
    for step in range(start, cfg.steps):
        learner.train()
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, cfg)
        idx = batch_indices(len(examples), cfg.batch_size, seed, step)
        optimizer.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for k in range(0, len(idx), micro):
            batch = _to(collate([examples[i] for i in idx[k : k + micro]]), device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss, m = learner.loss(batch)
            if not torch.isfinite(loss):
                last = ckpt.latest(checkpoint_dir) if checkpoint_dir else None
                bad = [n for n, v in m.items() if not math.isfinite(v)] or ["loss"]
                raise NonFiniteLossError(
                    f"non-finite loss at step {step} (terms: {', '.join(bad)}); last checkpoint: {last}"
                )
            (loss * len(idx[k : k + micro]) / len(idx)).backward()
            tokens += int(batch["attention_mask"].sum())
            for n, v in m.items():
                acc[n] = acc.get(n, 0.0) + v * len(idx[k : k + micro]) / len(idx)
        if cfg.grad_clip > 0:
            acc["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(learner.trainable_parameters(), cfg.grad_clip))
        optimizer.step()
        learner.after_step()
        metrics = acc
        done = step + 1
        elapsed = time.perf_counter() - t0
        bar.update(1)
        if done % cfg.log_every == 0 or done == cfg.steps:
            metrics = {**acc, "lr": optimizer.param_groups[0]["lr"], "tokens_per_s": tokens / max(elapsed, 1e-9)}
            bar.set_postfix(loss=f"{acc.get('loss', float('nan')):.4f}", tok_s=f"{metrics['tokens_per_s']:.0f}")
            if log_fn:
                log_fn({f"train/{k}": v for k, v in metrics.items()}, done)
        if eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
            eval_fn(done)
        if checkpoint_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            ckpt.save(checkpoint_dir, done, learner, optimizer, extra, keep=cfg.keep_checkpoints)
    bar.close()
    wall = time.perf_counter() - t0
    return {
        "steps": cfg.steps, "start_step": start, "wall_s": wall,
        "tokens_per_s": tokens / max(wall, 1e-9), "final_metrics": metrics,
    }

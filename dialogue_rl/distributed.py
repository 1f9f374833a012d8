"""Multi-process data-parallel training on ``torch.distributed`` (launched by ``torchrun``).

``torchrun --nproc_per_node N scripts/train.py ...`` starts N copies of the script with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; :func:`init` turns
that into a :class:`DistContext` (process group on ``gloo`` for the CPU, ``nccl`` for
CUDA, one GPU per local rank). Without those variables it returns the single-process
context and nothing else changes.

The split of work (see ``dialogue_rl.train.fit`` and ``dialogue_rl.experiment``):

* every rank draws the same global batch (keyed by ``(seed, step)``) and takes its own
  contiguous shard of it, so N processes see exactly the micro-batches of one process
  with ``grad_accum * N``;
* gradients are averaged by ``DistributedDataParallel`` (the loss is scaled by N so the
  average is the single-process sum), metrics are all-reduced before logging;
* only rank 0 writes: the dataset cache, the tokenizer, checkpoints, logs, evaluation
  and ``results.json``; the others wait at barriers.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

log = logging.getLogger(__name__)

#: Collective timeout: long enough for rank 0 to evaluate while the others wait.
TIMEOUT = datetime.timedelta(minutes=120)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_min(self, value: float, device: torch.device) -> float:
        """The smallest ``value`` over ranks (e.g. an "all finite" flag)."""
        if not self.enabled:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
        return float(t.item())

    def all_sum(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """Key-wise sums over ranks (every rank must pass the same keys)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
        tdist.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def shard(self, n: int) -> slice:
        """This rank's contiguous part of ``n`` items (sizes differ by at most one)."""
        lo = self.rank * n // self.world_size
        hi = (self.rank + 1) * n // self.world_size
        return slice(lo, hi)


SINGLE = DistContext()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str = "auto") -> DistContext:
    """Join the process group described by torchrun's environment (idempotent).

    ``device`` is the run's setting: ``cpu`` forces ``gloo``; otherwise ``nccl`` is used
    when CUDA is available, and each rank takes the GPU of its ``LOCAL_RANK``.
    """
    if not launched_by_torchrun():
        return SINGLE
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device).startswith("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not tdist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local)
        tdist.init_process_group(backend=backend, timeout=TIMEOUT)
        log.info("joined the process group: rank %d of %d (%s)", rank, world, backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)


def device_of(ctx: DistContext, device: torch.device) -> torch.device:
    """The device of this rank: ``cuda:<local_rank>`` under nccl, else ``device``."""
    if ctx.enabled and ctx.backend == "nccl":
        return torch.device("cuda", ctx.local_rank)
    return device


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and tdist.is_initialized():
        tdist.destroy_process_group()

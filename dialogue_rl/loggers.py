"""Thin experiment loggers: ``none`` (local files only) and ``wandb`` (online or offline).

Only rank 0 logs under ``torchrun``. The run config goes to wandb as a plain dict;
evaluation dialogues go to a ``wandb.Table``. Metrics are always appended to
``metrics.jsonl`` in the run directory, whatever the logger.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class LoggerConfig:
    kind: str = "none"  # "none" or "wandb"
    project: str = "dialogue-rl"
    entity: str | None = None
    mode: str | None = None  # "online", "offline", "disabled"; None = WANDB_MODE or online
    tags: list[str] | None = None


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


class RunLogger:
    """Writes ``metrics.jsonl`` and forwards to wandb when configured (rank 0 only)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict[str, Any], name: str | None = None) -> None:
        if cfg.kind not in ("none", "wandb"):
            raise ValueError(f"logger.kind={cfg.kind!r}: expected 'none' or 'wandb'")
        self.active = is_rank_zero()
        self.run_dir = Path(run_dir)
        self._wandb = None
        if self.active and cfg.kind == "wandb":
            import wandb

            self._wandb = wandb.init(
                project=cfg.project, entity=cfg.entity, mode=cfg.mode or os.environ.get("WANDB_MODE"),
                config=config, dir=str(self.run_dir), name=name, tags=cfg.tags, reinit="finish_previous",
            )

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if not self.active:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self._wandb is not None:
            self._wandb.log(metrics, step=step)

    def log_dialogues(self, episodes: list[dict[str, Any]], step: int, limit: int = 16) -> None:
        if not self.active or self._wandb is None:
            return
        import wandb

        table = wandb.Table(columns=["env", "seed", "transcript", "return", "success"])
        for e in episodes[:limit]:
            table.add_data(e["env_id"], e["seed"], e["transcript"], e["return"], e["success"])
        self._wandb.log({"eval/dialogues": table}, step=step)

    def finish(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

"""Thin experiment loggers: ``none`` (local files only) and ``wandb`` (online or offline).

Only rank 0 logs under ``torchrun``. The run config goes to wandb as a plain dict;
evaluation dialogues go to a ``wandb.Table``, episode pictures (e.g. GuessWhich's ranked
pool) to ``wandb.Image``, and the learning curve of the normalized score with its 95% CI
to a picture at the end of the run. Whatever the logger, the run directory gets the same
figures as files: ``metrics.jsonl`` (every logged scalar), ``eval_dialogues_step<N>.jsonl``
(the dialogue table), ``figures/eval_step<N>_seed<S>.png`` and ``learning_curve.png``.

:class:`SweepProgress` is a Hydra callback that shows a tqdm bar over the jobs of a
sweep (``python scripts/train.py -m ...``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from tqdm.auto import tqdm

from envs.render import write_png

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
        """The first ``limit`` dialogues as ``eval_dialogues_step<N>.jsonl`` (env, seed,
        transcript, return, success) and, with wandb, as the table ``eval/dialogues``."""
        if not self.active:
            return
        rows = [
            {"env": e["env_id"], "seed": e["seed"], "transcript": e["transcript"], "return": e["return"],
             "success": e["success"]}
            for e in episodes[:limit]
        ]
        with open(self.run_dir / f"eval_dialogues_step{step}.jsonl", "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        if self._wandb is None:
            return
        import wandb

        table = wandb.Table(columns=["env", "seed", "transcript", "return", "success"])
        for r in rows:
            table.add_data(r["env"], r["seed"], r["transcript"], r["return"], r["success"])
        self._wandb.log({"eval/dialogues": table}, step=step)

    def log_images(
        self, frames: Sequence[tuple[dict[str, Any], np.ndarray]], step: int, key: str = "eval/episodes"
    ) -> list[Path]:
        """Episode pictures (``(episode, rgb frame)`` pairs, e.g. from
        :func:`dialogue_rl.evaluation.render_episodes`) as ``figures/eval_step<N>_seed<S>.png``
        and, with wandb, as a list of ``wandb.Image`` under ``key``. Returns the files written."""
        if not self.active or not frames:
            return []
        paths = [write_png(self.run_dir / "figures" / f"eval_step{step}_seed{ep['seed']}.png", frame)
                 for ep, frame in frames]
        if self._wandb is not None:
            import wandb

            images = [
                wandb.Image(frame, caption=f"seed {ep['seed']}: return {ep['return']:.3f}, "
                                           f"success {bool(ep['success'])}")
                for ep, frame in frames
            ]
            self._wandb.log({key: images}, step=step)
        return paths

    def save_learning_curve(self) -> Path | None:
        """``learning_curve.png`` from ``metrics.jsonl``: the evaluation's normalized score
        against the step, with its 95% CI band (also logged to wandb as ``eval/learning_curve``).
        Returns the file, or None when no evaluation was logged."""
        if not self.active:
            return None
        path = plot_learning_curve(self.run_dir / "metrics.jsonl", self.run_dir / "learning_curve.png")
        if path is not None and self._wandb is not None:
            import wandb

            self._wandb.log({"eval/learning_curve": wandb.Image(str(path))})
        return path

    def finish(self) -> None:
        """Save the learning curve, then close wandb."""
        if self.active:
            try:
                self.save_learning_curve()
            except (OSError, ValueError, RuntimeError) as e:  # a figure must not fail a finished run
                log.warning("learning curve not saved: %s", e)
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_eval_curve(metrics_path: str | Path, metric: str = "eval/normalized_score") -> dict[str, np.ndarray]:
    """``step``, ``value``, ``lo``, ``hi`` arrays of ``metric`` (and its ``*_ci95_lo/hi`` bounds,
    NaN where absent) from a ``metrics.jsonl``; a step logged twice (a resumed run) keeps
    its last row."""
    base = metric.rsplit("_score", 1)[0] if metric.endswith("_score") else metric
    rows: dict[int, tuple[float, float, float]] = {}
    p = Path(metrics_path)
    if p.is_file():
        for line in p.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            v = row.get(metric)
            if isinstance(v, (int, float)) and math.isfinite(v):
                lo, hi = row.get(f"{base}_ci95_lo", math.nan), row.get(f"{base}_ci95_hi", math.nan)
                rows[int(row["step"])] = (float(v), float(lo), float(hi))
    steps = sorted(rows)
    arr = np.array([rows[s] for s in steps], dtype=np.float64).reshape(-1, 3)
    return {"step": np.array(steps, dtype=np.int64), "value": arr[:, 0], "lo": arr[:, 1], "hi": arr[:, 2]}


def plot_learning_curve(
    metrics_path: str | Path, out: str | Path, metric: str = "eval/normalized_score"
) -> Path | None:
    """Plot :func:`read_eval_curve` to a PNG (matplotlib's Agg canvas, no pyplot state);
    None when the metric was never logged."""
    curve = read_eval_curve(metrics_path, metric)
    if curve["step"].size == 0:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x, y = curve["step"], curve["value"]
    band = np.isfinite(curve["lo"]) & np.isfinite(curve["hi"])
    if band.any():
        ax.fill_between(x[band], curve["lo"][band], curve["hi"][band], alpha=0.25, label="95% CI")
    ax.plot(x, y, marker="o", label=metric.split("/")[-1])
    ax.set_xlabel("training step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    return out


def sweep_size(task_overrides: Sequence[str]) -> int | None:
    """The number of jobs of a Hydra sweep from its command-line overrides (the product of
    the sweep lengths), or None when it cannot be told (e.g. a glob over a config group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        n = 1
        for o in OverridesParser.create().parse_overrides(list(task_overrides)):
            if o.is_sweep_override():
                n *= len(list(o.sweep_string_iterator()))
        return n
    except (HydraException, ValueError, TypeError) as e:  # only costs the bar its total
        log.debug("sweep size unknown: %s", e)
        return None


class SweepProgress(Callback):
    """Hydra callback: a tqdm bar over a sweep's jobs (``-m``), advanced as each job ends.

    Quiet when stderr is not a terminal or the config says ``progress=false``. With a
    launcher that runs jobs in other processes the bar only shows the start and the end.
    """

    def __init__(self) -> None:
        self._bar: Any = None
        self.total: int | None = None
        self.done = 0

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self.total, self.done = sweep_size(list(config.hydra.overrides.task)), 0
        quiet = not bool(config.get("progress", True))
        self._bar = tqdm(total=self.total, desc="sweep", unit="job", disable=True if quiet else None)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(1)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

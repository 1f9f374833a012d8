"""Train a learner on a logged dataset and evaluate it: ``python scripts/train.py [overrides]``.

Examples::

    python scripts/train.py                                  # default experiment
    python scripts/train.py algo=filtered_bc algo.fraction=0.2 seed=1
    python scripts/train.py env=guess_which model=small device=cuda logger=wandb
    python scripts/train.py -m seed=0,1,2                    # a sweep (Hydra multirun)
    python scripts/train.py -m +experiment=benchmark_small   # the benchmark (resumable: skip_finished)
    torchrun --nproc_per_node 2 scripts/train.py algo=ilql  # data-parallel (DDP) on 2 processes

A mistake in the input (unknown key, wrong type, unknown env id, malformed dataset,
missing checkpoint, unwritable output directory) is reported in one line on stderr with
exit status 2 (``dialogue_rl.cli``).

With ``skip_finished=true`` a run whose output directory already holds a
``results.json`` is not run again (its score is returned), so rerunning an interrupted
sweep into the same ``hydra.sweep.dir`` only runs the missing jobs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig, OmegaConf

from dialogue_rl.cli import guard, run_cli
from dialogue_rl.config import register_configs

register_configs()
log = logging.getLogger("train")


# keys that do not change what a run computes: a finished run differing only here is the same run
RUN_CONTROL_KEYS = frozenset({"skip_finished", "resume", "progress", "device", "logger"})


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out or {prefix: d}


def finished_results(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The results of a finished run in ``run_dir`` (``results.json`` is written last, atomically).

    An unreadable file means "not finished" (the run is done again). A finished run whose
    saved config differs from ``cfg`` is still skipped, with a warning naming the keys.
    """
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
        ev = results["eval"]
        float(ev["normalized_score"] if "pair_accuracy" not in ev else ev["pair_accuracy"])
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); running the job again", path, e)
        return None
    saved = {k: v for k, v in (results.get("config") or {}).items() if k not in RUN_CONTROL_KEYS}
    now = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in RUN_CONTROL_KEYS}
    a, b = _flat(saved), _flat(now)
    missing = "<missing>"
    diff = sorted(k.rstrip(".") for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
    if diff:
        log.warning("%s: finished with a different config (%s); skipped anyway (skip_finished=true). "
                    "Use another hydra.sweep.dir to run it again.", path, ", ".join(diff[:5]))
    return results


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@guard
def main(cfg: DictConfig) -> float | None:
    from dialogue_rl.config import apply_algo_settings
    from dialogue_rl.experiment import run_training

    cfg = apply_algo_settings(cfg)  # the learner's own train/eval settings (algo.train, algo.eval)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = finished_results(run_dir, cfg) if cfg.skip_finished else None
    if results is not None:
        log.info("skipping a finished run: %s", run_dir / "results.json")
    else:
        results = run_training(cfg, run_dir, Path(get_original_cwd()))
    if results is None:  # a rank > 0 of a torchrun job: rank 0 reports
        return None
    ev = results["eval"]
    if "mean_return" not in ev:  # a learner that does not act (reward model): held-out metrics
        log.info("%s on %s: %s -> %s", results["algo"], results["env_id"],
                 ", ".join(f"{k} {v:.4g}" for k, v in ev.items()), run_dir / "results.json")
        return float(ev.get("pair_accuracy", float("nan")))
    log.info(
        "%s on %s: return %.3f [%.3f, %.3f], normalized %.1f, success %.2f -> %s",
        results["algo"], results["env_id"], ev["mean_return"], *ev["ci95"], ev["normalized_score"],
        ev["success_rate"], run_dir / "results.json",
    )
    return float(ev["normalized_score"])


if __name__ == "__main__":
    sys.exit(run_cli(main))

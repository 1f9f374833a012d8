"""Train a learner on a logged dataset and evaluate it: ``python scripts/train.py [overrides]``.

Examples::

    python scripts/train.py                                  # default experiment
    python scripts/train.py algo=filtered_bc algo.fraction=0.2 seed=1
    python scripts/train.py env=guess_which model=small device=cuda logger=wandb
    python scripts/train.py -m seed=0,1,2                    # a sweep (Hydra multirun)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from dialogue_rl.config import register_configs

register_configs()
log = logging.getLogger("train")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from dialogue_rl.experiment import run_training

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    results = run_training(cfg, run_dir, Path(get_original_cwd()))
    ev = results["eval"]
    log.info(
        "%s on %s: return %.3f [%.3f, %.3f], normalized %.1f, success %.2f -> %s",
        results["algo"], results["env_id"], ev["mean_return"], *ev["ci95"], ev["normalized_score"],
        ev["success_rate"], run_dir / "results.json",
    )
    return float(ev["normalized_score"])


if __name__ == "__main__":
    sys.exit(main())

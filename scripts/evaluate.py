"""Evaluate a saved agent or a scripted policy.

    python scripts/evaluate.py checkpoint=runs/<run>/checkpoints/step_00001500
    python scripts/evaluate.py checkpoint=runs/<run> env=twenty_questions   # another env than the run's
    python scripts/evaluate.py policy=expert env=guess_which eval.n_episodes=500
    python scripts/evaluate.py checkpoint=runs/<utterance_q run> algo=utterance_q algo.act_candidates=16
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from omegaconf import DictConfig

from dialogue_rl.cli import guard, run_cli
from dialogue_rl.config import ConfigError, register_configs

register_configs()
log = logging.getLogger("evaluate")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@guard
def main(cfg: DictConfig) -> None:
    from dialogue_rl.experiment import (algo_overrides_on_command_line, env_set_on_command_line,
                                        run_saved_agent, run_scripted)

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.policy:
        results = run_scripted(cfg, run_dir, cfg.policy)
    elif cfg.checkpoint:
        # the checkpoint's own env (kwargs included) unless the command line sets one
        task = HydraConfig.get().overrides.task
        results = run_saved_agent(cfg, run_dir, Path(get_original_cwd()), env_from_cli=env_set_on_command_line(task),
                                  algo_overrides=algo_overrides_on_command_line(cfg, task))
    else:
        raise ConfigError("nothing to evaluate (conf/train.yaml: checkpoint and policy are null); "
                          "fix: pass checkpoint=<run dir or checkpoints/step_*> or policy=<name>")
    ev = results["eval"]
    log.info("%s on %s: return %.3f [%.3f, %.3f], normalized %.1f, success %.2f -> %s",
             results["algo"], results["env_id"], ev["mean_return"], *ev["ci95"], ev["normalized_score"],
             ev["success_rate"], run_dir / "results.json")


if __name__ == "__main__":
    sys.exit(run_cli(main))

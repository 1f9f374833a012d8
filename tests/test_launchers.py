"""The Hydra launcher presets of conf/hydra/launcher/ compose against the plugins' schemas.

Nothing is submitted: the Slurm preset is rendered into the sbatch script submitit would
write, which is as far as a machine without Slurm can go.
"""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from dialogue_rl.config import register_configs

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the `launchers` extra")
pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs the `launchers` extra")

CONF = Path(__file__).resolve().parents[1] / "conf"


def _compose(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_submitit_slurm_preset_composes_and_renders_an_sbatch_script(tmp_path):
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                   "+experiment=benchmark_small", "resume=true", f"hydra.sweep.dir={tmp_path}")
    launcher_cfg = cfg.hydra.launcher
    assert launcher_cfg._target_.endswith("SlurmLauncher")
    assert launcher_cfg.partition == "gpu" and launcher_cfg.timeout_min == 30 and launcher_cfg.max_num_timeout >= 1
    assert cfg.resume is True and cfg.skip_finished is True  # requeued jobs resume, finished ones are skipped
    launcher = instantiate(launcher_cfg)
    assert type(launcher).__name__ == SlurmLauncher.__name__  # Hydra loads plugins under its own module name
    p = OmegaConf.to_container(launcher_cfg, resolve=False)
    script = _make_sbatch_string(
        command="python scripts/train.py", folder=str(tmp_path / ".submitit/%j"), job_name="train",
        partition=p["partition"], time=p["timeout_min"], nodes=p["nodes"], ntasks_per_node=p["tasks_per_node"],
        cpus_per_task=p["cpus_per_task"], gpus_per_node=p["gpus_per_node"], mem=f"{p['mem_gb']}GB",
        setup=p["setup"], signal_delay_s=p["signal_delay_s"], array_parallelism=p["array_parallelism"], map_count=3,
    )
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --array=0-2", "export HF_HUB_OFFLINE=1"):
        assert line in script, line


def test_joblib_preset_composes():
    cfg = _compose("hydra/launcher=joblib_local", "hydra.launcher.n_jobs=3")
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher") and cfg.hydra.launcher.n_jobs == 3


def test_launcher_typo_fails_at_composition():
    with pytest.raises(ConfigCompositionException):
        _compose("hydra/launcher=slurm", "hydra.launcher.partitionz=gpu")


def test_sweep_job_names_keep_train_runs_and_separate_evaluate_jobs():
    from dialogue_rl.config import sweep_job_name

    # training jobs: the name a sweep's learners use to find their BC run
    assert sweep_job_name("guess_which", "bc", 2) == "guess_which_bc_s2"
    # evaluate.py -m checkpoint=a,b: one directory per checkpoint (they used to share one)
    a = sweep_job_name("guess_which", "ilql", 0, checkpoint="sweeps/gw/bc_s0")
    b = sweep_job_name("guess_which", "ilql", 0, checkpoint="sweeps/gw/fbc_s0/")
    assert (a, b) == ("eval_sweeps_gw_bc_s0", "eval_sweeps_gw_fbc_s0")
    assert sweep_job_name("guess_which", "ilql", 0, checkpoint="/abs/run dir/x") == "eval_abs_run_dir_x"
    assert sweep_job_name("maze_fo", "ilql", 0, policy="expert") == "maze_fo_scripted-expert"

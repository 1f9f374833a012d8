"""Structured-config schema of every run (dataclasses registered in Hydra's ConfigStore).

The yaml files under ``conf/`` extend these schemas (``defaults: [<name>_schema]``),
so an unknown key or a value of the wrong type fails when the config is composed,
before any work starts. ``conf/train.yaml`` is the entry config of
``scripts/train.py`` and ``scripts/evaluate.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from dialogue_rl.data.generate import EVAL_SEED_OFFSET, DataConfig
from dialogue_rl.loggers import LoggerConfig
from dialogue_rl.models.lm import ModelConfig
from dialogue_rl.train import TrainConfig


class ConfigError(ValueError):
    """A configuration value is wrong (one line naming the key and the fix)."""


@dataclass
class EnvConfig:
    """The evaluation environment (the dataset's env by default)."""

    id: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_utterance_tokens: int = 32


@dataclass
class EvalConfig:
    n_episodes: int = 200
    batch_size: int = 64
    greedy: bool = True
    temperature: float = 1.0
    top_k: int = 0
    policies: list[str] = field(default_factory=list)  # scripted policies to evaluate too
    beta: Optional[float] = None  # advantage weight of ILQL/MC agents (None: the run's algo.beta)
    # first evaluation seed; the default test seeds start at 1e9 (dataset seeds are below);
    # tune on another range, e.g. 2e9, and report on the default one
    seed_offset: int = EVAL_SEED_OFFSET


@dataclass
class AlgoConfig:
    """Every learner's config: its ``name`` (the learner), a ``label`` naming its runs and
    report rows (default: the name; two configs of one learner need two labels), and its
    own ``train`` / ``eval`` settings, applied over the run's by :func:`apply_algo_settings`
    (an online learner counts ``train.steps`` in iterations and wants its own ``lr``).
    ``init_run`` is the label of the sweep run that a learner starting from a supervised
    model takes when ``init_from`` is unset (``bc``; e.g. ``filtered_bc`` for per-utterance
    Q sampling its candidates from %BC, ``conf/algo/utterance_q_fbc.yaml``)."""

    name: str = MISSING
    label: str = "${.name}"
    init_run: str = "bc"
    train: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)


@dataclass
class BCConfig(AlgoConfig):
    name: str = "bc"


@dataclass
class FilteredBCConfig(AlgoConfig):
    name: str = "filtered_bc"
    fraction: float = 0.1


@dataclass
class ILQLConfig(AlgoConfig):
    name: str = "ilql"
    gamma: float = 0.99
    tau: float = 0.5
    tau_within: Optional[float] = None  # expectile inside an agent utterance (None: tau)
    alpha: float = 0.1
    polyak: float = 0.005
    bc_weight: float = 1.0
    beta: float = 8.0
    hidden: int = 0


@dataclass
class MCConfig(AlgoConfig):
    """Monte-Carlo returns baseline; see :mod:`dialogue_rl.algos.mc`."""

    name: str = "mc"
    gamma: float = 0.99
    alpha: float = 0.1
    bc_weight: float = 1.0
    beta: float = 8.0
    hidden: int = 0


@dataclass
class UtteranceQConfig(AlgoConfig):
    """Per-utterance Q learning (CHAI-style); see :mod:`dialogue_rl.algos.utterance_q`."""

    name: str = "utterance_q"
    gamma: float = 0.99
    alpha: float = 0.1
    polyak: float = 0.005
    n_candidates: int = 8
    temperature: float = 1.0
    top_k: int = 0
    refresh_every: int = 0
    bc_weight: float = 0.1
    hidden: int = 128
    max_utterance_tokens: int = 32
    act_mode: str = "argmax"
    act_temperature: float = 0.1
    act_candidates: int = 0
    encoder: str = "packed"
    seed: int = 0


@dataclass
class RewardModelConfig(AlgoConfig):
    """Bradley–Terry reward model; see :mod:`dialogue_rl.algos.reward_model`."""

    name: str = "reward_model"
    group_by: str = "opening"  # seed | opening | none (dialogues of one group are paired)
    min_gap: float = 0.0  # pair only dialogues whose returns differ by more than this
    pairs_per_row: int = 1
    label_noise: float = 0.0  # probability of swapping a pair's labels
    replay: list[str] = field(default_factory=list)  # replay every seed with these policy specs
    hidden: int = 0
    seed: int = 0


@dataclass
class DPOConfig(AlgoConfig):
    """DPO against the frozen initial (BC) model; see :mod:`dialogue_rl.algos.dpo`."""

    name: str = "dpo"
    beta: float = 0.1
    group_by: str = "opening"
    min_gap: float = 0.0
    pairs_per_row: int = 1
    label_noise: float = 0.0
    replay: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class PPOConfig(AlgoConfig):
    """Online PPO with a KL penalty to the BC model; see :mod:`dialogue_rl.algos.ppo`."""

    name: str = "ppo"
    kl_coef: float = 0.05
    kl_target: float = 0.0  # > 0: adaptive coefficient towards this per-episode KL
    kl_horizon: int = 10_000
    kl_limit: float = 0.0  # > 0: at this per-episode state KL, one step down the KL ends the iteration
    gamma: float = 1.0
    lam: float = 0.95
    clip_eps: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    epochs: int = 4
    rollouts: int = 64
    minibatch: int = 16
    temperature: float = 1.0
    top_k: int = 0
    max_utterance_tokens: int = 32
    whiten: bool = True
    hidden: int = 0
    detach_value: bool = False  # the value loss does not train the shared backbone
    cache_reference: bool = True  # keep the reference's log-probs at the rollout's agent states (N x vocab floats)
    seed: int = 0
    reward_model: Optional[str] = None  # a reward_model run dir: its score replaces the env reward


ALGO_SCHEMAS: dict[str, type[AlgoConfig]] = {
    "bc": BCConfig, "filtered_bc": FilteredBCConfig, "ilql": ILQLConfig, "mc": MCConfig,
    "utterance_q": UtteranceQConfig, "reward_model": RewardModelConfig,
    "dpo": DPOConfig, "ppo": PPOConfig,
}


@dataclass
class RunConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = MISSING
    algo: AlgoConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    data_root: str = "data"
    dataset_path: str | None = None
    init_from: str | None = None
    checkpoint: str | None = None  # scripts/evaluate.py: a run's checkpoints/step_* (or the run dir)
    policy: str | None = None  # scripts/evaluate.py: evaluate a scripted policy instead
    progress: bool = True
    skip_finished: bool = False  # scripts/train.py: skip a run whose output dir already has results.json


def sweep_job_name(data: str, label: str, seed: Any, checkpoint: str | None = None,
                   policy: str | None = None) -> str:
    """A sweep job's directory name (``hydra.sweep.subdir`` of ``conf/train.yaml``).

    Training jobs: ``<data>_<algo label>_s<seed>`` (how a sweep's learners find their BC run).
    ``scripts/evaluate.py`` jobs are named after what they evaluate, so that the jobs of
    ``-m checkpoint=a,b`` or ``-m policy=expert,random`` never share a directory:
    ``eval_<checkpoint path, '/' -> '_'>`` and ``<data>_scripted-<policy>``.
    """
    if checkpoint:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(checkpoint).strip("/"))
        return f"eval_{slug.lstrip('._') or 'checkpoint'}"
    if policy:
        return f"{data}_scripted-{policy}"
    return f"{data}_{label}_s{seed}"


def register_configs() -> None:
    """Register the schemas and the ``sweep_job_name`` resolver (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("sweep_job_name"):
        OmegaConf.register_new_resolver("sweep_job_name", sweep_job_name)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="env", name="env_schema", node=EnvConfig)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)
    for name, schema in ALGO_SCHEMAS.items():
        cs.store(group="algo", name=f"{name}_schema", node=schema)


#: AlgoConfig keys that are not constructor arguments of the learner
ALGO_META_KEYS = ("name", "label", "init_run", "train", "eval")


def algo_kwargs(algo_cfg: Any) -> dict[str, Any]:
    """The learner's constructor arguments: the algo config without its meta keys."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(algo_cfg, resolve=True) if not isinstance(algo_cfg, dict) else dict(algo_cfg)
    for k in ALGO_META_KEYS:
        d.pop(k, None)
    return d


def apply_algo_settings(cfg: Any) -> Any:
    """``cfg`` with ``algo.train`` merged over ``train`` and ``algo.eval`` over ``eval``
    (the learner's own settings win; the run's schema validates their keys and types)."""
    from omegaconf import OmegaConf

    algo = cfg.get("algo") or {}
    if not algo.get("train") and not algo.get("eval"):
        return cfg
    cfg = cfg.copy()
    for part in ("train", "eval"):
        if algo.get(part):
            cfg[part] = OmegaConf.merge(cfg[part], algo[part])
    return cfg

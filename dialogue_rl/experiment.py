"""One training run end to end: data, tokenizer, model, learner, training, evaluation, results.

Used by ``scripts/train.py`` (and ``scripts/evaluate.py`` for saved agents). Writes
into the run directory: ``results.json`` (DESIGN.md section 7), ``checkpoints/``,
``tokenizer/``, ``samples.jsonl``, ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import envs
from dialogue_rl import checkpoint as ckpt
from dialogue_rl import distributed
from dialogue_rl.agents import LMAgent, max_context, SamplingConfig, ScriptedAgent, banned_token_ids
from dialogue_rl.algos import LEARNERS, Learner
from dialogue_rl.config import ALGO_META_KEYS, ConfigError, EvalConfig, algo_kwargs, apply_algo_settings
from dialogue_rl.data import ensure_dataset, load_dataset
from dialogue_rl.data.generate import EVAL_SEED_OFFSET, DataConfig
from dialogue_rl.evaluation import EvalResult, evaluate, make_env, render_episodes, write_samples
from dialogue_rl.loggers import RunLogger
from dialogue_rl.models.lm import ModelConfig, build_model, resolve_device
from dialogue_rl.models.tokenizer import build_word_tokenizer, codec as make_codec, load_tokenizer
from dialogue_rl.train import TrainConfig, check_output_dir, fit

log = logging.getLogger(__name__)


def _abs(path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else base / p


def load_data(cfg: DictConfig, base: Path, dist: distributed.DistContext = distributed.SINGLE):
    """The run's dataset: ``dataset_path`` if given, else the generated recipe (cached).

    Under torchrun rank 0 generates a missing recipe while the other ranks wait.
    """
    if cfg.dataset_path:
        return load_dataset(_abs(cfg.dataset_path, base))
    try:
        data_cfg = DataConfig(**OmegaConf.to_container(cfg.data, resolve=True))
    except ValueError as e:
        raise ConfigError(f"data: {e} (conf/data/*.yaml or a data.* override)") from None
    root = _abs(cfg.data_root, base)
    if dist.is_main:
        path = ensure_dataset(data_cfg, root)
    dist.barrier()
    if not dist.is_main:
        path = ensure_dataset(data_cfg, root)  # found in the cache rank 0 just filled
    return load_dataset(path)


def build_tokenizer(cfg: DictConfig, dataset, run_dir: Path | None):
    """The run's tokenizer, saved into ``run_dir/tokenizer`` (unless ``run_dir`` is None)."""
    if cfg.model.pretrained:
        tok = load_tokenizer(cfg.model.pretrained)
    else:
        env_cls = type(make_env(cfg.env.id, dict(cfg.env.kwargs)))
        texts = (t["text"] for split in dataset.values() for turns in split["turns"] for t in turns)
        tok = build_word_tokenizer(env_cls.vocabulary(), texts)
    if run_dir is not None:
        tok.save_pretrained(str(run_dir / "tokenizer"))
    return tok


def make_learner(algo_cfg: Any, model: torch.nn.Module) -> Learner:
    name = algo_cfg.name
    if name not in LEARNERS:
        raise ConfigError(f"algo.name={name!r}: unknown learner; choose one of {sorted(LEARNERS)}")
    return LEARNERS[name](model, **algo_kwargs(algo_cfg))


def learner_agent(learner: Learner, tok, cfg: DictConfig, device: torch.device, seed: int):
    sampling = SamplingConfig(
        greedy=cfg.eval.greedy, temperature=cfg.eval.temperature, top_k=cfg.eval.top_k,
        max_utterance_tokens=cfg.env.max_utterance_tokens,
    )
    codec = make_codec(tok)
    beta = cfg.eval.get("beta")
    if beta is not None and not hasattr(learner, "beta"):
        raise ConfigError(f"eval.beta={beta}: {type(learner).__name__} has no advantage weight; "
                          "use it with ilql or mc, or drop it")
    if hasattr(learner, "make_agent"):
        extra = {"beta": beta} if beta is not None else {}
        return learner.make_agent(codec, sampling, device, seed, banned_token_ids(codec, tok), **extra)
    return LMAgent(learner.model, codec, sampling, device, seed, banned_ids=banned_token_ids(codec, tok))


def check_eval_config(cfg: DictConfig) -> None:
    """The ``eval`` settings every run needs (checked before training, not after it)."""
    for key in ("n_episodes", "batch_size"):
        if int(cfg.eval[key]) < 1:
            raise ConfigError(f"eval.{key}={cfg.eval[key]}: must be >= 1 (every run ends with an evaluation "
                              f"that results.json reports); fix: eval.{key}={getattr(EvalConfig, key)}")
    offset = int(cfg.eval.get("seed_offset", EVAL_SEED_OFFSET))
    if offset < EVAL_SEED_OFFSET:
        raise ConfigError(f"eval.seed_offset={offset}: evaluation seeds must not overlap dataset seeds; "
                          f"fix: eval.seed_offset={EVAL_SEED_OFFSET} (or any value above it)")


def run_eval(agent, cfg: DictConfig, n_episodes: int | None = None, env: Any = None) -> EvalResult:
    """Evaluate ``agent`` on ``cfg.env`` (or ``env``) over the seeds ``eval.seed_offset + i``."""
    env = cfg.env if env is None else env
    check_eval_config(cfg)
    offset = int(cfg.eval.get("seed_offset", EVAL_SEED_OFFSET))
    return evaluate(agent, env.id, dict(env.kwargs), n_episodes=n_episodes or cfg.eval.n_episodes,
                    batch_size=cfg.eval.batch_size, seed_offset=offset, progress=cfg.progress)


#: Evaluation episodes whose final picture (e.g. GuessWhich's ranked pool) goes to the dashboards.
N_RENDERED_EPISODES = 4


def log_eval_result(logger: RunLogger, res: EvalResult, step: int, env_kwargs: dict | None = None) -> None:
    """Dashboards of one evaluation: scalar metrics (with CI bounds), the dialogue table and,
    for envs that draw ``rgb_array`` frames, the final pictures of a few episodes."""
    logger.log(res.metrics(), step)
    logger.log_dialogues(res.episodes, step)
    if logger.active:
        logger.log_images(render_episodes(res.env_id, env_kwargs, res.episodes, N_RENDERED_EPISODES), step)


def check_env_id(env_id: str) -> None:
    if env_id not in envs.env_ids():
        raise ConfigError(f"env.id={env_id!r}: unknown env id (conf/env/*.yaml or an env.id override); "
                          f"fix: use one of {', '.join(envs.env_ids())}")


def run_training(cfg: DictConfig, run_dir: Path, base_dir: Path) -> dict[str, Any] | None:
    """Train ``cfg.algo`` on ``cfg.data``, evaluate on ``cfg.env``, write ``results.json``.

    Launched by ``torchrun``, every rank calls this; rank 0 returns the results, the
    others ``None``.
    """
    dist = distributed.init(cfg.device)
    try:
        return _run_training(cfg, run_dir, base_dir, dist)
    finally:
        distributed.shutdown(dist)


def _run_training(cfg: DictConfig, run_dir: Path, base_dir: Path, dist: distributed.DistContext):
    cfg = apply_algo_settings(cfg)
    own, run_dir = run_dir, Path(dist.broadcast(str(run_dir)))  # ranks may compose different ${now:}
    if own != run_dir:
        _remove_hydra_only_dir(own)
    if dist.is_main:
        check_output_dir(run_dir)
    check_env_id(cfg.env.id)
    check_eval_config(cfg)
    torch.manual_seed(cfg.seed)
    device = distributed.device_of(dist, resolve_device(cfg.device))
    plain_cfg = OmegaConf.to_container(cfg, resolve=True)
    logger = RunLogger(cfg.logger, run_dir, plain_cfg, name=run_dir.name)
    t0 = time.perf_counter()
    dataset = load_data(cfg, base_dir, dist)
    tok = build_tokenizer(cfg, dataset, run_dir if dist.is_main else None)
    codec = make_codec(tok)
    model = build_model(ModelConfig(**OmegaConf.to_container(cfg.model, resolve=True)), tok)
    init_from = _abs(cfg.init_from, base_dir) if cfg.init_from else _sweep_bc_run(cfg, run_dir)
    if init_from is not None:
        _init_from(model, init_from)
    learner = make_learner(cfg.algo, model)
    if getattr(learner, "online", False):
        return _train_online(learner, tok, codec, cfg, device, run_dir, base_dir, logger, plain_cfg, dist, t0)
    examples = learner.make_examples(dataset["train"], codec, max_context(model))
    log.info("training %s on %d %s (%s)%s", learner.name, len(examples), getattr(examples, "unit", "dialogues"),
             cfg.env.id,
             f", {dist.world_size} processes ({dist.backend})" if dist.enabled else "")
    train_cfg = TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    pad = tok.pad_token_id

    if not getattr(learner, "acts", True):
        return _train_offline_scorer(learner, examples, dataset, codec, pad, cfg, train_cfg, device,
                                     run_dir, logger, plain_cfg, dist, t0)

    log_eval = _periodic_eval(learner, tok, cfg, device, logger)
    train_stats = _fit_run(learner, examples, pad, cfg, train_cfg, device, run_dir, logger, plain_cfg, dist, log_eval)
    if not dist.is_main:
        return None
    train = {
        "steps": train_stats["steps"], "tokens_per_s": train_stats["tokens_per_s"],
        "wall_s": train_stats["wall_s"], "n_dialogues": len(examples),
        "final_metrics": train_stats["final_metrics"], "world_size": dist.world_size,
    }
    if hasattr(learner, "sampling_report"):  # per-utterance Q: what its BC candidates cost (this process)
        train["candidate_sampling"] = rep = learner.sampling_report(train_stats["wall_s"])
        log.info("candidate sampling: %d candidates, %.0f candidates/s, %.0f%% of the training time",
                 rep["candidates_sampled"], rep["candidates_per_s"], 100 * rep["sampling_fraction"])
    final = _final_eval(learner, tok, cfg, device, run_dir, logger)
    train["total_wall_s"] = time.perf_counter() - t0
    return _write_run_results(run_dir, logger, cfg, plain_cfg, final, train)


def _periodic_eval(learner: Learner, tok, cfg: DictConfig, device: torch.device, logger: RunLogger):
    """The ``eval_fn`` of a training: ``min(100, eval.n_episodes)`` episodes, logged at ``step``."""
    def log_eval(step: int) -> dict[str, Any]:
        res = run_eval(learner_agent(learner, tok, cfg, device, cfg.seed), cfg, min(100, cfg.eval.n_episodes))
        log_eval_result(logger, res, step, dict(cfg.env.kwargs))
        return res.summary()

    return log_eval


def _final_eval(learner: Learner, tok, cfg: DictConfig, device: torch.device, run_dir: Path,
                logger: RunLogger) -> dict[str, Any]:
    """The end-of-training evaluation on ``eval.n_episodes``: ``samples.jsonl``, dashboards, summary."""
    res = run_eval(learner_agent(learner, tok, cfg, device, cfg.seed), cfg)
    write_samples(run_dir / "samples.jsonl", res)
    log_eval_result(logger, res, cfg.train.steps, dict(cfg.env.kwargs))
    return res.summary()


def _write_run_results(run_dir: Path, logger: RunLogger, cfg: DictConfig, plain_cfg: dict,
                       eval_summary: dict[str, Any], train: dict[str, Any]) -> dict[str, Any]:
    """``results.json`` of a training run (DESIGN's contract), then close the logger."""
    results = {
        "env_id": cfg.env.id, "algo": algo_label(cfg), "seed": int(cfg.seed), "config": plain_cfg,
        "eval": eval_summary, "train": train,
    }
    write_results(run_dir, results)
    logger.finish()
    return results


#: ``algo.reward_model`` value of a PPO run that takes the reward model of its sweep
SWEEP_REWARD_MODEL = "sweep"


def _train_online(learner, tok, codec, cfg, device, run_dir, base_dir, logger, plain_cfg, dist, t0):
    """An online learner (``online = True``: PPO) plays its own episodes in ``cfg.env``;
    one process only. With ``algo.reward_model`` set, that run's score is the reward."""
    if dist.enabled:
        raise ConfigError(f"algo={cfg.algo.name} trains online in one process; run it without torchrun")
    reward_fn = None
    if learner.reward_model == SWEEP_REWARD_MODEL:
        found = _sweep_sibling(cfg, run_dir, "reward_model")
        if found is None:
            raise ConfigError(f"algo.reward_model={SWEEP_REWARD_MODEL}: no finished "
                              f"{run_dir.name.replace(f'_{algo_label(cfg)}_s', '_reward_model_s')} next to this run; "
                              "sweep algo=reward_model first into the same sweep directory, or pass its run dir")
        learner.reward_model = str(found)
    if getattr(learner, "reward_model", None):
        rm = load_saved_agent(learner.reward_model, base_dir, cfg.device)
        if rm.learner.name != "reward_model":
            raise ConfigError(f"algo.reward_model={learner.reward_model}: a {rm.learner.name} run, "
                              "not a reward_model run")
        if rm.tokenizer.get_vocab() != tok.get_vocab():
            raise ConfigError(f"algo.reward_model={learner.reward_model}: its tokenizer differs from this run's; "
                              "train it on the same dataset")
        rm.learner.requires_grad_(False).eval()
        reward_fn = rm.learner.score
    train_cfg = TrainConfig(**OmegaConf.to_container(cfg.train, resolve=True))
    log_eval = _periodic_eval(learner, tok, cfg, device, logger)
    log.info("training %s online on %s (reward: %s)", learner.name, cfg.env.id,
             learner.reward_model or "env")
    train_stats = learner.train_online(
        cfg.env.id, dict(cfg.env.kwargs), codec, tok.pad_token_id, train_cfg, device,
        banned_ids=banned_token_ids(codec, tok), reward_fn=reward_fn, log_fn=logger.log, eval_fn=log_eval,
        checkpoint_dir=run_dir / "checkpoints", extra={"config": plain_cfg}, rollout_batch=cfg.eval.batch_size,
        resume=cfg.resume,
    )
    final = _final_eval(learner, tok, cfg, device, run_dir, logger)
    return _write_run_results(run_dir, logger, cfg, plain_cfg, final, {
        "steps": train_stats["steps"], "tokens_per_s": 0.0, "wall_s": train_stats["wall_s"],
        "total_wall_s": time.perf_counter() - t0, "final_metrics": train_stats["final_metrics"], "world_size": 1,
    })


def _fit_run(learner, examples, pad, cfg, train_cfg, device, run_dir, logger, plain_cfg, dist, eval_fn):
    """The shared :func:`dialogue_rl.train.fit` call of a run (checkpoints under ``run_dir``)."""
    return fit(
        learner, examples, lambda ex: learner.collate(ex, pad), train_cfg, device, seed=cfg.seed,
        checkpoint_dir=run_dir / "checkpoints", resume=cfg.resume, log_fn=logger.log,
        eval_fn=eval_fn, extra={"config": plain_cfg}, progress=cfg.progress, dist=dist,
    )


def _train_offline_scorer(learner, examples, dataset, codec, pad, cfg, train_cfg, device, run_dir, logger,
                          plain_cfg, dist, t0) -> dict[str, Any] | None:
    """Training of a learner that does not act (``acts = False``: the reward model): ``fit``,
    then its held-out evaluation on the validation split (``learner.evaluate_pairs``)."""
    def held_out(step: int) -> dict[str, Any]:
        m = learner.evaluate_pairs(dataset["validation"], codec, max_context(learner.model), pad, device)
        logger.log({f"eval/{k}": v for k, v in m.items()}, step)
        return m

    train_stats = _fit_run(learner, examples, pad, cfg, train_cfg, device, run_dir, logger, plain_cfg, dist, held_out)
    if not dist.is_main:
        return None
    final = held_out(cfg.train.steps)
    log.info("%s: held-out %s", learner.name, final)
    return _write_run_results(run_dir, logger, cfg, plain_cfg, final, {
        "steps": train_stats["steps"], "tokens_per_s": train_stats["tokens_per_s"],
        "wall_s": train_stats["wall_s"], "total_wall_s": time.perf_counter() - t0,
        "n_pairs": len(examples), "final_metrics": train_stats["final_metrics"],
        "world_size": dist.world_size,
    })


def _remove_hydra_only_dir(path: Path) -> None:
    """Drop the directory Hydra made for a rank > 0 whose ``${now:}`` differed from rank 0's."""
    if path.is_dir() and all(p.name == ".hydra" or p.suffix == ".log" for p in path.iterdir()):
        shutil.rmtree(path, ignore_errors=True)


def run_scripted(cfg: DictConfig, run_dir: Path, policy: str) -> dict[str, Any]:
    """Evaluate a scripted behaviour policy as if it were a learner (reference rows)."""
    check_env_id(cfg.env.id)
    env_cls = type(make_env(cfg.env.id, dict(cfg.env.kwargs)))
    pols = env_cls.policies()
    if policy not in pols:
        raise ConfigError(f"policy={policy!r}: unknown for {cfg.env.id}; choose one of {sorted(pols)}")
    res = run_eval(ScriptedAgent(pols[policy]), cfg)
    write_samples(run_dir / "samples.jsonl", res)
    results = {
        "env_id": cfg.env.id, "algo": f"scripted:{policy}", "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg, resolve=True), "eval": res.summary(),
        "train": {"steps": 0, "tokens_per_s": 0.0, "wall_s": 0.0},
    }
    write_results(run_dir, results)
    return results


def write_results(run_dir: Path, results: dict[str, Any]) -> None:
    tmp = run_dir / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=2))
    os.replace(tmp, run_dir / "results.json")


def _sweep_bc_run(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The BC run to start from when ``init_from`` is unset and the learner needs one.

    A learner with ``needs_bc_init`` (per-utterance Q samples its candidates from a frozen
    copy of its initial model) takes the BC run of the same data and seed from its own
    sweep directory (``<data>_bc_s<seed>`` next to ``<data>_<algo>_s<seed>``, as the
    benchmark names them; BC runs first there), or the run labelled ``algo.init_run``
    (e.g. ``filtered_bc``). Anything else is a clear error.
    """
    if not getattr(LEARNERS.get(cfg.algo.name), "needs_bc_init", False):
        return None
    init_run = cfg.algo.get("init_run") or "bc"
    sibling = _sweep_sibling(cfg, run_dir, init_run)
    if sibling is not None:
        log.info("%s starts from the %s run of its sweep: %s", algo_label(cfg), init_run, sibling)
        return sibling
    raise ConfigError(f"algo={cfg.algo.name} starts from a {init_run} model: pass init_from=<{init_run} run dir "
                      f"or its checkpoints/step_*>, or sweep algo={init_run} first into the same sweep directory")


def algo_label(cfg: DictConfig) -> str:
    """The run's learner label (``algo.label``; the learner name when unset)."""
    return cfg.algo.get("label") or cfg.algo.name


def _sweep_sibling(cfg: DictConfig, run_dir: Path, label: str) -> Path | None:
    """The finished run ``<data>_<label>_s<seed>`` next to this one in its sweep directory."""
    sibling = run_dir.parent / run_dir.name.replace(f"_{algo_label(cfg)}_s", f"_{label}_s")
    return sibling if sibling != run_dir and (sibling / "results.json").exists() else None


def _init_from(model: torch.nn.Module, path: Path) -> None:
    """Load the LM weights of a checkpoint (e.g. a BC run's) into ``model`` before the learner is built."""
    from safetensors.torch import load_file

    if path.is_dir() and not (path / ckpt.STATE_FILE).exists():
        found = ckpt.latest(path) or ckpt.latest(path / "checkpoints")
        if found is None:
            raise ckpt.CheckpointError(f"{path}: no valid checkpoint inside; pass a checkpoints/step_* directory")
        path = found
    ckpt.verify(path)
    weights = load_file(str(path / ckpt.MODEL_FILE))
    lm = {k[len("model."):]: v for k, v in weights.items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(lm, strict=False)
    # tied weights (GPT-2's wte / lm_head) are stored once: a missing key sharing storage
    # with a loaded one is not missing
    sd = model.state_dict()
    loaded = {sd[k].data_ptr() for k in lm if k in sd}
    missing = [m for m in missing if sd[m].data_ptr() not in loaded]
    if missing or unexpected:
        raise ckpt.CheckpointError(f"{path}: model weights do not fit (missing {missing[:3]}, unexpected {unexpected[:3]})")
    log.info("initialised the LM from %s", path)


@dataclass
class SavedAgent:
    """A trained learner loaded from a checkpoint, with the run's tokenizer and config."""

    learner: Learner
    tokenizer: Any
    config: DictConfig  # the training run's config, as saved in the checkpoint
    path: Path  # the checkpoints/step_* directory actually loaded
    step: int
    device: torch.device

    def agent(self, seed: int, env: Any = None, eval_cfg: Any = None):
        """The acting agent (greedy/sampling settings from ``eval_cfg``, else the run's own)."""
        over: dict[str, Any] = {}
        if env is not None:
            over["env"] = env
        if eval_cfg is not None:
            over["eval"] = eval_cfg
        cfg = OmegaConf.merge(self.config, over) if over else self.config
        return learner_agent(self.learner, self.tokenizer, cfg, self.device, seed)


def load_saved_agent(checkpoint: str | Path, base_dir: Path, device: str = "auto",
                     algo_overrides: dict[str, Any] | None = None) -> SavedAgent:
    """Load a checkpoint written by :func:`run_training`: a run directory (its newest valid
    checkpoint) or a ``checkpoints/step_*`` directory, with the run's tokenizer and config.
    ``algo_overrides`` replace keys of the saved algo config before the learner is built
    (acting knobs such as per-utterance Q's ``act_candidates``; each must be a key it has)."""
    path = _abs(str(checkpoint), base_dir)
    if not path.exists():
        raise ckpt.CheckpointError(
            f"{path}: checkpoint not found; fix: pass checkpoint=<run dir or its checkpoints/step_*> "
            "(relative to the launch directory)")
    if not (path / ckpt.STATE_FILE).exists():
        found = ckpt.latest(path / "checkpoints") or ckpt.latest(path)
        if found is None:
            raise ckpt.CheckpointError(f"{path}: no valid checkpoint inside (see the warnings above); "
                                       "fix: pass a run directory with checkpoints/step_*")
        path = found
    state = ckpt.verify(path)
    saved = OmegaConf.create(state["extra"]["config"])
    if algo_overrides:
        unknown = sorted(set(algo_overrides) - set(saved.algo))
        if unknown:
            raise ConfigError(f"algo.{unknown[0]}: not a key of the checkpoint's algo {saved.algo.name!r}; "
                              f"fix: use one of {', '.join(k for k in saved.algo if k not in ALGO_META_KEYS)}")
        saved.algo = OmegaConf.merge(saved.algo, algo_overrides)
    tok_dir = path.parent.parent / "tokenizer"
    if not tok_dir.is_dir():
        raise ckpt.CheckpointError(f"{tok_dir}: tokenizer of the run is missing; fix: pass a checkpoint "
                                   "inside the run directory that trained it")
    tok = load_tokenizer(tok_dir)
    model = build_model(ModelConfig(**OmegaConf.to_container(saved.model, resolve=True)), tok)
    learner = make_learner(saved.algo, model)
    ckpt.load(path, learner)
    dev = resolve_device(device)
    learner.to(dev)
    return SavedAgent(learner, tok, saved, path, int(state["step"]), dev)


def algo_overrides_on_command_line(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``algo.<key>=...`` task overrides as ``{key: value}`` (values as composed in ``cfg``),
    for evaluating a checkpoint with other acting settings; they need ``algo=<its learner>``
    on the same command line (the default algo's schema would reject another learner's keys)."""
    top = [k.split(".")[1] for k in _override_keys(overrides)
           if k.startswith("algo.") and k.count(".") == 1]
    algo = OmegaConf.to_container(cfg.algo, resolve=True) if top else {}
    return {k: algo[k] for k in top}


def _override_keys(overrides: Iterable[str]) -> list[str]:
    """The config keys of Hydra task overrides (``+a.b=1`` -> ``a.b``, ``~a`` -> ``a``)."""
    return [o.split("=", 1)[0].lstrip("+~") for o in overrides]


def env_set_on_command_line(overrides: Sequence[str]) -> bool:
    """Whether Hydra task overrides choose or change the env (``env=...``, ``env.x=...``,
    ``+env.kwargs.y=...``)."""
    return any(k == "env" or k.startswith("env.") for k in _override_keys(overrides))


def run_saved_agent(cfg: DictConfig, run_dir: Path, base_dir: Path, env_from_cli: bool = False,
                    algo_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint written by :func:`run_training` (its own config and tokenizer)
    on the env it was trained on (its saved env config, kwargs included), or on ``cfg.env``
    when ``env_from_cli`` (the command line set the env: :func:`env_set_on_command_line`), with
    ``algo_overrides`` applied to its algo config (:func:`load_saved_agent`)."""
    loaded = load_saved_agent(cfg.checkpoint, base_dir, cfg.device, algo_overrides)
    saved, path = loaded.config, loaded.path
    env_cfg = cfg.env if env_from_cli else saved.env
    check_env_id(env_cfg.id)
    res = run_eval(loaded.agent(cfg.seed, env=env_cfg, eval_cfg=cfg.eval), cfg, env=env_cfg)
    write_samples(run_dir / "samples.jsonl", res)
    results = {
        "env_id": env_cfg.id, "algo": saved.algo.name, "seed": int(saved.seed), "checkpoint": str(path),
        "config": OmegaConf.to_container(saved, resolve=True), "eval": res.summary(),
        "train": {"steps": loaded.step, "tokens_per_s": 0.0, "wall_s": 0.0},
    }
    write_results(run_dir, results)
    return results

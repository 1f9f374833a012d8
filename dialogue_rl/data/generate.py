"""Generating logged-dialogue datasets from scripted behaviour policies.

A :class:`DataConfig` (the ``conf/data/*.yaml`` recipes) fixes everything: the env and
its kwargs, the policy mixture (spec -> weight, see :mod:`dialogue_rl.data.specs`), the
split sizes and a seed. :func:`generate` plays the episodes with
:func:`envs.core.play_episode`; the output depends only on the config (never on
``num_workers``).

Seeds. Each split owns a region of reset seeds below :data:`EVAL_SEED_OFFSET`:
``train`` ``[0, 5e8)``, ``validation`` ``[5e8, 1e9)``. Row ``i`` of a split gets
``region_start + (offset + i) % REGION_SIZE`` with ``offset`` a hash of
``(cfg.seed, split)``: consecutive, distinct within a split, disjoint across splits,
and never equal to an evaluation seed (evaluation uses ``EVAL_SEED_OFFSET + i``).

Policies. The rows of a split are assigned to the mixture's specs in exact proportion
to the weights (largest-remainder rounding over specs in sorted order), then shuffled
with a generator seeded by ``(cfg.seed, split)``. The ``policy`` column holds the spec.

Rows carry the optional ``terminated`` column (see :mod:`dialogue_rl.data.schema`).

Rewards are rounded to float32 when rows are built, and ``return`` is the float32 of
the sum of those rewards, so generated rows equal the rows read back from parquet.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

import envs  # noqa: F401  (registers the dialogue_rl/* ids)
from dialogue_rl.data.io import load_metadata, save_dataset, verify_files
from dialogue_rl.data.schema import SCHEMA_VERSION, DatasetError
from dialogue_rl.data.specs import parse_spec, resolve_policy
from envs.core import DialogueEnv, Episode, PolicyFactory, policy_rng

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump when the rows produced for a given config change (part of :func:`dataset_key`)."""

EVAL_SEED_OFFSET = 1_000_000_000
"""Every dataset seed is below this; evaluation episodes use seeds from here up."""

SPLITS: tuple[str, ...] = ("train", "validation")
REGION_SIZE = EVAL_SEED_OFFSET // len(SPLITS)
_CHUNK_ROWS = 250


@dataclass(kw_only=True)
class DataConfig:
    """A dataset recipe (``conf/data/<name>.yaml``; also the Hydra schema of group ``data``).

    Attributes:
        env_id: registered env id (``dialogue_rl/GuessWhich-v0``); a ``module:`` prefix
            as in ``gymnasium.make`` is allowed and dropped from the rows.
        env_kwargs: constructor overrides passed to ``gymnasium.make``.
        mixture: policy spec -> weight (weights >= 0, positive sum; need not sum to 1).
        n_train: rows of the ``train`` split (>= 1).
        n_validation: rows of the ``validation`` split (>= 1).
        seed: selects the seeds and the policy assignment.
        num_workers: processes used to play episodes (does not change the output).
    """

    env_id: str
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    mixture: dict[str, float]
    n_train: int
    n_validation: int
    seed: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"DataConfig.env_id={self.env_id!r}: expected a registered env id")
        if not self.mixture:
            raise ValueError("DataConfig.mixture is empty: give at least one 'policy spec: weight'")
        for spec, w in self.mixture.items():
            parse_spec(spec)  # syntax only; names are checked against the env in generate()
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w) or w < 0:
                raise ValueError(f"DataConfig.mixture[{spec!r}]={w!r}: weights must be finite and >= 0")
        if sum(float(w) for w in self.mixture.values()) <= 0:
            raise ValueError("DataConfig.mixture: the weights sum to 0")
        for name in ("n_train", "n_validation"):
            n = getattr(self, name)
            if not isinstance(n, int) or not 1 <= n <= REGION_SIZE:
                raise ValueError(f"DataConfig.{name}={n!r}: expected an integer in [1, {REGION_SIZE}]")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"DataConfig.seed={self.seed!r}: expected an integer >= 0")
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(f"DataConfig.num_workers={self.num_workers!r}: expected an integer >= 1")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataConfig:
        """Build from a plain mapping (e.g. a loaded yaml); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"DataConfig: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in d.items()})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> DataConfig:
        """Load a recipe file such as ``conf/data/guess_which.yaml``."""
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping")
        raw.pop("defaults", None)
        return cls.from_dict(raw)

    @property
    def splits(self) -> dict[str, int]:
        return {"train": self.n_train, "validation": self.n_validation}


def config_dict(cfg: DataConfig) -> dict[str, Any]:
    """The fields that determine the data (``num_workers`` excluded), normalised for hashing."""
    return {
        "env_id": cfg.env_id,
        "env_kwargs": json.loads(json.dumps(dict(cfg.env_kwargs), sort_keys=True)),
        "mixture": {str(k): float(v) for k, v in sorted(cfg.mixture.items())},
        "n_train": int(cfg.n_train),
        "n_validation": int(cfg.n_validation),
        "seed": int(cfg.seed),
    }


def dataset_key(cfg: DataConfig) -> str:
    """Stable 16-hex-digit hash of :func:`config_dict` and the generator/schema versions."""
    payload = {
        "config": config_dict(cfg), "generator_version": GENERATOR_VERSION, "schema_version": SCHEMA_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def registered_id(env_id: str) -> str:
    """``"envs:dialogue_rl/X-v0"`` -> ``"dialogue_rl/X-v0"`` (the id stored in rows)."""
    return env_id.split(":", 1)[1] if ":" in env_id else env_id


def make_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> DialogueEnv:
    """The unwrapped :class:`DialogueEnv` of a registered id (checker wrappers dropped)."""
    try:
        env = gym.make(env_id, **dict(env_kwargs or {})).unwrapped
    except gym.error.Error as e:
        raise ValueError(f"cannot make env {env_id!r}: {e}") from None
    if not isinstance(env, DialogueEnv):
        raise ValueError(f"env {env_id!r} is a {type(env).__name__}, not an envs.core.DialogueEnv")
    return env


def _hash_int(*parts: Any) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def split_seeds(cfg: DataConfig, split: str) -> np.ndarray:
    """Reset seeds (int64) of a split's rows, in row order (see the module docstring)."""
    region = SPLITS.index(split)
    n = cfg.splits[split]
    offset = _hash_int("seeds", cfg.seed, split) % REGION_SIZE
    return (region * REGION_SIZE + (offset + np.arange(n, dtype=np.int64)) % REGION_SIZE).astype(np.int64)


def split_policies(cfg: DataConfig, split: str) -> list[str]:
    """The policy spec of each row of a split (exact proportions, shuffled)."""
    n = cfg.splits[split]
    specs = sorted(cfg.mixture)
    w = np.array([float(cfg.mixture[s]) for s in specs])
    quota = w / w.sum() * n
    counts = np.floor(quota).astype(np.int64)
    remainder = quota - counts
    for i in sorted(range(len(specs)), key=lambda i: (-remainder[i], i))[: n - int(counts.sum())]:
        counts[i] += 1
    assignment = np.repeat(np.arange(len(specs)), counts)
    rng = np.random.default_rng([cfg.seed, _hash_int("policies", split) % (1 << 32)])
    return [specs[i] for i in rng.permutation(assignment)]


def play_logged_episode(env: DialogueEnv, factory: PolicyFactory, seed: int | None) -> tuple[Episode, bool]:
    """:func:`envs.core.play_episode` plus whether the episode *terminated* (vs truncated).

    Same loop, same randomness (``policy_rng(seed)``), hence the same episode; the
    extra flag feeds the optional ``terminated`` column. (Once ``Episode`` carries the
    flag, this can call ``play_episode`` directly.)
    """
    _, info = env.reset(seed=seed)
    policy = factory(env, policy_rng(seed))
    ret, term, done = 0.0, False, False
    while not done:
        _, r, term, trunc, info = env.step(policy.act(info["turns"]))
        ret += r
        done = term or trunc
    episode = Episode(seed, info["turns"], ret, bool(info["success"]), int(info["agent_turns"]))
    return episode, bool(term)


def _f32(x: float) -> float:
    return float(np.float32(x))


def _play_chunk(args: tuple[str, dict[str, Any], list[int], list[str]]) -> list[dict[str, Any]]:
    """Play episodes for (env_id, env_kwargs, seeds, specs); worker entry point."""
    env_id, env_kwargs, seeds, specs = args
    env = make_env(env_id, env_kwargs)
    factories: dict[str, PolicyFactory] = {}
    row_env_id = registered_id(env_id)
    rows = []
    for seed, spec in zip(seeds, specs):
        if spec not in factories:
            factories[spec] = resolve_policy(env, spec)
        ep, terminated = play_logged_episode(env, factories[spec], int(seed))
        turns = [{"speaker": t.speaker, "text": t.text, "reward": _f32(t.reward)} for t in ep.turns]
        rows.append(
            {
                "env_id": row_env_id,
                "seed": int(seed),
                "policy": spec,
                "turns": turns,
                "return": _f32(sum(t["reward"] for t in turns)),
                "length": int(ep.agent_turns),
                "success": bool(ep.success),
                "terminated": terminated,
            }
        )
    env.close()
    return rows


def generate(cfg: DataConfig) -> dict[str, list[dict[str, Any]]]:
    """Play every row of every split; returns split -> rows in the schema (+ ``terminated``).

    Deterministic in ``cfg`` (``num_workers`` only changes the speed). Shows a tqdm bar
    on a terminal.

    Raises:
        ValueError: unknown env id or a bad policy spec (listing the valid names).
    """
    env = make_env(cfg.env_id, cfg.env_kwargs)
    for spec in cfg.mixture:
        resolve_policy(env, spec)  # fail fast, before any worker starts
    env.close()
    tasks: list[tuple[str, int, tuple[str, dict[str, Any], list[int], list[str]]]] = []
    for split in SPLITS:
        seeds, specs = split_seeds(cfg, split).tolist(), split_policies(cfg, split)
        for lo in range(0, len(seeds), _CHUNK_ROWS):
            hi = lo + _CHUNK_ROWS
            tasks.append((split, hi - lo, (cfg.env_id, dict(cfg.env_kwargs), seeds[lo:hi], specs[lo:hi])))
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    total = cfg.n_train + cfg.n_validation
    t0 = time.perf_counter()
    with tqdm(total=total, desc=f"generate {registered_id(cfg.env_id)}", unit="dlg", disable=None) as bar:
        if cfg.num_workers == 1:
            results = map(_play_chunk, (t[2] for t in tasks))
            for (split, _, _), rows in zip(tasks, results):
                out[split].extend(rows)
                bar.update(len(rows))
        else:
            with multiprocessing.get_context().Pool(min(cfg.num_workers, len(tasks))) as pool:
                for (split, _, _), rows in zip(tasks, pool.imap(_play_chunk, (t[2] for t in tasks))):
                    out[split].extend(rows)
                    bar.update(len(rows))
    log.info(
        "generated %d dialogues of %s in %.1fs (%s)",
        total, registered_id(cfg.env_id), time.perf_counter() - t0,
        ", ".join(f"{s}: {len(r)}" for s, r in out.items()),
    )
    return out


def dataset_metadata(cfg: DataConfig) -> dict[str, Any]:
    """The caller metadata :func:`generate_and_save` records next to the splits."""
    env = make_env(cfg.env_id, cfg.env_kwargs)
    max_turns = int(env.max_turns)
    env.close()
    seeds = {}
    for split, n in cfg.splits.items():
        lo = SPLITS.index(split) * REGION_SIZE
        seeds[split] = {"first": int(split_seeds(cfg, split)[0]), "count": n, "region": [lo, lo + REGION_SIZE]}
    return {
        "env_id": registered_id(cfg.env_id),
        "env_kwargs": config_dict(cfg)["env_kwargs"],
        "mixture": config_dict(cfg)["mixture"],
        "max_turns": max_turns,
        "seeds": seeds,
        "eval_seed_offset": EVAL_SEED_OFFSET,
        "config": config_dict(cfg),
        "dataset_key": dataset_key(cfg),
        "generator_version": GENERATOR_VERSION,
    }


def generate_and_save(cfg: DataConfig, out_dir: str | os.PathLike) -> Path:
    """:func:`generate` then :func:`~dialogue_rl.data.io.save_dataset` into ``out_dir``."""
    meta = dataset_metadata(cfg)
    t0 = time.perf_counter()
    splits = generate(cfg)
    meta["generation_s"] = round(time.perf_counter() - t0, 3)
    return save_dataset(out_dir, splits, meta)


def dataset_dir(cfg: DataConfig, root: str | os.PathLike) -> Path:
    """``<root>/<env-name>-<key>``, e.g. ``data/GuessWhich-v0-1a2b3c4d5e6f7a8b``."""
    name = registered_id(cfg.env_id).rsplit("/", 1)[-1]
    return Path(root) / f"{name}-{dataset_key(cfg)}"


def ensure_dataset(cfg: DataConfig, root: str | os.PathLike) -> Path:
    """The dataset directory for ``cfg`` under ``root``, generated only when needed.

    Reuses ``<root>/<env-name>-<key>/`` when its ``metadata.json`` records the same key
    and config and every split file matches its checksum; otherwise (absent, stale,
    corrupt) generates and saves it there. Load it with
    :func:`~dialogue_rl.data.io.load_dataset`.
    """
    path = dataset_dir(cfg, root)
    if (path / "metadata.json").exists():
        try:
            meta = verify_files(path, load_metadata(path))
            if meta.get("dataset_key") == dataset_key(cfg) and meta.get("config") == config_dict(cfg):
                log.info("reusing dataset %s", path)
                return path
            log.warning("dataset %s has other metadata; regenerating", path)
        except DatasetError as e:
            log.warning("dataset %s is not usable (%s); regenerating", path, e)
    return generate_and_save(cfg, path)

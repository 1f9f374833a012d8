"""Evaluation: agents against environments on fixed seeds, normalised scores, bootstrap CIs.

Evaluation seeds start at ``EVAL_SEED_OFFSET`` (1e9); dataset seeds are all below it,
so an agent is never evaluated on an episode it saw in its data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

import envs
from dialogue_rl.agents import Agent
from dialogue_rl.data.generate import EVAL_SEED_OFFSET
from envs.core import AGENT, DialogueEnv, Turn, render_transcript

log = logging.getLogger(__name__)



def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, so reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    if len(x) == 1:
        return (float(x[0]), float(x[0]))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    a = (1 - level) / 2
    return (float(np.quantile(means, a)), float(np.quantile(means, 1 - a)))


@dataclass
class EvalResult:
    env_id: str
    mean_return: float
    ci95: tuple[float, float]
    normalized_score: float
    normalized_ci95: tuple[float, float]
    success_rate: float
    mean_length: float
    n_episodes: int
    episodes: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("episodes")
        d.pop("env_id")
        d["ci95"] = list(self.ci95)
        d["normalized_ci95"] = list(self.normalized_ci95)
        return d

    def metrics(self, prefix: str = "eval/") -> dict[str, float]:
        """Scalar metrics for a logger: the summary's scalars plus the CI bounds as
        ``ci95_lo``/``ci95_hi`` and ``normalized_ci95_lo``/``normalized_ci95_hi``."""
        out = {f"{prefix}{k}": v for k, v in self.summary().items() if not isinstance(v, list)}
        for name in ("ci95", "normalized_ci95"):
            lo, hi = getattr(self, name)
            out[f"{prefix}{name}_lo"], out[f"{prefix}{name}_hi"] = float(lo), float(hi)
        return out


def make_env(env_id: str, env_kwargs: dict | None = None) -> DialogueEnv:
    return gym.make(env_id, **(env_kwargs or {})).unwrapped


@dataclass
class PlayedEpisode:
    """One episode played by :func:`play_batch`: its seed, return, whether it terminated
    (not truncated) and the env's final ``info`` (``turns``, ``success``)."""

    seed: int
    ret: float
    terminated: bool
    info: dict[str, Any]


def play_batch(agent: Agent, env_id: str, env_kwargs: dict | None, seeds: Sequence[int]) -> list[PlayedEpisode]:
    """Play one episode per seed, lock-stepped: every active env gets the agent's batched
    utterances each turn until it terminates or is truncated."""
    batch_envs = [make_env(env_id, env_kwargs) for _ in seeds]
    infos = [e.reset(seed=int(s))[1] for e, s in zip(batch_envs, seeds)]
    agent.reset(batch_envs, seeds)
    returns, terminated = [0.0] * len(seeds), [False] * len(seeds)
    active = list(range(len(seeds)))
    while active:
        utterances = agent.act([infos[i]["turns"] for i in active], active)
        still = []
        for i, u in zip(active, utterances):
            _, r, term, trunc, infos[i] = batch_envs[i].step(u)
            returns[i] += float(r)
            terminated[i] = bool(term)
            if not (term or trunc):
                still.append(i)
        active = still
    return [PlayedEpisode(int(s), returns[i], terminated[i], infos[i]) for i, s in enumerate(seeds)]


def evaluate(
    agent: Agent,
    env_id: str,
    env_kwargs: dict | None = None,
    n_episodes: int = 100,
    batch_size: int = 32,
    seed_offset: int = EVAL_SEED_OFFSET,
    progress: bool = True,
) -> EvalResult:
    """Play ``n_episodes`` on seeds ``seed_offset + i`` in batches of lock-stepped envs.

    The normalized score always uses the registered id's reference returns, which were
    measured with the id's default constructor arguments: with other ``env_kwargs`` (a
    shorter turn limit, say) it is logged as not comparable.
    """
    if any(k != "render_mode" for k in (env_kwargs or {})):
        log.warning(
            "normalized score of %s uses the reference returns of its default settings; "
            "env kwargs %s change the task, so it is not comparable", env_id, dict(env_kwargs or {}))
    episodes: list[dict[str, Any]] = []
    # disable=None: quiet when stderr is not a terminal
    bar = tqdm(total=n_episodes, desc=f"eval {env_id}", unit="ep", disable=None if progress else True,
               leave=False)
    for start in range(0, n_episodes, batch_size):
        seeds = list(range(seed_offset + start, seed_offset + min(n_episodes, start + batch_size)))
        for ep in play_batch(agent, env_id, env_kwargs, seeds):
            turns: list[Turn] = ep.info["turns"]
            episodes.append({
                "env_id": env_id, "seed": ep.seed, "return": ep.ret, "success": bool(ep.info["success"]),
                "length": sum(1 for t in turns if t.speaker == AGENT),
                "transcript": render_transcript(turns), "turns": [t.to_dict() for t in turns],
            })
        bar.update(len(seeds))
    bar.close()
    rets = [e["return"] for e in episodes]
    ref = envs.reference_returns(env_id)
    lo, hi = bootstrap_ci(rets)
    mean = float(np.mean(rets))
    return EvalResult(
        env_id=env_id, mean_return=mean, ci95=(lo, hi), normalized_score=ref.normalize(mean),
        normalized_ci95=(ref.normalize(lo), ref.normalize(hi)),
        success_rate=float(np.mean([e["success"] for e in episodes])),
        mean_length=float(np.mean([e["length"] for e in episodes])), n_episodes=len(episodes),
        episodes=episodes,
    )


def render_episodes(
    env_id: str, env_kwargs: dict | None, episodes: Sequence[dict[str, Any]], limit: int = 4
) -> list[tuple[dict[str, Any], np.ndarray]]:
    """Final ``rgb_array`` frames of the first ``limit`` evaluated episodes, redrawn by replay.

    Each episode is replayed on a fresh env with ``render_mode="rgb_array"``, reset with
    its seed and stepped with its logged agent utterances (the same seed and actions give
    the same episode), then rendered once (for GuessWhich: the pool ranked by the final
    belief). Returns ``(episode, frame)`` pairs; empty for envs without ``rgb_array``.
    """
    if limit <= 0 or not episodes:
        return []
    probe = make_env(env_id, env_kwargs)
    if "rgb_array" not in (probe.metadata.get("render_modes") or ()):
        return []
    out: list[tuple[dict[str, Any], np.ndarray]] = []
    for ep in list(episodes)[:limit]:
        env = make_env(env_id, {**(env_kwargs or {}), "render_mode": "rgb_array"})
        env.reset(seed=ep["seed"])
        for t in ep["turns"]:
            turn = t if isinstance(t, Turn) else Turn.from_dict(t)
            if turn.speaker == AGENT:
                _, _, term, trunc, _ = env.step(turn.text)
                if term or trunc:
                    break
        frame = env.render()
        if isinstance(frame, np.ndarray):
            out.append((ep, frame))
        env.close()
    return out


def write_samples(path: str | Path, result: EvalResult) -> None:
    """One JSON line per evaluation dialogue."""
    with open(path, "w") as f:
        for e in result.episodes:
            f.write(json.dumps(e) + "\n")

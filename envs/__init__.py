"""Dialogue environments of dialogue-rl (gymnasium, numpy and stdlib only; never torch).

Importing this package registers every environment id under the ``dialogue_rl``
namespace, so ``gymnasium.make("envs:dialogue_rl/GuessWhich-v0")`` works in a fresh
interpreter. Each id carries reference returns for normalised scores
(:func:`reference_returns`, :func:`normalized_score`).
"""

from __future__ import annotations

from types import MappingProxyType

from gymnasium.envs.registration import register, registry

from envs.core import AGENT, CHARSET, ENV, DialogueEnv, ReferenceReturns, Reply, Turn, sanitize
from envs.token_view import TokenLevelEnv, WordTokenizer

NAMESPACE = "dialogue_rl"

# (id, entry point, constructor kwargs, reference returns)
_SPECS: tuple[tuple[str, str, dict, ReferenceReturns], ...] = ()

#: Registered env id -> reference returns (read-only).
REFERENCE_RETURNS: MappingProxyType = MappingProxyType({s[0]: s[3] for s in _SPECS})

for _id, _entry, _kwargs, _ref in _SPECS:
    if _id not in registry:
        register(id=_id, entry_point=_entry, kwargs=_kwargs, disable_env_checker=False)


def env_ids() -> list[str]:
    """Every registered dialogue-rl env id."""
    return [s[0] for s in _SPECS]


def reference_returns(env_id: str) -> ReferenceReturns:
    """Reference returns (``random``, ``expert``) of a registered env id."""
    try:
        return REFERENCE_RETURNS[env_id]
    except KeyError:
        raise KeyError(f"unknown env id {env_id!r}; registered: {', '.join(env_ids())}") from None


def normalized_score(env_id: str, mean_return: float) -> float:
    """``100 * (R - R_random) / (R_expert - R_random)`` (D4RL convention)."""
    return reference_returns(env_id).normalize(mean_return)


__all__ = [
    "AGENT", "CHARSET", "ENV", "DialogueEnv", "NAMESPACE", "REFERENCE_RETURNS", "ReferenceReturns",
    "Reply", "TokenLevelEnv", "Turn", "WordTokenizer", "env_ids", "normalized_score",
    "reference_returns", "sanitize",
]

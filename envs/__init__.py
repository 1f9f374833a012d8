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
from envs.textworld_games import textworld_specs
from envs.token_view import TokenLevelEnv, WordTokenizer

NAMESPACE = "dialogue_rl"

# (id, entry point, constructor kwargs, reference returns)
_SPECS: tuple[tuple[str, str, dict, ReferenceReturns], ...] = (
    # visual-dialog guessing (envs/guess_which.py); equal to envs.guess_which.REFERENCE_RETURNS
    # (random and oracle means over seeds 0..999), recomputed by tests/test_guess_which.py
    ("dialogue_rl/GuessWhich-v0", "envs.guess_which:GuessWhichEnv", {}, ReferenceReturns(random=0.1135, expert=0.2056)),
    # negotiation (envs/negotiation.py, envs/bargaining.py); constants recomputed by
    # tests/test_negotiation.py (seeds 0..1999)
    ("dialogue_rl/DealOrNoDeal-v0", "envs.negotiation:DealOrNoDealEnv", {}, ReferenceReturns(random=0.766, expert=7.785)),
    ("dialogue_rl/DealOrNoDealGreedy-v0", "envs.negotiation:DealOrNoDealEnv", {"partner_type": "greedy"}, ReferenceReturns(random=0.240, expert=6.173)),
    ("dialogue_rl/DealOrNoDealFair-v0", "envs.negotiation:DealOrNoDealEnv", {"partner_type": "fair"}, ReferenceReturns(random=0.644, expert=8.028)),
    ("dialogue_rl/DealOrNoDealAccommodating-v0", "envs.negotiation:DealOrNoDealEnv", {"partner_type": "accommodating"}, ReferenceReturns(random=1.484, expert=9.256)),
    ("dialogue_rl/Bargaining-v0", "envs.bargaining:BargainingEnv", {}, ReferenceReturns(random=-13.680, expert=-2.253)),
    ("dialogue_rl/BargainingBuyer-v0", "envs.bargaining:BargainingEnv", {"role": "buyer"}, ReferenceReturns(random=-13.922, expert=-2.261)),
    # text games (envs/twenty_questions.py, wordle.py, maze.py); constants recomputed by
    # tests/test_text_games.py (means over seeds 0..999; maze experts exact: -252/41, -294/41)
    ("dialogue_rl/TwentyQuestions-v0", "envs.twenty_questions:TwentyQuestionsEnv", {}, ReferenceReturns(random=-19.09, expert=-7.29)),
    ("dialogue_rl/Wordle-v0", "envs.wordle:WordleEnv", {}, ReferenceReturns(random=-5.98, expert=-2.0)),
    ("dialogue_rl/MazeFO-v0", "envs.maze:MazeFOEnv", {}, ReferenceReturns(random=-84.18, expert=-6.15)),
    ("dialogue_rl/MazePO-v0", "envs.maze:MazePOEnv", {}, ReferenceReturns(random=-84.18, expert=-6.15)),
) + textworld_specs()  # TextWorld ids (envs/textworld_games.py) only when the extra is installed

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

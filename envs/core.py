"""Core of every dialogue environment: turns, transcripts, text spaces, sanitisation.

Every environment of the lab is a :class:`DialogueEnv`. A subclass implements three
hooks and gets the whole per-utterance contract of DESIGN.md section 3 for free:

* :meth:`DialogueEnv._new_episode` samples the hidden state from ``self.np_random``
  and returns the environment's opening turn(s);
* :meth:`DialogueEnv._respond` answers one (already sanitised) agent utterance with a
  :class:`Reply`, or ``None`` when the partner cannot understand it;
* :meth:`DialogueEnv.hidden_state` returns the episode's private parameters (a target,
  a pool, a partner's values) as plain comparable data. No utterance may change them.

The base class owns sanitisation, the invalid-utterance path (an in-game reply, the
env's documented penalty, the hidden state and dialogue state untouched), the turn
limit, the two observation modes (``history``, ``last``), ``info["turns"]``,
``render_mode="ansi"`` and a replay-based :meth:`DialogueEnv.reward_of`.

This module imports only the standard library, numpy and gymnasium.
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Callable, ClassVar, Protocol

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: The characters an utterance or an observation may contain: lower-case letters,
#: digits, space, basic punctuation and newline (newline only separates turns).
CHARSET: str = string.ascii_lowercase + string.digits + " .,?!'-:;$%/()=\n"
_NOT_CHARSET = re.compile("[^" + re.escape(CHARSET.replace("\n", "")) + "]+")
_WORD_CHARS = "[" + re.escape(CHARSET.replace("\n", "").replace(" ", "")) + "]+"
#: Text that :func:`sanitize` returns unchanged (up to its length limit): charset-only
#: words separated by single spaces.
_SANITIZED = re.compile(f"{_WORD_CHARS}(?: {_WORD_CHARS})*")

AGENT = "agent"
"""Speaker tag of the agent (the learner's side)."""
ENV = "env"
"""Speaker tag of the environment: task text and the scripted partner's replies."""
SPEAKERS: tuple[str, str] = (AGENT, ENV)

NOT_UNDERSTOOD = "i do not understand."
"""The in-game reply to an utterance the partner cannot parse."""

MAX_UTTERANCE_CHARS = 256
"""Agent utterances are cut to this many characters after sanitisation."""
MAX_OBSERVATION_CHARS = 1 << 16
"""Upper bound of the text observation space; older turns are dropped beyond it."""

_WORD_RE = re.compile(r"[a-z]+|[0-9]")


@dataclass(frozen=True)
class Turn:
    """One line of a dialogue: who spoke, what was said, the reward it earned.

    Environment turns carry reward 0; the reward of an agent utterance sits on the
    agent's turn (that is the dataset schema of DESIGN.md section 4).
    """

    speaker: str
    text: str
    reward: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Turn:
        return cls(speaker=str(d["speaker"]), text=str(d["text"]), reward=float(d.get("reward", 0.0)))


@dataclass(frozen=True)
class Reply:
    """The partner's answer to a valid agent utterance."""

    text: str
    reward: float = 0.0
    terminated: bool = False
    success: bool = False


def sanitize(text: Any, max_chars: int = MAX_UTTERANCE_CHARS) -> str:
    """Map any input to a legal utterance: lower-case, charset only, one line, bounded.

    Characters outside :data:`CHARSET` (and newlines) become spaces, runs of
    whitespace collapse to one space, and the result is cut to ``max_chars``.
    Non-string input is converted with ``str``; ``None`` gives the empty string.
    """
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    if len(text) <= max_chars and _SANITIZED.fullmatch(text):
        return text  # already sanitised (the common case: scripted and env utterances)
    # Cut before the regex so 100k-character inputs stay cheap.
    cleaned = _NOT_CHARSET.sub(" ", text[: 4 * max_chars].lower())
    return " ".join(cleaned.split())[:max_chars].strip()


def words(text: str) -> list[str]:
    """Split sanitised text into words: runs of letters and single digits."""
    return _WORD_RE.findall(text.lower())


def numbers(text: str) -> list[int]:
    """All integers written with digits in ``text`` (``"2 hats and 10 balls" -> [2, 10]``)."""
    return [int(m) for m in re.findall(r"[0-9]+", text)]


def render_turn(turn: Turn) -> str:
    """One transcript line: ``"<speaker>: <text>"``."""
    return f"{turn.speaker}: {turn.text}"


def render_transcript(turns: Sequence[Turn]) -> str:
    """The history state: one turn a line, each prefixed with its speaker tag."""
    return "\n".join(render_turn(t) for t in turns)


def text_space(max_length: int) -> spaces.Text:
    """A :class:`gymnasium.spaces.Text` over :data:`CHARSET` with ``min_length=0``."""
    return spaces.Text(max_length=max_length, min_length=0, charset=CHARSET)


@dataclass(frozen=True)
class ReferenceReturns:
    """Reference returns of an env id for D4RL-style normalisation.

    ``normalized = 100 * (R - random) / (expert - random)``. ``random`` is the mean
    return of the uniform random policy, ``expert`` that of the best scripted policy
    (or the oracle where one exists), both measured by a test that recomputes them.
    """

    random: float
    expert: float

    def normalize(self, ret: float) -> float:
        return 100.0 * (ret - self.random) / (self.expert - self.random)


class DialogueEnv(gym.Env[str, str]):
    """Base class of all dialogue environments (per-utterance timestep view).

    Args:
        max_turns: agent utterances after which the episode is truncated (a safety
            net; most envs also end themselves with ``terminated``).
        observation: ``"history"`` (full transcript, the default) or ``"last"``
            (only the latest environment utterance, a genuine POMDP).
        invalid_penalty: reward of an utterance the partner cannot understand.
        render_mode: ``None`` or ``"ansi"`` (the transcript as a string).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"], "render_fps": 4}

    #: Observation modes this base class knows.
    OBSERVATION_MODES: ClassVar[tuple[str, ...]] = ("history", "last")

    def __init__(
        self,
        *,
        max_turns: int,
        observation: str = "history",
        invalid_penalty: float = 0.0,
        render_mode: str | None = None,
    ) -> None:
        if observation not in self.OBSERVATION_MODES:
            raise ValueError(f"observation={observation!r}: expected one of {self.OBSERVATION_MODES}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode={render_mode!r}: expected one of {self.metadata['render_modes']}")
        if max_turns < 1:
            raise ValueError(f"max_turns={max_turns}: must be >= 1")
        self.max_turns = int(max_turns)
        self.observation_mode = observation
        self.invalid_penalty = float(invalid_penalty)
        self.render_mode = render_mode
        self.action_space = text_space(MAX_UTTERANCE_CHARS)
        self.observation_space = text_space(MAX_OBSERVATION_CHARS)
        self._turns: list[Turn] = []
        self._rendered = ""  # render_transcript(self._turns), kept up to date by _append
        self._agent_turns = 0
        self._done = True
        self._success = False

    # ------------------------------------------------------------------ hooks
    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        """Sample the hidden state from ``self.np_random``; return the opening text(s)."""
        raise NotImplementedError

    def _respond(self, utterance: str) -> Reply | None:
        """Answer a sanitised agent utterance, or return ``None`` if it is not understood.

        Must not change any state when it returns ``None``.
        """
        raise NotImplementedError

    def hidden_state(self) -> Any:
        """The episode's private parameters as plain, comparable data."""
        raise NotImplementedError

    def _not_understood(self, utterance: str) -> Reply:
        """The reply to an utterance ``_respond`` could not parse (must not change state).

        Default: :data:`NOT_UNDERSTOOD` with ``invalid_penalty``. Envs whose game ends on
        a fixed turn override it to settle that turn (terminated, final reward).
        """
        return Reply(NOT_UNDERSTOOD, self.invalid_penalty)

    @classmethod
    def vocabulary(cls) -> list[str]:
        """Words the partner and the env's grammar use (for a word-level tokenizer)."""
        raise NotImplementedError

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        """Scripted behaviour policies by name: at least ``random``, a mid level, ``expert``."""
        raise NotImplementedError

    @classmethod
    def help_text(cls) -> str:
        """The utterance forms the partner understands, for a person playing the agent's side."""
        return (
            f"say anything in one line; utterances {cls.__name__}'s partner cannot parse are answered "
            f"{NOT_UNDERSTOOD!r} (see the env card in the class docstring for the forms it understands)."
        )

    # --------------------------------------------------------------- contract
    @property
    def turns(self) -> list[Turn]:
        """A fresh copy of the dialogue so far."""
        return list(self._turns)

    @property
    def agent_turns(self) -> int:
        return self._agent_turns

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self._turns, self._rendered = [], ""
        for t in self._new_episode(options):
            self._append(Turn(ENV, sanitize(t, MAX_OBSERVATION_CHARS)))
        self._agent_turns = 0
        self._done = False
        self._success = False
        return self._observation(), self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self._done:
            raise RuntimeError("step() called on a finished episode; call reset() first")
        utterance = sanitize(action)
        reply = self._respond(utterance)
        valid = reply is not None
        if reply is None:
            reply = self._not_understood(utterance)
        self._agent_turns += 1
        terminated = bool(reply.terminated)
        truncated = not terminated and self._agent_turns >= self.max_turns
        reward = float(reply.reward)
        self._append(Turn(AGENT, utterance, reward))
        self._append(Turn(ENV, sanitize(reply.text, MAX_OBSERVATION_CHARS)))
        self._done = terminated or truncated
        self._success = bool(reply.success)
        info = self._info()
        info["valid"] = valid
        return self._observation(), reward, terminated, truncated, info

    def render(self) -> str | None:
        if self.render_mode == "ansi":
            return render_transcript(self._turns) + "\n"
        return None

    def reward_of(self, turns: Sequence[Turn | dict], seed: int | None = None) -> list[float]:
        """Rewards of a logged dialogue under this env's reward settings, one per turn.

        Environment turns get 0. The default replays the agent utterances on a copy of
        this env reset with ``seed`` (the live episode is untouched); envs with a
        closed-form reward override it. Used to relabel datasets with another reward
        variant: build the env with that variant and call ``reward_of``.
        """
        turns = [t if isinstance(t, Turn) else Turn.from_dict(t) for t in turns]
        env = copy.deepcopy(self)
        env.reset(seed=seed)
        rewards: list[float] = []
        done = False
        for t in turns:
            if t.speaker != AGENT:
                rewards.append(0.0)
                continue
            if done:
                raise ValueError("reward_of: the logged dialogue continues after the episode ended")
            _, r, term, trunc, _ = env.step(t.text)
            done = term or trunc
            rewards.append(float(r))
        return rewards

    # -------------------------------------------------------------- internals
    def _append(self, turn: Turn) -> None:
        self._turns.append(turn)
        line = render_turn(turn)
        self._rendered = f"{self._rendered}\n{line}" if len(self._turns) > 1 else line

    def _observation(self) -> str:
        if self.observation_mode == "last":
            return self._turns[-1].text if self._turns else ""
        return self._rendered[-MAX_OBSERVATION_CHARS:]

    def _info(self) -> dict[str, Any]:
        return {"turns": list(self._turns), "agent_turns": self._agent_turns, "success": self._success}


# ---------------------------------------------------------------------- policies
class Policy(Protocol):
    """A scripted behaviour policy for one episode.

    It acts from the dialogue so far (``info["turns"]``, the structured form of the
    history observation) and must not read the env's hidden state, except policies
    named ``oracle``, which are upper references.
    """

    def act(self, turns: Sequence[Turn]) -> str: ...


PolicyFactory = Callable[["DialogueEnv", np.random.Generator], Policy]
"""Builds a policy for the episode the env has just been reset to."""


@dataclass
class SwitchPolicy:
    """Acts with ``first`` for the first ``switch_after`` agent turns, then ``second``.

    The stitching generator of the datasets: e.g. expert early and random late.
    """

    first: Policy
    second: Policy
    switch_after: int

    def act(self, turns: Sequence[Turn]) -> str:
        n_agent = sum(1 for t in turns if t.speaker == AGENT)
        return (self.first if n_agent < self.switch_after else self.second).act(turns)


@dataclass
class EpsilonPolicy:
    """With probability ``epsilon`` per turn acts with ``noise``, else with ``base``."""

    base: Policy
    noise: Policy
    epsilon: float
    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        return (self.noise if self.rng.random() < self.epsilon else self.base).act(turns)


def policy_rng(seed: int | None) -> np.random.Generator:
    """The policy's own generator for an episode seed (independent of the env's)."""
    return np.random.default_rng(None if seed is None else [int(seed), 0x5EED])


@dataclass(frozen=True)
class Episode:
    """A finished episode: the turns, its return, success, the reset seed, how it ended."""

    seed: int | None
    turns: list[Turn]
    ret: float
    success: bool
    agent_turns: int
    terminated: bool = True


def play_episode(env: DialogueEnv, factory: PolicyFactory, seed: int | None) -> Episode:
    """Reset ``env`` with ``seed`` and play one episode with the policy from ``factory``."""
    _, info = env.reset(seed=seed)
    policy = factory(env, policy_rng(seed))
    ret, term, trunc = 0.0, False, False
    while not (term or trunc):
        _, r, term, trunc, info = env.step(policy.act(info["turns"]))
        ret += r
    return Episode(seed, info["turns"], ret, bool(info["success"]), int(info["agent_turns"]), bool(term))

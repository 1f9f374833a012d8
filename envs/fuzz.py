"""Fuzzing the environment contract at volume (numpy and stdlib only).

:class:`UtteranceFuzzer` generates agent utterances of seven kinds (:data:`CATEGORIES`):
random characters (any code point, control characters and lone surrogates included),
empty or blank strings, 100k-character strings, unknown words, the env's valid words in
a wrong order, grammar near-misses (one edit away from an utterance a scripted policy
said: a word dropped, doubled, swapped or replaced, a typo, a number out of range,
punctuation moved, junk appended) and valid utterances (so games also advance and end).

:func:`fuzz_env` sends ``n`` of them to one env id in one view, ``"utterance"`` (a
string per step) or ``"token"`` (the utterance's word-level tokens, or random token
ids, one per step through :class:`~envs.token_view.TokenLevelEnv`), and checks on every
step that

* nothing raises;
* observations lie in the observation space, actions in the action space (token view),
  rewards are finite floats, ``terminated``/``truncated`` are bools;
* the hidden state (:meth:`DialogueEnv.hidden_state`) never changes within an episode,
  whatever the utterance, and an utterance answered with ``info["valid"] == False``
  leaves the dialogue before it untouched;
* every episode ends by ``max_turns`` agent utterances.

It returns counts (:class:`FuzzStats`); ``scripts/fuzz.py`` prints them per env id and
view, and ``tests/test_fuzz.py`` asserts there are no exceptions and no violations.
"""

from __future__ import annotations

import copy
import string
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import AGENT, CHARSET, DialogueEnv, play_episode
from envs.token_view import TokenLevelEnv, WordTokenizer, pre_tokenize

CATEGORIES: tuple[str, ...] = (
    "random_chars", "empty", "huge", "unknown_words", "shuffled", "near_miss", "valid",
)
VIEWS: tuple[str, ...] = ("utterance", "token")
HUGE_CHARS = 100_000
_BLANKS = ("", " ", "   ", "\n", "\t", " \n\t \r ", "\x00", "\u200b", "\u3000")
_PUNCT = ".,?!'-:;"
_CODE_POINT_RANGES = ((0, 0x80), (0x80, 0x800), (0x800, 0x10000), (0x1F300, 0x1FAFF))


def _words(text: str) -> list[str]:
    return text.split()


def _contains(space: gym.Space, obs: Any) -> bool:
    """``space.contains(obs)``, vectorised for token sequences (long episodes stay linear)."""
    if isinstance(space, gym.spaces.Sequence) and isinstance(space.feature_space, gym.spaces.Discrete):
        if not isinstance(obs, np.ndarray) or obs.ndim != 1 or not np.issubdtype(obs.dtype, np.integer):
            return False
        lo, n = space.feature_space.start, space.feature_space.n
        return obs.size == 0 or (int(obs.min()) >= lo and int(obs.max()) < lo + n)
    return space.contains(obs)


@dataclass
class UtteranceFuzzer:
    """Generates ``(category, utterance)`` pairs from an env's vocabulary and example utterances."""

    vocabulary: list[str]
    examples: list[str]
    rng: np.random.Generator

    @classmethod
    def for_env(cls, env: DialogueEnv, seed: int = 0, n_episodes: int = 2) -> UtteranceFuzzer:
        """Examples are what the env's scripted policies say on ``n_episodes`` seeds."""
        examples: list[str] = []
        for factory in env.policies().values():
            for s in range(n_episodes):
                examples += [t.text for t in play_episode(env, factory, seed=s).turns if t.speaker == AGENT]
        vocab = sorted({p for w in env.vocabulary() for p in pre_tokenize(w)})
        return cls(vocab or ["a"], sorted(set(examples)) or ["hello"], np.random.default_rng(seed))

    # ------------------------------------------------------------------ pieces
    def _pick(self, seq: Any) -> Any:
        return seq[int(self.rng.integers(len(seq)))]

    def _example(self) -> str:
        return self._pick(self.examples)

    def _unknown_word(self) -> str:
        n = int(self.rng.integers(1, 13))
        return "".join(self._pick(string.ascii_lowercase) for _ in range(n)) + self._pick(["", "zq", "xx", "qj"])

    def random_chars(self) -> str:
        n = int(self.rng.integers(0, 300))
        if self.rng.random() < 0.5:  # within the charset: looks like text, mostly nonsense
            idx = self.rng.integers(len(CHARSET), size=n)
            return "".join(CHARSET[i] for i in idx)
        lo, hi = _CODE_POINT_RANGES[int(self.rng.integers(len(_CODE_POINT_RANGES)))]
        return "".join(chr(c) for c in self.rng.integers(lo, hi, size=n))

    def empty(self) -> str:
        return self._pick(_BLANKS) * int(self.rng.integers(1, 4))

    def huge(self) -> str:
        kind = int(self.rng.integers(4))
        if kind == 0:
            unit = self._example() + " "
        elif kind == 1:
            unit = self._pick(self.vocabulary) + " "
        elif kind == 2:
            unit = "a"
        else:
            unit = "".join(chr(c) for c in self.rng.integers(0, 0x3000, size=997))
        return (unit * (HUGE_CHARS // len(unit) + 1))[:HUGE_CHARS]

    def unknown_words(self) -> str:
        words = [self._unknown_word() for _ in range(int(self.rng.integers(1, 10)))]
        if self.rng.random() < 0.5:  # hide one real word among them
            words.insert(int(self.rng.integers(len(words) + 1)), self._pick(self.vocabulary))
        return " ".join(words)

    def shuffled(self) -> str:
        words = _words(self._example())
        if len(words) < 2:
            words = words + [self._pick(self.vocabulary) for _ in range(3)]
        order = self.rng.permutation(len(words))
        if (order == np.arange(len(words))).all():
            order = order[::-1]
        return " ".join(words[i] for i in order)

    def near_miss(self) -> str:
        words = _words(self._example()) or [self._pick(self.vocabulary)]
        i = int(self.rng.integers(len(words)))
        op = int(self.rng.integers(9))
        if op == 0 and len(words) > 1:  # a word dropped
            del words[i]
        elif op == 1:  # a word doubled
            words.insert(i, words[i])
        elif op == 2 and len(words) > 1:  # two neighbours swapped
            j = (i + 1) % len(words)
            words[i], words[j] = words[j], words[i]
        elif op == 3:  # a word replaced by another of the vocabulary
            words[i] = self._pick(self.vocabulary)
        elif op == 4 and words[i]:  # a typo
            w = list(words[i])
            w[int(self.rng.integers(len(w)))] = self._pick(string.ascii_lowercase)
            words[i] = "".join(w)
        elif op == 5:  # a number out of range (or a number where a word was)
            words[i] = self._pick(["0", "-1", "99", "100000", "3.5", "1e9", "007", "-0"])
        elif op == 6:  # punctuation stripped or moved
            words = ["".join(c for c in w if c not in _PUNCT) for w in words]
            words.insert(i, self._pick(_PUNCT))
        elif op == 7:  # junk appended
            words.append(self._unknown_word())
        else:  # case and spacing
            return "  ".join(w.upper() for w in words) + " \t"
        return " ".join(words)

    def valid(self) -> str:
        return self._example()

    def sample(self) -> tuple[str, str]:
        category = CATEGORIES[int(self.rng.integers(len(CATEGORIES)))]
        return category, getattr(self, category)()


@dataclass
class FuzzStats:
    """What one env id and view received, and what went wrong."""

    env_id: str
    view: str
    utterances: int = 0
    episodes: int = 0
    steps: int = 0
    invalid: int = 0  # utterances the env answered with info["valid"] == False
    by_category: Counter = field(default_factory=Counter)
    exceptions: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.exceptions and not self.violations


class _Episode:
    """One episode in either view, with the contract checks of every step."""

    def __init__(self, env: DialogueEnv, view: str, tokenizer: WordTokenizer | None, stats: FuzzStats) -> None:
        self.env, self.view, self.stats = env, view, stats
        self.token_env = TokenLevelEnv(env, tokenizer) if view == "token" and tokenizer is not None else None
        self.hidden: Any = None
        self.done = True

    def reset(self, seed: int) -> None:
        if self.token_env is not None:
            obs, _ = self.token_env.reset(seed=seed)
            self._check_obs(obs, self.token_env.observation_space, "reset")
        else:
            obs, _ = self.env.reset(seed=seed)
            self._check_obs(obs, self.env.observation_space, "reset")
        self.hidden = copy.deepcopy(self.env.hidden_state())
        self.done = False
        self.stats.episodes += 1

    def _violation(self, what: str) -> None:
        if len(self.stats.violations) < 50:
            self.stats.violations.append(f"{self.stats.env_id} [{self.view}]: {what}")

    def _check_obs(self, obs: Any, space: gym.Space, where: str) -> None:
        if not _contains(space, obs):
            self._violation(f"{where}: observation outside the observation space")

    def _check_step(self, obs: Any, r: Any, term: Any, trunc: Any, space: gym.Space, what: str) -> None:
        self._check_obs(obs, space, what)
        if not isinstance(r, float) or not np.isfinite(r):
            self._violation(f"{what}: reward {r!r} is not a finite float")
        if not isinstance(term, bool) or not isinstance(trunc, bool):
            self._violation(f"{what}: terminated/truncated are not bools")

    def send(self, category: str, text: str, rng: np.random.Generator) -> None:
        """One agent utterance (the whole string, or its tokens until the turn closes)."""
        env = self.env
        before_turns = env.turns
        before_agent = env.agent_turns
        what = f"{category} utterance {text[:40]!r}"
        if self.token_env is None:
            obs, r, term, trunc, info = env.step(text)
            self.stats.steps += 1
            self._check_step(obs, r, term, trunc, env.observation_space, what)
        else:
            tenv, codec = self.token_env, self.token_env.codec
            if category == "random_chars" and rng.random() < 0.5:  # any ids, specials included
                ids = rng.integers(tenv.action_space.n, size=int(rng.integers(1, 40))).tolist()
            else:
                ids = codec.encode(text[:4096]) + [codec.eou_id]
            term = trunc = False
            info: dict[str, Any] = {}
            for tok in ids + [codec.eou_id] * (tenv.max_utterance_tokens + 1):
                if not tenv.action_space.contains(tok):
                    self._violation(f"{what}: token {tok} outside the action space")
                obs, r, term, trunc, info = tenv.step(tok)
                self.stats.steps += 1
                self._check_step(obs, r, term, trunc, tenv.observation_space, what)
                if env.agent_turns > before_agent:
                    break
            if env.agent_turns != before_agent + 1:
                self._violation(f"{what}: the token view did not close the utterance")
        self.stats.utterances += 1
        self.stats.by_category[category] += 1
        if env.hidden_state() != self.hidden:
            self._violation(f"{what}: the hidden state changed")
        if not info.get("valid", True):
            self.stats.invalid += 1
            if env.turns[: len(before_turns)] != before_turns:
                self._violation(f"{what}: an invalid utterance changed the dialogue before it")
        if env.agent_turns > env.max_turns:
            self._violation(f"{what}: {env.agent_turns} agent turns, max_turns is {env.max_turns}")
        if env.agent_turns >= env.max_turns and not (term or trunc):
            self._violation(f"{what}: the episode did not end at max_turns={env.max_turns}")
        self.done = bool(term or trunc)


def fuzz_env(env_id: str, n: int, view: str = "utterance", seed: int = 0, env_kwargs: dict | None = None) -> FuzzStats:
    """Send ``n`` generated utterances to the registered ``env_id`` in ``view``; return the counts."""
    env = gym.make(env_id, **(env_kwargs or {})).unwrapped
    if not isinstance(env, DialogueEnv):
        raise TypeError(f"{env_id} is a {type(env).__name__}, not a DialogueEnv")
    return fuzz(env, n, view, seed, name=env_id)


def fuzz(env: DialogueEnv, n: int, view: str = "utterance", seed: int = 0, name: str | None = None) -> FuzzStats:
    """Send ``n`` generated utterances to ``env`` in ``view``; return the counts."""
    if view not in VIEWS:
        raise ValueError(f"view={view!r}: expected one of {VIEWS}")
    env_id = name or type(env).__name__
    stats = FuzzStats(env_id, view)
    t0 = time.perf_counter()
    fuzzer = UtteranceFuzzer.for_env(env, seed)
    tokenizer = WordTokenizer.from_words(env.vocabulary()) if view == "token" else None
    episode = _Episode(env, view, tokenizer, stats)
    rng = np.random.default_rng([seed, 1])
    for i in range(n):
        category, text = fuzzer.sample()
        try:
            if episode.done:
                episode.reset(seed + stats.episodes)
            episode.send(category, text, rng)
        except Exception as e:  # noqa: BLE001 - counted and reported, the episode restarted
            frame = traceback.extract_tb(e.__traceback__)[-1]
            stats.exceptions.append(
                f"{env_id} [{view}] {category} {text[:40]!r}: {type(e).__name__}: {e} "
                f"({frame.filename}:{frame.lineno})"
            )
            episode = _Episode(env, view, tokenizer, stats)
    stats.seconds = time.perf_counter() - t0
    return stats

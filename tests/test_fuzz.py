"""Fuzzing every registered env id in both views (envs/fuzz.py): small volume here, 10,000
utterances per env id and view in the slow test (also ``python scripts/fuzz.py``)."""

import numpy as np
import pytest

import envs
from envs.core import sanitize
from envs.fuzz import CATEGORIES, HUGE_CHARS, VIEWS, UtteranceFuzzer, fuzz, fuzz_env
from tests.toy_envs import GuessNumberEnv

ENV_IDS = envs.env_ids()


def _assert_clean(stats, n):
    assert stats.exceptions == [], stats.exceptions[:3]
    assert stats.violations == [], stats.violations[:3]
    assert stats.utterances == n and stats.episodes >= 1
    assert sum(stats.by_category.values()) == n


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_fuzz_small_volume(env_id, view):
    n = 20 if "TextWorld" in env_id else 80
    _assert_clean(fuzz_env(env_id, n, view, seed=1), n)


@pytest.mark.slow
@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_fuzz_ten_thousand_utterances(env_id, view):
    stats = fuzz_env(env_id, 10_000, view, seed=0)
    _assert_clean(stats, 10_000)
    assert set(stats.by_category) == set(CATEGORIES)
    assert stats.invalid > 0  # the invalid path was exercised


def test_fuzzer_generates_every_kind():
    f = UtteranceFuzzer.for_env(GuessNumberEnv(), seed=0)
    assert "is it 1?" in f.examples
    seen = {c: [getattr(f, c)() for _ in range(50)] for c in CATEGORIES}
    assert all(len(u) == HUGE_CHARS for u in seen["huge"])
    assert all(sanitize(u) == "" for u in seen["empty"])
    assert any(any(ord(ch) > 127 for ch in u) for u in seen["random_chars"])
    bags = {tuple(sorted(e.split())) for e in f.examples}
    assert all(tuple(sorted(u.split())) in bags for u in seen["shuffled"])  # same words, other order
    assert sum(u not in f.examples for u in seen["shuffled"]) > 25
    assert sum(u not in f.examples for u in seen["near_miss"]) > 35
    assert all(u in f.examples for u in seen["valid"])
    assert sum(any(w not in f.vocabulary for w in u.split()) for u in seen["unknown_words"]) == 50
    counts = {c: 0 for c in CATEGORIES}
    for _ in range(700):
        counts[f.sample()[0]] += 1
    assert min(counts.values()) > 60


class _LeakyEnv(GuessNumberEnv):
    """Moves its hidden target when it does not understand."""

    def _respond(self, utterance):
        reply = super()._respond(utterance)
        if reply is None:
            self._target = self._target % self.n + 1
        return reply


class _CrashyEnv(GuessNumberEnv):
    def _respond(self, utterance):
        if len(utterance) > 200:
            raise IndexError("long input")
        return super()._respond(utterance)


class _EndlessEnv(GuessNumberEnv):
    def step(self, action):
        obs, r, term, trunc, info = super().step(action)
        if trunc:
            self._done = False
        return obs, r, term, False, info


class _BadRewardEnv(GuessNumberEnv):
    def _not_understood(self, utterance):
        reply = super()._not_understood(utterance)
        return type(reply)(reply.text, float("nan"))


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("env_cls, needle", [
    (_LeakyEnv, "hidden state changed"), (_EndlessEnv, "did not end at max_turns"),
    (_BadRewardEnv, "not a finite float"),
])
def test_fuzz_catches_contract_violations(env_cls, needle, view):
    stats = fuzz(env_cls(), 300, view)
    assert any(needle in v for v in stats.violations), stats.violations[:3]
    assert not stats.ok


def test_fuzz_counts_exceptions_and_keeps_going():
    stats = fuzz(_CrashyEnv(), 300, "utterance")
    assert stats.exceptions and all("IndexError: long input" in e for e in stats.exceptions)
    assert stats.utterances + len(stats.exceptions) == 300
    assert np.isfinite(stats.seconds)

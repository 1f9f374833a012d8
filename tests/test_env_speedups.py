"""The fast paths of GuessWhich, Deal or No Deal, Bargaining and the env core behave exactly
like the straightforward code they replaced: same answers, same random streams, same
transcripts (the datasets and the published results depend on it)."""

from __future__ import annotations

import hashlib
import itertools
import json
import string

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import guess_which as gw
from envs import negotiation as ng
from envs.core import CHARSET, MAX_OBSERVATION_CHARS, NOT_UNDERSTOOD, play_episode, sanitize


# ------------------------------------------------------------------------------ core
def _sanitize_reference(text: str, max_chars: int) -> str:
    cleaned = "".join(c if c in CHARSET and c != "\n" else " " for c in text[: 4 * max_chars].lower())
    return " ".join(cleaned.split())[:max_chars].strip()


def test_sanitize_fast_path_matches_the_full_cleaning():
    rng = np.random.default_rng(0)
    alphabet = CHARSET + "  \t\n\r\x00ÄéİẞABCZ" + string.punctuation
    texts = ["", " ", "a", "deal.", " deal.", "deal. ", "a  b", "i take 2 books, you get 1 hat.", "x" * 300]
    for _ in range(3000):
        n = int(rng.integers(0, 40))
        texts.append("".join(alphabet[int(i)] for i in rng.integers(len(alphabet), size=n)))
    for t in texts:
        for max_chars in (5, 256, MAX_OBSERVATION_CHARS):
            assert sanitize(t, max_chars) == _sanitize_reference(t, max_chars), (t, max_chars)


# ----------------------------------------------------------------------- GuessWhich
def _answer_reference(scenes: np.ndarray, q: gw.Question) -> np.ndarray:
    """The answerer as it was first written (numpy where/max/min over the matches)."""
    matched = gw.matches(scenes, q.filter)
    c = matched.sum(axis=-1)
    if q.kind == gw.EXIST:
        return np.where(c > 0, gw.YES, gw.NO)
    if q.kind == gw.COUNT:
        return gw.COUNT0 + c
    if q.kind == gw.QUERY:
        vals = gw._ATTR_TABLE[:, q.attr][scenes]
        hi = np.where(matched, vals, -1).max(axis=-1)
        lo = np.where(matched, vals, gw.MAX_OBJECTS * 10).min(axis=-1)
        value = gw.VALUE_ANSWER0 + gw.OFFSETS[q.attr] + hi
        return np.where(c == 0, gw.NO_SUCH, np.where(hi == lo, value, gw.CANT_TELL))
    cv = (matched & gw.matches(scenes, (q.value,))).sum(axis=-1)
    return np.where(c == 0, gw.NO_SUCH, np.where(cv == c, gw.YES, np.where(cv == 0, gw.NO, gw.CANT_TELL)))


def test_answer_lookups_match_the_reference_answerer():
    rng = np.random.default_rng(1)
    scenes = gw.sample_scenes(rng, 500)
    questions = list(gw.default_bank().questions) + [gw.random_question(rng) for _ in range(3000)]
    questions.append(gw.Question(gw.EXIST, (0, 1)))  # two colours: outside the grammar, never matches
    for i, q in enumerate(questions):
        new, ref = gw.answer_ids(scenes, q), _answer_reference(scenes, q)
        assert new.dtype == ref.dtype and np.array_equal(new, ref), q
        one = scenes[i % len(scenes)]
        assert int(gw.answer_ids(one, q)) == int(_answer_reference(one, q)), q


def test_grammar_match_table_matches_the_feature_table():
    for filt, row in gw._GRAMMAR_FILTER_ROW.items():
        ref = gw._FEATURE_TABLE[:, list(filt) + [gw.VALID]].all(axis=-1)
        assert np.array_equal(gw.filter_table(filt), ref) and np.array_equal(gw._GRAMMAR_MATCH[row], ref)
    assert len(gw._GRAMMAR_FILTER_ROW) == np.prod(np.array(gw.N_VALUES) + 1)


def test_choose_distinct_draws_what_choice_draws():
    for seed in range(300):
        for k in range(1, gw.N_ATTRS + 1):
            a, b = np.random.default_rng(seed), np.random.default_rng(seed)
            a.random(), b.random()  # leave a half-used 64-bit draw in the buffer
            ref = b.choice(gw.N_ATTRS, size=k, replace=False).tolist()
            assert gw._choose_distinct(a, gw.N_ATTRS, k) == ref
            assert a.bit_generator.state == b.bit_generator.state


def test_caption_log_fractions_equal_numpy_log():
    m = np.arange(gw.MAX_OBJECTS + 1)
    for size in (1, 7, 16, 300):  # vector lengths with and without a SIMD tail
        for n in range(1, gw.MAX_OBJECTS + 1):
            with np.errstate(divide="ignore"):
                ref = np.log(np.repeat(m, size) / np.full(size * len(m), n))
            table = gw._LOG_FRACTION[np.repeat(m, size), n]
            assert ref.tobytes() == table.tobytes()


@pytest.mark.parametrize("k", [2, 16, gw._SMALL_POOL, gw._SMALL_POOL + 1, 200])
def test_percentile_of_small_and_large_pools_agree_with_numpy(k):
    rng = np.random.default_rng(k)
    for _ in range(300):
        ll = rng.normal(size=k).round(int(rng.integers(0, 3)))
        ll[rng.random(k) < 0.2] = -np.inf
        target = int(rng.integers(k))
        ll[target] = 0.0
        ll[int(rng.integers(k))] = float(rng.choice([1e-9, -1e-9, 2e-9, -0.5e-9]))
        d = ll - ll[target]
        lower, tied = np.count_nonzero(d < -gw.TIE_TOL), np.count_nonzero(np.abs(d) <= gw.TIE_TOL) - 1
        ref = (lower + 0.5 * tied) / (k - 1)
        assert gw.percentile_of(ll, target) == ref


# ----------------------------------------------------------------------- negotiation
def test_value_vectors_and_partner_candidates_match_the_loops():
    for counts in itertools.product(range(5), repeat=3):
        grid = itertools.product(range(11), repeat=3)
        ref = tuple(v for v in grid if sum(c * x for c, x in zip(counts, v)) == 10)
        assert ng.value_vectors(counts) == ref
        for values in ref[:10]:
            w = [v for v in ref if all(a + b > 0 for a, b in zip(values, v))]
            w = np.array(w, dtype=np.int64).reshape(-1, 3)
            assert np.array_equal(ng.partner_candidates(counts, values), w)


# -------------------------------------------------------------- transcripts unchanged
#: sha256 of :func:`transcript_digest`, recorded with the code before the fast paths. A change
#: here changes the envs' behaviour: it needs a new env version (see the env cards), not a new digest.
GOLDEN = {
    "dialogue_rl/GuessWhich-v0": "509ac4e4abfb8b43fbb4dbf0858c8a44164b4a5da8dfc5aa01453a4de65ee4ef",
    "dialogue_rl/DealOrNoDeal-v0": "0d0c4768c95637d9139e6c2a59da4ed300eb2bb4f4508a035dc81b62cd3576f3",
    "dialogue_rl/DealOrNoDealGreedy-v0": "5692150a11e7c2bca8c3f3e255a7a5d7823ed710f184f94b4469327440478ec6",
    "dialogue_rl/DealOrNoDealFair-v0": "4fc0c32ecbdde4733fa234a45b212964ab18fb5dc57ed4e2b701ee295c830168",
    "dialogue_rl/DealOrNoDealAccommodating-v0":
        "6c163a973bec85b57c75c2fc3561ea1877c9bcc44892e8294edae0893c10e402",
    "dialogue_rl/Bargaining-v0": "de74a87f78f66b85477a4cc475ea0456d3d7c21395158d9784fb1e2e98958877",
    "dialogue_rl/BargainingBuyer-v0": "bb44f7f97b981dceb2eafefe3e80f7d9bf8fd5cade57a66c80c78ff43fdf041e",
}


def transcript_digest(env_id: str, n_seeds: int = 25) -> str:
    """sha256 over every policy's episodes on seeds ``0..n_seeds-1`` (turns, rewards, hidden
    state, how each ended), plus a few unparseable utterances, and the env generator's state."""
    env = gym.make(env_id).unwrapped
    h = hashlib.sha256()
    for name, factory in sorted(type(env).policies().items()):
        for seed in range(n_seeds):
            ep = play_episode(env, factory, seed)
            record = [name, seed, [t.to_dict() for t in ep.turns], ep.ret, ep.success, ep.terminated,
                      repr(env.hidden_state()), repr(env.np_random.bit_generator.state)]
            h.update(json.dumps(record).encode())
    for seed in range(n_seeds):
        env.reset(seed=seed)
        for u in ("", "hello there", "?!", NOT_UNDERSTOOD, "x" * 300):
            _, r, term, trunc, info = env.step(u)
            h.update(json.dumps([u, r, term, trunc, info["valid"], info["turns"][-1].text]).encode())
            if term or trunc:
                break
    return h.hexdigest()


@pytest.mark.parametrize("env_id", sorted(GOLDEN))
def test_transcripts_are_unchanged(env_id):
    assert env_id in envs.env_ids()
    assert transcript_digest(env_id) == GOLDEN[env_id]

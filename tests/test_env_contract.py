"""The environment contract (DESIGN.md section 3), checked on every registered env id."""

import copy
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import envs
from envs.core import AGENT, CHARSET, DialogueEnv, play_episode
from envs.token_view import TokenLevelEnv, WordTokenizer

ENV_IDS = envs.env_ids()
pytestmark = pytest.mark.skipif(not ENV_IDS, reason="no env registered yet")


def _make(env_id: str, **kw) -> DialogueEnv:
    return gym.make(env_id, **kw).unwrapped


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_utterance_view(env_id):
    check_env(gym.make(env_id, render_mode="ansi").unwrapped)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_token_view(env_id):
    env = _make(env_id)
    check_env(TokenLevelEnv(env, WordTokenizer.from_words(env.vocabulary())))


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_make_from_fresh_interpreter(env_id):
    code = f"import gymnasium as g; e = g.make('envs:{env_id}'); o, i = e.reset(seed=0); print(len(o))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_actions_same_transcript(env_id):
    env = _make(env_id)
    names = list(env.policies())
    for name in names:
        a = play_episode(env, env.policies()[name], seed=123)
        b = play_episode(env, env.policies()[name], seed=123)
        assert a.turns == b.turns and a.ret == b.ret, name


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_policies_cover_skill_levels_and_rewards_relabel(env_id):
    env = _make(env_id)
    pols = env.policies()
    assert "random" in pols and "expert" in pols and len(pols) >= 3
    for name, factory in pols.items():
        ep = play_episode(env, factory, seed=7)
        assert ep.turns[0].speaker != AGENT
        assert sum(t.reward for t in ep.turns) == pytest.approx(ep.ret)
        assert env.reward_of(ep.turns, seed=7) == pytest.approx([t.reward for t in ep.turns]), name


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reference_returns_exist(env_id):
    ref = envs.reference_returns(env_id)
    assert ref.expert > ref.random


_WORDS = st.sampled_from(["is", "it", "the", "a", "red", "move", "up", "deal", "no", "2", "?", "xyzzy", "book"])
_UTTERANCES = st.one_of(
    st.text(max_size=300),
    st.just(""),
    st.just("a" * 100_000),
    st.lists(_WORDS, max_size=12).map(" ".join),
    st.text(alphabet=CHARSET, max_size=200),
)


@pytest.mark.parametrize("env_id", ENV_IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(utterances=st.lists(_UTTERANCES, min_size=1, max_size=8), seed=st.integers(0, 2**31 - 1))
def test_arbitrary_strings_never_crash_nor_touch_hidden_state(env_id, utterances, seed):
    env = _make(env_id)
    obs, info = env.reset(seed=seed)
    hidden = copy.deepcopy(env.hidden_state())
    for u in utterances:
        obs, r, term, trunc, info = env.step(u)
        assert env.observation_space.contains(obs)
        assert isinstance(r, float) and np.isfinite(r)
        assert env.hidden_state() == hidden
        if term or trunc:
            break

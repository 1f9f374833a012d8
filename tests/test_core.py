import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.core import (
    CHARSET, MAX_UTTERANCE_CHARS, NOT_UNDERSTOOD, ReferenceReturns, SwitchPolicy, Turn, play_episode,
    render_transcript, sanitize,
)
from envs.token_view import TokenLevelEnv, WordTokenizer, encode_dialogue, join_pieces, pre_tokenize
from tests.toy_envs import GuessNumberEnv


def test_sanitize_maps_anything_into_charset():
    assert sanitize("  Is IT\n\tRED?? ") == "is it red??"
    assert sanitize(None) == ""
    assert sanitize(12) == "12"
    s = sanitize("é€😀" + "x" * 100_000)
    assert len(s) <= MAX_UTTERANCE_CHARS and set(s) <= set(CHARSET) and "\n" not in s


def test_transcript_and_observation_modes():
    env = GuessNumberEnv(observation="history")
    obs, info = env.reset(seed=0)
    assert obs == "env: guess my number from 1 to 4."
    target = env.hidden_state()["target"]
    guess = 1 if target != 1 else 2
    obs, r, term, trunc, info = env.step(f"Is it {guess}?")
    assert obs.splitlines()[1] == f"agent: is it {guess}?"
    assert r == -1.0 and not term and not trunc
    assert info["turns"][1] == Turn("agent", f"is it {guess}?", -1.0)
    assert info["turns"] is not env.turns  # fresh list every call
    last = GuessNumberEnv(observation="last")
    last.reset(seed=0)
    o, *_ = last.step(f"is it {guess}")
    assert o in ("higher.", "lower.")


def test_invalid_utterance_in_game_and_state_untouched():
    env = GuessNumberEnv()
    env.reset(seed=3)
    before = env.hidden_state()
    obs, r, term, trunc, info = env.step("%%% what?")
    assert r == -1.0 and not term and info["valid"] is False
    assert info["turns"][-1].text == NOT_UNDERSTOOD
    assert env.hidden_state() == before


def test_truncation_at_turn_limit_and_step_after_end_raises():
    env = GuessNumberEnv(max_turns=2)
    env.reset(seed=0)
    env.step("blah")
    *_, term, trunc, _ = env.step("blah")
    assert trunc and not term
    with pytest.raises(RuntimeError):
        env.step("again")


def test_check_env_both_views():
    check_env(GuessNumberEnv(render_mode="ansi"), skip_render_check=False)
    tok = WordTokenizer.from_words(GuessNumberEnv.vocabulary())
    check_env(TokenLevelEnv(GuessNumberEnv(), tok))


def test_reward_of_replays_logged_dialogue():
    env = GuessNumberEnv()
    ep = play_episode(env, GuessNumberEnv.policies()["random"], seed=11)
    assert env.reward_of(ep.turns, seed=11) == [t.reward for t in ep.turns]


def test_switch_policy_stitches():
    env = GuessNumberEnv(n=8, max_turns=8)
    pol = env.policies()
    ep = play_episode(
        env, lambda e, rng: SwitchPolicy(pol["expert"](e, rng), pol["random"](e, rng), 1), seed=5
    )
    assert ep.turns[1].text == "is it 4?"  # expert's first question


def test_pre_tokenize_round_trip_canonical_text():
    for s in ["is it red?", "i need the book and 2 hats.", "how about $450?", "env: yes, 3 of them.", "it's (big)"]:
        assert join_pieces(pre_tokenize(s)) == s


def test_word_tokenizer_unknown_and_round_trip():
    tok = WordTokenizer.from_words(["is", "it", "red"])
    ids = tok.encode("is it blue?")
    assert ids[2] == tok.unk_token_id
    assert tok.decode(tok.encode("is it red?")) == "is it red?"


def test_token_view_sends_on_eou_and_rewards_only_there():
    env = GuessNumberEnv()
    tok = WordTokenizer.from_words(env.vocabulary())
    tenv = TokenLevelEnv(env, tok, max_utterance_tokens=8)
    obs, info = tenv.reset(seed=0)
    target = env.hidden_state()["target"]
    wrong = 1 if target != 1 else 2
    rewards = []
    for t in tok.encode(f"is it {wrong}?"):
        obs, r, term, trunc, info = tenv.step(t)
        rewards.append(r)
        assert len(info["turns"]) == 1  # nothing sent yet
    obs, r, term, trunc, info = tenv.step(tok.eou_token_id)
    assert rewards == [0.0] * 4 and r == -1.0
    assert info["turns"][1].text == f"is it {wrong}?"
    # the observation equals the encoding of the dialogue plus the agent prefix
    ids, mask, rew = encode_dialogue(tenv.codec, info["turns"])
    assert obs.tolist() == ids + tok.encode("agent:")
    assert sum(rew) == -1.0 and mask.count(True) == 5


def test_token_view_budget_cuts_the_turn():
    env = GuessNumberEnv()
    tok = WordTokenizer.from_words(env.vocabulary())
    tenv = TokenLevelEnv(env, tok, max_utterance_tokens=3)
    tenv.reset(seed=0)
    for t in tok.encode("is it")[:2]:
        tenv.step(t)
    obs, r, term, trunc, info = tenv.step(tok.encode("1")[0])
    assert info["turns"][1].text == "is it 1"
    assert obs.tolist()[-len(tok.encode("agent:")) - 1] == tok.eou_token_id or term


def test_reference_returns_normalize():
    ref = ReferenceReturns(random=-5.0, expert=-1.0)
    assert ref.normalize(-5.0) == 0.0 and ref.normalize(-1.0) == 100.0 and ref.normalize(-3.0) == 50.0


def test_render_transcript():
    assert render_transcript([Turn("env", "hi"), Turn("agent", "yo", 1.0)]) == "env: hi\nagent: yo"

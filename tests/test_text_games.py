"""Text games: twenty questions, wordle, the maze (FO/PO) and the TextWorld adapter."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest

import envs
from envs.core import AGENT, ENV, NOT_UNDERSTOOD, Turn, play_episode, policy_rng
from envs.maze import (
    LAYOUT,
    BeliefMover,
    MazeFOEnv,
    MazePOEnv,
    belief_policy,
    maze_tables,
    move_text,
    parse_move,
)
from envs.textworld_games import clean_text, textworld_available
from envs.token_view import WordTokenizer, join_pieces, pre_tokenize
from envs.twenty_questions import (
    ANSWERS,
    CATEGORIES,
    OBJECT_CATEGORIES,
    OBJECTS,
    QUESTION_TEXTS,
    TwentyQuestionsEnv,
    guess_text,
)
from envs.wordle import ALLOWED, WordleEnv, feedback, feedback_codes, feedback_table
from envs.wordle import ANSWERS as WORDS

SCRIPTED = {
    "dialogue_rl/TwentyQuestions-v0": (TwentyQuestionsEnv, "novice"),
    "dialogue_rl/Wordle-v0": (WordleEnv, "consistent"),
    "dialogue_rl/MazeFO-v0": (MazeFOEnv, "noisy"),
    "dialogue_rl/MazePO-v0": (MazePOEnv, "noisy"),
}
#: The policy whose mean return is the id's ``expert`` reference (oracle where one exists).
REFERENCE_EXPERT = {"dialogue_rl/MazePO-v0": "oracle"}


def _returns(env, name: str, n: int, start: int = 0) -> np.ndarray:
    factory = env.policies()[name]
    return np.array([play_episode(env, factory, s).ret for s in range(start, start + n)])


def _ci(r: np.ndarray) -> tuple[float, float]:
    half = 1.96 * r.std(ddof=1) / np.sqrt(len(r)) if len(r) > 1 else 0.0
    return float(r.mean() - half), float(r.mean() + half)


# ------------------------------------------------------------------ twenty questions
def test_ontology_is_large_and_distinguishable():
    assert len(OBJECTS) >= 100 and len(set(OBJECTS)) == len(OBJECTS)
    assert len(set(OBJECT_CATEGORIES)) >= 10
    vectors = {tuple(ANSWERS[:, o]) for o in range(len(OBJECTS))}
    assert len(vectors) == len(OBJECTS)  # every object has its own answer vector


@pytest.mark.parametrize("target", ["hammer", "dog", "apple", "piano", "kite"])
def test_oracle_answers_from_the_table(target):
    env = TwentyQuestionsEnv(max_questions=200)
    env.reset(seed=0, options={"target": target})
    o = OBJECTS.index(target)
    for q, text in enumerate(QUESTION_TEXTS):
        _, r, term, trunc, info = env.step(text.upper())  # case and punctuation do not matter
        assert info["turns"][-1].text == ("yes." if ANSWERS[q, o] else "no.")
        assert r == -1.0 and not term and info["valid"]
    cat_q = QUESTION_TEXTS.index(CATEGORIES[OBJECT_CATEGORIES[o]])
    assert ANSWERS[cat_q, o]
    other = "wrench" if target != "wrench" else "dog"
    _, r, term, _, info = env.step(guess_text(other))
    assert (r, term, info["turns"][-1].text) == (-1.0, False, "no.")
    _, r, term, trunc, info = env.step(f"is it {target}")  # article optional
    assert (r, term, trunc, info["success"]) == (0.0, True, False, True)


def test_twenty_questions_invalid_noise_and_turn_limit():
    env = TwentyQuestionsEnv()
    env.reset(seed=1, options={"target": "cat"})
    _, r, term, trunc, info = env.step("what is it?")
    assert (r, info["valid"], info["turns"][-1].text) == (-1.0, False, NOT_UNDERSTOOD)
    for _ in range(18):
        _, r, term, trunc, _ = env.step("is it alive?")
        assert not (term or trunc)
    _, r, term, trunc, _ = env.step("is it alive?")
    assert trunc and not term and r == -1.0  # 20 questions: truncated
    noisy = TwentyQuestionsEnv(answer_noise=1.0)
    noisy.reset(seed=0, options={"target": "cat"})
    _, _, _, _, info = noisy.step("is it alive?")
    assert info["turns"][-1].text == "no."  # always flipped
    _, r, term, _, _ = noisy.step("is it a cat?")
    assert term and r == 0.0  # guesses are never noisy


def test_halving_expert_and_noise_robustness():
    env = TwentyQuestionsEnv()
    eps = [play_episode(env, env.policies()["expert"], s) for s in range(50)]
    assert all(e.success for e in eps) and max(e.agent_turns for e in eps) <= 12
    noisy = TwentyQuestionsEnv(answer_noise=0.05)
    rate = np.mean([play_episode(noisy, noisy.policies()["expert"], s).success for s in range(50)])
    assert rate > 0.6


# ------------------------------------------------------------------------- wordle
@pytest.mark.parametrize(
    "guess, answer, expected",  # 0 grey, 1 yellow, 2 green; computed by hand
    [
        ("speed", "abide", (0, 0, 1, 0, 1)),  # one e in the answer: only the first e is yellow
        ("speed", "erase", (1, 0, 1, 1, 0)),  # two unmatched e's: both yellow
        ("speed", "steep", (2, 1, 2, 2, 0)),
        ("abbey", "babes", (1, 1, 2, 2, 0)),  # the green b uses one b, the other b is yellow
        ("eerie", "there", (1, 0, 1, 0, 2)),  # the green e uses one e, one yellow left
        ("llama", "hello", (1, 1, 0, 0, 0)),
        ("geese", "those", (0, 0, 0, 2, 2)),  # the only e is green: the others grey
        ("crane", "crane", (2, 2, 2, 2, 2)),
    ],
)
def test_wordle_feedback_duplicate_letters(guess, answer, expected):
    assert feedback(guess, answer) == expected


def _reference_feedback(guess: str, answer: str) -> tuple[int, ...]:
    out = [0] * 5
    left: dict[str, int] = {}
    for g, a in zip(guess, answer):
        if g != a:
            left[a] = left.get(a, 0) + 1
    for i, (g, a) in enumerate(zip(guess, answer)):
        if g == a:
            out[i] = 2
        elif left.get(g, 0) > 0:
            out[i] = 1
            left[g] -= 1
    return tuple(out)


def test_vectorised_feedback_matches_reference():
    rng = np.random.default_rng(0)
    g = [ALLOWED[i] for i in rng.integers(len(ALLOWED), size=300)]
    a = [WORDS[i] for i in rng.integers(len(WORDS), size=300)]
    codes = feedback_codes(g, a)
    for i in range(300):
        ref = _reference_feedback(g[i], a[i])
        assert int(codes[i, i]) == sum(c * 3**k for k, c in enumerate(ref)), (g[i], a[i])
    assert feedback_table().shape == (len(ALLOWED), len(WORDS))


def test_wordle_episode_texts_and_rewards():
    assert len(WORDS) >= 500 and set(WORDS) <= set(ALLOWED)
    env = WordleEnv()
    env.reset(seed=0, options={"target": "abide"})
    _, r, term, _, info = env.step("speed")
    assert info["turns"][-1].text == "s grey, p grey, e yellow, e grey, d yellow."
    assert (r, term) == (-1.0, False)
    _, r, _, _, info = env.step("xyzzy")
    assert (r, info["turns"][-1].text) == (-1.0, "not in word list.")
    _, r, _, _, info = env.step("hello there")
    assert (r, info["valid"]) == (-1.0, False)
    _, r, term, trunc, info = env.step("Guess ABIDE!")
    assert (r, term, trunc, info["success"]) == (0.0, True, False, True)
    assert info["turns"][-1].text.endswith("you got it!")
    env.reset(seed=0, options={"target": "abide"})
    for k in range(6):
        _, _, term, trunc, _ = env.step("crane")
    assert trunc and not term


def test_wordle_policies_use_feedback():
    env = WordleEnv()
    for name in ("consistent", "expert"):
        eps = [play_episode(env, env.policies()[name], s) for s in range(30)]
        assert np.mean([e.success for e in eps]) >= 0.95, name


# --------------------------------------------------------------------------- maze
def test_maze_layout_walls_and_moves():
    t = maze_tables(LAYOUT)
    assert len(t.cells) >= 20
    env = MazeFOEnv()
    obs, _ = env.reset(seed=0, options={"start": (1, 1)})
    assert obs == "env: find the goal. you are at row 1, column 1. the goal is at row 5, column 7. walls: up, left."
    _, r, term, _, info = env.step("go up")  # bump: stay, pay a step
    assert (r, term) == (-1.0, False)
    assert info["turns"][-1].text.startswith("you bumped into a wall. you are at row 1, column 1.")
    _, r, _, _, info = env.step("Right")
    assert info["turns"][-1].text == (
        "you moved right. you are at row 1, column 2. the goal is at row 5, column 7. walls: up, down."
    )
    assert env.position == (1, 2) and env.hidden_state() == {"start": (1, 1)}
    _, r, _, _, info = env.step("jump")
    assert (r, info["valid"], env.position) == (-1.0, False, (1, 2))
    assert [parse_move(u) for u in ("move left.", "go west", "please step down", "up", "left right", "")] == [
        2, 2, 1, 0, None, None]


def test_maze_reaching_goal_and_truncation():
    env = MazeFOEnv()
    env.reset(seed=0, options={"start": (4, 7)})
    _, r, term, _, info = env.step(move_text(1))
    assert (r, term, info["success"]) == (0.0, True, True)
    env = MazePOEnv(max_steps=3)
    env.reset(seed=0)
    for _ in range(3):
        _, _, term, trunc, _ = env.step("move up")
    assert trunc and not term


def test_maze_po_observation_carries_no_position():
    env = MazePOEnv()
    for name in ("random", "expert", "stitch"):
        for s in range(10):
            ep = play_episode(env, env.policies()[name], s)
            for t in ep.turns:
                if t.speaker == ENV:
                    assert not any(ch.isdigit() for ch in t.text) and "row" not in t.text, t.text
    obs, _ = env.reset(seed=3)
    assert obs.startswith("env: find the goal. walls:")


def test_maze_po_belief_always_holds_the_true_position():
    env = MazePOEnv()
    pols = env.policies()
    for s in range(20):
        _, info = env.reset(seed=s)
        behaviour = pols["noisy"](env, policy_rng(s))
        tracker = BeliefMover(LAYOUT, np.random.default_rng(0))
        done = False
        while not done:
            belief = tracker.update(info["turns"])
            assert belief >> env.tables.index[env.position] & 1
            _, _, term, trunc, info = env.step(behaviour.act(info["turns"]))
            done = term or trunc


def test_maze_expert_values_are_exact():
    t = maze_tables(LAYOUT)
    starts = [c for c in range(len(t.cells)) if c != t.goal]
    fo = 1.0 - np.mean([t.dist[c] for c in starts])
    pol = belief_policy(LAYOUT)
    po = 1.0 - np.mean([pol[sum(1 << x for x in starts if t.walls[x] == t.walls[c])][1] for c in starts])
    assert fo == pytest.approx(-252 / 41) and po == pytest.approx(-294 / 41)
    assert envs.reference_returns("dialogue_rl/MazeFO-v0").expert == pytest.approx(fo, abs=0.005)
    assert envs.reference_returns("dialogue_rl/MazePO-v0").expert == pytest.approx(fo, abs=0.005)  # oracle
    # played returns agree with the exact values over many starts
    assert _returns(MazePOEnv(), "expert", 400).mean() == pytest.approx(po, abs=0.5)


# -------------------------------------------------------------- all scripted games
def _ordering(env_id: str, n: int) -> dict[str, float]:
    cls, mid = SCRIPTED[env_id]
    env = cls()
    means = {name: float(_returns(env, name, n).mean()) for name in ("random", mid, "expert")}
    assert means["expert"] > means[mid] > means["random"], means
    return means


@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_expert_beats_mid_level_beats_random(env_id):
    _ordering(env_id, 60)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_expert_beats_mid_level_beats_random_300(env_id):
    _ordering(env_id, 300)


@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_reference_returns_within_ci(env_id):
    """Means of 200 seeded episodes: the constants lie in their 95% CI."""
    cls, _ = SCRIPTED[env_id]
    env = cls()
    ref = envs.reference_returns(env_id)
    for name, value in (("random", ref.random), (REFERENCE_EXPERT.get(env_id, "expert"), ref.expert)):
        lo, hi = _ci(_returns(env, name, 200))
        assert lo - 0.01 <= value <= hi + 0.01, (name, value, lo, hi)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_reference_returns_recomputed_exactly(env_id):
    """The constants are the means over seeds 0..999 (rounded to 0.01); the maze experts'
    are exact expectations (test_maze_expert_values_are_exact), so only inside the CI."""
    cls, _ = SCRIPTED[env_id]
    env = cls()
    ref = envs.reference_returns(env_id)
    for name, value in (("random", ref.random), (REFERENCE_EXPERT.get(env_id, "expert"), ref.expert)):
        r = _returns(env, name, 1000)
        if "Maze" in env_id and name != "random":
            lo, hi = _ci(r)
            assert lo <= value <= hi, (name, value, lo, hi)
        else:
            assert r.mean() == pytest.approx(value, abs=0.006), name


@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_vocabulary_covers_played_episodes(env_id):
    cls, _ = SCRIPTED[env_id]
    env = cls()
    tok = WordTokenizer.from_words(env.vocabulary())
    texts: list[str] = []
    for factory in env.policies().values():
        for s in range(8):
            texts += [t.text for t in play_episode(env, factory, s).turns]
    texts.append(NOT_UNDERSTOOD)
    if cls is TwentyQuestionsEnv:
        texts += list(QUESTION_TEXTS) + [guess_text(o) for o in OBJECTS]
    if cls is WordleEnv:
        texts += list(ALLOWED)
    for text in texts:
        assert tok.unk_token_id not in tok.encode(text), text
        assert join_pieces(pre_tokenize(text)) == text, text  # canonical text


@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_policies_follow_any_history(env_id):
    """Stitched or noisy histories: every policy still acts from the turns alone."""
    cls, _ = SCRIPTED[env_id]
    env = cls()
    pols = env.policies()
    for name in pols:
        _, info = env.reset(seed=5)
        rnd = pols["random"](env, policy_rng(5))
        for _ in range(2):
            *_, info = env.step(rnd.act(info["turns"]))
        pol = pols[name](env, policy_rng(6))
        u = pol.act(info["turns"])
        assert isinstance(u, str) and u


def _steps_per_second(env, seconds: float = 1.0) -> float:
    random_policy = env.policies()["random"]
    steps, seed, t0 = 0, 0, time.process_time()  # CPU time: robust to a busy machine
    while time.process_time() - t0 < seconds:
        _, info = env.reset(seed=seed)
        pol = random_policy(env, policy_rng(seed))
        seed += 1
        done = False
        while not done:
            _, _, term, trunc, info = env.step(pol.act(info["turns"]))
            steps += 1
            done = term or trunc
    return steps / (time.process_time() - t0)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(SCRIPTED))
def test_random_agent_throughput(env_id):
    cls, _ = SCRIPTED[env_id]
    env = cls()
    feedback_table()  # one-off precomputation, not per step
    rate = _steps_per_second(env)
    assert rate >= 10_000, f"{env_id}: {rate:.0f} utterance steps/s"


# ---------------------------------------------------------------------- textworld
def test_textworld_ids_registered_only_with_the_extra():
    tw_ids = [i for i in envs.env_ids() if "TextWorld" in i]
    assert bool(tw_ids) == textworld_available()


def test_clean_text_strips_banner_prompt_and_menu():
    raw = (
        "\n  ________  __\n |  $$$$$$\\| $$\n\nHello, TextWorld!\n\n-= Spare Room =-\nAn exit.\n\n> "
        "\n*** The End ***\nWould you like to RESTART, RESTORE a saved game?"
    )
    out = clean_text(raw)
    assert out == "hello, textworld! spare room. an exit. the end."
    assert join_pieces(pre_tokenize(out)) == out


@pytest.fixture(scope="module")
def tw_env():
    if not textworld_available():
        pytest.skip("textworld is not installed (optional extra: pip install -e '.[textworld]')")
    from envs.textworld_games import TextWorldEnv

    env = TextWorldEnv(challenge="coin_collector", level=5, game_seeds=(0,), max_turns=30)
    yield env
    env.close()


def test_textworld_reset_step_score(tw_env):
    obs, info = tw_env.reset(seed=0)
    assert "$$" not in obs and "textworld" in obs
    assert info["admissible_commands"] and all(c == c.lower() for c in info["admissible_commands"])
    assert info["max_score"] == 1 and info["score"] == 0
    before = list(info["admissible_commands"])
    _, r, term, _, info = tw_env.step("dance wildly")
    assert (r, term, info["valid"]) == (0.0, False, False)
    assert info["admissible_commands"] == before  # the game was not touched
    ep = play_episode(tw_env, tw_env.policies()["expert"], seed=0)
    assert ep.success and ep.ret == 1.0 and ep.terminated
    assert ep.agent_turns == len(tw_env.walkthrough)
    assert tw_env.reward_of(ep.turns, seed=0) == [t.reward for t in ep.turns]
    clone = copy.deepcopy(tw_env)  # engines are dropped, the copy resets fine
    clone.reset(seed=0)
    clone.close()


def test_textworld_policies_and_vocabulary(tw_env):
    tok = WordTokenizer.from_words(tw_env.vocabulary())
    pols = tw_env.policies()
    assert {"random", "noisy", "expert", "stitch"} <= set(pols)
    rets = {}
    for name, factory in pols.items():
        eps = [play_episode(tw_env, factory, s) for s in range(6)]
        rets[name] = np.mean([e.ret for e in eps])
        for e in eps:
            for t in e.turns:
                assert tok.unk_token_id not in tok.encode(t.text), t.text
                assert join_pieces(pre_tokenize(t.text)) == t.text
    assert rets["expert"] == 1.0 and rets["expert"] >= rets["random"]


@pytest.mark.slow
def test_textworld_reference_returns():
    if not textworld_available():
        pytest.skip("textworld is not installed")
    import gymnasium as gym

    for env_id in [i for i in envs.env_ids() if "TextWorld" in i]:
        env = gym.make(env_id).unwrapped
        ref = envs.reference_returns(env_id)
        lo, hi = _ci(_returns(env, "random", 300))
        assert lo - 0.01 <= ref.random <= hi + 0.01, (env_id, ref.random, lo, hi)
        assert _returns(env, "expert", 20).mean() == pytest.approx(ref.expert)
        env.close()


def test_turn_dataclass_round_trip_of_played_text_games():
    env = WordleEnv()
    ep = play_episode(env, env.policies()["expert"], 3)
    rows = [t.to_dict() for t in ep.turns]
    assert [Turn.from_dict(d) for d in rows] == ep.turns
    assert ep.turns[0].speaker == ENV and ep.turns[1].speaker == AGENT

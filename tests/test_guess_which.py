"""GuessWhich (envs/guess_which.py): answerer, ranker, grammar, rewards, policies, constants."""

from __future__ import annotations

import math
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.core import AGENT, CHARSET, NOT_UNDERSTOOD, SwitchPolicy, Turn, play_episode, policy_rng
from envs.guess_which import (
    ANSWERS,
    CAPTION_COUNT_PROB,
    CAPTION_N_ATTRS,
    GRAMMAR_WORDS,
    N_ATTRS,
    REFERENCE_RETURNS,
    Caption,
    EpisodeSetup,
    ExpertQuestioner,
    GuessWhichEnv,
    PoolRanker,
    Question,
    SceneObject,
    answer_ids,
    answer_loglik,
    answer_set,
    default_bank,
    encode_scene,
    gid,
    parse_question,
    percentile_of,
    random_question,
    render_question,
    sample_scenes,
    yes_no_hit,
)
from envs.token_view import WordTokenizer, join_pieces, pre_tokenize

ENV_ID = "dialogue_rl/GuessWhich-v0"


def obj(text: str) -> SceneObject:
    """``"big red metal cube left"`` -> SceneObject."""
    size, color, material, shape, position = text.split()
    return SceneObject(color=color, shape=shape, size=size, material=material, position=position)


def scene(*objects: str) -> np.ndarray:
    return encode_scene([obj(o) for o in objects])


SCENE = scene("big red metal cube left", "small blue rubber sphere middle", "small red rubber cylinder right")


def ask(scenes: np.ndarray, text: str) -> str:
    q = parse_question(text)
    assert q is not None, text
    return ANSWERS[int(answer_ids(scenes, q))]


# ----------------------------------------------------------------------------- answerer
@pytest.mark.parametrize(
    "question, answer",
    [
        ("is there a red object?", "yes."),
        ("are there any green things?", "no."),
        ("is there a metal cylinder?", "no."),
        ("is anything on the left?", "yes."),
        ("how many red objects are there?", "2."),
        ("how many objects are there?", "3."),
        ("how many spheres are there?", "1."),
        ("how many yellow cubes are there?", "0."),
        ("what color is the sphere?", "blue."),
        ("what color is the small object?", "i can not tell."),
        ("what color is the yellow object?", "there is no such object."),
        ("what shape is the left object?", "cube."),
        ("what material is the cylinder?", "rubber."),
        ("what size is the red thing?", "i can not tell."),
        ("where is the blue sphere?", "in the middle."),
        ("is the cube big?", "yes."),
        ("is the sphere metal?", "no."),
        ("is the red object metal?", "i can not tell."),
        ("is the green cube big?", "there is no such object."),
        ("is the red one a cube?", "i can not tell."),
        ("is the small sphere in the middle?", "yes."),
    ],
)
def test_answerer_on_a_hand_built_scene(question, answer):
    assert ask(SCENE, question) == answer


def test_answers_are_in_the_answer_set_and_bank_matches_single_questions():
    rng = np.random.default_rng(0)
    scenes = sample_scenes(rng, 300)
    bank = default_bank()
    table = bank.answers(scenes)
    for i, q in enumerate(bank.questions):
        single = answer_ids(scenes, q)
        assert (table[:, i] == single).all(), q
        assert set(single.tolist()) <= set(answer_set(q)), q
    for _ in range(300):  # questions outside the bank too
        q = random_question(rng)
        assert set(answer_ids(scenes, q).tolist()) <= set(answer_set(q)), q


# ------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(
    "a, b",
    [
        ("are there any red things?", "is there a red object?"),
        ("Is there a RED item", "is there a red object?"),
        ("is anything on the left?", "is there an object on the left?"),
        ("do you see a shiny ball?", "is there a metal sphere?"),
        ("how many large blocks are there?", "how many big cubes are there?"),
        ("how many things are in the picture?", "how many objects are there?"),
        ("what colour is the ball?", "what color is the sphere?"),
        ("which shape does the left object have?", "what shape is the object on the left?"),
        ("what is the color of the object in the center?", "what color is the object in the middle?"),
        ("where is the grey block?", "where is the gray cube?"),
        ("is the large cube a metallic one?", "is the big cube metal?"),
        ("is the cube on the left big?", "is the cube on the left big?"),
    ],
)
def test_paraphrases_parse_to_the_same_question(a, b):
    assert parse_question(a) is not None and parse_question(a) == parse_question(b)


@pytest.mark.parametrize(
    "text",
    ["", "hello", "is it red?", "is there a red blue cube?", "what is the sphere?", "how red?",
     "is the big cube?", "what color shape is it?", "xyzzy cube?", "red", "many many", "is the red?"],
)
def test_unparseable_text_is_not_understood(text):
    assert parse_question(text) is None


def test_rendered_questions_round_trip_and_are_canonical():
    rng = np.random.default_rng(1)
    qs = default_bank().questions + [random_question(rng) for _ in range(2000)]
    for q in qs:
        text = render_question(q)
        assert parse_question(text) == q, text
        assert join_pieces(pre_tokenize(text)) == text and set(text) <= set(CHARSET)
    for a in ANSWERS:
        assert join_pieces(pre_tokenize(a)) == a


def test_unparseable_utterance_gets_the_variant_penalty_and_changes_nothing():
    for reward, penalty in (("percentile", 0.0), ("final", 0.0), ("turns", -1.0)):
        env = GuessWhichEnv(reward=reward)
        env.reset(seed=3)
        before, beliefs = env.hidden_state(), env.beliefs()
        _, r, term, trunc, info = env.step("what is the meaning of life?")
        assert (r, term, info["valid"]) == (penalty, False, False)
        assert info["turns"][-1].text == NOT_UNDERSTOOD
        assert env.hidden_state() == before and np.array_equal(env.beliefs(), beliefs)
    assert GuessWhichEnv(invalid_penalty=-0.5).invalid_penalty == -0.5


# ----------------------------------------------------------------------- caption model
def test_caption_text_round_trips_and_its_likelihood_is_exact():
    target = scene("big red metal cube left", "small red rubber sphere right", "small blue rubber cube left")
    rng = np.random.default_rng(0)
    n_draws = 20000
    freq = Counter(Caption.sample(rng, target) for _ in range(n_draws))
    n = 3
    n_subsets = {k: math.comb(N_ATTRS, k) for k in CAPTION_N_ATTRS}
    for cap, count in freq.items():
        assert Caption.parse(cap.text) == cap
        k = len(cap.description)
        m = int(np.exp(cap.loglik(target)) * n + 0.5)  # loglik = log(m / n)
        exact = (CAPTION_COUNT_PROB if cap.count is not None else 1 - CAPTION_COUNT_PROB)
        exact *= (1 / len(CAPTION_N_ATTRS)) / n_subsets[k] * m / n
        assert abs(count / n_draws - exact) < 4 * math.sqrt(exact / n_draws) + 1e-3, (cap.text, count, exact)
    # the likelihood ratio between two scenes is the exact one (constants cancel)
    other = scene("small red rubber sphere right")
    cap = Caption(None, (gid("color", "red"),))
    assert cap.loglik(other) - cap.loglik(target) == pytest.approx(math.log(1.0 / (2 / 3)))
    assert Caption(2, (gid("color", "red"),)).loglik(target) == -np.inf


# ---------------------------------------------------------------------------- ranking
def test_percentile_counts_strictly_lower_plus_half_the_ties():
    assert percentile_of(np.array([0.0, -1.0, 0.0, 1.0, -np.inf]), 0) == pytest.approx((2 + 0.5) / 4)
    assert percentile_of(np.array([-2.0, -1.0, -3.0]), 1) == 1.0
    assert percentile_of(np.zeros(16), 5) == 0.5
    assert percentile_of(np.array([0.0, 1e-12]), 0) == 0.5  # within TIE_TOL


def test_ranker_on_hand_built_pool():
    pool = np.stack([
        scene("big red metal cube left", "small blue rubber sphere middle"),  # target: red 1 of 2
        scene("small red rubber sphere right"),  # red 1 of 1: more likely
        scene("big blue metal cube left"),  # no red: impossible
        scene("big red metal cube right", "small green rubber sphere left"),  # tie
    ])
    ranker = PoolRanker(pool, 0, Caption(None, (gid("color", "red"),)), noise=0.0)
    assert ranker.percentile() == pytest.approx(1.5 / 3)
    assert ranker.ranking() == [1, 0, 3, 2]
    q = parse_question("how many objects are there?")
    ranker.observe(q, ANSWERS.index("2."))
    assert ranker.percentile() == pytest.approx(2.5 / 3)
    q = parse_question("what color is the sphere?")
    ranker.observe(q, ANSWERS.index("blue."))
    assert ranker.percentile() == 1.0
    assert ranker.beliefs() == pytest.approx([1, 0, 0, 0])


def test_noisy_answer_likelihood_matches_the_answerer():
    noise = 0.3
    pool = np.stack([SCENE, scene("small green rubber cube left")])
    setup = EpisodeSetup(pool, 0, Caption(None, (gid("color", "red"),)))
    env = GuessWhichEnv(answer_noise=noise)
    q_text = "what color is the sphere?"
    q = parse_question(q_text)
    counts = Counter()
    n_eps = 2000
    for seed in range(n_eps):
        env.reset(seed=seed, options={"setup": setup})
        _, r, *_ = env.step(q_text)
        counts[env.turns[-1].text] += 1
    truth = answer_ids(SCENE, q)
    for a in answer_set(q):
        exact = math.exp(answer_loglik(np.array([truth]), q, a, noise)[0])
        assert abs(counts[ANSWERS[a]] / n_eps - exact) < 4 * math.sqrt(exact / n_eps) + 1e-3, ANSWERS[a]
    total = sum(math.exp(answer_loglik(np.array([truth]), q, a, noise)[0]) for a in answer_set(q))
    assert total == pytest.approx(1.0)


def test_public_beliefs_and_ranking_agree_with_the_percentile():
    env = GuessWhichEnv()
    env.reset(seed=11)
    questions = ("how many objects are there?", "is there a red object?", "what shape is the left object?")
    for text in questions:
        env.step(text)
        b = env.beliefs()
        assert b.sum() == pytest.approx(1.0) and len(env.pool) == env.pool_size == len(b)
        ranked = env.ranking()
        assert [i for i, _ in ranked] == sorted(range(len(b)), key=lambda i: (-b[i], i))
        target = env.setup.target
        if env.percentile == 1.0:
            assert ranked[0][0] == target


# ----------------------------------------------------------------------------- rewards
def test_yes_no_penalty_kinds():
    assert yes_no_hit("hard", "yes.") and yes_no_hit("hard", "no.")
    assert not yes_no_hit("hard", "there is no such object.") and not yes_no_hit("hard", "2.")
    assert yes_no_hit("soft", "there is no such object.") and not yes_no_hit("soft", "i can not tell.")
    assert yes_no_hit("conservative", "i can not tell.") and yes_no_hit("conservative", "yes.")
    assert not any(yes_no_hit(k, "red.") for k in ("hard", "soft", "conservative", None))


@pytest.mark.parametrize("kind", [None, "hard", "soft", "conservative"])
def test_yes_no_penalty_is_added_to_the_turn_reward(kind):
    pool = np.stack([SCENE, scene("small green rubber cube left"), scene("big red metal cube middle")])
    setup = EpisodeSetup(pool, 0, Caption(None, (gid("color", "red"),)))
    base, env = GuessWhichEnv(), GuessWhichEnv(yes_no_penalty=kind)
    questions = (
        "is there a red object?", "what color is the small object?", "what color is the yellow thing?",
        "how many objects are there?", "is the cube big?",
    )
    for text in questions:
        base.reset(options={"setup": setup})
        env.reset(options={"setup": setup})
        _, r0, *_ = base.step(text)
        _, r, *_ = env.step(text)
        answer = env.turns[-1].text
        assert r == pytest.approx(r0 + (-2.0 if yes_no_hit(kind, answer) else 0.0)), (text, answer)


def test_percentile_and_final_rewards():
    for seed in range(20):
        env, fin = GuessWhichEnv(), GuessWhichEnv(reward="final")
        ep = play_episode(env, env.policies()["novice"], seed)
        ep_f = play_episode(fin, fin.policies()["novice"], seed)
        assert [t.text for t in ep.turns] == [t.text for t in ep_f.turns]
        p0, pT = env.initial_percentile, env.percentile
        assert ep.ret == pytest.approx(pT - p0) and ep_f.ret == pytest.approx(pT - p0)
        agent_rewards = [t.reward for t in ep_f.turns if t.speaker == AGENT]
        assert agent_rewards[:-1] == [0.0] * (len(agent_rewards) - 1)
        assert ep.agent_turns == env.max_questions and ep.success == (pT == 1.0)


def test_turns_variant_ends_once_half_the_gap_is_closed():
    n_early = 0
    for seed in range(40):
        env = GuessWhichEnv(reward="turns")
        _, info = env.reset(seed=seed)
        policy = env.policies()["random" if seed % 2 else "oracle"](env, policy_rng(seed))
        p0, done, rewards = env.initial_percentile, False, []
        while not done:
            _, r, term, trunc, info = env.step(policy.act(info["turns"]))
            done = term or trunc
            goal = p0 == 1.0 or (env.percentile - p0) / (1 - p0) >= 0.5
            last = info["agent_turns"] == env.max_questions
            assert term == (goal or last) and not trunc
            assert info["success"] == goal if term else True
            rewards.append(r)
        assert rewards == [-1.0] * (len(rewards) - 1) + [0.0]
        n_early += len(rewards) < env.max_questions
    assert n_early > 10


def _noisy_policy(factory, p_garbage=0.3):
    """Wraps a policy so that some turns are garbage (unparseable) utterances."""

    def make(env, rng):
        pol = factory(env, rng)

        class Wrapped:
            def act(self, turns):
                return "blah blah?" if rng.random() < p_garbage else pol.act(turns)

        return Wrapped()

    return make


@pytest.mark.parametrize("reward", ["percentile", "final", "turns"])
@pytest.mark.parametrize("yes_no", [None, "hard", "soft", "conservative"])
def test_reward_of_equals_the_rewards_seen_while_playing(reward, yes_no):
    for noise in (0.0, 0.2):
        env = GuessWhichEnv(reward=reward, yes_no_penalty=yes_no, answer_noise=noise)
        pols = env.policies()
        for seed in range(6):
            name = ("random", "novice", "expert", "oracle")[seed % 4]
            ep = play_episode(env, _noisy_policy(pols[name]), seed)
            logged = [t.reward for t in ep.turns]
            env2 = GuessWhichEnv(reward=reward, yes_no_penalty=yes_no, answer_noise=noise)

            def _no_answerer(*_a, **_k):
                raise AssertionError("reward_of must not call the answerer")

            env2._respond = _no_answerer  # type: ignore[method-assign]
            assert env2.reward_of(ep.turns, seed=seed) == logged, (name, seed)
            assert env.reward_of([t.to_dict() for t in ep.turns], seed=None) == logged


def test_reward_of_relabels_another_variant_and_rejects_foreign_logs():
    env = GuessWhichEnv()
    ep = play_episode(env, env.policies()["random"], 5)
    hard = GuessWhichEnv(yes_no_penalty="hard")
    relabelled = hard.reward_of(ep.turns, seed=5)
    expected = [
        t.reward + (-2.0 if t.speaker == AGENT and ep.turns[i + 1].text in ("yes.", "no.") else 0.0)
        for i, t in enumerate(ep.turns)
    ]
    assert relabelled == pytest.approx(expected)
    with pytest.raises(ValueError):
        env.reward_of(ep.turns, seed=6)  # another caption
    bad = list(ep.turns)
    bad[2] = Turn("env", "purple.")  # not an answer to the first question (unless it is a color query)
    if parse_question(bad[1].text).kind != "query":
        with pytest.raises(ValueError):
            env.reward_of(bad, seed=5)


# ------------------------------------------------------------------------------ policies
def test_determinism_same_seed_same_transcript():
    for noise in (0.0, 0.25):
        env = GuessWhichEnv(answer_noise=noise)
        for name, factory in env.policies().items():
            a, b = play_episode(env, factory, 42), play_episode(env, factory, 42)
            assert a.turns == b.turns and a.ret == b.ret, name
            env.reset(seed=42)
            h = env.hidden_state()
            env.reset(seed=42)
            assert env.hidden_state() == h


def test_gymnasium_make_and_registered_constants():
    env = gym.make(ENV_ID).unwrapped
    assert isinstance(env, GuessWhichEnv)
    assert envs.reference_returns(ENV_ID) == REFERENCE_RETURNS


def test_vocabulary_covers_every_utterance():
    vocab = GuessWhichEnv.vocabulary()
    assert set(GRAMMAR_WORDS) <= set(vocab)
    tok = WordTokenizer.from_words(vocab)
    env = GuessWhichEnv(answer_noise=0.2)
    pols = env.policies()
    for seed in range(80):
        ep = play_episode(env, pols[("random", "novice", "expert", "oracle")[seed % 4]], seed)
        for t in ep.turns:
            assert tok.unk_token_id not in tok.encode(t.text), t.text
            assert tok.decode(tok.encode(t.text)) == t.text
    assert tok.unk_token_id not in tok.encode(NOT_UNDERSTOOD)


def test_expert_reads_stitched_dialogues_and_handles_noise():
    env = GuessWhichEnv(answer_noise=0.1)
    pols = env.policies()
    for seed in range(6):
        ep = play_episode(env, lambda e, r: SwitchPolicy(pols["random"](e, r), pols["expert"](e, r), 2), seed)
        assert ep.agent_turns == 5 and all(parse_question(t.text) for t in ep.turns if t.speaker == AGENT)


def test_expert_never_sees_the_pool():
    """The expert's questions depend on the turns only: two envs with different pools but the
    same caption and the same answers get the same questions."""
    cap = Caption(None, (gid("shape", "cube"),))
    target = scene("big red metal cube left", "small blue rubber sphere middle")
    rng = np.random.default_rng(0)
    pools = [np.concatenate([target[None], sample_scenes(rng, 15)]) for _ in range(2)]
    transcripts = []
    for pool in pools:
        env = GuessWhichEnv()
        _, info = env.reset(options={"setup": EpisodeSetup(pool, 0, cap)})
        expert = ExpertQuestioner(np.random.default_rng(7))
        done = False
        while not done:
            _, _, term, trunc, info = env.step(expert.act(info["turns"]))
            done = term or trunc
        transcripts.append([t.text for t in info["turns"]])
    assert transcripts[0] == transcripts[1]


def _returns(name: str, seeds: range) -> np.ndarray:
    env = GuessWhichEnv()
    factory = env.policies()[name]
    return np.array([play_episode(env, factory, s).ret for s in seeds])


def _ci(x: np.ndarray) -> float:
    return 1.96 * x.std(ddof=1) / math.sqrt(len(x))


def _check_ordering(n: int) -> None:
    seeds = range(n)
    r = {name: _returns(name, seeds) for name in ("random", "novice", "expert")}
    for hi, lo in (("expert", "novice"), ("novice", "random")):
        d = r[hi] - r[lo]  # paired by seed: same pool, target and caption
        assert d.mean() > _ci(d), (hi, lo, d.mean(), _ci(d))


def test_policy_ordering_expert_novice_random_fast():
    _check_ordering(200)


@pytest.mark.slow
def test_policy_ordering_expert_novice_random_500():
    _check_ordering(500)


def test_reference_returns_recomputed_fast():
    for name, ref in (("random", REFERENCE_RETURNS.random), ("oracle", REFERENCE_RETURNS.expert)):
        r = _returns(name, range(1000, 1300))
        assert abs(r.mean() - ref) <= _ci(r), (name, r.mean(), ref)


@pytest.mark.slow
def test_reference_returns_recomputed_exactly():
    assert _returns("random", range(1000)).mean() == pytest.approx(REFERENCE_RETURNS.random, abs=5e-5)
    assert _returns("oracle", range(1000)).mean() == pytest.approx(REFERENCE_RETURNS.expert, abs=5e-5)
    expert = _returns("expert", range(1000))
    assert abs(expert.mean() - REFERENCE_RETURNS.expert) <= _ci(expert)


def test_questions_asked_by_policies_are_grammatical():
    env = GuessWhichEnv()
    for name, factory in env.policies().items():
        for seed in range(5):
            ep = play_episode(env, factory, seed)
            assert all(parse_question(t.text) is not None for t in ep.turns if t.speaker == AGENT), name


def test_question_dataclass_defaults():
    assert Question("count") == parse_question("how many objects are there?")


def test_policies_avoid_the_yes_no_penalty_when_it_is_set():
    env = GuessWhichEnv(yes_no_penalty="hard")
    for seed in range(10):
        ep = play_episode(env, env.policies()["oracle"], seed)
        assert not any(t.text in ("yes.", "no.") for t in ep.turns[2::2])
    expert = np.mean([play_episode(env, env.policies()["expert"], s).ret for s in range(30)])
    random = np.mean([play_episode(env, env.policies()["random"], s).ret for s in range(30)])
    assert expert > random + 1.0


def test_sample_setup_fast_path_draws_the_same_pools_as_the_resampling_loop():
    """The vectorised distinctness check must not change the random stream: compare with
    the plain loop (resample every scene equal to an earlier one), duplicates included."""
    from envs.guess_which import _scene_key, sample_scenes, sample_setup

    def reference(rng, pool_size):
        pool = sample_scenes(rng, pool_size)
        seen = set()
        for k in range(pool_size):
            key = _scene_key(pool[k])
            while key in seen:
                pool[k] = sample_scenes(rng, 1)[0]
                key = _scene_key(pool[k])
            seen.add(key)
        return pool, int(rng.integers(pool_size))

    resampled = 0
    for seed in range(60):
        for size in (16, 300):  # 300 scenes: duplicate one-object scenes are frequent
            a = sample_setup(np.random.default_rng(seed), size)
            pool, target = reference(np.random.default_rng(seed), size)
            assert np.array_equal(a.pool, pool) and a.target == target
            resampled += size == 300 and not np.array_equal(pool, sample_scenes(np.random.default_rng(seed), size))
    assert resampled > 0  # the slow path really ran

"""Bradley–Terry reward model: loss by hand, pair construction, label noise, learning."""

import math

import numpy as np
import pytest
import torch

from dialogue_rl.algos import LEARNERS
from dialogue_rl.algos.reward_model import RewardModel, bt_loss, last_token_index, pair_accuracy
from dialogue_rl.data.preferences import (
    add_label_noise, build_pairs, collate_pairs, group_keys, preference_pairs, replay_rows, tokenize_pairs,
)
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.train import TrainConfig, fit
from envs.core import play_episode
from tests.toy_envs import GuessNumberEnv

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


def test_bt_loss_hand_computed():
    rc, rr = torch.tensor([2.0, 0.0, -1.0]), torch.tensor([1.0, 0.0, 1.0])
    expected = [-math.log(1 / (1 + math.exp(-1.0))), math.log(2.0), -math.log(1 / (1 + math.exp(2.0)))]
    assert bt_loss(rc, rr).tolist() == pytest.approx(expected, rel=1e-6)
    # large margins stay finite (softplus form)
    assert torch.isfinite(bt_loss(torch.tensor([-200.0]), torch.tensor([200.0]))).all()


def _row(seed, opening, ret):
    return {"seed": seed, "return": ret,
            "turns": [{"speaker": "env", "text": opening, "reward": 0.0},
                      {"speaker": "agent", "text": "x", "reward": ret}]}


ROWS = [_row(0, "a", 1.0), _row(1, "a", 0.0), _row(2, "b", 0.5), _row(3, "b", 0.5), _row(0, "b", 0.2),
        _row(4, "c", 3.0)]


def test_group_keys():
    assert group_keys(ROWS, "seed") == [0, 1, 2, 3, 0, 4]
    assert group_keys(ROWS, "opening") == ["a", "a", "b", "b", "b", "c"]
    assert group_keys(ROWS, "none") == [0] * 6
    with pytest.raises(ValueError, match="group_by"):
        group_keys(ROWS, "turns")


def test_pairs_within_groups_ranked_by_return_ties_and_gaps_excluded():
    rets = [r["return"] for r in ROWS]
    by_opening = build_pairs(rets, group_keys(ROWS, "opening"), np.random.default_rng(0), pairs_per_row=5)
    # group a: (0 > 1); group b: 2 and 3 tie (never a pair), both beat 4; group c: a single row
    assert sorted(map(tuple, by_opening.tolist())) == [(0, 1), (2, 4), (3, 4)]
    by_seed = build_pairs(rets, group_keys(ROWS, "seed"), np.random.default_rng(0), pairs_per_row=5)
    assert by_seed.tolist() == [[0, 4]]  # seed 0 is the only seed played twice
    gap = build_pairs(rets, group_keys(ROWS, "opening"), np.random.default_rng(0), min_gap=0.5, pairs_per_row=5)
    assert gap.tolist() == [[0, 1]]  # 0.5 - 0.2 = 0.3 is not above the gap
    for c, r in by_opening:
        assert rets[c] > rets[r]


def test_pairs_per_row_bounds_partners_and_is_seeded():
    rets = list(range(20))
    keys = [0] * 20
    a = build_pairs(rets, keys, np.random.default_rng(3), pairs_per_row=2)
    b = build_pairs(rets, keys, np.random.default_rng(3), pairs_per_row=2)
    assert np.array_equal(a, b)
    assert 20 <= len(a) <= 40 and len({tuple(p) for p in a.tolist()}) == len(a)


def test_label_noise_flips_the_seeded_fraction():
    pairs = np.stack([np.arange(10_000), np.arange(10_000) + 10_000], axis=1)
    noisy, flipped = add_label_noise(pairs, 0.2, np.random.default_rng(7))
    expected = np.random.default_rng(7).random(10_000) < 0.2  # the same draws
    assert np.array_equal(flipped, expected)
    assert np.array_equal(noisy[flipped], pairs[flipped][:, ::-1])
    assert np.array_equal(noisy[~flipped], pairs[~flipped])
    assert abs(flipped.mean() - 0.2) < 0.01
    assert add_label_noise(pairs, 0.0, np.random.default_rng(0))[1].sum() == 0
    with pytest.raises(ValueError):
        add_label_noise(pairs, 1.5, np.random.default_rng(0))


def test_preference_pairs_with_noise_swaps_some_labels():
    rows = [_row(i, "o", float(i)) for i in range(200)]
    clean = preference_pairs(rows, group_by="none", pairs_per_row=1, seed=1)
    noisy = preference_pairs(rows, group_by="none", pairs_per_row=1, label_noise=0.5, seed=1)
    assert all(rows[c]["return"] > rows[r]["return"] for c, r in clean)
    wrong = np.mean([rows[c]["return"] < rows[r]["return"] for c, r in noisy])
    assert 0.35 < wrong < 0.65


def _toy_rows(n, seed0):
    env = GuessNumberEnv(n=6, max_turns=6)
    pols = GuessNumberEnv.policies()
    rows = []
    for i in range(n):
        ep = play_episode(env, pols["random" if i % 2 else "expert"], seed0 + i)
        rows.append({"seed": seed0 + i, "return": ep.ret, "terminated": ep.terminated,
                     "turns": [t.to_dict() for t in ep.turns]})
    return rows


def _tok():
    return build_word_tokenizer(GuessNumberEnv.vocabulary(), ["is it 1?", "guess my number from 1 to 6."])


def test_score_reads_the_last_real_token():
    tok = _tok()
    torch.manual_seed(0)
    rm = RewardModel(build_model(TINY, tok))
    pairs = tokenize_pairs(_toy_rows(8, 0), make_codec(tok), 64, group_by="none", pairs_per_row=1)
    batch = collate_pairs([pairs[0]], tok.pad_token_id)
    lengths = batch["lengths"]
    assert last_token_index(batch["attention_mask"]).tolist() == (lengths - 1).tolist()
    alone = rm.score(batch)  # the shorter dialogue is padded to its partner's length
    for i, ex in enumerate((pairs[0]["chosen"], pairs[0]["rejected"])):
        ids = torch.tensor(np.array(ex["input_ids"]))[None]
        solo = rm.score({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        assert solo.item() == pytest.approx(alone[i].item(), abs=1e-5)  # padding does not matter


def test_training_raises_held_out_pair_accuracy_above_chance():
    tok = _tok()
    c = make_codec(tok)
    kw = {"group_by": "none", "pairs_per_row": 2}
    train = tokenize_pairs(_toy_rows(200, 0), c, 64, **kw)
    held = tokenize_pairs(_toy_rows(100, 10_000), c, 64, **kw)
    torch.manual_seed(0)
    rm = RewardModel(build_model(TINY, tok), **kw)
    cfg = TrainConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=10, log_every=1000, checkpoint_every=10**6)
    before = pair_accuracy(rm, held, tok.pad_token_id)
    stats = fit(rm, train, lambda ex: rm.collate(ex, tok.pad_token_id), cfg, torch.device("cpu"), progress=False)
    after = pair_accuracy(rm, held, tok.pad_token_id)
    assert after >= 0.8 and after > before, (before, after, stats["final_metrics"])


def test_registered_with_a_schema():
    from dialogue_rl.config import ALGO_SCHEMAS

    assert LEARNERS["reward_model"] is RewardModel and "reward_model" in ALGO_SCHEMAS
    assert RewardModel.acts is False


def test_replay_gives_same_seed_pairs_with_the_env_return():
    import envs  # noqa: F401  (registers the ids)
    from dialogue_rl.data.generate import DataConfig, generate

    rows = generate(DataConfig(env_id="dialogue_rl/GuessWhich-v0", mixture={"novice": 1.0}, n_train=6,
                               n_validation=1))["train"]
    replayed = replay_rows(rows, ["novice", "expert"], seed=0)
    assert [r["seed"] for r in replayed] == [r["seed"] for r in rows]
    assert all(r["policy"] == "expert" for r in replayed)  # never the row's own policy
    # the replayed first env turn (the caption) is the original's: same seed, same scene
    assert [r["turns"][0] for r in replayed] == [r["turns"][0] for r in rows]
    allrows = rows + replayed
    pairs = preference_pairs(allrows, group_by="seed", pairs_per_row=1)
    for c, r in pairs:
        assert allrows[c]["seed"] == allrows[r]["seed"] and allrows[c]["return"] > allrows[r]["return"]
    n_distinct = sum(a["return"] != b["return"] for a, b in zip(rows, replayed))
    assert len(pairs) == n_distinct

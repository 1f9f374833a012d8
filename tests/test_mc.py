"""MC returns: hand-computed returns-to-go, truncation, loss terms, update, acting, stitching."""

import math

import pytest
import torch

from dialogue_rl.algos import LEARNERS
from dialogue_rl.algos.mc import MC, returns_to_go
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


def _hand_batch():
    # 0 bos | 1 "agent :" | 2 agent word | 3 agent <eou> (r=1) | 4 "env :" | 5 env word | 6 env <eou>
    # | 7 "agent :" | 8 agent word | 9 agent <eou> (r=2, done)
    return {
        "input_ids": torch.tensor([[1, 4, 7, 2, 5, 8, 2, 4, 6, 2]]),
        "attention_mask": torch.ones(1, 10, dtype=torch.long),
        "action_mask": torch.tensor([[0, 0, 1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool),
        "rewards": torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]]),
        "dones": torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]], dtype=torch.bool),
        "next_state": torch.tensor([[0, 1, 2, 7, 4, 5, 6, 7, 8, 9]]),
    }


# gamma 0.5, one step per agent token, the env reply costs no step:
# G_9 = 2, G_8 = 0 + 0.5 * 2 = 1, G_3 = 1 + 0.5 * 1 = 1.5, G_2 = 0 + 0.5 * 1.5 = 0.75
HAND_G = [0.0, 0.0, 0.75, 1.5, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]


def test_returns_to_go_by_hand_skips_environment_tokens():
    g = returns_to_go(_hand_batch(), gamma=0.5)
    assert g.dtype == torch.float32
    assert g[0].tolist() == pytest.approx(HAND_G)


def test_returns_to_go_rows_are_independent_and_padding_is_zero():
    b = _hand_batch()
    # second row: a one-utterance dialogue "bos agent : w <eou>(r=0.25)" padded to 10
    row2 = {"input_ids": [1, 4, 7, 2] + [0] * 6, "action_mask": [0, 0, 1, 1] + [0] * 6,
            "rewards": [0, 0, 0, 0.25] + [0] * 6, "dones": [0, 0, 0, 1] + [0] * 6,
            "next_state": [0, 1, 2, 3] + [3] * 6}
    for k, v in row2.items():
        b[k] = torch.cat([b[k], torch.tensor([v], dtype=b[k].dtype)])
    g = returns_to_go(b, gamma=0.5)
    assert g[0].tolist() == pytest.approx(HAND_G)
    assert g[1].tolist() == pytest.approx([0.0, 0.0, 0.125, 0.25] + [0.0] * 6)


def test_truncated_episode_is_the_observed_sum_no_bootstrap():
    b = _hand_batch()
    b["dones"][:] = False
    # the token view appends the agent prefix after a truncated episode's last action
    for k, extra in (("input_ids", [4]), ("attention_mask", [1]), ("action_mask", [False]),
                     ("rewards", [0.0]), ("dones", [False]), ("next_state", [10])):
        b[k] = torch.cat([b[k], torch.tensor([extra], dtype=b[k].dtype)], dim=1)
    b["next_state"][0, 9] = 10
    g = returns_to_go(b, gamma=0.5)
    assert g[0].tolist() == pytest.approx(HAND_G + [0.0])


def test_rewards_stay_float():
    b = _hand_batch()
    b["rewards"] = b["rewards"] * 0.1
    assert returns_to_go(b, gamma=0.5)[0, 3].item() == pytest.approx(0.15)


def _learner(**kw):
    tok = build_word_tokenizer(["a", "b", "c", "d", "e"], [])
    torch.manual_seed(0)
    return MC(build_model(TINY, tok), **kw), tok


def _batch_for(tok):
    b = _hand_batch()
    b["input_ids"] = b["input_ids"] % len(tok)
    return b


def test_registered():
    assert LEARNERS["mc"] is MC
    from dialogue_rl.config import ALGO_SCHEMAS, MCConfig, algo_kwargs

    assert ALGO_SCHEMAS["mc"] is MCConfig
    learner, _ = _learner(**algo_kwargs({"name": "mc", "gamma": 0.9, "beta": 2.0}))
    assert learner.gamma == 0.9 and learner.beta == 2.0


def test_loss_terms_by_hand_with_constant_heads():
    alpha = 0.5
    learner, tok = _learner(alpha=alpha, gamma=0.5, bc_weight=0.0)
    c, d = 1.0, 0.5  # Q(s, a) = c for every token, V(s) = d
    with torch.no_grad():
        learner.q_head.weight.zero_()
        learner.q_head.bias.fill_(c)
        learner.v_head.weight.zero_()
        learner.v_head.bias.fill_(d)
    loss, m = learner.loss(_batch_for(tok))
    gs = [0.75, 1.5, 1.0, 2.0]  # the four agent actions
    assert m["q_loss"] == pytest.approx(sum((c - g) ** 2 for g in gs) / 4)
    assert m["value_loss"] == pytest.approx(sum((d - g) ** 2 for g in gs) / 4)
    n_actions = int(learner.action_vocab.sum())
    assert n_actions == len(tok) - 3  # pad, bos, unk excluded
    assert m["cql_loss"] == pytest.approx(alpha * math.log(n_actions), rel=1e-5)
    assert loss.item() == pytest.approx(m["q_loss"] + m["value_loss"] + m["cql_loss"], rel=1e-5)


def test_loss_sums_its_terms_with_bc_weight():
    learner, tok = _learner(bc_weight=0.5)
    loss, m = learner.loss(_batch_for(tok))
    assert loss.item() == pytest.approx(
        m["q_loss"] + m["value_loss"] + m["cql_loss"] + 0.5 * m["bc_loss"], rel=1e-5)
    assert m["bc_loss"] > 0


def test_one_update_changes_the_heads_and_backbone():
    learner, tok = _learner()
    opt = torch.optim.AdamW(learner.trainable_parameters(), lr=1e-2)
    heads = list(learner.q_head.parameters()) + list(learner.v_head.parameters())
    before = [p.detach().clone() for p in heads]
    wte = learner.model.get_input_embeddings().weight.detach().clone()
    m = learner.update(_batch_for(tok), opt)
    assert math.isfinite(m["loss"]) and "grad_norm" in m
    assert all(not torch.equal(a, b) for a, b in zip(heads, before))
    assert not torch.equal(learner.model.get_input_embeddings().weight, wte)


def test_agent_is_ilqls_with_q_minus_v():
    from dialogue_rl.agents import SamplingConfig
    from dialogue_rl.models.tokenizer import codec

    learner, tok = _learner(beta=4.0)
    h = torch.randn(3, 16)
    logits = torch.randn(3, len(tok))
    agent = learner.make_agent(codec(tok), SamplingConfig(greedy=True), "cpu", 0)
    adv = learner.q_head(h) - learner.v_head(h)
    assert torch.allclose(learner.advantage(h), adv)
    assert torch.allclose(agent.perturb(h, logits), logits + 4.0 * adv)


def _train_and_play_stitch(steps: int = 150) -> float:
    """Train MC on ``stitch_rows()`` (as tests/test_ilql.py does ILQL) and play 5 greedy episodes."""
    from dialogue_rl.agents import SamplingConfig
    from dialogue_rl.models.tokenizer import codec as make_codec
    from tests.toy_envs import StitchEnv, fit_on_stitch, stitch_mean_return

    torch.manual_seed(0)
    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    model = build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=32, n_positions=64), tok)
    learner = MC(model, gamma=0.99, alpha=0.1, beta=16.0)
    fit_on_stitch(learner, tok, steps)
    agent = learner.make_agent(make_codec(tok), SamplingConfig(greedy=True, max_utterance_tokens=4), "cpu", 0)
    return stitch_mean_return(agent)


def test_mc_picks_the_better_branch_at_each_node():
    """StitchEnv: per-node returns-to-go identify the better logged branch (return 2; BC gets 0)."""
    assert _train_and_play_stitch() == 2.0

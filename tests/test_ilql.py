"""ILQL: hand-computed losses, alignment, and the original code's pitfalls avoided."""

import math

import pytest
import torch

from dialogue_rl.algos.ilql import ILQL, cql_penalty, expectile_loss, td_targets
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


def _hand_batch():
    # positions: 0 bos | 1 prefix | 2 agent word | 3 agent <eou> (r=1) | 4 env token | 5 agent <eou> (r=2, done)
    return {
        "input_ids": torch.tensor([[1, 4, 7, 2, 9, 2]]),
        "attention_mask": torch.ones(1, 6, dtype=torch.long),
        "action_mask": torch.tensor([[False, False, True, True, False, True]]),
        "rewards": torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 2.0]]),
        "dones": torch.tensor([[False, False, False, False, False, True]]),
        "next_state": torch.tensor([[0, 1, 2, 4, 4, 5]]),
    }


def test_td_target_skips_environment_tokens_and_masks_done():
    v = torch.tensor([[0.0, 10.0, 20.0, 30.0, 40.0, 50.0]])
    y = td_targets(v, _hand_batch(), gamma=0.5)
    # state 1 -> action 2 (mid-utterance): 0 + 0.5 * V(s_2) = 10
    # state 2 -> action 3 (<eou>, r=1): next agent action is at 5, its state is 4: 1 + 0.5 * 40 = 21
    # state 4 -> action 5 (final <eou>, done): 2 + 0 = 2
    assert y[0, 1].item() == pytest.approx(10.0)
    assert y[0, 2].item() == pytest.approx(21.0)
    assert y[0, 4].item() == pytest.approx(2.0)


def test_rewards_stay_float():
    b = _hand_batch()
    b["rewards"] = torch.tensor([[0.0, 0.0, 0.0, 0.25, 0.0, 0.5]])
    y = td_targets(torch.zeros(1, 6), b, gamma=0.99)
    assert y.dtype == torch.float32 and y[0, 2].item() == pytest.approx(0.25)


def test_truncated_episode_bootstraps_from_real_next_state():
    b = _hand_batch()
    b["dones"][:] = False  # truncated: the view points the last action at an appended prefix (position 5 here)
    v = torch.tensor([[0.0, 10.0, 20.0, 30.0, 40.0, 50.0]])
    y = td_targets(v, b, gamma=0.5)
    assert y[0, 4].item() == pytest.approx(2.0 + 0.5 * 50.0)


def test_expectile_loss_above_and_below():
    assert expectile_loss(torch.tensor(2.0), 0.7).item() == pytest.approx(0.7 * 4)
    assert expectile_loss(torch.tensor(-2.0), 0.7).item() == pytest.approx(0.3 * 4)
    assert expectile_loss(torch.tensor(-2.0), 0.5).item() == expectile_loss(torch.tensor(2.0), 0.5).item()


def test_cql_penalty_tiny_vocab_excludes_special_tokens():
    q = torch.tensor([[100.0, 2.0, 3.0]])  # token 0 (pad) has a huge Q but is not an action
    vocab = torch.tensor([False, True, True])
    pen = cql_penalty(q, q[:, 1], vocab)
    assert pen.item() == pytest.approx(math.log(math.exp(2) + math.exp(3)) - 2.0)


def test_tau_within_applies_inside_utterances_only():
    """``tau`` where an agent utterance starts (state 1: the prefix, before the agent's first
    word), ``tau_within`` at the states inside it (state 2, before its ``<eou>``) and at the
    later start (state 4) ``tau`` again."""
    learner, tok = _learner(tau=0.5, tau_within=0.9)
    taus = learner.state_taus(_hand_batch())
    # states 0..4 of the hand batch; only 1, 2 and 4 are action states
    assert taus[0, 1].item() == pytest.approx(0.5)
    assert taus[0, 2].item() == pytest.approx(0.9)
    assert taus[0, 4].item() == pytest.approx(0.5)
    # the expectile weight follows: an under-estimate (u > 0) at state 2 weighs 0.9, at state 1 0.5
    diff = torch.tensor([[0.0, 1.0, 1.0, 0.0, 1.0]])
    w = expectile_loss(diff, taus)
    assert w[0, 1].item() == pytest.approx(0.5) and w[0, 2].item() == pytest.approx(0.9)
    same, _ = _learner(tau=0.7)
    assert same.state_taus(_hand_batch()) == 0.7


def _learner(**kw):
    tok = build_word_tokenizer(["a", "b", "c", "d", "e"], [])
    torch.manual_seed(0)
    return ILQL(build_model(TINY, tok), **kw), tok


def test_action_vocab_excludes_pad_bos_unk_keeps_eou():
    learner, tok = _learner()
    av = learner.action_vocab
    assert not av[tok.pad_token_id] and not av[tok.bos_token_id] and not av[tok.unk_token_id]
    assert av[tok.eos_token_id]


def test_polyak_update():
    learner, _ = _learner(polyak=0.25)
    with torch.no_grad():
        for p in learner.q_heads.parameters():
            p.fill_(1.0)
        for p in learner.target_q_heads.parameters():
            p.fill_(0.0)
    learner.after_step()
    for p in learner.target_q_heads.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.25))


def test_loss_terms_and_update_changes_heads():
    learner, tok = _learner(alpha=0.5)
    b = _hand_batch()
    b["input_ids"] = b["input_ids"] % len(tok)
    loss, m = learner.loss(b)
    assert loss.item() == pytest.approx(m["td_loss"] + m["value_loss"] + m["cql_loss"] + m["bc_loss"], rel=1e-5)
    opt = torch.optim.AdamW(learner.trainable_parameters(), lr=1e-2)
    before = [p.detach().clone() for p in learner.v_head.parameters()] + [
        p.detach().clone() for p in learner.q_heads.parameters()]
    tgt = [p.detach().clone() for p in learner.target_q_heads.parameters()]
    learner.update(b, opt)
    after = list(learner.v_head.parameters()) + list(learner.q_heads.parameters())
    assert all(not torch.equal(a, b_) for a, b_ in zip(after, before))
    assert all(not torch.equal(a, b_) for a, b_ in zip(learner.target_q_heads.parameters(), tgt))
    assert all(not p.requires_grad for p in learner.target_q_heads.parameters())


def test_agent_advantage_weight_is_used():
    """beta must change decoding (the original configs silently left it at 0)."""
    learner, tok = _learner(beta=8.0)
    h = torch.randn(3, 16)
    logits = torch.zeros(3, len(tok))
    from dialogue_rl.models.tokenizer import codec
    from dialogue_rl.agents import SamplingConfig

    agent = learner.make_agent(codec(tok), SamplingConfig(greedy=True), "cpu", 0)
    out = agent.perturb(h, logits)
    assert torch.allclose(out, 8.0 * learner.advantage(h))
    assert out.abs().sum() > 0
    # eval.beta re-weights a trained agent without touching the learner
    agent2 = learner.make_agent(codec(tok), SamplingConfig(greedy=True), "cpu", 0, beta=2.0)
    assert torch.allclose(agent2.perturb(h, logits), 2.0 * learner.advantage(h))
    assert learner.beta == 8.0


def test_eval_beta_rejected_for_learners_without_advantage():
    from omegaconf import OmegaConf

    from dialogue_rl.algos.bc import BC
    from dialogue_rl.experiment import ConfigError, learner_agent

    tok = build_word_tokenizer(["a", "b"], [])
    cfg = OmegaConf.create({"eval": {"greedy": True, "temperature": 1.0, "top_k": 0, "beta": 4.0},
                            "env": {"max_utterance_tokens": 4}})
    with pytest.raises(ConfigError, match="eval.beta"):
        learner_agent(BC(build_model(TINY, tok)), tok, cfg, torch.device("cpu"), 0)


def _train_and_play(algo: str, steps: int = 150) -> float:
    from dialogue_rl.agents import LMAgent, SamplingConfig
    from dialogue_rl.algos import BC
    from dialogue_rl.models.tokenizer import codec as make_codec
    from tests.toy_envs import StitchEnv, fit_on_stitch, stitch_mean_return

    torch.manual_seed(0)
    tok = build_word_tokenizer(StitchEnv.vocabulary(), [])
    model = build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=32, n_positions=64), tok)
    learner = ILQL(model, gamma=0.99, tau=0.9, alpha=0.1, beta=16.0, polyak=0.05) if algo == "ilql" else BC(model)
    fit_on_stitch(learner, tok, steps)
    sampling = SamplingConfig(greedy=True, max_utterance_tokens=4)
    c = make_codec(tok)
    agent = learner.make_agent(c, sampling, "cpu", 0) if algo == "ilql" else LMAgent(model, c, sampling)
    return stitch_mean_return(agent)


def test_ilql_stitches_to_the_optimum_where_bc_does_not():
    assert _train_and_play("bc") == 0.0
    assert _train_and_play("ilql") == 2.0

"""DPO: loss by hand, only agent tokens scored, one update moves the margin, frozen reference."""

import math

import pytest
import torch

from dialogue_rl.algos import LEARNERS
from dialogue_rl.algos.dpo import DPO, dpo_loss, sequence_logprobs
from dialogue_rl.data.preferences import collate_pairs, tokenize_pairs
from dialogue_rl.models import ModelConfig, build_model
from dialogue_rl.models.tokenizer import codec as make_codec
from tests.test_reward_model import _tok, _toy_rows

TINY = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)


def test_dpo_loss_hand_computed():
    # z = beta * ((logp_c - ref_c) - (logp_r - ref_r)) = 0.5 * ((-1 + 2) - (-3 + 2)) = 1
    loss = dpo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), 0.5)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    # policy = reference: log 2 whatever the log-probs
    same = dpo_loss(torch.tensor([-4.0, -1.0]), torch.tensor([-2.0, -7.0]),
                    torch.tensor([-4.0, -1.0]), torch.tensor([-2.0, -7.0]), 0.1)
    assert same.tolist() == pytest.approx([math.log(2.0)] * 2)


def test_sequence_logprobs_counts_only_agent_tokens():
    # vocab 3; logits chosen so log-softmax is known: uniform everywhere except position 1
    logits = torch.zeros(1, 5, 3)
    logits[0, 1] = torch.tensor([0.0, math.log(2.0), math.log(5.0)])  # probs 1/8, 2/8, 5/8
    batch = {"input_ids": torch.tensor([[0, 1, 2, 1, 0]]),
             "action_mask": torch.tensor([[False, False, True, False, True]])}
    # actions at positions 2 (state 1: token 2, p = 5/8) and 4 (state 3: token 0, p = 1/3);
    # positions 1 and 3 are env tokens and never count
    expected = math.log(5 / 8) + math.log(1 / 3)
    assert sequence_logprobs(logits, batch).item() == pytest.approx(expected, rel=1e-6)
    batch["action_mask"][0, 3] = True
    assert sequence_logprobs(logits, batch).item() == pytest.approx(expected + math.log(1 / 3), rel=1e-6)


def _dpo(**kw):
    tok = _tok()
    torch.manual_seed(0)
    learner = DPO(build_model(TINY, tok), **kw)
    pairs = tokenize_pairs(_toy_rows(16, 0), make_codec(tok), 64, group_by="none", pairs_per_row=1)
    return learner, collate_pairs([pairs[i] for i in range(len(pairs))], tok.pad_token_id)


def test_starts_at_log2_and_one_update_raises_the_margin_reference_frozen():
    learner, batch = _dpo(beta=0.5)
    loss, m = learner.loss(batch)
    assert loss.item() == pytest.approx(math.log(2.0), abs=1e-5) and m["reward_margin"] == pytest.approx(0.0)
    ref = [p.detach().clone() for p in learner.reference.parameters()]
    before = [p.detach().clone() for p in learner.model.parameters()]
    opt = torch.optim.SGD(learner.trainable_parameters(), lr=1e-3)
    learner.update(batch, opt, grad_clip=0)
    assert all(not p.requires_grad for p in learner.reference.parameters())
    assert all(torch.equal(a, b) for a, b in zip(learner.reference.parameters(), ref))
    assert any(not torch.equal(a, b) for a, b in zip(learner.model.parameters(), before))
    assert not any(p is q for p in learner.trainable_parameters() for q in learner.reference.parameters())
    loss2, m2 = learner.loss(batch)
    assert m2["reward_margin"] > 0 and loss2.item() < math.log(2.0)
    learner.train()
    assert not learner.reference.training


def test_env_tokens_get_no_gradient_signal():
    """With every action masked out nothing is scored: loss log 2 and no gradient."""
    learner, batch = _dpo()
    batch = dict(batch)
    batch["action_mask"] = torch.zeros_like(batch["action_mask"])
    loss, _ = learner.loss(batch)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2.0))
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in learner.trainable_parameters())


def test_registered_needs_bc_init_and_checks_beta():
    from dialogue_rl.config import ALGO_SCHEMAS

    assert LEARNERS["dpo"] is DPO and "dpo" in ALGO_SCHEMAS and DPO.needs_bc_init
    with pytest.raises(ValueError, match="beta"):
        _dpo(beta=0.0)

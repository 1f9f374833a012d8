"""DPO: Direct Preference Optimization (Rafailov et al. 2023) on the agent's utterances.

The log-likelihood of a dialogue ``x`` under a policy counts only the agent's action
tokens (``action_mask``, as in ``bc_loss``); the environment's turns (task text,
partner replies, speaker prefixes) are context and never scored, since the agent does
not choose them:

.. math::

    \\log \\pi(x) = \\sum_{j \\in A(x)} \\log \\pi(a_j \\mid s_j)

With the frozen reference ``pi_ref`` (the model DPO starts from, normally the BC run)
and a preference pair ``(x_c, x_r)`` (:mod:`dialogue_rl.data.preferences`), the implicit
reward is ``beta * (log pi(x) - log pi_ref(x))`` and the loss (``dpo_loss``) is the
Bradley–Terry likelihood of that reward:

.. math::

    L_{DPO}(\\theta) = -\\mathbb{E} \\log \\sigma\\Big(\\beta \\big[(\\log \\pi_\\theta(x_c) - \\log \\pi_{ref}(x_c))
                      - (\\log \\pi_\\theta(x_r) - \\log \\pi_{ref}(x_r))\\big]\\Big)

At the start (``pi_theta = pi_ref``) the loss is ``log 2``. Names in code: ``logp_c``,
``logp_r`` (policy), ``ref_c``, ``ref_r`` (reference), ``beta``.

It plugs into the shared ``fit`` loop: ``make_examples`` yields preference pairs,
``collate`` puts the ``B`` chosen dialogues before their ``B`` rejected ones; one
forward pass of the policy (with gradients) and one of the reference (without) per
batch. Acting is plain decoding of the trained LM (the default ``LMAgent``).
Without ``init_from`` it starts from its sweep's BC run of the same seed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dialogue_rl.algos.base import PairLearner, TokenBatch, action_logprobs, shifted_action_mask


def sequence_logprobs(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """``log pi(x)`` of each dialogue: the sum of its agent-action token log-probs (``[B]``)."""
    mask = shifted_action_mask(batch)
    return (action_logprobs(logits, batch["input_ids"]) * mask).sum(dim=1)


def dpo_loss(
    logp_c: torch.Tensor, logp_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor, beta: float
) -> torch.Tensor:
    """Per-pair ``-log sigmoid(beta * ((logp_c - ref_c) - (logp_r - ref_r)))``."""
    z = beta * ((logp_c - ref_c) - (logp_r - ref_r))
    return F.softplus(-z)


class DPO(PairLearner):
    """DPO with a frozen copy of the initial model as the reference."""

    name = "dpo"
    needs_bc_init = True  # the reference is the initial model: start from a BC run

    def __init__(
        self,
        model: nn.Module,
        beta: float = 0.1,
        group_by: str = "opening",
        min_gap: float = 0.0,
        pairs_per_row: int = 1,
        label_noise: float = 0.0,
        replay: Sequence[str] = (),
        seed: int = 0,
    ) -> None:
        super().__init__(model, group_by, min_gap, pairs_per_row, label_noise, replay, seed)
        if beta <= 0:
            raise ValueError(f"dpo beta={beta}: expected > 0")
        self.beta = beta
        self.reference = copy.deepcopy(model)
        self.reference.requires_grad_(False)
        self.reference.eval()

    def train(self, mode: bool = True) -> DPO:
        super().train(mode)
        self.reference.eval()  # the reference never drops out
        return self

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        kw = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logp = sequence_logprobs(self.model(**kw).logits, batch)
        with torch.no_grad():
            ref = sequence_logprobs(self.reference(**kw).logits, batch)
        n = logp.shape[0] // 2
        per_pair = dpo_loss(logp[:n], logp[n:], ref[:n], ref[n:], self.beta)
        loss = per_pair.mean()
        with torch.no_grad():
            rc, rr = self.beta * (logp[:n] - ref[:n]), self.beta * (logp[n:] - ref[n:])
            metrics = {"loss": float(loss), "dpo_loss": float(loss), "reward_chosen": float(rc.mean()),
                       "reward_rejected": float(rr.mean()), "reward_margin": float((rc - rr).mean()),
                       "pair_acc": float((rc > rr).float().mean())}
        return loss, metrics


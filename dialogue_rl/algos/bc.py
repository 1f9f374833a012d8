"""Behaviour cloning: next-token cross-entropy on the agent's tokens only.

.. math::

    L_{BC}(\\theta) = - \\frac{1}{|A|} \\sum_{(b, j) \\in A} \\log \\pi_\\theta(a_j \\mid s_j)

where ``A`` is the set of agent-action positions (``action_mask``) and ``s_j`` the
history up to ``j - 1``. Environment tokens (task text, partner replies, speaker
prefixes) are context and never targets.
"""

from __future__ import annotations

import torch

from dialogue_rl.algos.base import Learner, TokenBatch, action_logprobs, shifted_action_mask


def bc_loss(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Mean negative log-likelihood of the agent's action tokens (``L_BC``)."""
    mask = shifted_action_mask(batch)
    logp = action_logprobs(logits, batch["input_ids"])
    return -(logp * mask).sum() / mask.sum().clamp_min(1)


class BC(Learner):
    """Behaviour cloning of the logged agent utterances."""

    name = "bc"

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = bc_loss(logits, batch)
        return loss, {"loss": float(loss.detach()), "bc_loss": float(loss.detach())}

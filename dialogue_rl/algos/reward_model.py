"""Bradley–Terry reward model over whole dialogues, trained on preference pairs.

A scalar head on the LM backbone reads the hidden state ``h_T`` of the dialogue's last
real token (the final ``<eou>``, or the appended agent prefix of a truncated episode):

.. math::

    r_\\phi(x) = \\mathrm{head}(h_T(x)) \\in \\mathbb{R}

Under the Bradley–Terry model the chosen dialogue ``x_c`` beats the rejected ``x_r`` with
probability ``sigma(r(x_c) - r(x_r))``; the loss is its negative log-likelihood
(``bt_loss``, written with ``softplus`` for stability):

.. math::

    L_{BT}(\\phi) = -\\mathbb{E}_{(x_c, x_r)} \\log \\sigma\\big(r_\\phi(x_c) - r_\\phi(x_r)\\big)
                 = \\mathbb{E}\\, \\mathrm{softplus}\\big(r_\\phi(x_r) - r_\\phi(x_c)\\big)

Pairs come from a logged split (:mod:`dialogue_rl.data.preferences`: rows of the same
scenario ranked by return, optional label noise). ``pair_accuracy`` is the fraction of
held-out pairs with ``r(x_c) > r(x_r)`` (0.5 is chance).

With ``algo=reward_model`` the shared ``fit`` loop trains it (``make_examples`` yields
pairs, ``collate`` puts the ``B`` chosen dialogues before their ``B`` rejected ones in
one batch); the run is evaluated on the validation split's pairs instead of the env
(``acts = False``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dialogue_rl.algos.base import PairLearner, TokenBatch, hidden_size, make_head
from dialogue_rl.data.preferences import tokenize_pairs

log = logging.getLogger(__name__)


def bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair ``-log sigmoid(r_c - r_r)`` (``L_BT`` before the mean)."""
    return F.softplus(r_rejected.float() - r_chosen.float())


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each right-padded row's last real token: ``[B, L] -> [B]``."""
    return attention_mask.long().sum(dim=1).clamp_min(1) - 1


class RewardModel(PairLearner):
    """LM backbone + scalar head at the last token, trained with the Bradley–Terry loss."""

    name = "reward_model"
    acts = False  # scores dialogues; evaluated on held-out pairs, not in the env

    def __init__(
        self,
        model: nn.Module,
        group_by: str = "opening",
        min_gap: float = 0.0,
        pairs_per_row: int = 1,
        label_noise: float = 0.0,
        replay: Sequence[str] = (),
        hidden: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(model, group_by, min_gap, pairs_per_row, label_noise, replay, seed)
        self.head = make_head(hidden_size(model), 1, hidden)

    def score(self, batch: TokenBatch) -> torch.Tensor:
        """``r(x)`` of every dialogue of a token batch: ``[B]`` float32."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True)
        h = out.hidden_states[-1]
        last = last_token_index(batch["attention_mask"])
        return self.head(h[torch.arange(h.shape[0], device=h.device), last]).squeeze(-1).float()

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        r = self.score(batch)
        n = r.shape[0] // 2
        rc, rr = r[:n], r[n:]
        loss = bt_loss(rc, rr).mean()
        with torch.no_grad():
            metrics = {"loss": float(loss), "bt_loss": float(loss), "pair_acc": float((rc > rr).float().mean()),
                       "margin": float((rc - rr).mean())}
        return loss, metrics

    def evaluate_pairs(self, split: Any, codec: Any, max_length: int, pad_id: int,
                       device: torch.device | str = "cpu") -> dict[str, float]:
        """Held-out pair accuracy on another split, paired like the training split but
        without label noise (the true preferences)."""
        kwargs = {**self.pair_kwargs, "label_noise": 0.0}
        pairs = tokenize_pairs(split, codec, max_length, **kwargs)
        return {"pair_accuracy": pair_accuracy(self, pairs, pad_id, device=device), "n_pairs": len(pairs)}


@torch.no_grad()
def pair_accuracy(rm: RewardModel, pairs: Sequence[dict], pad_id: int, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> float:
    """Fraction of ``pairs`` with ``r(chosen) > r(rejected)`` (ties count as wrong)."""
    if len(pairs) == 0:
        return float("nan")
    was_training = rm.training
    rm.eval()
    right = 0
    for lo in range(0, len(pairs), batch_size):
        chunk = [pairs[i] for i in range(lo, min(lo + batch_size, len(pairs)))]
        batch = {k: v.to(device) for k, v in rm.collate(chunk, pad_id).items()}
        r = rm.score(batch)
        right += int((r[: len(chunk)] > r[len(chunk):]).sum())
    rm.train(was_training)
    return right / len(pairs)

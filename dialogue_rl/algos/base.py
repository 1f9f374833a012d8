"""What every learner shares: the batch layout, the token alignment, the update.

A token batch (from :func:`dialogue_rl.data.collate_tokens`) holds, per dialogue
padded to length ``L``: ``input_ids``, ``attention_mask``, ``action_mask`` (true at
positions ``j`` whose token is an agent action: its utterance tokens and closing
``<eou>``), ``rewards`` (the utterance reward on its ``<eou>``), ``dones`` and
``next_state``. The LM's hidden state at position ``j - 1`` is the state ``s_j`` in
which action ``a_j = input_ids[j]`` is taken, so every per-action quantity is read at
``j - 1`` and compared with the token at ``j``; :func:`shifted_action_mask` gives that
alignment once for all learners.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TokenBatch = dict[str, torch.Tensor]


def shifted_action_mask(batch: TokenBatch) -> torch.Tensor:
    """``[B, L-1]`` mask: position ``t`` is a state whose next token ``t+1`` is an action."""
    return batch["action_mask"][:, 1:].bool()


def action_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """``log pi(a_{t+1} | s_t)`` for every position: ``[B, L-1]`` from logits ``[B, L, V]``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def hidden_size(model: nn.Module) -> int:
    """Width of the backbone's last hidden state (GPT-2: ``n_embd``)."""
    cfg = model.config
    return int(cfg.hidden_size if hasattr(cfg, "hidden_size") else cfg.n_embd)


def make_head(width: int, out: int, hidden: int = 0) -> nn.Module:
    """A value head: linear, or a one-hidden-layer GELU MLP when ``hidden > 0``."""
    if hidden:
        return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out))
    return nn.Linear(width, out)


def action_vocab_mask(cfg: Any, vocab: int, excluded_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Bool mask of tokens that can be actions: all but pad, bos and unk (``<eou>`` kept)."""
    if excluded_ids is None:
        special = (cfg.pad_token_id, cfg.bos_token_id, getattr(cfg, "unk_token_id", None))
        excluded_ids = [i for i in special if i is not None and i != cfg.eos_token_id]
    mask = torch.ones(vocab, dtype=torch.bool)
    if excluded_ids:
        mask[torch.tensor(sorted(set(excluded_ids)))] = False
    return mask


class Learner(nn.Module):
    """Base class: a learner owns its modules and defines its loss.

    Subclasses implement :meth:`loss` and, when they keep target networks,
    :meth:`after_step`. The shared training loop (``dialogue_rl.train``) does the
    optimisation; :meth:`update` is the single-batch version of that step.
    """

    name: str = "learner"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step (e.g. Polyak averaging of target heads)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def update(self, batch: TokenBatch, optimizer: torch.optim.Optimizer, grad_clip: float = 1.0) -> dict[str, Any]:
        """One optimisation step on ``batch``: loss, backward, clip, step, after_step."""
        self.train()
        optimizer.zero_grad(set_to_none=True)
        loss, metrics = self.loss(batch)
        loss.backward()
        if grad_clip > 0:
            metrics["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), grad_clip))
        optimizer.step()
        self.after_step()
        return metrics

    def prepare_dataset(self, examples: Sequence[dict], rows_returns: Sequence[float]) -> Sequence[dict]:
        """Hook to filter or relabel the tokenised dataset before training (identity)."""
        return examples

    def make_examples(self, split: Any, codec: Any, max_length: int) -> Sequence[dict]:
        """Training examples from a dataset split (default: the per-token view, once)."""
        from dialogue_rl.data import tokenize_dataset

        examples = tokenize_dataset(split, codec, max_length=max_length, on_too_long="drop")
        return self.prepare_dataset(examples, examples.returns.tolist())

    def collate(self, examples: Sequence[dict], pad_id: int) -> TokenBatch:
        """Batch a list of examples (default: :func:`dialogue_rl.data.collate_tokens`)."""
        from dialogue_rl.data import collate_tokens

        return collate_tokens(examples, pad_id)


class PairLearner(Learner):
    """A learner trained on preference pairs (:mod:`dialogue_rl.data.preferences`): the
    pairing options (``group_by``, ``min_gap``, ``pairs_per_row``, ``label_noise``,
    ``replay``, ``seed``) are kept in ``pair_kwargs``; examples are the tokenised pairs and
    a batch holds the chosen dialogues, then the rejected ones."""

    def __init__(
        self, model: nn.Module, group_by: str, min_gap: float, pairs_per_row: int, label_noise: float,
        replay: Sequence[str], seed: int,
    ) -> None:
        super().__init__(model)
        self.pair_kwargs = {"group_by": group_by, "min_gap": min_gap, "pairs_per_row": pairs_per_row,
                            "label_noise": label_noise, "seed": seed, "replay": tuple(replay)}

    def make_examples(self, split: Any, codec: Any, max_length: int) -> Sequence[dict]:
        from dialogue_rl.data.preferences import tokenize_pairs

        return tokenize_pairs(split, codec, max_length, **self.pair_kwargs)

    def collate(self, examples: Sequence[dict], pad_id: int) -> TokenBatch:
        from dialogue_rl.data.preferences import collate_pairs

        return collate_pairs(examples, pad_id)

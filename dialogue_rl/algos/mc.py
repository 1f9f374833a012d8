"""Monte-Carlo returns: value heads regressed on the logged discounted return-to-go.

The "MC returns" baseline of Snell et al. (2022): the same heads and the same acting
rule as :mod:`dialogue_rl.algos.ilql`, but the values are fitted to the returns observed
in the data instead of being bootstrapped. They therefore estimate the *behaviour*
policy's values ``Q^beta`` and ``V^beta`` (no improvement beyond one step), which is
enough wherever a per-node choice of the better logged branch is the optimum.

On the LM backbone's hidden state ``h_t`` sit one Q head (one value per vocabulary
token, read like logits) and a V head::

    Q(s_t, .) = q_head(h_t) in R^|V|,    V(s_t) = v_head(h_t)

Return-to-go (``returns_to_go``). Let ``j_1 < j_2 < ... < j_n`` be the agent-action
positions of one dialogue (its utterance tokens and closing ``<eou>``; environment
tokens are skipped, so ``gamma`` applies once per agent token and exactly once across a
partner reply, as in ILQL's TD alignment) and ``r_j`` the reward on position ``j``
(non-zero only on an agent ``<eou>``)::

    G_{j_n} = r_{j_n},    G_{j_k} = r_{j_k} + gamma * G_{j_{k+1}}

i.e. ``G_{j_k} = sum_{m >= k} gamma^(m - k) * r_{j_m}``. For a *truncated* episode
this is just the observed discounted sum up to the cut: MC never bootstraps, so the
value of the unseen rest of the episode is taken as 0 (``dones`` and ``next_state``
are not used). The state of the action at ``j`` is position ``t = j - 1``, so ``G``
is read at ``[:, 1:]`` like every per-action quantity (:mod:`dialogue_rl.algos.base`).

Losses, averaged over agent-action states ``t`` (``a_t`` the action token):

* Q regression (``q_loss``): ``L_Q = E[(Q(s_t, a_t) - G_t)^2]``
* V regression (``value_loss``), towards the expectation of the same return under the
  behaviour policy: ``L_V = E[(V(s_t) - G_t)^2]``
* optional CQL penalty (``cql_loss``, weight ``alpha``), ILQL's conservative term over
  the action vocabulary (pad, bos and unk excluded). The Q head has one output per
  token but only the logged token's output is regressed; without this term the
  outputs of never-logged tokens keep their initial values and ``beta * (Q - V)`` can
  pick them (on ``tests/toy_envs.StitchEnv`` with ``beta = 16`` and ``alpha = 0`` the agent
  says words never logged at that node; with ``alpha = 0.1`` it finds the optimum).
  ``alpha = 0`` turns it off::

      L_CQL = alpha * E[logsumexp_a Q(s_t, a) - Q(s_t, a_t)]

* optional BC term (``bc_loss``, weight ``bc_weight``) on the shared backbone.

``loss = L_Q + L_V + L_CQL + bc_weight * L_BC``. There are no target networks (the
targets are data), so :meth:`MC.after_step` does nothing.

Acting: exactly ILQL's agent (:meth:`dialogue_rl.algos.ilql.ILQL.make_agent`, shared, not
copied): temperature and top-k on the BC logits, then ``+ beta * (Q(s, .) - V(s))`` at
every token, with the KV cache, batched; ``beta = 0`` is plain BC decoding.
"""

from __future__ import annotations

import torch
from torch import nn

from dialogue_rl.algos.base import (
    Learner, TokenBatch, action_vocab_mask, hidden_size, make_head, shifted_action_mask,
)
from dialogue_rl.algos.bc import bc_loss
from dialogue_rl.algos.ilql import ILQL, cql_penalty, masked_mean


def returns_to_go(batch: TokenBatch, gamma: float) -> torch.Tensor:
    """``G`` at every position ``[B, L]`` (0 off action positions), float32.

    With ``k(j)`` the index of action ``j`` among its row's actions, ``r_act[b, k]`` the
    rewards compacted to actions only (``[B, K]``, ``K`` the most actions in a row) and
    ``D[k, m] = gamma^(m - k)`` for ``m >= k`` (else 0)::

        G_act = r_act @ D^T,    G[b, j] = G_act[b, k(j)]

    which is the backward recursion ``G = r + gamma * G_next`` over actions only: no
    Python loop over positions, and environment tokens cost no discount step. The sum
    stops at the row's last action (no bootstrap, also for truncated episodes). The
    product runs in float32 with autocast off, so bf16 training never rounds the targets.
    """
    is_action = batch["action_mask"].bool()
    rewards = batch["rewards"].float()
    k = (is_action.long().cumsum(1) - 1).clamp_min(0)  # action index at action positions
    n_act = int(is_action.sum(1).max()) if is_action.numel() else 0
    if n_act == 0:
        return torch.zeros_like(rewards)
    with torch.autocast(device_type=rewards.device.type, enabled=False):
        r_act = torch.zeros(rewards.shape[0], n_act, dtype=torch.float32, device=rewards.device)
        r_act.scatter_add_(1, k, torch.where(is_action, rewards, torch.zeros_like(rewards)))
        idx = torch.arange(n_act, device=rewards.device)
        steps = (idx[None, :] - idx[:, None]).float()  # [k, m]: m - k
        discount = torch.where(steps >= 0, torch.full_like(steps, gamma).pow(steps.clamp_min(0)),
                               torch.zeros_like(steps))
        g_act = r_act @ discount.T
    return torch.where(is_action, g_act.gather(1, k), torch.zeros_like(rewards))


class MC(Learner):
    """Q and V heads regressed on Monte-Carlo returns-to-go; acts like ILQL."""

    name = "mc"

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.99,
        alpha: float = 0.1,
        bc_weight: float = 1.0,
        beta: float = 8.0,
        hidden: int = 0,
        excluded_ids: list[int] | None = None,
    ) -> None:
        super().__init__(model)
        self.gamma, self.alpha, self.bc_weight, self.beta = gamma, alpha, bc_weight, beta
        h, vocab = hidden_size(model), model.config.vocab_size
        self.q_head = make_head(h, vocab, hidden)
        self.v_head = make_head(h, 1, hidden)
        self.register_buffer("action_vocab", action_vocab_mask(model.config, vocab, excluded_ids), persistent=False)

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        hidden = out.hidden_states[-1]
        q = self.q_head(hidden).float()
        v = self.v_head(hidden).squeeze(-1).float()
        mask = shifted_action_mask(batch)  # state t whose next token is an action
        g = returns_to_go(batch, self.gamma)[:, 1:]
        q_sa = q[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
        q_loss = masked_mean((q_sa - g).pow(2), mask)
        value_loss = masked_mean((v[:, :-1] - g).pow(2), mask)
        cql_loss = self.alpha * masked_mean(cql_penalty(q[:, :-1], q_sa, self.action_vocab), mask)
        bc = bc_loss(out.logits, batch)
        loss = q_loss + value_loss + cql_loss + self.bc_weight * bc
        with torch.no_grad():
            metrics = {
                "loss": float(loss), "q_loss": float(q_loss), "value_loss": float(value_loss),
                "cql_loss": float(cql_loss), "bc_loss": float(bc),
                "q_mean": float(masked_mean(q_sa, mask)), "v_mean": float(masked_mean(v[:, :-1], mask)),
                "return_to_go_mean": float(masked_mean(g, mask)),
            }
        return loss, metrics

    # ------------------------------------------------------------------ acting
    def advantage(self, hidden: torch.Tensor) -> torch.Tensor:
        """``Q(s, .) - V(s)`` for hidden states ``[..., H]``."""
        return self.q_head(hidden).float() - self.v_head(hidden).float()

    # ILQL's agent, shared: it reads only ``self.model``, ``self.beta`` and ``self.advantage``.
    make_agent = ILQL.make_agent

"""ILQL: Implicit Language Q-Learning (Snell et al. 2022), per-token offline RL.

Every agent token is an action; environment tokens are context. On top of the LM
backbone's hidden state ``h_t`` sit two Q heads, each giving one value per vocabulary
token (read like logits), their Polyak-averaged target copies, and a V head:

.. math::

    Q_i(s_t, \\cdot) = \\mathrm{q\\_heads}[i](h_t) \\in \\mathbb{R}^{|V|}, \\qquad
    V(s_t) = \\mathrm{v\\_head}(h_t)

With ``a_t`` the token taken in ``s_t``, ``r_t`` its reward (non-zero only on the
``<eou>`` that closes an agent utterance), ``done_t`` the end of a terminated episode
and ``s_next`` the state of the *next agent token* (the partner's reply in between is
skipped, so gamma applies once per agent token):

* TD loss (``td_loss``), both heads, towards the online V head (detached)::

      L_Q = sum_i E[(Q_i(s_t, a_t) - y_t)^2],   y_t = r_t + gamma * (1 - done_t) * V(s_next)

* expectile value loss (``value_loss``) towards the target heads' minimum::

      L_V = E[|tau_t - 1(u < 0)| * u^2],   u = min(Q1_target, Q2_target)(s_t, a_t) - V(s_t)

  with ``tau_t = tau`` at a state where an agent utterance starts (the partner has just
  spoken) and ``tau_t = tau_within`` at the states inside the utterance (``state_taus``;
  ``tau_within`` defaults to ``tau``). Inside an utterance the next state is the current
  one plus the chosen token, so a high ``tau_within`` is a max over the logged
  continuations with no stochastic transition to be optimistic about.

* CQL penalty (``cql_loss``) on the Q "logits", over the *action* vocabulary (pad, bos
  and unk are never actions, so they are excluded from the logsumexp)::

      L_CQL = alpha * sum_i E[logsumexp_a Q_i(s_t, a) - Q_i(s_t, a_t)]

* optional BC term (``bc_loss``, weight ``bc_weight``) keeping the LM head a policy.

``loss = L_Q + L_V + L_CQL + bc_weight * L_BC``; after each step the target heads move
by Polyak averaging ``theta_target <- (1 - polyak) * theta_target + polyak * theta``.

Acting (:meth:`ILQL.make_agent`): at every token, temperature and top-k are applied to
the BC logits and then ``beta * (min(Q1_target, Q2_target)(s, .) - V(s))`` is added,
with the KV cache, batched. ``beta = 0`` is plain BC decoding: the advantage weight is
never silently zero (it is the ``beta`` of the config, default 8).

Default ``tau = 0.5`` (the paper used 0.7-0.9 with a pretrained GPT-2): with it ``V`` is the
behaviour policy's value and ``Q - V`` its advantage, a TD analogue of the MC baseline. On
GuessWhich with the tiny from-scratch model (600 updates), chosen on tuning episodes
(``eval.seed_offset=2e9``): tau 0.5 / 0.55 / 0.7 gave normalized scores 89.0 / 66.7 / 14.1;
the expectile's optimism compounds over the 30+ agent tokens of a dialogue and the
advantage then drowns the BC logits (``docs/results_guess_which.md``).

This implementation shares one backbone between the policy and the value heads (one
forward pass per update, so an update costs little more than a BC update). Rewards are
float32 throughout; truncated episodes bootstrap from the real next state (the data
view appends the agent prefix), never from padding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from dialogue_rl.agents import LMAgent, SamplingConfig
from dialogue_rl.algos.base import (
    Learner, TokenBatch, action_vocab_mask, hidden_size, make_head, shifted_action_mask,
)
from dialogue_rl.algos.bc import bc_loss


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """Elementwise ``|tau - 1(diff < 0)| * diff^2`` (``diff = target - prediction``)."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.pow(2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def gather_next(values: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
    """``values[b, next_state[b, t]]`` for every ``t``: ``[B, L]`` -> ``[B, L]``."""
    return values.gather(1, next_state.clamp(0, values.shape[1] - 1))


def td_targets(
    v: torch.Tensor, batch: TokenBatch, gamma: float
) -> torch.Tensor:
    """``y_t = r_t + gamma * (1 - done_t) * V(s_next)`` aligned with states ``t`` (``[B, L-1]``).

    ``v`` is ``V(s)`` at every position ``[B, L]`` (detached by the caller). For the action
    token at ``j = t + 1``, the next state is position ``next_state[j]``.
    """
    r = batch["rewards"][:, 1:].float()
    done = batch["dones"][:, 1:].float()
    v_next = gather_next(v, batch["next_state"])[:, 1:]
    return r + gamma * (1.0 - done) * v_next


def cql_penalty(q: torch.Tensor, q_sa: torch.Tensor, action_vocab: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{a in action vocab} Q(s, a) - Q(s, a_t)`` per state (``[..., V]`` -> ``[...]``)."""
    return torch.logsumexp(q.masked_fill(~action_vocab, float("-inf")), dim=-1) - q_sa


class ILQL(Learner):
    """ILQL with a shared LM backbone, double Q heads with Polyak targets and a V head."""

    name = "ilql"

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.99,
        tau: float = 0.5,
        alpha: float = 0.1,
        polyak: float = 0.005,
        bc_weight: float = 1.0,
        beta: float = 8.0,
        hidden: int = 0,
        excluded_ids: list[int] | None = None,
        tau_within: float | None = None,
    ) -> None:
        super().__init__(model)
        self.gamma, self.tau, self.alpha, self.polyak = gamma, tau, alpha, polyak
        self.tau_within = tau if tau_within is None else tau_within
        self.bc_weight, self.beta = bc_weight, beta
        h, vocab = hidden_size(model), model.config.vocab_size
        self.q_heads = nn.ModuleList([make_head(h, vocab, hidden), make_head(h, vocab, hidden)])
        self.v_head = make_head(h, 1, hidden)
        self.target_q_heads = copy.deepcopy(self.q_heads)
        self.target_q_heads.requires_grad_(False)
        self.register_buffer("action_vocab", action_vocab_mask(model.config, vocab, excluded_ids), persistent=False)

    # ------------------------------------------------------------------ values
    def values(self, hidden: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Q heads, target Q heads (no grad) and V at every position of ``hidden``."""
        qs = [q(hidden).float() for q in self.q_heads]
        with torch.no_grad():
            tqs = [q(hidden).float() for q in self.target_q_heads]
        v = self.v_head(hidden).squeeze(-1).float()
        return qs, tqs, v

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        out = self.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        hidden = out.hidden_states[-1]
        qs, tqs, v = self.values(hidden)
        mask = shifted_action_mask(batch)  # state t whose next token is an action
        actions = batch["input_ids"][:, 1:, None]
        y = td_targets(v.detach(), batch, self.gamma)
        q_sa = [q[:, :-1].gather(-1, actions).squeeze(-1) for q in qs]
        td_loss = sum(masked_mean((q - y).pow(2), mask) for q in q_sa)
        tq_sa = torch.minimum(*[q[:, :-1].gather(-1, actions).squeeze(-1) for q in tqs])
        value_loss = masked_mean(expectile_loss(tq_sa - v[:, :-1], self.state_taus(batch)), mask)
        cql_loss = self.alpha * sum(
            masked_mean(cql_penalty(q[:, :-1], qa, self.action_vocab), mask) for q, qa in zip(qs, q_sa)
        )
        bc = bc_loss(out.logits, batch)
        loss = td_loss + value_loss + cql_loss + self.bc_weight * bc
        with torch.no_grad():
            metrics = {
                "loss": float(loss), "td_loss": float(td_loss), "value_loss": float(value_loss),
                "cql_loss": float(cql_loss), "bc_loss": float(bc),
                "q_mean": float(masked_mean(q_sa[0], mask)), "v_mean": float(masked_mean(v[:, :-1], mask)),
            }
        return loss, metrics

    def state_taus(self, batch: TokenBatch) -> torch.Tensor | float:
        """The expectile of each state ``t`` (``[B, L-1]``): ``tau`` where an agent utterance
        starts (the next token is an action, the current one is not), ``tau_within`` at the
        states inside an utterance; a float when the two are equal."""
        if self.tau_within == self.tau:
            return self.tau
        act = batch["action_mask"].bool()
        starts = act[:, 1:] & ~act[:, :-1]
        return torch.where(starts, self.tau, self.tau_within)

    @torch.no_grad()
    def after_step(self) -> None:
        """Polyak averaging of the target Q heads."""
        for tp, p in zip(self.target_q_heads.parameters(), self.q_heads.parameters()):
            tp.lerp_(p, self.polyak)

    # ------------------------------------------------------------------ acting
    def advantage(self, hidden: torch.Tensor) -> torch.Tensor:
        """``min(Q1_target, Q2_target)(s, .) - V(s)`` for hidden states ``[..., H]``."""
        q = torch.minimum(*[h(hidden).float() for h in self.target_q_heads])
        return q - self.v_head(hidden).float()

    def make_agent(
        self, codec, sampling: SamplingConfig, device, seed: int, banned_ids=(), beta: float | None = None,
    ) -> LMAgent:
        """Batched agent with ``beta * (min Q_target - V)`` added to the BC logits (``beta``:
        this learner's unless given, e.g. ``eval.beta`` to re-weight a trained agent)."""
        beta = self.beta if beta is None else float(beta)

        def perturb(hidden: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
            return logits + beta * self.advantage(hidden)

        return LMAgent(self.model, codec, sampling, device, seed, perturb=perturb, banned_ids=banned_ids)

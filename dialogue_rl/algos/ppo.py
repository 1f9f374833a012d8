"""PPO with a KL penalty to the BC model (Ziegler et al. 2019; Jaques et al. 2020): the parts.

Every agent token is an action (as in ILQL); environment tokens are context and take no
step, so after :func:`gather_actions` a dialogue is the sequence of its agent tokens
``t = 0..T-1``. Names in code:

* ``logp``, ``logp_ref``, ``old_logp``: ``log pi_theta(a_t|s_t)``, the frozen BC
  reference's, and the rollout policy's (the policy before this batch's epochs);
* ``r_env``: the env reward, on the ``<eou>`` closing each agent utterance (0 inside);
* ``values`` ``V(s_t)``, ``dones`` (the last token of a terminated episode),
  ``last_values`` ``V`` of the state after the last token (bootstrap of a truncated one).

KL-penalised reward (``kl_penalized_rewards``), per token:

.. math::

    r_t = r^{env}_t - \\beta_{KL}\\,(\\log \\pi_\\theta(a_t|s_t) - \\log \\pi_{ref}(a_t|s_t))

GAE (``gae``), backwards over the tokens, with ``V_T = last_values``:

.. math::

    \\delta_t = r_t + \\gamma V_{t+1} (1 - done_t) - V_t, \\qquad
    A_t = \\delta_t + \\gamma \\lambda (1 - done_t) A_{t+1}, \\qquad R_t = A_t + V_t

Clipped surrogate (``clipped_surrogate``), with ``rho_t = exp(logp - old_logp)``:

.. math::

    L^{CLIP}_t = -\\min(\\rho_t A_t,\\; \\mathrm{clip}(\\rho_t, 1-\\epsilon, 1+\\epsilon) A_t)

Value loss (``value_loss``), optionally clipped around the rollout's values:

.. math::

    L^V_t = \\tfrac12 \\max\\big((V_t - R_t)^2,\\; (V^{old}_t + \\mathrm{clip}(V_t - V^{old}_t, -c, c) - R_t)^2\\big)

Adaptive KL coefficient (``AdaptiveKLController``, Ziegler et al. 2019), after a batch
of ``n`` samples with measured KL ``KL``:

.. math::

    e = \\mathrm{clip}(KL / KL_{target} - 1, -0.2, 0.2), \\qquad
    \\beta_{KL} \\leftarrow \\beta_{KL} (1 + e\\, n / H)

The online learner (:class:`PPO`, ``algo=ppo``): each iteration plays ``rollouts``
episodes with the current policy (sampling, batched, KV cache: :class:`~dialogue_rl.agents.LMAgent`),
re-reads them in the per-token view (the sampled text is re-tokenised, so the
log-probs are those of the dialogue the env saw), computes ``old_logp``, ``logp_ref``,
``values`` once, the KL-penalised rewards and GAE, then runs ``epochs`` passes of
minibatch updates of ``L = mean(L^CLIP) + vf_coef * mean(L^V)`` on the policy and its
value head (one shared backbone). The reference is a frozen copy of the initial model
(the BC run). The KL to it that is logged (``kl_to_ref``), adapted and capped is the
per-episode sum over the agent-token states of the exact KL over the vocabulary
(``state_kl``):

.. math::

    KL = \\sum_t \\sum_a \\pi_\\theta(a|s_t) (\\log \\pi_\\theta(a|s_t) - \\log \\pi_{ref}(a|s_t))

(its expectation over the rollout's states is the sequence KL; it has none of the noise of
the sampled ``sum_t (logp_t - logp_ref_t)``, which still shapes the reward above).
``kl_target > 0`` adapts the coefficient with the controller above on the rollout's mean
KL. ``kl_limit > 0`` caps it: at the first minibatch whose KL (of the policy being updated,
at the rollout's states) is at or above the limit, the learner takes one gradient step on
that KL instead of the PPO step and ends the iteration's updates (CleanRL's ``target_kl``
only stops, on the KL to the rollout policy; a policy over the limit would then stay
there, since only its updates could bring it back). After the updates the limit is then
enforced at the rollout's states (:meth:`PPO.enforce_kl_limit`): a backtracking line search
between the iteration's start and end parameters, logged as ``kl_after_update`` (below the
limit) and ``kl_backtrack`` (the step fraction kept). The KL logged as ``kl_to_ref`` is read
on the next iteration's fresh rollout, an estimate of the same policy's KL on new states.
The value head shares the backbone; ``detach_value`` feeds it detached
hidden states so that the value loss, large where returns are (the maze's -15), does not
rewrite the language model. The reference is frozen, so :meth:`PPO.prepare` keeps its
log-probs at the rollout's agent-token states (``ref_state_logp``, ``N x V`` floats a
minibatch: smaller than one forward's logits) for every later KL of the iteration (the
updates' ``kl_ref`` and the line search) instead of running the reference again
(``cache_reference=false`` recomputes them, for a large vocabulary on a small memory).
Rewards come from the env, or
from a Bradley–Terry reward model (``reward_fn``: the dialogue's score on its last agent
``<eou>``, env rewards dropped).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dialogue_rl.algos.base import (
    Learner, TokenBatch, action_logprobs, hidden_size, make_head, shifted_action_mask,
)

log = logging.getLogger(__name__)


def gather_actions(batch: TokenBatch, per_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact a per-state tensor ``[B, L-1]`` (state ``t`` takes action ``t + 1``) to the
    agent tokens in order: ``[B, T]`` values and their bool mask (left-aligned, zero-padded)."""
    mask = shifted_action_mask(batch)
    counts = mask.sum(dim=1)
    t_max = int(counts.max()) if mask.numel() else 0
    out = per_state.new_zeros(mask.shape[0], t_max)
    valid = torch.arange(t_max, device=mask.device)[None, :] < counts[:, None]
    out[valid] = per_state[mask]
    return out, valid


def state_logprobs(logits: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """``log pi(.|s_t)`` over the vocabulary at the agent-token states, in order: ``[N, V]``."""
    return F.log_softmax(logits[:, :-1][shifted_action_mask(batch)].float(), dim=-1)


def state_kl(logits: torch.Tensor, ref: torch.Tensor, batch: TokenBatch) -> torch.Tensor:
    """Per-episode ``sum_t KL(pi(.|s_t) || pi_ref(.|s_t))`` over the agent-token states
    (exact over the vocabulary, ``[B]``): the KL to the reference that is reported, adapted
    and capped, free of the sampling noise of ``sum_t (log pi(a_t) - log pi_ref(a_t))``.
    ``ref``: the reference's logits ``[B, L, V]``, or its :func:`state_logprobs` ``[N, V]``."""
    mask = shifted_action_mask(batch)
    logp = state_logprobs(logits, batch)
    ref = state_logprobs(ref, batch) if ref.dim() == 3 else ref
    per_state = (logp.exp() * (logp - ref)).sum(-1)
    rows = torch.nonzero(mask, as_tuple=True)[0]
    return per_state.new_zeros(mask.shape[0]).index_add(0, rows, per_state)


def kl_penalized_rewards(
    r_env: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """``r_t = r_env_t - kl_coef * (logp_t - logp_ref_t)`` on valid tokens, 0 on padding."""
    return (r_env.float() - kl_coef * (logp.float() - logp_ref.float())) * mask


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
    last_values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages ``A_t`` and returns ``R_t = A_t + V_t`` (``[B, T]``, left-aligned rows).

    The value after a row's last valid token is ``last_values`` (0 if None); ``dones``
    stops both the bootstrap and the recursion.
    """
    b, t_max = rewards.shape
    rewards, values = rewards.float(), values.float()
    not_done = 1.0 - dones.float()
    lengths = mask.long().sum(dim=1)
    boot = torch.zeros(b, device=rewards.device) if last_values is None else last_values.float()
    adv = torch.zeros_like(rewards)
    next_v = torch.zeros(b, device=rewards.device)
    next_a = torch.zeros(b, device=rewards.device)
    for t in reversed(range(t_max)):
        is_last = lengths == t + 1
        v_next = torch.where(is_last, boot, next_v)
        a_next = torch.where(is_last, torch.zeros_like(next_a), next_a)
        delta = rewards[:, t] + gamma * v_next * not_done[:, t] - values[:, t]
        a = (delta + gamma * lam * not_done[:, t] * a_next) * mask[:, t]
        adv[:, t] = a
        next_v, next_a = values[:, t], a
    return adv, (adv + values) * mask


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-token ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)``, ``rho = exp(logp - old_logp)``."""
    ratio = torch.exp(logp.float() - old_logp.float())
    return -torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """Per-token ``0.5 * (V - R)^2``, or the clipped form of the module docstring when ``clip > 0``."""
    plain = (values.float() - returns) ** 2
    if clip <= 0:
        return 0.5 * plain
    clipped = old_values + (values.float() - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum(plain, (clipped - returns) ** 2)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / std`` over the valid entries (the usual advantage normalisation)."""
    m = mask.float()
    n = m.sum().clamp_min(1.0)
    mean = (x * m).sum() / n
    var = (((x - mean) * m) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * m


@dataclass
class FixedKLController:
    """A constant KL coefficient."""

    value: float

    def update(self, kl: float, n_steps: int) -> float:
        return self.value


@dataclass
class AdaptiveKLController:
    """Ziegler et al. (2019)'s proportional controller of the KL coefficient towards ``target``."""

    value: float
    target: float
    horizon: int = 10_000

    def update(self, kl: float, n_steps: int) -> float:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


#: Key of the KL controller's coefficient in a PPO checkpoint's ``extra`` (for an exact resume).
KL_STATE_KEY = "ppo_kl_coef"

#: Rollout seeds of online training start here (below the evaluation seeds, see
#: ``dialogue_rl.data.generate.EVAL_SEED_OFFSET``; a run's seed moves the range).
ROLLOUT_SEED_OFFSET = 600_000_000


def play_episodes(agent: Any, env_id: str, env_kwargs: dict | None, seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Play one lock-stepped batch of episodes; rows in the dataset schema (+ ``terminated``)."""
    from dialogue_rl.evaluation import play_batch

    return [{"seed": ep.seed, "return": ep.ret, "terminated": ep.terminated,
             "turns": [t.to_dict() for t in ep.info["turns"]]}
            for ep in play_batch(agent, env_id, env_kwargs, seeds)]


class PPO(Learner):
    """Online PPO from a BC model with a per-token KL penalty to it (see the module docstring)."""

    name = "ppo"
    needs_bc_init = True  # the reference is the initial model: start from a BC run
    online = True  # trained by :meth:`train_online`, not by ``fit`` on a dataset

    def __init__(
        self,
        model: nn.Module,
        kl_coef: float = 0.05,
        kl_target: float = 0.0,
        kl_horizon: int = 10_000,
        kl_limit: float = 0.0,
        gamma: float = 1.0,
        lam: float = 0.95,
        clip_eps: float = 0.2,
        value_clip: float = 0.2,
        vf_coef: float = 0.5,
        epochs: int = 4,
        rollouts: int = 64,
        minibatch: int = 16,
        temperature: float = 1.0,
        top_k: int = 0,
        max_utterance_tokens: int = 32,
        whiten: bool = True,
        hidden: int = 0,
        detach_value: bool = False,
        cache_reference: bool = True,
        seed: int = 0,
        reward_model: str | None = None,
    ) -> None:
        super().__init__(model)
        self.reward_model = reward_model  # a reward_model run whose score replaces the env reward
        self.gamma, self.lam, self.clip_eps, self.value_clip, self.vf_coef = gamma, lam, clip_eps, value_clip, vf_coef
        self.epochs, self.rollouts, self.minibatch = epochs, rollouts, minibatch
        self.temperature, self.top_k, self.max_utterance_tokens = temperature, top_k, max_utterance_tokens
        self.whiten, self.seed = whiten, seed
        self.kl = (AdaptiveKLController(kl_coef, kl_target, kl_horizon) if kl_target > 0
                   else FixedKLController(kl_coef))
        if temperature != 1.0 or top_k != 0:
            # rollouts would sample softmax(logits / T) (top-k truncated) while the ratio, the
            # KL and the gradient are those of softmax(logits): an off-policy update
            raise ValueError(f"PPO temperature={temperature}, top_k={top_k}: the rollouts must sample the "
                             "policy PPO optimises; fix: algo.temperature=1.0 algo.top_k=0")
        if kl_limit < 0 or (kl_limit and kl_target > kl_limit):
            raise ValueError(f"kl_limit={kl_limit}: must be 0 (off) or >= kl_target={kl_target}")
        self.kl_limit = kl_limit
        self.register_buffer("kl_coef", torch.tensor(float(kl_coef)))  # saved with checkpoints
        self.v_head = make_head(hidden_size(model), 1, hidden)
        self.detach_value = detach_value  # the value loss does not train the shared backbone
        self.cache_reference = cache_reference  # prepare() stores the reference's state log-probs
        self.reference = copy.deepcopy(model)
        self.reference.requires_grad_(False)
        self.reference.eval()

    def train(self, mode: bool = True) -> PPO:
        super().train(mode)
        self.reference.eval()
        return self

    # ------------------------------------------------------------------ per batch
    def _forward(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-state ``log pi(a_{t+1}|s_t)`` ``[B, L-1]``, ``V(s_t)`` ``[B, L]`` and the logits."""
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True)
        h = out.hidden_states[-1]
        v = self.v_head(h.detach() if self.detach_value else h).squeeze(-1).float()
        return action_logprobs(out.logits, batch["input_ids"]), v, out.logits

    @torch.no_grad()
    def _reference_logits(self, batch: TokenBatch) -> torch.Tensor:
        return self.reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    def _reference(self, batch: TokenBatch) -> torch.Tensor:
        """The reference at ``batch``'s agent-token states for :func:`state_kl`: the log-probs
        :meth:`prepare` stored (``ref_state_logp``; the reference is frozen), else its logits."""
        cached = batch.get("ref_state_logp")
        return cached if cached is not None else self._reference_logits(batch)

    @torch.no_grad()
    def prepare(self, batch: TokenBatch, reward_fn: Callable[[TokenBatch], torch.Tensor] | None = None) -> TokenBatch:
        """Add the rollout quantities (compacted to agent tokens): ``old_logp``, ``ref_logp``,
        ``old_values``, ``adv``, ``returns``, ``mask``, ``kl`` (per-episode sums)."""
        logp, v, logits = self._forward(batch)
        ref_logits = self._reference_logits(batch)
        ref = action_logprobs(ref_logits, batch["input_ids"])
        old_logp, mask = gather_actions(batch, logp)
        ref_logp, _ = gather_actions(batch, ref)
        values, _ = gather_actions(batch, v[:, :-1])
        r_env, _ = gather_actions(batch, batch["rewards"][:, 1:].float())
        dones, _ = gather_actions(batch, batch["dones"][:, 1:].float())
        lengths = mask.sum(dim=1)
        if reward_fn is not None:  # a learned reward replaces the env's, on the last agent token
            r_env = torch.zeros_like(r_env)
            r_env[torch.arange(len(lengths)), (lengths - 1).clamp_min(0)] = reward_fn(batch).float()
        # bootstrap of a truncated episode: V at the state after its last action
        last_action = batch["action_mask"].long().cumsum(1).argmax(1)
        nxt = batch["next_state"].gather(1, last_action[:, None]).squeeze(1)
        last_values = v.gather(1, nxt[:, None]).squeeze(1)
        rewards = kl_penalized_rewards(r_env, old_logp, ref_logp, mask, float(self.kl_coef))
        adv, returns = gae(rewards, values, dones.bool(), mask, self.gamma, self.lam, last_values)
        if self.whiten:
            adv = masked_whiten(adv, mask)
        ref_state_logp = state_logprobs(ref_logits, batch)
        kl = state_kl(logits, ref_state_logp, batch)
        cache = {"ref_state_logp": ref_state_logp} if self.cache_reference else {}
        return {**batch, "old_logp": old_logp, "ref_logp": ref_logp, "old_values": values, "adv": adv,
                "returns": returns, "mask": mask, "kl": kl, "score": (r_env * mask).sum(dim=1), **cache}

    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The PPO loss of a prepared minibatch (:meth:`prepare`)."""
        loss, _, metrics = self.loss_and_kl(batch)
        return loss, metrics

    def loss_and_kl(self, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The PPO loss, the mean per-episode KL to the reference at the minibatch's states
        (``state_kl``, with its gradient: the step :meth:`train_online` takes instead of
        the PPO step at ``kl_limit``) and the metrics."""
        logp_all, v_all, logits = self._forward(batch)
        logp, mask = gather_actions(batch, logp_all)
        values, _ = gather_actions(batch, v_all[:, :-1])
        m = mask.float()
        n = m.sum().clamp_min(1.0)
        pg = (clipped_surrogate(logp, batch["old_logp"], batch["adv"], self.clip_eps) * m).sum() / n
        vl = (value_loss(values, batch["old_values"], batch["returns"], self.value_clip) * m).sum() / n
        loss = pg + self.vf_coef * vl
        # per-episode KL of the policy being updated to the reference, at the rollout's states
        kl_ref = state_kl(logits, self._reference(batch), batch).mean()
        with torch.no_grad():
            ratio = torch.exp(logp - batch["old_logp"])
            clipfrac = (((ratio - 1).abs() > self.clip_eps).float() * m).sum() / n
            approx_kl = ((batch["old_logp"] - logp) * m).sum() / n
            metrics = {"loss": float(loss), "pg_loss": float(pg), "value_loss": float(vl),
                       "clipfrac": float(clipfrac), "approx_kl": float(approx_kl), "kl_ref_update": float(kl_ref)}
        return loss, kl_ref, metrics

    @torch.no_grad()
    def mean_state_kl(self, prepared: Sequence[TokenBatch]) -> float:
        """Mean per-episode ``state_kl`` of the current policy at the states of ``prepared``."""
        was_training = self.training
        self.eval()
        kls = [state_kl(self._forward(p)[2], self._reference(p), p) for p in prepared]
        self.train(was_training)
        return float(torch.cat(kls).mean())

    def enforce_kl_limit(self, prepared: Sequence[TokenBatch], start: Sequence[torch.Tensor],
                         optimizer: torch.optim.Optimizer, max_halvings: int = 10,
                         max_kl_steps: int = 20) -> tuple[float, float]:
        """Bring the iteration's policy under ``kl_limit`` at the rollout's states.

        Backtracking line search (as TRPO's): with ``theta_0`` the parameters the iteration
        started from (``start``) and ``theta_1`` those after its updates, take
        ``theta = theta_0 + lambda (theta_1 - theta_0)`` for the largest ``lambda`` in
        ``1, 1/2, 1/4, ...`` whose mean per-episode state KL over ``prepared`` is below the
        limit. If even ``theta_0`` reads at the limit on these states (a new rollout, sampling
        noise), gradient steps on that KL follow until it is below (at most ``max_kl_steps``).
        Returns the KL reached and ``lambda`` (0 when the updates were undone).
        """
        params = list(self.model.parameters())
        kl, lam = self.mean_state_kl(prepared), 1.0
        if kl < self.kl_limit:
            return kl, lam
        end = [q.detach().clone() for q in params]
        with torch.no_grad():
            for _ in range(max_halvings):
                lam /= 2
                for q, a, b in zip(params, start, end):
                    q.copy_(torch.lerp(a, b, lam))
                kl = self.mean_state_kl(prepared)
                if kl < self.kl_limit:
                    return kl, lam
            lam = 0.0
            for q, a in zip(params, start):
                q.copy_(a)
        kl = self.mean_state_kl(prepared)
        for _ in range(max_kl_steps):
            if kl < self.kl_limit:
                break
            optimizer.zero_grad(set_to_none=True)
            for p in prepared:
                (state_kl(self._forward(p)[2], self._reference(p), p).sum() / sum(
                    len(b["input_ids"]) for b in prepared)).backward()
            optimizer.step()
            kl = self.mean_state_kl(prepared)
        optimizer.zero_grad(set_to_none=True)
        return kl, lam

    # ------------------------------------------------------------------ online loop
    def train_online(
        self,
        env_id: str,
        env_kwargs: dict | None,
        codec: Any,
        pad_id: int,
        cfg: Any,
        device: torch.device,
        banned_ids: Sequence[int] = (),
        reward_fn: Callable[[TokenBatch], torch.Tensor] | None = None,
        log_fn: Callable[[dict[str, Any], int], None] | None = None,
        eval_fn: Callable[[int], Any] | None = None,
        checkpoint_dir: str | Path | None = None,
        extra: dict[str, Any] | None = None,
        rollout_batch: int = 64,
        resume: bool = False,
    ) -> dict[str, Any]:
        """``cfg.steps`` PPO iterations (``cfg``: a :class:`~dialogue_rl.train.TrainConfig`;
        ``lr``, ``weight_decay``, ``grad_clip``, ``log_every``, ``eval_every``,
        ``checkpoint_every`` mean what they do in ``fit``; ``batch_size`` is unused).

        ``resume``: continue from the newest valid checkpoint in ``checkpoint_dir`` (policy,
        value head, frozen reference, KL coefficient, optimiser, RNG). Every iteration's
        randomness (rollout seeds, sampling, minibatch order) is a function of the run seed
        and the iteration, so a resumed run gives the parameters of an uninterrupted one."""
        from dialogue_rl import checkpoint as ckpt
        from dialogue_rl.agents import LMAgent, SamplingConfig
        from dialogue_rl.data.views import collate_tokens, tokenize_dialogue
        from dialogue_rl.memory import release_freed_memory, rss_mb
        from dialogue_rl.rollout import max_context
        from dialogue_rl.train import lr_at, make_optimizer

        self.to(device)
        optimizer = make_optimizer(self, cfg)
        state = ckpt.resume(checkpoint_dir, self, optimizer) if resume and checkpoint_dir is not None else None
        first = int(state["step"]) if state is not None else 0  # iterations done
        if state is not None:  # the controller's state (the float32 kl_coef buffer rounds it)
            self.kl.value = float(state["extra"].get(KL_STATE_KEY, float(self.kl_coef)))
        sampling = SamplingConfig(greedy=False, temperature=self.temperature, top_k=self.top_k,
                                  max_utterance_tokens=self.max_utterance_tokens)
        ctx = max_context(self.model)
        t0, metrics = time.perf_counter(), {}
        for it in range(first, cfg.steps):
            rng = np.random.default_rng([self.seed, 7, it])  # minibatch order: per iteration, so resuming is exact
            self.eval()
            agent = LMAgent(self.model, codec, sampling, device, seed=self.seed * 1_000_003 + it, banned_ids=banned_ids)
            base = ROLLOUT_SEED_OFFSET + (self.seed * 10_000_019 + it * self.rollouts) % 300_000_000
            seeds = list(range(base, base + self.rollouts))
            rows = []
            for lo in range(0, len(seeds), rollout_batch):
                rows += play_episodes(agent, env_id, env_kwargs, seeds[lo:lo + rollout_batch])
            del agent  # its KV buffers (two turns of cache for a rollout batch) are not needed by the updates
            examples = [tokenize_dialogue(r, codec) for r in rows]
            examples = [e for e in examples if len(e["input_ids"]) <= ctx]
            prepared = [self.prepare({k: v.to(device) for k, v in collate_tokens(examples[lo:lo + self.minibatch],
                                                                               pad_id).items()}, reward_fn)
                        for lo in range(0, len(examples), self.minibatch)]
            self.train()
            for g in optimizer.param_groups:
                g["lr"] = lr_at(it, cfg)
            start = [q.detach().clone() for q in self.model.parameters()] if self.kl_limit else []
            acc: dict[str, float] = {}
            n_updates, stopped = 0, False
            for _ in range(self.epochs):
                if stopped:
                    break
                for j in rng.permutation(len(prepared)):
                    optimizer.zero_grad(set_to_none=True)
                    loss, kl_ref, m = self.loss_and_kl(prepared[int(j)])
                    # kl_limit: a policy that reads at the limit takes one step down the KL to
                    # the reference instead of the PPO step, and the iteration's updates end
                    over = bool(self.kl_limit) and m["kl_ref_update"] >= self.kl_limit
                    if over:
                        loss = kl_ref
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"ppo: non-finite loss at iteration {it}: {m}")
                    loss.backward()
                    if cfg.grad_clip > 0:
                        m["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), cfg.grad_clip))
                    optimizer.step()
                    del loss, kl_ref  # kl_ref's graph (when not stepped on) holds the minibatch's activations
                    n_updates += 1
                    for k, v in m.items():
                        acc[k] = acc.get(k, 0.0) + v
                    if over:
                        stopped = True
                        break
            if self.kl_limit:
                kl_after, lam = self.enforce_kl_limit(prepared, start, optimizer)
                limit_metrics = {"kl_after_update": kl_after, "kl_backtrack": lam}
            else:
                limit_metrics = {}
            kl = float(torch.cat([p["kl"] for p in prepared]).mean())
            score = float(torch.cat([p["score"] for p in prepared]).mean())
            self.kl_coef.fill_(self.kl.update(kl, len(examples)))
            metrics = {**{k: v / max(n_updates, 1) for k, v in acc.items()}, **limit_metrics, "updates": n_updates,
                       "episode_return": float(np.mean([r["return"] for r in rows])), "reward_score": score,
                       "kl_to_ref": kl, "kl_coef": float(self.kl_coef), "lr": optimizer.param_groups[0]["lr"]}
            # the next iteration's rollout and minibatches have other shapes: drop this one's and
            # hand the freed heap back (dialogue_rl.memory), or the resident size climbs
            del rows, examples, prepared, start
            release_freed_memory()
            metrics["rss_mb"] = rss_mb()
            done = it + 1
            if log_fn and (done % cfg.log_every == 0 or done == cfg.steps):
                log_fn({f"train/{k}": v for k, v in metrics.items()}, done)
            log.info("ppo iteration %d: return %.4f, KL %.4f (coef %.4f)%s, RSS %.0f MiB", done, metrics["episode_return"],
                     kl, float(self.kl_coef), f", KL after update {kl_after:.4f} (step kept {lam:g})" if self.kl_limit else "",
                     metrics["rss_mb"])
            if eval_fn is not None and cfg.eval_every and done % cfg.eval_every == 0 and done < cfg.steps:
                eval_fn(done)
            if checkpoint_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                ckpt.save(checkpoint_dir, done, self, optimizer, {**(extra or {}), KL_STATE_KEY: self.kl.value},
                          keep=cfg.keep_checkpoints)
        return {"steps": cfg.steps, "start_step": first, "wall_s": time.perf_counter() - t0,
                "tokens_per_s": 0.0, "final_metrics": metrics}

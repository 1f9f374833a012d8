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

Status: these functions are implemented and tested; the online learner (rollouts from
the current agent, several epochs per batch, ``algo=ppo``) is not written yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dialogue_rl.algos.base import TokenBatch, shifted_action_mask


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

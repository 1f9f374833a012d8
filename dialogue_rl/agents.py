"""Batched agents: ``act(observations) -> utterances``.

An observation is the dialogue so far as a list of :class:`envs.core.Turn` (the
structured form of the history observation, ``info["turns"]``). Agents act on a batch
of such histories at once; ``reset(envs, seeds)`` tells them a new batch of episodes
starts (scripted policies are built per episode there).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from dialogue_rl.rollout import (  # noqa: F401  (re-exported: the decoding API predates rollout.py)
    Perturb, Rollout, SamplingConfig, generate_utterances, max_context, pick_tokens, process_logits,
)
from envs.core import AGENT, DialogueEnv, PolicyFactory, Turn, policy_rng
from envs.token_view import TokenCodec, encode_dialogue, encode_turn

LogitsFn = Perturb


class Agent(Protocol):
    def reset(self, envs: Sequence[DialogueEnv], seeds: Sequence[int]) -> None: ...

    def act(self, observations: Sequence[Sequence[Turn]], slots: Sequence[int]) -> list[str]: ...


class ScriptedAgent:
    """A scripted behaviour policy (from ``env.policies()``) run per episode slot."""

    def __init__(self, factory: PolicyFactory) -> None:
        self.factory = factory
        self._policies: list = []

    def reset(self, envs: Sequence[DialogueEnv], seeds: Sequence[int]) -> None:
        self._policies = [self.factory(e, policy_rng(s)) for e, s in zip(envs, seeds)]

    def act(self, observations: Sequence[Sequence[Turn]], slots: Sequence[int]) -> list[str]:
        return [self._policies[i].act(obs) for obs, i in zip(observations, slots)]


class LMAgent:
    """Samples one utterance per history from a causal LM, batched, with the KV cache.

    Histories are encoded with the token layout of :mod:`envs.token_view`, followed by
    the agent's speaker prefix (the encoding of earlier turns is kept per slot, so a
    turn only tokenises the new turns), left-truncated to the model's window minus the
    utterance budget, and decoded by :class:`dialogue_rl.rollout.Rollout` until every
    row emitted ``<eou>`` or the per-utterance token budget is spent. With
    ``cross_turn=True`` (default) the KV cache of a dialogue is kept between its turns
    and only the new tokens are run; ``False`` re-encodes each history (same greedy
    outputs, slower). ``perturb`` (e.g. ILQL's ``beta * (Q - V)``) maps
    ``(hidden_state [B, H], logits [B, V])`` to new logits; it is applied after
    temperature/top-k. ``amp`` (default: on CUDA) runs the model under bf16 autocast.
    """

    def __init__(
        self,
        model: nn.Module,
        codec: TokenCodec,
        sampling: SamplingConfig,
        device: torch.device | str = "cpu",
        seed: int = 0,
        perturb: Perturb | None = None,
        banned_ids: Sequence[int] = (),
        cross_turn: bool = True,
        amp: bool | None = None,
    ) -> None:
        self.model = model
        self.codec = codec
        self.sampling = sampling
        self.device = torch.device(device)
        self.perturb = perturb
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.banned = torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=self.device)
        self.pad_id = 0
        self.rollout = Rollout(
            model, codec.eou_id, sampling, self.device, self.generator, perturb, banned_ids,
            pad_id=self.pad_id, cross_turn=cross_turn, amp=amp,
        )
        self._encoded: dict[Hashable, tuple[list[Turn], list[int]]] = {}

    def reset(self, envs: Sequence[DialogueEnv], seeds: Sequence[int]) -> None:
        self.rollout.reset()
        self._encoded.clear()

    def encode(self, history: Sequence[Turn]) -> list[int]:
        ids, _, _ = encode_dialogue(self.codec, history)
        return ids + self.codec.speaker_prefix(AGENT)

    def _encode_slot(self, history: Sequence[Turn], slot: Hashable) -> list[int]:
        """``encode(history)``, tokenising only the turns added since the slot's last call."""
        prev = self._encoded.get(slot)
        n = len(prev[0]) if prev is not None else 0
        if prev is None or n > len(history) or list(history[:n]) != prev[0]:
            ids, _, _ = encode_dialogue(self.codec, history)
        else:
            ids = list(prev[1])
            for t in history[n:]:
                prefix, body = encode_turn(self.codec, t.speaker, t.text)
                ids += prefix + body
        self._encoded[slot] = (list(history), ids)
        return ids + self.codec.speaker_prefix(AGENT)

    @torch.no_grad()
    def act(self, observations: Sequence[Sequence[Turn]], slots: Sequence[Hashable] | None = None) -> list[str]:
        if not observations:
            return []
        slots = list(range(len(observations))) if slots is None else list(slots)
        # Histories longer than the model's context keep their most recent tokens, leaving
        # room for the utterance to be generated.
        ctx = max_context(self.model) - self.sampling.max_utterance_tokens
        prompts = [self._encode_slot(h, s)[-ctx:] for h, s in zip(observations, slots)]
        out_tokens = self.rollout.act(prompts, slots)
        return [self.codec.decode(t) for t in out_tokens]


def banned_token_ids(codec: TokenCodec, tokenizer) -> list[int]:
    """Ids an agent must never emit inside an utterance: pad, bos, unk."""
    ids = [getattr(tokenizer, n, None) for n in ("pad_token_id", "bos_token_id", "unk_token_id")]
    return [int(i) for i in ids if i is not None and int(i) != codec.eou_id]


def seeds_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)

"""Batched agents: ``act(observations) -> utterances``.

An observation is the dialogue so far as a list of :class:`envs.core.Turn` (the
structured form of the history observation, ``info["turns"]``). Agents act on a batch
of such histories at once; ``reset(envs, seeds)`` tells them a new batch of episodes
starts (scripted policies are built per episode there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from envs.core import AGENT, DialogueEnv, PolicyFactory, Turn, policy_rng
from envs.token_view import TokenCodec, encode_dialogue

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@dataclass
class SamplingConfig:
    """Decoding settings: greedy, or sampling with temperature and top-k."""

    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    max_utterance_tokens: int = 32


def process_logits(logits: torch.Tensor, cfg: SamplingConfig) -> torch.Tensor:
    """Temperature then top-k on ``[B, V]`` logits (before any value-based perturbation)."""
    logits = logits / max(cfg.temperature, 1e-6)
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def pick_tokens(scores: torch.Tensor, greedy: bool, generator: torch.Generator | None) -> torch.Tensor:
    if greedy:
        return scores.argmax(-1)
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class LMAgent:
    """Samples one utterance per history from a causal LM, batched, with the KV cache.

    Histories are encoded with the token layout of :mod:`envs.token_view`, followed by
    the agent's speaker prefix, left-padded, and decoded token by token until every
    row emitted ``<eou>`` or the per-utterance token budget is spent. ``perturb`` (e.g.
    ILQL's ``beta * (Q - V)``) maps ``(hidden_state [B, H], logits [B, V])`` to new
    logits; it is applied after temperature/top-k.
    """

    def __init__(
        self,
        model: nn.Module,
        codec: TokenCodec,
        sampling: SamplingConfig,
        device: torch.device | str = "cpu",
        seed: int = 0,
        perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        banned_ids: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.codec = codec
        self.sampling = sampling
        self.device = torch.device(device)
        self.perturb = perturb
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.banned = torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=self.device)
        self.pad_id = 0

    def reset(self, envs: Sequence[DialogueEnv], seeds: Sequence[int]) -> None:
        pass

    def encode(self, history: Sequence[Turn]) -> list[int]:
        ids, _, _ = encode_dialogue(self.codec, history)
        return ids + self.codec.speaker_prefix(AGENT)

    @torch.no_grad()
    def act(self, observations: Sequence[Sequence[Turn]], slots: Sequence[int] | None = None) -> list[str]:
        if not observations:
            return []
        self.model.eval()
        # Histories longer than the model's context keep their most recent tokens, leaving
        # room for the utterance to be generated.
        ctx = max_context(self.model) - self.sampling.max_utterance_tokens
        prompts = [self.encode(h)[-ctx:] for h in observations]
        b, width = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((b, width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p)
            attn[i, width - len(p):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        out_tokens = generate_utterances(
            self.model, ids, attn, self.codec.eou_id, self.sampling, self.generator, self.perturb, self.banned
        )
        return [self.codec.decode(t) for t in out_tokens]


def max_context(model: nn.Module) -> int:
    """The number of positions a causal LM can attend to (GPT-2: ``n_positions``)."""
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024))


def generate_utterances(
    model: nn.Module,
    ids: torch.Tensor,
    attn: torch.Tensor,
    eou_id: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    perturb: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    banned: torch.Tensor | None = None,
) -> list[list[int]]:
    """Decode one utterance per left-padded row with the KV cache; stop rows at ``<eou>``."""
    b = ids.shape[0]
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    out = model(
        input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True,
        output_hidden_states=perturb is not None,
    )
    tokens: list[list[int]] = [[] for _ in range(b)]
    done = torch.zeros(b, dtype=torch.bool, device=ids.device)
    next_pos = pos[:, -1:] + 1
    for _ in range(sampling.max_utterance_tokens):
        logits = process_logits(out.logits[:, -1].float(), sampling)
        if banned is not None and banned.numel():
            logits[:, banned] = float("-inf")
        if perturb is not None:
            logits = perturb(out.hidden_states[-1][:, -1], logits)
        tok = pick_tokens(logits, sampling.greedy, generator)
        tok = torch.where(done, torch.full_like(tok, eou_id), tok)
        for i, t in enumerate(tok.tolist()):
            if not done[i] and t != eou_id:
                tokens[i].append(t)
        done |= tok == eou_id
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones((b, 1), dtype=attn.dtype, device=attn.device)], dim=-1)
        out = model(
            input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
            past_key_values=out.past_key_values, use_cache=True, output_hidden_states=perturb is not None,
        )
        next_pos = next_pos + 1
    return tokens


def banned_token_ids(codec: TokenCodec, tokenizer) -> list[int]:
    """Ids an agent must never emit inside an utterance: pad, bos, unk."""
    ids = [getattr(tokenizer, n, None) for n in ("pad_token_id", "bos_token_id", "unk_token_id")]
    return [int(i) for i in ids if i is not None and int(i) != codec.eou_id]


def seeds_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)

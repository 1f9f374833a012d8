"""Batched multi-turn generation with the KV cache reused across tokens *and turns*.

An agent acting in a dialogue sees, at its ``n``-th turn, the token sequence

.. math::

    x^{(n)} = x^{(n-1)} \\,\\|\\, u^{(n-1)} \\,\\|\\, \\langle eou \\rangle \\,\\|\\, r^{(n-1)} \\,\\|\\, \\texttt{agent :}

(the previous prompt, its own utterance, the partner's reply ``r`` and the agent's
speaker prefix; layout of :mod:`envs.token_view`). The keys and values of a causal
transformer at position ``t`` depend only on tokens ``x_{\\le t}`` and on the position
ids, so the keys and values computed for the first ``k`` tokens of ``x^{(n-1)} \\| u``
are exactly those that re-encoding ``x^{(n)}`` would compute, as long as the first ``k``
tokens agree. :class:`TurnCache` keeps, for every dialogue (a *slot*), the tokens whose
keys and values sit in the cache, and at each turn:

1. ``k_i = min(LCP(cached_i, prompt_i), |prompt_i| - 1)``: the longest common prefix
   with the new prompt (at least one token is always fed, to get the next-token logits).
   Comparing token ids makes the reuse safe whatever happened in between: an utterance
   the environment sanitised differently, a slot given to another dialogue, a history
   that was left-truncated (then the window moved and ``k_i`` is ~0: the truncated window
   is re-encoded, exactly like the re-encoding agent does).
2. The cache is compacted: row ``i`` keeps its first ``k_i`` real (unmasked) columns,
   right-aligned (left padding), so padding never accumulates over turns.
3. Only the new suffix ``prompt_i[k_i:]`` is run, left-padded into a ``[B, S]`` chunk with
   per-row position ids ``k_i, k_i + 1, ...`` and an attention mask that hides every
   padding column (padding may sit in the middle of a row's cache; masked columns get
   zero attention weight, so they change nothing).
4. :func:`decode` samples the utterance token by token with the cache. A row that has
   emitted ``<eou>`` stops: its later inputs are fed with attention mask 0 (they are
   never attended to) and do not advance its position.

A turn then costs ``O(|new tokens| * |context|)`` instead of ``O(|context|^2)``. With
greedy decoding the utterances are the re-encoding agent's (up to floating-point
summation order, which a test checks on real episodes).

Decoding (:func:`decode`): at every step the logits of the last position go through
temperature and top-k (:func:`process_logits`), banned ids get ``-inf``, then the
``perturb(hidden, logits)`` hook (ILQL / MC: ``logits + beta * (min_i Q_i^target - V)``)
and greedy argmax or multinomial sampling. Everything is batched; the only host
synchronisation per token is the "all rows stopped" test.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from dialogue_rl.models.lm import cache_kwargs, output_cache

log = logging.getLogger(__name__)

#: ``perturb(hidden [B, H], logits [B, V]) -> logits [B, V]``, applied after temperature/top-k.
Perturb = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
    """Argmax, or one multinomial draw per row from ``softmax(scores)``."""
    if greedy:
        return scores.argmax(-1)
    probs = torch.softmax(scores.float(), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def max_context(model: nn.Module) -> int:
    """The number of positions a causal LM can attend to (GPT-2: ``n_positions``)."""
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024))


# ---------------------------------------------------------------------------- padding
def left_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str, start: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded ``(ids, attention_mask, position_ids)`` ``[B, T]`` of token lists.

    Row ``i``'s real tokens get positions ``start[i], start[i] + 1, ...`` (default 0);
    padding gets position 0 and mask 0. Built on the host in one tensor, then moved.
    """
    b, width = len(seqs), max((len(s) for s in seqs), default=0)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    attn = torch.zeros((b, width), dtype=torch.long)
    pos = torch.zeros((b, width), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        if n:
            ids[i, width - n:] = torch.as_tensor(list(s), dtype=torch.long)
            attn[i, width - n:] = 1
            pos[i, width - n:] = torch.arange(n) + (start[i] if start is not None else 0)
    return ids.to(device), attn.to(device), pos.to(device)


# ---------------------------------------------------------------------------- decoding
@dataclass
class Decoded:
    """Result of :func:`decode`.

    ``utterances``: per row, the generated tokens before ``<eou>`` (``<eou>`` excluded).
    ``fed``: per row, the generated tokens that were run through the model (their keys
    and values are in ``cache``; the last sampled token of a row is never fed).
    ``cache``/``attention_mask``: the KV cache after decoding and its ``[B, W]`` mask.
    """

    utterances: list[list[int]]
    fed: list[list[int]]
    cache: Any
    attention_mask: torch.Tensor


def _repeat_rows(x: Any, n: int) -> Any:
    return None if x is None else x.repeat_interleave(n, dim=0)


def decode(
    model: nn.Module,
    ids: torch.Tensor,
    attn: torch.Tensor,
    pos: torch.Tensor,
    eou_id: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    perturb: Perturb | None = None,
    banned: torch.Tensor | None = None,
    past: Any = None,
    past_attn: torch.Tensor | None = None,
    repeat: int = 1,
) -> Decoded:
    """Run a left-padded chunk through ``model`` (after ``past``), then decode one utterance a row.

    ``ids``/``attn``/``pos`` are ``[B, S]``; ``past``/``past_attn`` a KV cache of width ``W``
    and its ``[B, W]`` mask (or ``None``: a fresh :func:`new_cache`). With ``repeat = n`` every row is decoded ``n``
    times (rows ``i * n ... i * n + n - 1``): the chunk is run once and its cache copied,
    which is how ``n`` candidates are sampled per history. Stops each row at ``<eou>`` and
    every row after ``sampling.max_utterance_tokens`` tokens.
    """
    want_hidden = perturb is not None
    if past is None:
        past = new_cache(ids.shape[1] + sampling.max_utterance_tokens)
    full_attn = attn if past_attn is None else torch.cat([past_attn, attn], dim=1)
    out = model(
        input_ids=ids, attention_mask=full_attn, position_ids=pos, use_cache=True,
        output_hidden_states=want_hidden, **cache_kwargs(model, past),
    )
    cache = output_cache(out)
    logits_last = out.logits[:, -1]
    hidden_last = out.hidden_states[-1][:, -1] if want_hidden else None
    next_pos = pos[:, -1] + 1
    if repeat > 1:
        cache.batch_repeat_interleave(repeat)
        logits_last, hidden_last = _repeat_rows(logits_last, repeat), _repeat_rows(hidden_last, repeat)
        full_attn, next_pos = _repeat_rows(full_attn, repeat), _repeat_rows(next_pos, repeat)
    b = logits_last.shape[0]
    dev = logits_last.device
    done = torch.zeros(b, dtype=torch.bool, device=dev)
    steps: list[torch.Tensor] = []
    fed_mask: list[torch.Tensor] = []
    budget = sampling.max_utterance_tokens
    has_banned = banned is not None and banned.numel() > 0
    for t in range(budget):
        scores = process_logits(logits_last.float(), sampling)
        if has_banned:
            scores[:, banned] = float("-inf")
        if perturb is not None:
            scores = perturb(hidden_last, scores)
        tok = pick_tokens(scores, sampling.greedy, generator)
        tok = torch.where(done, torch.full_like(tok, eou_id), tok)
        steps.append(tok)
        live = ~done  # rows for which ``tok`` is a real token (their utterance or its <eou>)
        done = done | (tok == eou_id)
        if t == budget - 1 or bool(done.all()):
            break
        full_attn = torch.cat([full_attn, live[:, None].to(full_attn.dtype)], dim=1)
        out = model(
            input_ids=tok[:, None], attention_mask=full_attn, position_ids=next_pos[:, None],
            use_cache=True, output_hidden_states=want_hidden, **cache_kwargs(model, cache),
        )
        cache = output_cache(out)
        logits_last = out.logits[:, -1]
        hidden_last = out.hidden_states[-1][:, -1] if want_hidden else None
        fed_mask.append(live)
        next_pos = next_pos + live.long()
    toks = torch.stack(steps, dim=1)  # [B, T]
    is_eou = toks == eou_id
    n_utt = torch.where(is_eou.any(1), is_eou.int().argmax(1), torch.full_like(toks[:, 0], toks.shape[1]))
    n_fed = torch.stack(fed_mask, 1).sum(1) if fed_mask else torch.zeros_like(n_utt)
    rows = toks.tolist()
    n_utt_l, n_fed_l = n_utt.tolist(), n_fed.tolist()
    return Decoded(
        utterances=[r[:n] for r, n in zip(rows, n_utt_l)], fed=[r[:n] for r, n in zip(rows, n_fed_l)],
        cache=cache, attention_mask=full_attn,
    )


def generate_utterances(
    model: nn.Module,
    ids: torch.Tensor,
    attn: torch.Tensor,
    eou_id: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    perturb: Perturb | None = None,
    banned: torch.Tensor | None = None,
    repeat: int = 1,
) -> list[list[int]]:
    """Decode one utterance per left-padded row (``repeat`` per row) with the KV cache."""
    pos = (attn.cumsum(-1) - 1).clamp_min(0)
    return decode(model, ids, attn, pos, eou_id, sampling, generator, perturb, banned, repeat=repeat).utterances


# ---------------------------------------------------------------------------- the cross-turn cache
def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    # compare in blocks first (a list slice comparison runs in C)
    step = 64
    while i + step <= n and a[i:i + step] == b[i:i + step]:
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


Alloc = Callable[[str, tuple[int, ...], torch.dtype, torch.device], torch.Tensor]


class BufferPool:
    """Contiguous KV buffers reused from one turn to the next.

    :meth:`take` hands out a contiguous view of a flat storage kept under a key, grown
    (by half again) only when too small. A fresh multi-megabyte tensor at every turn costs
    the page faults of first touching its memory; with fresh buffers and an extra copy per
    turn, a cached 64-episode GuessWhich rollout ran 4-5% (5 turns) to 15% (10 turns) slower
    (``docs/performance.md``). A view stays valid until its key is taken
    again: the caller alternates two sets of keys (``parity``) so that a turn reads the
    previous turn's buffers while it writes its own.
    """

    def __init__(self) -> None:
        self._bufs: dict[Hashable, torch.Tensor] = {}

    def take(self, key: Hashable, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            grown = buf.numel() + buf.numel() // 2 if buf is not None else 0
            # zeros, not empty: never hand out NaN bit patterns (see BufferedLayer)
            buf = torch.zeros(max(n, grown), dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:n].view(*shape)

    def allocator(self, parity: int) -> Callable[[int], Alloc]:
        """``for_layer(i)`` -> the ``alloc(kind, shape, dtype, device)`` of layer ``i``'s buffers."""
        def for_layer(i: int) -> Alloc:
            return lambda kind, shape, dtype, device: self.take((parity, i, kind), shape, dtype, device)
        return for_layer

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bufs.values())


class BufferedLayer(DynamicLayer):
    """A Hugging Face dynamic cache layer that writes new keys/values into a preallocated
    buffer (grown by doubling) instead of concatenating at every token.

    ``DynamicLayer.update`` runs ``torch.cat`` over the whole cache at each decoding step,
    an ``O(T)`` copy per token (``O(T^2)`` per utterance); here a step writes only its
    own column. ``keys``/``values`` are views of the filled part of the buffer.

    Attention gets the *whole* buffer (as with transformers' ``StaticCache``): the filled
    part alone is a strided view (row stride = capacity), on which CPU attention kernels
    ran 2-6x slower than on a contiguous tensor (one query over 80-150 positions, 64-512
    rows). :meth:`get_mask_sizes` reports the capacity, so the 2-D attention mask is padded
    with zeros over the unfilled columns (``masking_utils.prepare_padding_mask``) and
    causality hides them too; the buffer is zero-initialised, so a masked column adds
    exactly 0 to the output.
    """

    def __init__(self, capacity_hint: int = 0, alloc: Alloc | None = None) -> None:
        super().__init__()
        self.capacity_hint = int(capacity_hint)
        self.alloc = alloc  # where the first buffer comes from (a BufferPool); growth allocates afresh
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None
        self._len = 0

    @classmethod
    def from_buffers(cls, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int) -> BufferedLayer:
        """A layer over full buffers ``[B, heads, capacity, head_dim]`` whose first ``length``
        columns are filled (no copy; the other columns must hold finite values: they are masked)."""
        layer = cls(kbuf.shape[-2])
        layer.lazy_initialization(kbuf, vbuf)
        layer._kbuf, layer._vbuf, layer._len = kbuf, vbuf, int(length)
        layer.keys, layer.values = kbuf[..., :length, :], vbuf[..., :length, :]
        return layer

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.is_initialized = True

    def _capacity(self, need: int) -> int:
        """The buffer's width once ``need`` positions are stored."""
        cap = 0 if self._kbuf is None else self._kbuf.shape[-2]
        return cap if need <= cap else max(need, 2 * cap, self.capacity_hint)

    def _reserve(self, need: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._kbuf is not None and self._kbuf.shape[0] != k.shape[0]:
            raise ValueError(f"BufferedLayer: {k.shape[0]} rows for a cache of {self._kbuf.shape[0]} "
                             "(change the batch with batch_select_indices / batch_repeat_interleave)")
        cap = 0 if self._kbuf is None else self._kbuf.shape[-2]
        if need <= cap:
            return
        new_cap = self._capacity(need)
        kshape = (*k.shape[:-2], new_cap, k.shape[-1])
        vshape = (*v.shape[:-2], new_cap, v.shape[-1])
        if self._kbuf is None and self.alloc is not None:
            kb, vb = self.alloc("k", kshape, k.dtype, k.device), self.alloc("v", vshape, v.dtype, v.device)
        else:  # growing: never into pooled storage the old buffer may share
            kb, vb = k.new_empty(kshape), v.new_empty(vshape)
        # the columns not yet written are zeros, not garbage: masked columns get weight 0,
        # and 0 * NaN would still be NaN (columns [0, need) are about to be written)
        kb[..., need:, :] = 0
        vb[..., need:, :] = 0
        if self._len:
            kb[..., : self._len, :] = self._kbuf[..., : self._len, :]
            vb[..., : self._len, :] = self._vbuf[..., : self._len, :]
        self._kbuf, self._vbuf = kb, vb

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, s = self._len, key_states.shape[-2]
        self._reserve(n + s, key_states, value_states)
        self._kbuf[..., n: n + s, :] = key_states
        self._vbuf[..., n: n + s, :] = value_states
        self._len = n + s
        self.keys, self.values = self._kbuf[..., : n + s, :], self._vbuf[..., : n + s, :]
        return self._kbuf, self._vbuf

    def get_seq_length(self) -> int:
        return self._len if self.is_initialized else 0

    def get_mask_sizes(self, query_length: int | torch.Tensor, *args: Any) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` of the mask: the buffer's width after this update
        (older transformers pass the ``cache_position`` tensor instead of its length)."""
        q = query_length.shape[0] if isinstance(query_length, torch.Tensor) else int(query_length)
        return self._capacity(self.get_seq_length() + q), 0

    def _replace(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self._kbuf = self._vbuf = None
        self._len = 0
        self.update(keys, values)

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        self._len = 0
        super().reset()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if tokens_to_remove and self.is_initialized:
            self._len = max(0, self._len + tokens_to_remove)
            self.keys, self.values = self._kbuf[..., : self._len, :], self._vbuf[..., : self._len, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.get_seq_length() > 0:
            self._replace(self.keys.repeat_interleave(repeats, dim=0), self.values.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.get_seq_length() > 0:
            self._replace(self.keys[indices, ...], self.values[indices, ...])


class BufferedCache(DynamicCache):
    """A ``DynamicCache`` whose layers are :class:`BufferedLayer` s; before its layers exist
    (the first forward) it reports the mask width their buffers will have."""

    def __init__(self, capacity_hint: int, alloc: Callable[[int], Alloc] | None = None) -> None:
        super().__init__()
        self.capacity_hint = int(capacity_hint)
        self.alloc = alloc  # layer index -> its allocator (BufferPool.allocator), or None
        # DynamicCache.update calls layer_class_to_replicate() for each new layer. A bound
        # method stored on the cache would make it a reference cycle, freed only by a full
        # garbage collection: every turn's cache and its KV buffers would outlive the turn
        # (PPO's resident size climbed ~60 MiB an iteration on the maze). A weak reference
        # leaves the cache to reference counting.
        self.layer_class_to_replicate = _LayerFactory(self)

    def _new_layer(self) -> BufferedLayer:
        # DynamicCache.update appends the new layer at index len(self.layers)
        return BufferedLayer(self.capacity_hint, None if self.alloc is None else self.alloc(len(self.layers)))

    def get_mask_sizes(self, query_length: int | torch.Tensor, layer_idx: int = 0, *args: Any) -> tuple[int, int]:
        if layer_idx >= len(self.layers):
            return BufferedLayer(self.capacity_hint).get_mask_sizes(query_length)
        return self.layers[layer_idx].get_mask_sizes(query_length)


class _LayerFactory:
    """``BufferedCache.layer_class_to_replicate``: makes the cache's next layer through a weak reference."""

    def __init__(self, cache: BufferedCache) -> None:
        self._cache = weakref.ref(cache)

    def __call__(self) -> BufferedLayer:
        cache = self._cache()
        if cache is None:
            raise ReferenceError("BufferedCache: the cache of this layer factory is gone")
        return cache._new_layer()


def new_cache(
    capacity_hint: int, layers: Sequence[BufferedLayer] | None = None, alloc: Callable[[int], Alloc] | None = None,
) -> DynamicCache:
    """A :class:`BufferedCache` with room for ``capacity_hint`` positions a layer, empty or
    holding ``layers`` (:meth:`TurnCache.prepare`'s). ``alloc`` (``BufferPool.allocator(parity)``)
    provides the buffers of the layers it creates."""
    cache = BufferedCache(capacity_hint, alloc)
    if layers is not None:
        cache.layers = list(layers)
    return cache


def cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``[(keys, values)]`` per layer (``[B, heads, W, head_dim]``) of a Hugging Face
    ``DynamicCache`` made of plain (non-sliding) dynamic layers; ``None`` for any other
    cache (sliding windows, recurrent states), which the cross-turn cache does not handle."""
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        if type(layer) not in (DynamicLayer, BufferedLayer) or getattr(layer, "keys", None) is None:
            return None
        out.append((layer.keys, layer.values))
    return out


def compact_columns(
    x: torch.Tensor, src: torch.Tensor, cols: torch.Tensor, capacity: int, alloc: Alloc | None = None,
    kind: str = "k",
) -> torch.Tensor:
    """``out[b, h, c] = x[src[b], h, cols[b, c]]`` for ``c < cols.shape[1]``, in a contiguous
    ``[B, heads, capacity, head_dim]`` buffer (``alloc(kind, ...)``, else new) whose later
    columns hold finite values (zeros or copies of real keys: they are masked).

    ``x`` (``[R, heads, W, head_dim]``, typically the filled view of a wider buffer) is read
    as rows of ``head_dim`` values and copied with one ``index_select`` straight into the
    buffer: no intermediate ``x[src]`` copy and no ``[B, heads, width, head_dim]`` index.
    """
    b, width = cols.shape
    _, h, _, d = x.shape
    shape = (b, h, capacity, d)
    out = alloc(kind, shape, x.dtype, x.device) if alloc is not None else x.new_empty(shape)
    st = x.stride()
    if st[3] == 1 and all(t % d == 0 for t in st[:3]) and x.storage_offset() % d == 0:
        sr, sh, sc = (t // d for t in st[:3])
        n_rows = (x.shape[0] - 1) * sr + (h - 1) * sh + (x.shape[2] - 1) * sc + 1
        rows = x.as_strided((n_rows, d), (d, 1))  # every head_dim vector of x's storage span
        idx = torch.zeros(b, h, capacity, dtype=torch.long, device=x.device)  # columns >= width: row 0
        idx[:, :, :width] = (src * sr)[:, None, None] + (torch.arange(h, device=x.device) * sh)[None, :, None] \
            + (cols * sc)[:, None, :]
        torch.index_select(rows, 0, idx.view(-1), out=out.view(-1, d))
    else:  # exotic layouts: gather, then zero the rest
        g = x[src].gather(2, cols[:, None, :, None].expand(-1, h, -1, d))
        out[:, :, :width] = g
        out[:, :, width:] = 0
    return out


@dataclass
class TurnCache:
    """The KV cache of a batch of dialogues, kept between turns (see the module docstring).

    ``slots`` names the dialogue of each row; ``tokens[i]`` are the token ids whose keys
    and values row ``i`` holds, in order, in the unmasked columns of ``layers``.
    """

    slots: list[Hashable] = field(default_factory=list)
    tokens: list[list[int]] = field(default_factory=list)
    layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    attn: torch.Tensor | None = None
    #: tokens reused from the cache and tokens run, over the cache's life (a speed diagnostic)
    reused_tokens: int = 0
    encoded_tokens: int = 0

    def clear(self) -> None:
        self.slots, self.tokens, self.layers, self.attn = [], [], None, None

    def prepare(
        self, prompts: Sequence[Sequence[int]], slots: Sequence[Hashable], device: torch.device,
        extra: int = 0, alloc: Callable[[int], Alloc] | None = None,
    ) -> tuple[list[BufferedLayer] | None, torch.Tensor | None, list[int]]:
        """Compact the cache to the reusable prefix of each prompt.

        Returns ``(past, past_attn, keep)``: per-layer :class:`BufferedLayer` s of width
        ``max(keep)`` (or ``None``) whose row ``i`` holds the first ``keep[i]`` tokens of
        ``prompts[i]``, right-aligned, and their mask. Their buffers have room for the
        longest suffix ``prompts[i][keep[i]:]`` plus ``extra`` tokens and come from
        ``alloc`` (``BufferPool.allocator``; fresh tensors when ``None``).
        """
        index = {s: r for r, s in enumerate(self.slots)}
        src_rows: list[int] = []
        keep: list[int] = []
        for p, s in zip(prompts, slots):
            r = index.get(s)
            k = 0 if r is None or self.layers is None else min(common_prefix(self.tokens[r], p), len(p) - 1)
            src_rows.append(r if r is not None else 0)
            keep.append(max(k, 0))
        width = max(keep, default=0)
        self.reused_tokens += sum(keep)
        self.encoded_tokens += sum(len(p) - k for p, k in zip(prompts, keep))
        if width == 0 or self.layers is None or self.attn is None:
            return None, None, keep
        capacity = width + max(len(p) - k for p, k in zip(prompts, keep)) + int(extra)
        # column of the j-th real token of each source row
        real = self.attn.bool()
        rank = real.long().cumsum(1) - 1  # [R, W]
        src = torch.tensor(src_rows, dtype=torch.long, device=device)
        keep_t = torch.tensor(keep, dtype=torch.long, device=device)
        # target column c of row i holds real token number j = c - (width - keep_i)
        j = torch.arange(width, device=device)[None, :] - (width - keep_t)[:, None]  # [B, width]
        valid = j >= 0
        w = real.shape[1]
        # for each source row: position of real token number j (via a scatter of ranks)
        col_of_rank = torch.zeros(real.shape[0], w, dtype=torch.long, device=device)
        r_idx, c_idx = real.nonzero(as_tuple=True)
        col_of_rank[r_idx, rank[r_idx, c_idx]] = c_idx
        cols = col_of_rank[src].gather(1, j.clamp_min(0))  # [B, width]
        cols = torch.where(valid, cols, torch.zeros_like(cols))
        past_layers = []
        for i, (k_, v_) in enumerate(self.layers):
            take = None if alloc is None else alloc(i)
            kb = compact_columns(k_, src, cols, capacity, take, "k")
            vb = compact_columns(v_, src, cols, capacity, take, "v")
            past_layers.append(BufferedLayer.from_buffers(kb, vb, width))
        return past_layers, valid.long(), keep

    def store(
        self, slots: Sequence[Hashable], prompts: Sequence[Sequence[int]], decoded: Decoded
    ) -> bool:
        """Keep the cache after a turn: row ``i`` holds ``prompts[i] + decoded.fed[i]``.
        Returns ``False`` (and clears itself) when the model's cache type is not supported."""
        layers = cache_tensors(decoded.cache)
        if layers is None:
            self.clear()
            return False
        self.slots = list(slots)
        self.tokens = [list(p) + f for p, f in zip(prompts, decoded.fed)]
        self.layers = layers
        self.attn = decoded.attention_mask
        return True


@dataclass
class RolloutStats:
    """Tokens run through the model and reused from the cache, per turn call."""

    calls: int = 0
    prompt_tokens: int = 0
    encoded_tokens: int = 0


class Rollout:
    """Batched generation of one utterance per dialogue, turn after turn.

    ``act(prompts, slots)`` takes the full token prompt of each dialogue (history plus
    the agent's speaker prefix, already left-truncated to the model's window) and the
    slot naming the dialogue. With ``cross_turn=True`` the keys and values of earlier
    turns are reused through a :class:`TurnCache`; with ``False`` every prompt is
    re-encoded from scratch (the reference behaviour).
    """

    def __init__(
        self,
        model: nn.Module,
        eou_id: int,
        sampling: SamplingConfig,
        device: torch.device | str = "cpu",
        generator: torch.Generator | None = None,
        perturb: Perturb | None = None,
        banned_ids: Sequence[int] = (),
        pad_id: int = 0,
        cross_turn: bool = True,
        amp: bool | None = None,
    ) -> None:
        self.model = model
        self.eou_id = int(eou_id)
        self.sampling = sampling
        self.device = torch.device(device)
        self.generator = generator
        self.perturb = perturb
        self.banned = torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=self.device)
        self.pad_id = pad_id
        self.cross_turn = cross_turn
        self.amp = self.device.type == "cuda" if amp is None else amp
        self.cache = TurnCache()
        self.stats = RolloutStats()
        self.pool = BufferPool()  # KV buffers, two alternating sets (see BufferPool)
        self._parity = 0

    def reset(self) -> None:
        """Forget every cached dialogue."""
        self.cache.clear()

    @torch.no_grad()
    def act(self, prompts: Sequence[Sequence[int]], slots: Sequence[Hashable]) -> list[list[int]]:
        if not prompts:
            return []
        if any(len(p) == 0 for p in prompts):
            raise ValueError("Rollout.act: empty prompt")
        self.model.eval()
        self._parity ^= 1  # this turn's buffers; the cache being read holds the other parity's
        alloc = self.pool.allocator(self._parity)
        budget = self.sampling.max_utterance_tokens
        past, past_attn, keep = (None, None, [0] * len(prompts))
        if self.cross_turn:
            past, past_attn, keep = self.cache.prepare(prompts, slots, self.device, extra=budget, alloc=alloc)
        suffixes = [p[k:] for p, k in zip(prompts, keep)]
        ids, attn, pos = left_pad(suffixes, self.pad_id, self.device, start=keep)
        width = (0 if past_attn is None else past_attn.shape[1]) + ids.shape[1]
        past = new_cache(width + budget, past, alloc)
        self.stats.calls += 1
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.encoded_tokens += sum(len(s) for s in suffixes)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            out = decode(
                self.model, ids, attn, pos, self.eou_id, self.sampling, self.generator, self.perturb,
                self.banned, past=past, past_attn=past_attn,
            )
        if self.cross_turn and not self.cache.store(slots, prompts, out):
            log.warning("cross-turn KV cache: unsupported cache type %s; re-encoding histories",
                        type(out.cache).__name__)
            self.cross_turn = False
        return out.utterances

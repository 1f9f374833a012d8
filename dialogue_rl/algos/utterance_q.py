"""Per-utterance Q learning over utterances sampled from the BC model (CHAI, Verma et al. 2022).

One action is a whole agent utterance ``u`` (its tokens and the closing ``<eou>``); the
state ``s`` is the dialogue history in the token layout of :mod:`envs.token_view`,
ending with the agent's speaker prefix (exactly what :class:`~dialogue_rl.agents.LMAgent`
feeds its model). With ``h(s, u)`` the backbone's last hidden state at the ``<eou>`` of
``u`` after reading ``s + u``, two Q heads (small MLPs to a scalar) and their
Polyak-averaged target copies give::

    Q_i(s, u) = q_heads[i](h(s, u)),   Q_i_target(s, u) = target_q_heads[i](h(s, u)),   i = 1, 2

Candidates. ``U(s)`` is a set of ``n_candidates`` utterances sampled (temperature
``temperature``, top-k ``top_k``) from ``bc_model``, a *frozen* copy of the model taken
when the learner is built (``init_from`` has already loaded the BC weights by then).
``C(s) = {u_data} ∪ U(s)`` (duplicates removed, the dataset utterance first) and, at the
next state, ``C'(s') = U(s') ∪ {u'_data}`` with ``u'_data`` the dataset's next agent
utterance when there is one (the last utterance of a truncated episode has none).

Losses, with ``r`` the utterance reward and ``done`` the end of a *terminated* episode:

* Bellman target (``bellman_targets``), no gradient, max over candidates of the min over
  the two target heads::

      y = r + gamma * (1 - done) * max_{u' in C'(s')} min_i Q_i_target(s', u')

* TD loss: ``L_TD = sum_i E[(Q_i(s, u_data) - y)^2]``

* conservative penalty (``conservative_penalty``): pushes down the candidates' values
  relative to the dataset utterance. Unlike the original CHAI code, which never
  subtracted the dataset action's value, ours does::

      L_CQL = alpha * sum_i E[logsumexp_{u in C(s)} Q_i(s, u) - Q_i(s, u_data)]

* optional BC term (weight ``bc_weight``): next-token cross-entropy of ``u_data`` given
  ``s`` (``L_BC``), which keeps the trained backbone a language model (a regulariser
  only: candidates always come from the frozen ``bc_model``).

``loss = L_TD + L_CQL + bc_weight * L_BC``; after every step
``theta_target <- (1 - polyak) * theta_target + polyak * theta`` for the Q heads.

Design choices
--------------
* **Encoder.** The (BC-initialised) LM backbone is trained with the heads and read at
  the ``<eou>`` of ``s + u``: the feature sees the whole history and the whole candidate,
  with no pooling. The target heads read the same online backbone (detached), as in
  :mod:`dialogue_rl.algos.ilql`: one backbone in memory besides the frozen sampler.
  ``encoder="packed"`` (default) writes one row per state, ``s, u_1, ..., u_K``, with a
  4-D attention mask (:func:`packed_mask`) under which each candidate token sees the
  history and the earlier tokens of its own candidate only, and position ids that
  restart after ``s`` for every candidate: one forward pass per state, no copies.
  ``encoder="shared_prefix"`` runs each distinct history once with the KV cache,
  gathers the cache for each of its candidates and then runs only the candidate tokens.
  ``encoder="full"`` runs one independent sequence ``s + u`` for each pair. All three
  give the same Q (a test checks this) and gradients flow through the shared history.
  Measured by ``scripts/bench.py``'s update figures (CPU, one thread, ``tiny`` preset:
  4 layers, width 128; GuessWhich transitions with histories of 49 tokens on average,
  batch 32, 8 cached candidates a state drawn from the dataset's utterances, about 9
  with the dataset one), as a multiple of a BC update on 32 GuessWhich dialogues:
  ``packed`` 2.2x, ``shared_prefix`` 3.3x (it copies the history's cache once per
  candidate and pads every candidate to the longest; its backward pass scatters the
  copies back); an earlier measurement had ``full`` about 5x slower than
  ``shared_prefix``. The history is encoded once per state instead of once per
  candidate, so the gap to ``full`` grows with history length.
  CHAI's frozen, mean-pooled encoder would be cheaper still (no backward pass through
  the backbone) but leaves the Q features fixed by BC; freezing can be added later as
  an option if a benchmark needs it.
* **Candidate cache.** Candidates are sampled in batch with the KV cache
  (:func:`dialogue_rl.agents.generate_utterances`) and cached per state, keyed by a
  128-bit hash of the state's token ids, so identical histories in different dialogues
  share them. A state's candidates serve ``refresh_every`` uses (an occurrence in a
  batch, as a current or a next state; a state met several times in one batch is
  sampled at most once) and are then resampled; ``refresh_every=0`` never resamples. The cache lives in memory and is not checkpointed: a resumed run
  restores the weights exactly and resamples candidates from the same frozen model.
* **Frozen BC model.** ``bc_model`` is a submodule with ``requires_grad=False``, always
  in eval mode (:meth:`train` keeps it there) and excluded from the optimiser (which only
  gets ``trainable_parameters``). It *is* saved in the checkpoint (twice the LM weights)
  so that resuming, or evaluating a saved run with ``scripts/evaluate.py`` (which builds
  a fresh model and never sees ``init_from``), restores the exact sampler.
* **Acting** (:meth:`UtteranceQ.make_agent`): for each history, ``act_candidates``
  (default ``n_candidates``) utterances are sampled from ``bc_model`` at the learner's
  candidate temperature (the eval ``SamplingConfig`` only supplies the token budget:
  greedy decoding would give N copies of one utterance), scored with ``min_i Q_i`` of
  the *online* heads (the ones the TD loss fits; with the default ``polyak`` the target
  heads lag far behind in short runs), and ``act_mode="argmax"`` takes the best, while
  ``act_mode="softmax"`` samples ``u`` with probability proportional to
  ``exp(min_i Q_i(s, u) / act_temperature)`` over the sampled multiset (CHAI's
  ``softmax(10 * Q)`` is ``act_temperature=0.1``). All batched over histories.
* **Cost.** :meth:`UtteranceQ.sampling_report` gives the candidates sampled, the
  candidates per second of sampling, the cache hit rate and the fraction of time spent
  sampling (of the time in :meth:`loss`, or of a training wall time passed in).
  Measured on CPU (one thread): the GuessWhich setting above sampled about 120
  candidates/s (up to 24 tokens each; 79% of a cold-cache step); the StitchEnv test
  (1-layer model, 4-token budget) about 3,800 candidates/s, 32% of the training wall
  time with ``refresh_every=4`` and under 1% with ``refresh_every=0``.
* **Long histories.** A history whose pair with the longest of its candidates exceeds
  the model's position table is left-truncated (for scoring and for sampling).
* Token counting: the collated ``input_ids``/``attention_mask`` hold ``s + u_data``, so
  ``fit``'s ``tokens_per_s`` counts dataset tokens, not candidate tokens.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dialogue_rl.rollout import SamplingConfig, generate_utterances
from dialogue_rl.models.lm import cache_kwargs, output_cache
from dialogue_rl.algos.base import Learner, TokenBatch, hidden_size, make_head
from envs.core import AGENT, DialogueEnv, Turn
from envs.token_view import TokenCodec, encode_dialogue

log = logging.getLogger(__name__)

Utterance = tuple[int, ...]  # token ids of one utterance, closing <eou> included
State = tuple[int, ...]  # token ids of a history ending with the agent's speaker prefix

ACT_MODES = ("argmax", "softmax")
ENCODERS = ("packed", "shared_prefix", "full")
MAX_SAMPLE_ROWS = 1024  # rows decoded at once when sampling candidates


# ---------------------------------------------------------------------------- equations
def bellman_targets(
    rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, next_mask: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``y = r + gamma * (1 - done) * max_{u'} min_i Q_i_target(s', u')``, shape ``[B]``.

    ``next_q`` is ``[B, K, n_heads]`` (target heads at the next state's candidates),
    ``next_mask`` ``[B, K]`` marks real candidates. Rows with ``done`` (or no candidate)
    do not bootstrap.
    """
    v = next_q.float().min(dim=-1).values.masked_fill(~next_mask, float("-inf")).max(dim=-1).values
    bootstrap = ~dones.bool() & next_mask.any(dim=-1)
    v = torch.where(bootstrap, v, torch.zeros_like(v))
    return rewards.float() + gamma * v


def conservative_penalty(q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logsumexp_{u in C(s)} Q(s, u) - Q(s, u_data)`` per state; ``u_data`` is column 0.

    ``q`` is ``[B, K]`` (one head), ``mask`` ``[B, K]`` marks real candidates.
    """
    return torch.logsumexp(q.float().masked_fill(~mask, float("-inf")), dim=-1) - q[:, 0].float()


def candidate_set(data: Utterance | None, sampled: Sequence[Utterance]) -> list[Utterance]:
    """``{data} ∪ sampled`` without duplicates, ``data`` first (when given), order kept."""
    out: list[Utterance] = [] if data is None else [tuple(data)]
    seen = set(out)
    for u in sampled:
        if u not in seen:
            seen.add(u)
            out.append(u)
    return out


# ---------------------------------------------------------------------------- data
class UtteranceTransitions(Sequence):
    """Per-utterance transitions as index ranges into a per-token dataset (nothing copied).

    Every state is a prefix of its dialogue's token sequence, so a transition is stored
    as offsets into :class:`~dialogue_rl.data.TokenizedDataset` arrays: the state
    ``ids[:a]`` (ends with the agent prefix), the action ``ids[a:b]`` (utterance + ``<eou>``),
    the next state ``ids[:c]`` and the next dataset utterance ``ids[c:d]``. For the last
    utterance of a truncated episode, ``ids[:c]`` is the whole sequence including the
    bootstrap prefix the token view appends, and there is no next utterance (``d == c``).
    For a terminated episode's last utterance there is no next state (``done``).

    ``ds[i]`` gives ``{"state", "action", "next_state", "next_action", "reward", "done"}``
    (int64 arrays; ``next_state`` / ``next_action`` are ``None`` when absent).
    """

    def __init__(self, tokens: Any) -> None:
        self.tokens = tokens
        index: list[tuple[int, int, int, int, int]] = []
        rewards: list[float] = []
        dones: list[bool] = []
        for d in range(len(tokens)):
            ex = tokens[d]
            runs = _action_runs(ex["action_mask"])
            n = len(ex["input_ids"])
            for k, (a, e) in enumerate(runs):
                if k + 1 < len(runs):
                    c, dd = runs[k + 1][0], runs[k + 1][1] + 1
                elif bool(ex["dones"][e]):
                    c = dd = -1
                else:
                    c = dd = n
                index.append((d, a, e + 1, c, dd))
                rewards.append(float(ex["rewards"][e]))
                dones.append(bool(ex["dones"][e]))
        self.index = np.asarray(index, dtype=np.int64).reshape(-1, 5)
        self.rewards = np.asarray(rewards, dtype=np.float32)
        self.dones = np.asarray(dones, dtype=bool)
        self.returns = np.asarray(tokens.returns, dtype=np.float32)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        """Tokens of ``state + action`` per transition (``train.group_by_length``)."""
        return self.index[:, 2]

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        d, a, b, c, dd = (int(x) for x in self.index[i])
        ids = self.tokens[d]["input_ids"]
        return {
            "state": ids[:a], "action": ids[a:b],
            "next_state": ids[:c] if c >= 0 else None,
            "next_action": ids[c:dd] if dd > c >= 0 else None,
            "reward": self.rewards[i], "done": bool(self.dones[i]),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def _action_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` positions of each run of ``True`` (one agent utterance each)."""
    m = np.asarray(mask, dtype=np.int8)
    edges = np.diff(np.concatenate([[0], m, [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def collate_transitions(examples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Batch transitions: ``s + u_data`` tensors (for token counting) plus the id tuples.

    Tensors: ``input_ids``/``attention_mask`` ``[B, L]`` (``s + u_data``, right-padded),
    ``action_mask`` (true on ``u_data``), ``rewards`` (float32) and ``dones`` ``[B]``.
    Lists: ``states``, ``actions``, ``next_states`` and ``next_actions`` (tuples or ``None``).
    """
    if not examples:
        raise ValueError("collate_transitions: empty batch")
    seqs = [np.concatenate([e["state"], e["action"]]) for e in examples]
    b, t = len(seqs), max(len(s) for s in seqs)
    ids = np.full((b, t), pad_id, dtype=np.int64)
    attn = np.zeros((b, t), dtype=np.int64)
    act = np.zeros((b, t), dtype=bool)
    for i, (e, s) in enumerate(zip(examples, seqs)):
        ids[i, : len(s)] = s
        attn[i, : len(s)] = 1
        act[i, len(e["state"]) : len(s)] = True

    def tup(x: np.ndarray | None) -> tuple[int, ...] | None:
        return None if x is None else tuple(int(v) for v in x)

    return {
        "input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attn),
        "action_mask": torch.from_numpy(act),
        "rewards": torch.tensor([float(e["reward"]) for e in examples], dtype=torch.float32),
        "dones": torch.tensor([bool(e["done"]) for e in examples], dtype=torch.bool),
        "states": [tup(e["state"]) for e in examples], "actions": [tup(e["action"]) for e in examples],
        "next_states": [tup(e["next_state"]) for e in examples],
        "next_actions": [tup(e["next_action"]) for e in examples],
    }


# ---------------------------------------------------------------------------- candidates
def state_key(state: Sequence[int]) -> bytes:
    """A 128-bit digest of a state's token ids (the candidate cache key)."""
    return hashlib.blake2b(np.asarray(state, dtype=np.int64).tobytes(), digest_size=16).digest()


@dataclass
class _Entry:
    candidates: list[Utterance]
    uses: int = 0


class CandidateCache:
    """Sampled candidates per state; an entry serves ``refresh_every`` uses (0: forever)."""

    def __init__(self, refresh_every: int = 0) -> None:
        self.refresh_every = refresh_every
        self._entries: dict[bytes, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes) -> list[Utterance] | None:
        """The cached candidates (counting one use), or ``None`` when missing or spent."""
        entry = self._entries.get(key)
        if entry is None or (self.refresh_every and entry.uses >= self.refresh_every):
            return None
        entry.uses += 1
        return entry.candidates

    def put(self, key: bytes, candidates: list[Utterance]) -> None:
        """Store fresh candidates; the use that triggered the sampling counts as the first."""
        self._entries[key] = _Entry(list(candidates), uses=1)

    def clear(self) -> None:
        self._entries.clear()


@dataclass
class SamplingStats:
    """Counters of the candidate sampler (cumulative over the learner's life)."""

    candidates_sampled: int = 0
    states_sampled: int = 0
    sampling_calls: int = 0
    sampling_s: float = 0.0
    cache_hits: int = 0
    cache_misses: int = 0
    loss_calls: int = 0
    loss_s: float = 0.0


# ---------------------------------------------------------------------------- the learner
class UtteranceQ(Learner):
    """Per-utterance double Q learning with a max over BC-sampled candidates (CHAI)."""

    name = "utterance_q"
    #: candidates come from a frozen copy of the initial model, which must be a BC model
    needs_bc_init = True

    def __init__(
        self,
        model: nn.Module,
        gamma: float = 0.99,
        alpha: float = 0.1,
        polyak: float = 0.005,
        n_candidates: int = 8,
        temperature: float = 1.0,
        top_k: int = 0,
        refresh_every: int = 0,
        bc_weight: float = 0.1,
        hidden: int = 128,
        max_utterance_tokens: int = 32,
        act_mode: str = "argmax",
        act_temperature: float = 0.1,
        act_candidates: int = 0,
        encoder: str = "packed",
        seed: int = 0,
        eou_id: int | None = None,
        excluded_ids: list[int] | None = None,
    ) -> None:
        super().__init__(model)
        if n_candidates < 1:
            raise ValueError(f"n_candidates={n_candidates}: must be >= 1")
        if act_mode not in ACT_MODES:
            raise ValueError(f"act_mode={act_mode!r}: choose one of {ACT_MODES}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder={encoder!r}: choose one of {ENCODERS}")
        if refresh_every < 0 or max_utterance_tokens < 1 or temperature <= 0 or act_temperature <= 0:
            raise ValueError("refresh_every >= 0, max_utterance_tokens >= 1, temperatures > 0 required")
        self.gamma, self.alpha, self.polyak, self.bc_weight = gamma, alpha, polyak, bc_weight
        self.n_candidates, self.temperature, self.top_k = n_candidates, temperature, top_k
        self.max_utterance_tokens = max_utterance_tokens
        self.act_mode, self.act_temperature = act_mode, act_temperature
        self.act_candidates = act_candidates or n_candidates
        self.encoder, self.seed = encoder, seed
        cfg = model.config
        h = hidden_size(model)
        self.eou_id = int(eou_id if eou_id is not None else cfg.eos_token_id)
        self.pad_id = int(cfg.pad_token_id if cfg.pad_token_id is not None else 0)
        if excluded_ids is None:
            special = (cfg.pad_token_id, cfg.bos_token_id, getattr(cfg, "unk_token_id", None))
            excluded_ids = [int(i) for i in special if i is not None]
        self.banned_ids = sorted({i for i in excluded_ids if i != self.eou_id})
        self.max_positions: int | None = getattr(cfg, "n_positions", None) or getattr(
            cfg, "max_position_embeddings", None)

        self.q_heads = nn.ModuleList([make_head(h, 1, hidden), make_head(h, 1, hidden)])
        self.target_q_heads = copy.deepcopy(self.q_heads)
        self.target_q_heads.requires_grad_(False)
        self.bc_model = copy.deepcopy(model)
        self.bc_model.requires_grad_(False)
        self.bc_model.eval()
        self.cache = CandidateCache(refresh_every)
        self.stats = SamplingStats()
        self._generator: torch.Generator | None = None

    # ------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> UtteranceQ:
        super().train(mode)
        self.bc_model.eval()  # the sampler is frozen: never dropout
        return self

    @property
    def device(self) -> torch.device:
        return next(self.q_heads.parameters()).device

    def generator(self) -> torch.Generator:
        """The sampler's generator on the learner's device (created once per device)."""
        dev = self.device
        if self._generator is None or self._generator.device != dev:
            self._generator = torch.Generator(device=dev).manual_seed(self.seed)
        return self._generator

    def make_examples(self, split: Any, codec: Any, max_length: int) -> UtteranceTransitions:
        """Per-utterance transitions over the per-token view (rows tokenised once)."""
        from dialogue_rl.data import TokenizedDataset, tokenize_dataset

        self.eou_id = int(codec.eou_id)
        tokens = tokenize_dataset(split, codec, max_length=max_length, on_too_long="drop")
        kept = self.prepare_dataset(tokens, tokens.returns.tolist())
        if kept is not tokens:
            tokens = TokenizedDataset(list(kept))
        out = UtteranceTransitions(tokens)
        log.info("utterance_q: %d transitions from %d dialogues", len(out), len(tokens))
        return out

    def collate(self, examples: Sequence[dict], pad_id: int) -> dict[str, Any]:
        """Batch transitions (:func:`collate_transitions`)."""
        return collate_transitions(examples, pad_id)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_utterances(
        self,
        prompts: Sequence[State],
        n: int,
        generator: torch.Generator | None = None,
        max_tokens: int | None = None,
        banned: Sequence[int] = (),
    ) -> list[list[Utterance]]:
        """``n`` utterances per prompt from the frozen ``bc_model`` (batched, KV cache; each
        prompt is encoded once and its cache copied ``n`` times).

        Each utterance is returned with its closing ``<eou>`` (appended when the token
        budget cut it).
        """
        if not prompts:
            return []
        t0 = time.perf_counter()
        max_tokens = max_tokens or self.max_utterance_tokens
        sampling = SamplingConfig(greedy=False, temperature=self.temperature, top_k=self.top_k,
                                  max_utterance_tokens=max_tokens)
        dev = self.device
        ban = torch.tensor(sorted(set(self.banned_ids) | set(banned)), dtype=torch.long, device=dev)
        gen = generator if generator is not None else self.generator()
        budget = None if self.max_positions is None else max(1, self.max_positions - max_tokens - 1)
        rows = [p if budget is None else p[-budget:] for p in prompts]
        utts: list[Utterance] = []
        was_training = self.bc_model.training
        self.bc_model.eval()
        per_chunk = max(1, MAX_SAMPLE_ROWS // n)
        for lo in range(0, len(rows), per_chunk):
            # each prompt is run once; its KV cache is copied for its n samples
            ids, attn = _left_pad(rows[lo : lo + per_chunk], self.pad_id, dev)
            toks = generate_utterances(self.bc_model, ids, attn, self.eou_id, sampling, gen, None, ban, repeat=n)
            utts += [tuple(t) + (self.eou_id,) for t in toks]
        self.bc_model.train(was_training)
        self.stats.candidates_sampled += len(rows) * n
        self.stats.states_sampled += len(prompts)
        self.stats.sampling_calls += 1
        self.stats.sampling_s += time.perf_counter() - t0
        return [utts[i * n : (i + 1) * n] for i in range(len(prompts))]

    def candidates(self, states: Sequence[State]) -> list[list[Utterance]]:
        """``U(s)`` for every state (cached; the missing or spent ones sampled in one batch)."""
        out: list[list[Utterance] | None] = []
        todo: dict[bytes, list[int]] = {}
        prompts: list[State] = []
        for i, s in enumerate(states):
            key = state_key(s)
            if key in todo:  # sampled below for an earlier occurrence in this batch
                todo[key].append(i)
                out.append(None)
                continue
            cands = self.cache.get(key)
            if cands is None:
                todo[key] = [i]
                prompts.append(s)
                self.stats.cache_misses += 1
            else:
                self.stats.cache_hits += 1
            out.append(cands)
        fresh = self.sample_utterances(prompts, self.n_candidates)
        for (key, idx), cands in zip(todo.items(), fresh):
            self.cache.put(key, cands)
            for j, i in enumerate(idx):
                if j:  # later occurrences in the same batch are uses of the fresh entry
                    self.cache.get(key)
                    self.stats.cache_hits += 1
                out[i] = cands
        return [o if o is not None else [] for o in out]

    # ------------------------------------------------------------------ Q values
    def encode_pairs(
        self, states: Sequence[State], sets: Sequence[Sequence[Utterance]], lm: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Backbone features ``h(s, u)`` at each ``<eou>``, pairs flattened state by state.

        Returns ``(features [P, H], lm_hidden, lm_mask)``; with ``lm``, ``lm_hidden``
        ``[S, M, H]`` holds, for the first utterance of each set, the hidden states that
        predict its tokens (the last state position, then every utterance position but the
        ``<eou>``), and ``lm_mask`` ``[S, M]`` marks the real ones.
        """
        pair_state = [k for k, us in enumerate(sets) for _ in us]
        utts = [u for us in sets for u in us]
        longest = [max((len(u) for u in us), default=0) for us in sets]
        states = [self._fit(s, n) for s, n in zip(states, longest)]
        if self.encoder == "full":
            return self._encode_full(states, pair_state, utts, sets, lm)
        if self.encoder == "packed" and self._attn_impl() in ("sdpa", "eager"):
            return self._encode_packed(states, sets, lm)
        return self._encode_shared(states, pair_state, utts, sets, lm)

    def _fit(self, state: State, utt_len: int) -> State:
        """Left-truncate a history so ``state + utterance`` fits the position embeddings."""
        if self.max_positions is None or len(state) + utt_len <= self.max_positions:
            return state
        return state[-max(1, self.max_positions - utt_len):]

    def _backbone(self) -> nn.Module:
        return getattr(self.model, "base_model", self.model)

    def _encode_full(self, states, pair_state, utts, sets, lm):
        dev = self.device
        seqs = [states[k] + u for k, u in zip(pair_state, utts)]
        ids, attn, lengths = _right_pad(seqs, self.pad_id, dev)
        hidden = self._backbone()(input_ids=ids, attention_mask=attn).last_hidden_state
        rows = torch.arange(len(seqs), device=dev)
        feats = hidden[rows, lengths - 1]
        if not lm:
            return feats, None, None
        first = _first_pair_index(sets, dev)
        s_len = torch.tensor([len(s) for s in states], device=dev)
        m = max(len(us[0]) for us in sets)
        pos = (s_len - 1)[:, None] + torch.arange(m, device=dev)[None]
        u_len = torch.tensor([len(us[0]) for us in sets], device=dev)
        mask = torch.arange(m, device=dev)[None] < u_len[:, None]
        pos = torch.where(mask, pos, torch.zeros_like(pos))
        lm_hidden = hidden[first[:, None], pos]
        return feats, lm_hidden, mask

    def _encode_packed(self, states, sets, lm):
        """One row per state: ``s, u_1, ..., u_K`` with a mask letting each candidate see
        the history and itself only, and each candidate's positions restarting after ``s``."""
        dev = self.device
        rows, segs, poss, ends = [], [], [], []
        for k, (s, us) in enumerate(zip(states, sets)):
            ids, seg, pos = list(s), [0] * len(s), list(range(len(s)))
            for j, u in enumerate(us):
                ids += u
                seg += [j + 1] * len(u)
                pos += range(len(s), len(s) + len(u))
                ends.append((k, len(ids) - 1))
            rows.append(ids)
            segs.append(seg)
            poss.append(pos)
        ids, _, _ = _right_pad(rows, self.pad_id, dev)
        seg = _pad_to(segs, ids.shape[1], -1, dev)
        pos = _pad_to(poss, ids.shape[1], 0, dev)
        hidden = self._backbone()(input_ids=ids, attention_mask=packed_mask(seg, self._mask_dtype()),
                                  position_ids=pos).last_hidden_state
        ends_t = torch.tensor(ends, dtype=torch.long, device=dev)
        feats = hidden[ends_t[:, 0], ends_t[:, 1]]
        if not lm:
            return feats, None, None
        m = max(len(u) for us in sets for u in us)
        s_len = torch.tensor([len(s) for s in states], device=dev)
        idx = ((s_len - 1)[:, None] + torch.arange(m, device=dev)[None]).clamp_max(ids.shape[1] - 1)
        lm_hidden = hidden[torch.arange(len(states), device=dev)[:, None], idx]
        first_len = torch.tensor([len(us[0]) for us in sets], device=dev)
        mask = torch.arange(m, device=dev)[None] < first_len[:, None]
        return feats, lm_hidden, mask

    def _attn_impl(self) -> str:
        """The backbone's attention implementation; ``packed`` needs one that takes a 4-D
        mask (SDPA or eager), others (flash attention) fall back to ``shared_prefix``."""
        return getattr(self.model.config, "_attn_implementation", None) or "sdpa"

    def _mask_dtype(self) -> torch.dtype | None:
        """``None`` (boolean mask) for SDPA; the float dtype of an additive mask for eager."""
        return next(self.model.parameters()).dtype if self._attn_impl() == "eager" else None

    def _encode_shared(self, states, pair_state, utts, sets, lm):
        dev = self.device
        backbone = self._backbone()
        h_ids, h_attn, h_len = _right_pad(states, self.pad_id, dev)
        out = backbone(input_ids=h_ids, attention_mask=h_attn, use_cache=True)
        idx = torch.tensor(pair_state, dtype=torch.long, device=dev)
        cache = _select_cache(output_cache(out), idx)
        u_ids, u_attn, u_len = _right_pad(utts, self.pad_id, dev)
        attn = torch.cat([h_attn[idx], u_attn], dim=1)
        pos = h_len[idx, None] + torch.arange(u_ids.shape[1], device=dev)[None]
        if self.max_positions is not None:  # only padding can run past the table (see _fit)
            pos = pos.clamp_max(self.max_positions - 1)
        hidden = backbone(
            input_ids=u_ids, attention_mask=attn, position_ids=pos, use_cache=True, **cache_kwargs(backbone, cache)
        ).last_hidden_state
        rows = torch.arange(len(utts), device=dev)
        feats = hidden[rows, u_len - 1]
        if not lm:
            return feats, None, None
        first = _first_pair_index(sets, dev)
        last_state = out.last_hidden_state[torch.arange(len(states), device=dev), h_len - 1]
        lm_hidden = torch.cat([last_state[:, None], hidden[first, :-1]], dim=1)
        m = u_ids.shape[1]
        first_len = u_len[first]
        mask = torch.arange(m, device=dev)[None] < first_len[:, None]
        return feats, lm_hidden, mask

    def q_values(
        self, states: Sequence[State], sets: Sequence[Sequence[Utterance]], heads: nn.ModuleList,
        lm: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``Q_i(s, u)`` for every candidate: ``([S, K, n_heads] float, mask [S, K], bc_nll)``.

        ``bc_nll`` (with ``lm``) is the mean NLL of the first utterance of each set.
        """
        dev = self.device
        feats, lm_hidden, lm_mask = self.encode_pairs(states, sets, lm)
        qp = torch.cat([hd(feats) for hd in heads], dim=-1).float()
        k = max(len(us) for us in sets)
        s_idx = torch.tensor([i for i, us in enumerate(sets) for _ in us], dtype=torch.long, device=dev)
        k_idx = torch.tensor([j for us in sets for j in range(len(us))], dtype=torch.long, device=dev)
        q = qp.new_zeros(len(sets), k, qp.shape[-1])
        q = q.index_put((s_idx, k_idx), qp)
        mask = torch.zeros(len(sets), k, dtype=torch.bool, device=dev)
        mask[s_idx, k_idx] = True
        nll = None
        if lm:
            logits = self.model.get_output_embeddings()(lm_hidden).float()
            m = lm_hidden.shape[1]
            targets = torch.tensor(
                [list(us[0][:m]) + [self.pad_id] * (m - len(us[0])) for us in sets], dtype=torch.long, device=dev)
            ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            nll = (ce * lm_mask).sum() / lm_mask.sum().clamp_min(1)
        return q, mask, nll

    # ------------------------------------------------------------------ loss
    def loss(self, batch: TokenBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_TD + L_CQL + bc_weight * L_BC`` on a batch of :func:`collate_transitions`."""
        t0 = time.perf_counter()
        sampled0 = self.stats.sampling_s
        states, actions = batch["states"], batch["actions"]
        dev = self.device
        rewards = batch["rewards"].to(dev).float()
        dones = batch["dones"].to(dev).bool()
        nxt = [i for i, d in enumerate(dones.tolist()) if not d and batch["next_states"][i] is not None]
        cands = self.candidates(list(states) + [batch["next_states"][i] for i in nxt])  # one sampling batch
        cur_cands, next_cands = cands[: len(states)], cands[len(states):]
        sets = [candidate_set(a, c) for a, c in zip(actions, cur_cands)]
        q, mask, bc = self.q_values(states, sets, self.q_heads, lm=self.bc_weight > 0)
        b = len(states)
        with torch.no_grad():
            next_q = torch.zeros(b, 1, q.shape[-1], device=dev)
            next_mask = torch.zeros(b, 1, dtype=torch.bool, device=dev)
            if nxt:
                tsets = [candidate_set(batch["next_actions"][i], c) for i, c in zip(nxt, next_cands)]
                tq, tmask = self.q_values([batch["next_states"][i] for i in nxt], tsets, self.target_q_heads)[:2]
                rows = torch.tensor(nxt, dtype=torch.long, device=dev)
                next_q = tq.new_zeros(b, tq.shape[1], tq.shape[2]).index_copy(0, rows, tq)
                next_mask = tmask.new_zeros(b, tmask.shape[1]).index_copy(0, rows, tmask)
            y = bellman_targets(rewards, dones, next_q, next_mask, self.gamma)
        q_data = q[:, 0]  # [B, n_heads]
        td_loss = sum(F.mse_loss(q_data[:, i], y) for i in range(q.shape[-1]))
        cql_loss = self.alpha * sum(conservative_penalty(q[..., i], mask).mean() for i in range(q.shape[-1]))
        loss = td_loss + cql_loss
        if bc is not None:
            loss = loss + self.bc_weight * bc
        self.stats.loss_calls += 1
        self.stats.loss_s += time.perf_counter() - t0
        with torch.no_grad():
            q_min = q.min(-1).values.masked_fill(~mask, float("-inf"))
            metrics = {
                "loss": float(loss), "td_loss": float(td_loss), "cql_loss": float(cql_loss),
                "bc_loss": float(bc) if bc is not None else 0.0,
                "q_data": float(q_data.mean()), "target": float(y.mean()),
                "data_is_argmax": float((q_min.argmax(-1) == 0).float().mean()),
                "candidates_per_state": float(mask.sum(-1).float().mean()),
                "sampling_s": self.stats.sampling_s - sampled0,
            }
        return loss, metrics

    @torch.no_grad()
    def after_step(self) -> None:
        """Polyak averaging of the target Q heads."""
        for tp, p in zip(self.target_q_heads.parameters(), self.q_heads.parameters()):
            tp.lerp_(p, self.polyak)

    def sampling_report(self, train_wall_s: float | None = None) -> dict[str, float]:
        """Cost of candidate sampling so far.

        ``candidates_per_s`` is over sampling time only; ``sampling_fraction`` is the
        share of ``train_wall_s`` when given (e.g. ``fit``'s ``wall_s``), else of the time
        spent in :meth:`loss` (forward passes and sampling, no backward).
        """
        st = self.stats
        total = train_wall_s if train_wall_s is not None else st.loss_s
        lookups = st.cache_hits + st.cache_misses
        return {
            **{k: float(v) for k, v in asdict(st).items()},
            "candidates_per_s": st.candidates_sampled / st.sampling_s if st.sampling_s > 0 else 0.0,
            "cache_hit_rate": st.cache_hits / lookups if lookups else 0.0,
            "sampling_fraction": st.sampling_s / total if total and total > 0 else 0.0,
            "cached_states": float(len(self.cache)),
        }

    # ------------------------------------------------------------------ acting
    def make_agent(
        self, codec: TokenCodec, sampling: SamplingConfig, device: torch.device | str, seed: int,
        banned_ids: Sequence[int] = (),
    ) -> SampleAndRankAgent:
        self.eou_id = int(codec.eou_id)
        return SampleAndRankAgent(self, codec, sampling.max_utterance_tokens, device, seed, banned_ids)


class SampleAndRankAgent:
    """Sample ``act_candidates`` utterances from the frozen BC model, rank them by ``min_i Q_i``.

    Implements the :class:`dialogue_rl.agents.Agent` protocol, batched over histories.
    ``act_mode="argmax"`` takes the best candidate; ``"softmax"`` samples one with
    probability ``∝ count(u) * exp(min_i Q_i(s, u) / act_temperature)``, i.e. a softmax
    over the sampled multiset (distinct candidates are scored once).
    """

    def __init__(
        self, learner: UtteranceQ, codec: TokenCodec, max_utterance_tokens: int,
        device: torch.device | str = "cpu", seed: int = 0, banned_ids: Sequence[int] = (),
    ) -> None:
        self.learner, self.codec = learner, codec
        self.max_utterance_tokens = max_utterance_tokens
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.banned_ids = list(banned_ids)

    def reset(self, envs: Sequence[DialogueEnv], seeds: Sequence[int]) -> None:
        pass

    def encode(self, history: Sequence[Turn]) -> State:
        ids, _, _ = encode_dialogue(self.codec, history)
        return tuple(ids + list(self.codec.speaker_prefix(AGENT)))

    @torch.no_grad()
    def act(self, observations: Sequence[Sequence[Turn]], slots: Sequence[int] | None = None) -> list[str]:
        if not observations:
            return []
        learner = self.learner
        was_training = learner.training
        learner.eval()
        states = [self.encode(h) for h in observations]
        sampled = learner.sample_utterances(
            states, learner.act_candidates, self.generator, self.max_utterance_tokens, self.banned_ids)
        sets = [candidate_set(None, s) for s in sampled]
        q, mask, _ = learner.q_values(states, sets, learner.q_heads)
        scores = q.min(-1).values.masked_fill(~mask, float("-inf"))
        if learner.act_mode == "argmax":
            choice = scores.argmax(-1)
        else:
            counts = torch.zeros_like(scores)
            for i, (us, s) in enumerate(zip(sets, sampled)):
                counts[i, : len(us)] = torch.tensor([float(s.count(u)) for u in us], device=counts.device)
            logits = scores / learner.act_temperature + counts.clamp_min(1e-30).log()
            probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
            choice = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
        learner.train(was_training)
        eou = learner.eou_id
        return [self.codec.decode([t for t in sets[i][int(c)] if t != eou]) for i, c in enumerate(choice.tolist())]


# ---------------------------------------------------------------------------- helpers
def _right_pad(
    seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    ids = _pad_to(seqs, int(lengths.max()), pad_id, device)
    attn = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    return ids, attn.to(device), lengths.to(device)


def _pad_to(seqs: Sequence[Sequence[int]], t: int, fill: int, device: torch.device) -> torch.Tensor:
    out = torch.full((len(seqs), t), fill, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out.to(device)


def packed_mask(seg: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """4-D attention mask ``[S, 1, T, T]`` of packed rows (:meth:`UtteranceQ._encode_packed`).

    ``seg[s, t]`` is 0 on the history, ``j >= 1`` on candidate ``j`` and -1 on padding.
    Query ``t`` sees key ``t' <= t`` when ``t'`` is history or in the same candidate as
    ``t``; padding keys are never seen (a padding query sees the history, so no row is
    empty). Boolean (True = attend) with ``dtype=None``, else additive (0 / dtype min).
    """
    t = seg.shape[1]
    idx = torch.arange(t, device=seg.device)
    causal = idx[:, None] >= idx[None, :]
    key, query = seg[:, None, :], seg[:, :, None]
    allowed = causal[None] & (key >= 0) & ((key == 0) | (key == query))
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=seg.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s, dtype=torch.long)
        attn[i, t - len(s):] = 1
    return ids.to(device), attn.to(device)


def _first_pair_index(sets: Sequence[Sequence[Utterance]], device: torch.device) -> torch.Tensor:
    """Flat pair index of each set's first utterance."""
    starts = np.concatenate([[0], np.cumsum([len(us) for us in sets])[:-1]])
    return torch.as_tensor(starts, dtype=torch.long, device=device)


def _select_cache(cache: Any, idx: torch.Tensor) -> Any:
    """The KV cache with batch rows ``idx`` (a ``Cache`` object or legacy tuples)."""
    if hasattr(cache, "reorder_cache"):
        cache.reorder_cache(idx)
        return cache
    return tuple(tuple(t.index_select(0, idx) for t in layer) for layer in cache)

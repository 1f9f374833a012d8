"""Learner views of logged dialogues, computed from rows (never stored).

Per-token view (:func:`tokenize_dialogue`, :class:`TokenizedDataset`, :func:`collate_tokens`)
------------------------------------------------------------------------------------------
The token layout is :func:`envs.token_view.encode_dialogue`'s (shared with
:class:`~envs.token_view.TokenLevelEnv`)::

    [bos] env : w w <eou>  agent : w w <eou>  env : w <eou>  agent : w <eou>  env : w <eou>

With a causal LM, the hidden state at position ``i`` predicts token ``i + 1``; so the
*state* of the action token at ``j`` is position ``j - 1``. Arrays, all of length ``L``:

* ``input_ids`` int64: the token ids.
* ``action_mask`` bool: True at ``j`` when token ``j`` is an agent action, i.e. an
  agent utterance token or the agent's closing ``<eou>``; never on a speaker prefix,
  an environment token, bos or padding.
* ``rewards`` float32: the reward of an agent utterance on its ``<eou>`` position, 0
  elsewhere (float32 throughout; never rounded to integers).
* ``dones`` bool: True only on the last action (the final agent ``<eou>``) of an
  episode that *terminated*; all False for a truncated episode.
* ``next_state`` int64: for an action at ``j``, the position whose hidden state is the
  state of the *next action*, i.e. ``(index of the next action token) - 1``: ``j``
  itself inside an utterance, and the last token of the next ``agent :`` prefix across
  the environment's reply (environment tokens are skipped: one step). For the last
  action of a *truncated* episode, the agent speaker prefix is appended to the
  sequence (``action_mask`` False, reward 0) and ``next_state`` points at its last
  position, so a learner bootstraps from the real next state, never from padding. For
  the last action of a terminated episode ``next_state[j] = j`` (masked by ``dones``).
  At non-action positions ``next_state[j] = j`` (meaningless; mask with
  ``action_mask``).
* scalars ``terminated`` (bool) and ``return`` (float32).

Terminated or truncated? Rows written by the generator carry the optional
``terminated`` column (:mod:`dialogue_rl.data.schema`), which is used as is. The seven
contract columns cannot tell the two apart (a game may end on its last allowed turn,
as GuessWhich's final question does, or be cut there by the turn limit), so rows
without the column count as *terminated*: no bootstrapping past the logged dialogue,
the conservative choice. Pass ``terminated=`` to override per row.

Too-long rows: with ``max_length`` set, a row whose token sequence (bootstrap prefix
included) is longer raises :class:`SequenceTooLongError` in :func:`tokenize_dialogue`;
:func:`tokenize_dataset` raises too (``on_too_long="error"``, the default) or drops
such rows and logs how many (``on_too_long="drop"``). Rows are never cut, since a cut
dialogue would change the states the learner sees.

Per-utterance view (:func:`utterance_transitions`, :func:`flatten_transitions`)
----------------------------------------------------------------------------
One transition per agent utterance: ``state`` = rendered transcript
(:func:`envs.core.render_transcript`, the env's history observation) before the
utterance, ``action`` = its text, ``reward``, ``next_state`` = transcript after the
partner's reply (all turns up to the next agent turn), ``done`` = True on the last
utterance of a terminated episode only, ``turn_index`` = 0-based agent-turn index.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.core import AGENT, Turn, render_transcript
from envs.token_view import TokenCodec, as_codec, encode_dialogue

if TYPE_CHECKING:
    import datasets
    import torch

log = logging.getLogger(__name__)

TOKEN_KEYS: tuple[str, ...] = ("input_ids", "action_mask", "rewards", "dones", "next_state")


class SequenceTooLongError(ValueError):
    """A dialogue's token sequence exceeds ``max_length``."""


def episode_terminated(row: Mapping[str, Any]) -> bool:
    """Whether a logged episode ended by termination (True) or truncation (False).

    The row's ``terminated`` column when present, else True (see the module docstring).
    """
    flag = row.get("terminated")
    return True if flag is None else bool(flag)


def _turns(row: Mapping[str, Any]) -> list[Turn]:
    return [t if isinstance(t, Turn) else Turn.from_dict(t) for t in row["turns"]]


def tokenize_dialogue(
    row: Mapping[str, Any],
    codec: TokenCodec | Any,
    *,
    terminated: bool | None = None,
    max_length: int | None = None,
    add_bos: bool = True,
) -> dict[str, np.ndarray]:
    """The per-token view of one row (see the module docstring for every array).

    Args:
        row: a dataset row (``turns``, ``return``, optionally ``terminated``).
        codec: a :class:`~envs.token_view.TokenCodec` or any tokenizer it accepts.
        terminated: override :func:`episode_terminated` of the row.
        max_length: raise :class:`SequenceTooLongError` above this many tokens.
        add_bos: start with the tokenizer's bos id (as ``TokenLevelEnv`` does).
    """
    codec = as_codec(codec)
    turns = _turns(row)
    ids, mask, rewards = encode_dialogue(codec, turns, add_bos=add_bos)
    if terminated is None:
        terminated = episode_terminated(row)
    actions = [j for j, m in enumerate(mask) if m]
    next_state = list(range(len(ids)))
    for a, b in zip(actions, actions[1:]):
        next_state[a] = b - 1
    dones = [False] * len(ids)
    if actions:
        last = actions[-1]
        if terminated:
            dones[last] = True
        else:
            prefix = [int(t) for t in codec.speaker_prefix(AGENT)]
            ids += prefix
            mask += [False] * len(prefix)
            rewards += [0.0] * len(prefix)
            dones += [False] * len(prefix)
            next_state += list(range(len(next_state), len(next_state) + len(prefix)))
            next_state[last] = len(ids) - 1
    if max_length is not None and len(ids) > max_length:
        raise SequenceTooLongError(
            f"dialogue (seed {row.get('seed')}) has {len(ids)} tokens > max_length={max_length}; "
            "raise max_length or drop such rows (tokenize_dataset(on_too_long='drop'))"
        )
    return {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "action_mask": np.asarray(mask, dtype=bool),
        "rewards": np.asarray(rewards, dtype=np.float32),
        "dones": np.asarray(dones, dtype=bool),
        "next_state": np.asarray(next_state, dtype=np.int64),
        "terminated": np.bool_(terminated),
        "return": np.float32(row["return"]),
    }


def iter_rows(ds: datasets.Dataset | Iterable[Mapping[str, Any]], batch_size: int = 1024) -> Iterator[dict]:
    """Rows of a ``datasets.Dataset`` (read in column batches) or of any iterable of rows."""
    if hasattr(ds, "iter") and hasattr(ds, "column_names"):
        for batch in ds.iter(batch_size=batch_size):
            cols = list(batch)
            for values in zip(*(batch[c] for c in cols)):
                yield dict(zip(cols, values))
    else:
        yield from ds


class TokenizedDataset:
    """Every row tokenised once, stored as flat read-only arrays (map-style dataset).

    ``ds[i]`` returns the dict of :func:`tokenize_dialogue` (array views; do not write);
    ``len(ds)``; ``ds.lengths`` (tokens per row, for bucketing); ``ds.rows`` (indices of
    the kept source rows). Works with ``torch.utils.data.DataLoader`` and
    :func:`collate_tokens`.
    """

    def __init__(
        self, examples: Sequence[Mapping[str, np.ndarray]], rows: Sequence[int] | None = None
    ) -> None:
        self.lengths = np.asarray([len(e["input_ids"]) for e in examples], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int64)
        self.rows = np.asarray(rows if rows is not None else range(len(examples)), dtype=np.int64)
        self._flat: dict[str, np.ndarray] = {}
        for key, dtype in zip(TOKEN_KEYS, (np.int64, bool, np.float32, bool, np.int64)):
            parts = [np.asarray(e[key], dtype=dtype) for e in examples]
            arr = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
            arr.flags.writeable = False
            self._flat[key] = arr
        self.terminated = np.asarray([bool(e["terminated"]) for e in examples], dtype=bool)
        self.returns = np.asarray([e["return"] for e in examples], dtype=np.float32)
        self.terminated.flags.writeable = False
        self.returns.flags.writeable = False

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} dialogues")
        i = int(i) % len(self)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        out = {k: v[lo:hi] for k, v in self._flat.items()}
        out["terminated"] = self.terminated[i]
        out["return"] = self.returns[i]
        return out

    @property
    def max_length(self) -> int:
        return int(self.lengths.max()) if len(self) else 0


def tokenize_dataset(
    ds: datasets.Dataset | Iterable[Mapping[str, Any]],
    codec: TokenCodec | Any,
    max_length: int | None = None,
    *,
    on_too_long: str = "error",
    add_bos: bool = True,
) -> TokenizedDataset:
    """Tokenise every row once (see :func:`tokenize_dialogue`) into a :class:`TokenizedDataset`.

    Args:
        on_too_long: ``"error"`` (raise :class:`SequenceTooLongError`) or ``"drop"``
            (skip rows longer than ``max_length`` and log the count).
    """
    if on_too_long not in ("error", "drop"):
        raise ValueError(f"on_too_long={on_too_long!r}: expected 'error' or 'drop'")
    codec = as_codec(codec)
    examples: list[dict[str, np.ndarray]] = []
    kept: list[int] = []
    dropped = 0
    for i, row in enumerate(iter_rows(ds)):
        ex = tokenize_dialogue(row, codec, add_bos=add_bos)
        if max_length is not None and len(ex["input_ids"]) > max_length:
            if on_too_long == "error":
                raise SequenceTooLongError(
                    f"row {i} (seed {row.get('seed')}) has {len(ex['input_ids'])} tokens > max_length={max_length}; "
                    "raise max_length or pass on_too_long='drop'"
                )
            dropped += 1
            continue
        examples.append(ex)
        kept.append(i)
    if dropped:
        log.warning(
            "dropped %d of %d dialogues longer than max_length=%d tokens", dropped, dropped + len(kept), max_length
        )
    return TokenizedDataset(examples, kept)


def collate_tokens(examples: Sequence[Mapping[str, np.ndarray]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch of per-token examples to the batch's longest sequence.

    Returns tensors ``[B, T]``: ``input_ids`` (long, ``pad_id`` on padding),
    ``attention_mask`` (long, 1 on real tokens), ``action_mask`` (bool, False on pad),
    ``rewards`` (float32, 0 on pad), ``dones`` (bool, False on pad), ``next_state``
    (long; on padding the row's last real position, so every index is valid); and
    ``[B]``: ``returns`` (float32), ``terminated`` (bool), ``lengths`` (long).
    """
    import torch

    if not examples:
        raise ValueError("collate_tokens: empty batch")
    lengths = [len(e["input_ids"]) for e in examples]
    b, t = len(examples), max(lengths)
    input_ids = np.full((b, t), pad_id, dtype=np.int64)
    attention = np.zeros((b, t), dtype=np.int64)
    action = np.zeros((b, t), dtype=bool)
    rewards = np.zeros((b, t), dtype=np.float32)
    dones = np.zeros((b, t), dtype=bool)
    next_state = np.zeros((b, t), dtype=np.int64)
    for i, (e, n) in enumerate(zip(examples, lengths)):
        input_ids[i, :n] = e["input_ids"]
        attention[i, :n] = 1
        action[i, :n] = e["action_mask"]
        rewards[i, :n] = e["rewards"]
        dones[i, :n] = e["dones"]
        next_state[i, :n] = e["next_state"]
        next_state[i, n:] = max(n - 1, 0)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "action_mask": torch.from_numpy(action),
        "rewards": torch.from_numpy(rewards),
        "dones": torch.from_numpy(dones),
        "next_state": torch.from_numpy(next_state),
        "returns": torch.tensor([float(e["return"]) for e in examples], dtype=torch.float32),
        "terminated": torch.tensor([bool(e["terminated"]) for e in examples], dtype=torch.bool),
        "lengths": torch.tensor(lengths, dtype=torch.long),
    }


def utterance_transitions(row: Mapping[str, Any], *, terminated: bool | None = None) -> list[dict[str, Any]]:
    """The per-utterance view of one row: one transition per agent utterance.

    Each is ``{"state", "action", "reward", "next_state", "done", "turn_index"}`` (see
    the module docstring); ``reward`` is a float32-valued python float.
    """
    turns = _turns(row)
    if terminated is None:
        terminated = episode_terminated(row)
    agent_idx = [i for i, t in enumerate(turns) if t.speaker == AGENT]
    out: list[dict[str, Any]] = []
    for k, i in enumerate(agent_idx):
        end = agent_idx[k + 1] if k + 1 < len(agent_idx) else len(turns)
        last = k == len(agent_idx) - 1
        out.append(
            {
                "state": render_transcript(turns[:i]),
                "action": turns[i].text,
                "reward": float(np.float32(turns[i].reward)),
                "next_state": render_transcript(turns[:end]),
                "done": bool(last and terminated),
                "turn_index": k,
            }
        )
    return out


def flatten_transitions(ds: datasets.Dataset | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """All transitions of a dataset in row order, each with its source ``row`` index added."""
    out: list[dict[str, Any]] = []
    for r, row in enumerate(iter_rows(ds)):
        for tr in utterance_transitions(row):
            tr["row"] = r
            out.append(tr)
    return out

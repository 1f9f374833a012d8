"""Preference pairs from logged dialogues (for the reward model and DPO).

A pair ``(chosen, rejected)`` is two rows of one split where the chosen dialogue has the
higher return. Pairs should compare dialogues of the *same scenario*, so only rows in
the same group are paired; :func:`group_keys` gives the group of each row:

* ``"seed"``: the env reset seed (the issue's "same seed, ranked by return"). The
  generator plays each seed of a split once (:func:`dialogue_rl.data.generate.split_seeds`),
  so within one generated split every seed group has one row and no pair forms; it is
  meant for splits concatenated from several datasets of the same recipe seed (their
  seeds coincide row by row) or for replayed seeds.
* ``"opening"``: the first environment turn (the task text: GuessWhich's caption, a
  maze's start description). Dialogues with the same opening start from the same
  observation; the hidden state behind it may differ, so the return difference is
  partly luck of the draw. This is the default for single generated datasets.
* ``"none"``: one group, any two rows (the reward model then learns absolute returns).

Same-seed pairs from one dataset: :func:`replay_rows` plays every row's seed again with
another scripted policy spec (``replay``, e.g. ``["expert", "random"]``; the spec is
drawn among those that differ from the row's own ``policy``), so ``group_by="seed"``
then pairs two dialogues about the same hidden state, and the return difference is
entirely due to the agent's utterances. Replays use the env's default constructor
arguments (every recipe in ``conf/data`` has ``env_kwargs: {}``).

Within a group, each row ``i`` is paired with up to ``pairs_per_row`` partners ``j``
drawn at random among the rows with ``|R_i - R_j| > min_gap`` (ties are never pairs:
they carry no preference); the higher-return row is chosen. With ``label_noise = p``
each pair is swapped with probability ``p`` (a Bernoulli draw per pair from the same
generator), simulating noisy annotators. Everything is a function of the rows and the
generator's seed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from envs.core import AGENT

log = logging.getLogger(__name__)

GROUP_BY: tuple[str, ...] = ("seed", "opening", "none")


def group_keys(rows: Sequence[Mapping[str, Any]], group_by: str) -> list[Hashable]:
    """The scenario key of each row (see the module docstring)."""
    if group_by not in GROUP_BY:
        raise ValueError(f"group_by={group_by!r}: expected one of {GROUP_BY}")
    if group_by == "seed":
        return [int(r["seed"]) for r in rows]
    if group_by == "none":
        return [0] * len(rows)
    keys: list[Hashable] = []
    for r in rows:
        env_turns = [t["text"] for t in r["turns"] if t["speaker"] != AGENT]
        keys.append(env_turns[0] if env_turns else "")
    return keys


def build_pairs(
    returns: Sequence[float],
    keys: Sequence[Hashable],
    rng: np.random.Generator,
    *,
    min_gap: float = 0.0,
    pairs_per_row: int = 1,
) -> np.ndarray:
    """``[P, 2]`` int64 array of ``(chosen, rejected)`` row indices (see the module docstring).

    Rows are visited in order; a pair found twice (``i`` picks ``j`` and ``j`` picks ``i``)
    is kept once.
    """
    if len(returns) != len(keys):
        raise ValueError(f"{len(returns)} returns but {len(keys)} keys")
    if min_gap < 0 or pairs_per_row < 1:
        raise ValueError(f"min_gap={min_gap} must be >= 0 and pairs_per_row={pairs_per_row} >= 1")
    ret = np.asarray(returns, dtype=np.float64)
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    seen: set[tuple[int, int]] = set()
    out: list[tuple[int, int]] = []
    for members in groups.values():
        idx = np.asarray(members)
        for i in members:
            partners = idx[np.abs(ret[idx] - ret[i]) > min_gap]
            if len(partners) == 0:
                continue
            for j in rng.choice(partners, size=min(pairs_per_row, len(partners)), replace=False):
                j = int(j)
                pair = (i, j) if ret[i] > ret[j] else (j, i)
                if pair not in seen:
                    seen.add(pair)
                    out.append(pair)
    return np.asarray(out, dtype=np.int64).reshape(-1, 2)


def add_label_noise(pairs: np.ndarray, p: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Swap each pair with probability ``p``; returns the new pairs and the bool mask of swaps."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"label_noise={p}: expected a probability in [0, 1]")
    flip = rng.random(len(pairs)) < p
    out = pairs.copy()
    out[flip] = out[flip][:, ::-1]
    return out, flip


def preference_pairs(
    rows: Sequence[Mapping[str, Any]],
    *,
    group_by: str = "opening",
    min_gap: float = 0.0,
    pairs_per_row: int = 1,
    label_noise: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Pairs of a split's rows: :func:`group_keys`, :func:`build_pairs`, :func:`add_label_noise`."""
    rng = np.random.default_rng(seed)
    returns = [float(r["return"]) for r in rows]
    pairs = build_pairs(returns, group_keys(rows, group_by), rng, min_gap=min_gap, pairs_per_row=pairs_per_row)
    pairs, flipped = add_label_noise(pairs, label_noise, rng)
    log.info("%d preference pairs from %d dialogues (group_by=%s, min_gap=%g, %d labels flipped)",
             len(pairs), len(rows), group_by, min_gap, int(flipped.sum()))
    return pairs


class PairDataset:
    """Map-style dataset of preference pairs over a tokenised split.

    ``ds[i] = {"chosen": example, "rejected": example}`` (per-token examples of
    :func:`dialogue_rl.data.views.tokenize_dialogue`); ``pairs`` indexes ``examples``.
    """

    unit = "preference pairs"  # what one example is, for the logs

    def __init__(self, examples: Sequence[Mapping[str, np.ndarray]], pairs: np.ndarray) -> None:
        self.examples, self.pairs = examples, np.asarray(pairs, dtype=np.int64).reshape(-1, 2)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Mapping[str, np.ndarray]]:
        c, r = self.pairs[i]
        return {"chosen": self.examples[int(c)], "rejected": self.examples[int(r)]}


def replay_rows(
    rows: Sequence[Mapping[str, Any]], specs: Sequence[str], seed: int = 0,
    env_kwargs: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One new row per row: its seed played by a spec of ``specs`` other than its own policy
    (drawn with a generator seeded by ``seed``); rows whose policy is the only spec get none."""
    from dialogue_rl.data.generate import _play_chunk

    rng = np.random.default_rng([seed, 11])
    by_env: dict[str, tuple[list[int], list[str]]] = defaultdict(lambda: ([], []))
    for r in rows:
        options = [s for s in specs if s != r.get("policy")]
        if options:
            seeds, chosen = by_env[r["env_id"]]
            seeds.append(int(r["seed"]))
            chosen.append(options[int(rng.integers(len(options)))])
    out: list[dict[str, Any]] = []
    for env_id, (seeds, chosen) in by_env.items():
        out += _play_chunk((env_id, dict(env_kwargs or {}), seeds, chosen))
    log.info("replayed %d seeds with %s", len(out), ", ".join(specs))
    return out


def tokenize_pairs(
    split: Any, codec: Any, max_length: int | None, replay: Sequence[str] = (), **pair_kwargs: Any
) -> PairDataset:
    """Tokenise a split once (rows longer than ``max_length`` dropped) and pair its rows
    (``pair_kwargs`` go to :func:`preference_pairs`); with ``replay`` specs, the rows
    of :func:`replay_rows` join the split first."""
    from dialogue_rl.data.views import iter_rows, tokenize_dataset

    rows = list(iter_rows(split))
    if replay:
        rows += replay_rows(rows, replay, seed=int(pair_kwargs.get("seed", 0)))
    examples = tokenize_dataset(rows, codec, max_length=max_length, on_too_long="drop")
    kept = [rows[i] for i in examples.rows]
    return PairDataset(examples, preference_pairs(kept, **pair_kwargs))


def collate_pairs(examples: Sequence[Mapping[str, Mapping[str, np.ndarray]]], pad_id: int) -> dict[str, Any]:
    """One token batch of ``2B`` rows: the ``B`` chosen dialogues, then their ``B`` rejected
    ones (:func:`~dialogue_rl.data.views.collate_tokens` keys), plus ``n_pairs``."""
    import torch

    from dialogue_rl.data.views import collate_tokens

    batch = collate_tokens([e["chosen"] for e in examples] + [e["rejected"] for e in examples], pad_id)
    batch["n_pairs"] = torch.tensor(len(examples))
    return batch

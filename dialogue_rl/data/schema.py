"""The logged-dialogue row schema (DESIGN.md section 4, a **contract**) and its validation.

One row per dialogue:

========== ============================================================ ==========================
column     type                                                         meaning
========== ============================================================ ==========================
env_id     string                                                       registered env id
seed       int64                                                        ``reset`` seed of the episode
policy     string                                                       behaviour policy spec
turns      List({speaker: string, text: string, reward: float32})       the dialogue, env turns too
return     float32                                                      undiscounted sum of rewards
length     int32                                                        number of agent turns
success    bool                                                         task solved
========== ============================================================ ==========================

Optional column (an extension, not part of the DESIGN.md contract): ``terminated`` (bool),
whether the episode ended by termination rather than by the turn limit. The seven
contract columns cannot tell a game that ended on its last allowed turn (terminated,
e.g. GuessWhich's final question) from one cut by the limit (truncated), and value
learners must not bootstrap past a terminal state nor treat a truncated one as
terminal; so the generator writes it, and the views use it when present (rows
without it count as terminated, see :func:`dialogue_rl.data.views.episode_terminated`).
A split has it in all rows or in none.

Row invariants checked by :func:`validate_rows` (besides the types): ``speaker`` is one
of :data:`envs.core.SPEAKERS`; environment turns carry reward 0 (the reward of an
utterance sits on the agent's turn); rewards and returns are finite;
``return == sum(turn rewards)`` within ``1e-4`` (relative above magnitude 1, since both
are float32); ``length == number of agent turns``; a split is never empty.

Every error is a :class:`DatasetError` with a one-line message naming the source
(file or split), the row and the field, and saying how to fix it.
"""

from __future__ import annotations

import math
import numbers as _numbers
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import numpy as np
from datasets import Features, List, Value

from envs.core import AGENT, ENV, SPEAKERS

SCHEMA_VERSION = 1
"""Version of the on-disk layout (columns, metadata.json keys). Bump on any change."""

TURN_FEATURES: dict[str, Value] = {
    "speaker": Value("string"),
    "text": Value("string"),
    "reward": Value("float32"),
}

FEATURES = Features(
    {
        "env_id": Value("string"),
        "seed": Value("int64"),
        "policy": Value("string"),
        "turns": List(TURN_FEATURES),
        "return": Value("float32"),
        "length": Value("int32"),
        "success": Value("bool"),
    }
)
"""The ``datasets.Features`` of a logged-dialogue split (column order as in DESIGN.md)."""

OPTIONAL_FEATURES = Features({"terminated": Value("bool")})
"""Columns a split may add to :data:`FEATURES` (all rows or none)."""

COLUMNS: tuple[str, ...] = tuple(FEATURES)
OPTIONAL_COLUMNS: tuple[str, ...] = tuple(OPTIONAL_FEATURES)
TURN_KEYS: tuple[str, ...] = tuple(TURN_FEATURES)

RETURN_TOLERANCE = 1e-4
"""``|return - sum(rewards)|`` allowed, times ``max(1, |return|)`` (float32 storage)."""

_FIX = "regenerate it with scripts/generate_data.py (or fix the code that wrote it)"
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1


class DatasetError(ValueError):
    """A logged dataset is missing, corrupt or violates the schema (one-line message)."""


def _short(value: Any, limit: int = 60) -> str:
    """A one-line, bounded ``repr`` for error messages."""
    text = repr(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(source: str, row: int, field: str, problem: str) -> DatasetError:
    return DatasetError(f"{source} row {row}: field '{field}' {problem}; {_FIX}")


def _is_int(x: Any) -> bool:
    return isinstance(x, (_numbers.Integral, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return isinstance(x, (_numbers.Real, np.floating, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_real(source: str, i: int, field: str, x: Any) -> float:
    if not _is_real(x):
        raise _fail(source, i, field, f"is {_short(x)} of type {type(x).__name__}, expected a float")
    v = float(x)
    if not math.isfinite(v):
        raise _fail(source, i, field, f"is {v}, expected a finite float (NaN/inf rewards are not allowed)")
    return v


def _check_str(source: str, i: int, field: str, x: Any, nonempty: bool) -> None:
    if not isinstance(x, str):
        raise _fail(source, i, field, f"is {_short(x)} of type {type(x).__name__}, expected a string")
    if nonempty and not x:
        raise _fail(source, i, field, "is empty, expected a non-empty string")


def split_features(optional: Iterable[str] = ()) -> Features:
    """:data:`FEATURES` plus the given optional columns (in :data:`OPTIONAL_COLUMNS` order)."""
    chosen = set(optional)
    unknown = sorted(chosen - set(OPTIONAL_COLUMNS))
    if unknown:
        raise ValueError(f"unknown optional column {unknown[0]!r} (optional: {', '.join(OPTIONAL_COLUMNS)})")
    return Features({**FEATURES, **{c: OPTIONAL_FEATURES[c] for c in OPTIONAL_COLUMNS if c in chosen}})


def validate_row(row: Mapping[str, Any], source: str, index: int, optional: Iterable[str] = ()) -> None:
    """Check one row against :data:`FEATURES` and the row invariants (module docstring).

    ``optional``: the optional columns this split carries (each row must have them).
    """
    if not isinstance(row, Mapping):
        raise DatasetError(f"{source} row {index}: is {type(row).__name__}, expected a dict of columns; {_FIX}")
    columns = tuple(split_features(optional))
    for col in columns:
        if col not in row:
            why = "is missing" if col in COLUMNS else "is missing (other rows of the split have it)"
            raise _fail(source, index, col, why)
    extra = sorted(set(row) - set(columns))
    if extra:
        raise _fail(source, index, extra[0], f"is not a column of the schema (columns: {', '.join(columns)})")
    if "terminated" in row and not isinstance(row["terminated"], (bool, np.bool_)):
        raise _fail(source, index, "terminated", f"is {_short(row['terminated'])}, expected a bool")
    _check_str(source, index, "env_id", row["env_id"], nonempty=True)
    _check_str(source, index, "policy", row["policy"], nonempty=True)
    seed = row["seed"]
    if not _is_int(seed) or not 0 <= int(seed) <= _INT64_MAX:
        raise _fail(source, index, "seed", f"is {_short(seed)}, expected a non-negative int64")
    length = row["length"]
    if not _is_int(length) or not 0 <= int(length) <= _INT32_MAX:
        raise _fail(source, index, "length", f"is {_short(length)}, expected a non-negative int32")
    success = row["success"]
    if not isinstance(success, (bool, np.bool_)):
        raise _fail(source, index, "success", f"is {_short(success)} of type {type(success).__name__}, expected a bool")
    ret = _check_real(source, index, "return", row["return"])

    turns = row["turns"]
    if not isinstance(turns, (list, tuple)):
        raise _fail(source, index, "turns", f"is of type {type(turns).__name__}, expected a list of turns")
    if not turns:
        raise _fail(source, index, "turns", "is empty, expected at least the environment's opening turn")
    total = 0.0
    n_agent = 0
    for k, turn in enumerate(turns):
        name = f"turns[{k}]"
        if not isinstance(turn, Mapping):
            raise _fail(source, index, name, f"is {type(turn).__name__}, expected a dict with {', '.join(TURN_KEYS)}")
        for key in TURN_KEYS:
            if key not in turn:
                raise _fail(source, index, f"{name}.{key}", "is missing")
        extra = sorted(set(turn) - set(TURN_KEYS))
        if extra:
            raise _fail(source, index, f"{name}.{extra[0]}", f"is not a turn field (fields: {', '.join(TURN_KEYS)})")
        speaker = turn["speaker"]
        if speaker not in SPEAKERS:
            raise _fail(
                source, index, f"{name}.speaker",
                f"is {_short(speaker)}, expected one of {', '.join(repr(s) for s in SPEAKERS)}",
            )
        _check_str(source, index, f"{name}.text", turn["text"], nonempty=False)
        reward = _check_real(source, index, f"{name}.reward", turn["reward"])
        if speaker == ENV and reward != 0.0:
            raise _fail(
                source, index, f"{name}.reward",
                f"is {reward} on an '{ENV}' turn, expected 0 (rewards sit on the agent's turns)",
            )
        n_agent += speaker == AGENT
        total += float(np.float32(reward))
    if abs(ret - total) > RETURN_TOLERANCE * max(1.0, abs(total)):
        raise _fail(source, index, "return", f"is {ret!r} but the turn rewards sum to {total!r}")
    if int(length) != n_agent:
        raise _fail(source, index, "length", f"is {int(length)} but the dialogue has {n_agent} agent turns")


def optional_columns_of(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The optional columns present in a row (decides them for a whole split)."""
    return tuple(c for c in OPTIONAL_COLUMNS if isinstance(row, Mapping) and c in row)


def validate_rows(
    rows: Iterable[Mapping[str, Any]], source: str, *, start: int = 0, optional: Iterable[str] | None = None
) -> int:
    """Validate python rows; raise :class:`DatasetError` on the first bad one.

    Args:
        rows: the rows (dicts with the :data:`COLUMNS`, plus the same optional ones).
        source: a name for messages (a file path or ``"<split> split"``).
        start: index of the first row (for messages when validating in batches).
        optional: the optional columns every row carries; ``None``: those of the
            first row.

    Returns:
        The number of rows checked. An empty iterable is an error ("empty split")
        unless ``start > 0`` (a later batch).
    """
    n = 0
    for n, row in enumerate(rows, start=1):
        if optional is None:
            optional = optional_columns_of(row)
        validate_row(row, source, start + n - 1, optional)
    if n == 0 and start == 0:
        raise DatasetError(f"{source}: the split is empty (0 rows); generate it with n_train/n_validation >= 1")
    return n


def check_features(features: Features, source: str) -> None:
    """Check a split's column types against :data:`FEATURES` (missing, extra, wrong type).

    Optional columns (:data:`OPTIONAL_FEATURES`) may be present, with their type.
    """
    for col, expected in split_features(c for c in OPTIONAL_COLUMNS if c in features).items():
        if col not in features:
            raise DatasetError(f"{source}: column '{col}' is missing (expected {expected}); {_FIX}")
        if features[col] != expected:
            raise DatasetError(
                f"{source}: column '{col}' has type {features[col]}, expected {expected}; {_FIX}"
            )
    extra = [c for c in features if c not in FEATURES and c not in OPTIONAL_FEATURES]
    if extra:
        raise DatasetError(
            f"{source}: column '{extra[0]}' is not in the schema ({', '.join(COLUMNS + OPTIONAL_COLUMNS)}); {_FIX}"
        )


def validate_dataset(ds: datasets.Dataset, source: str, batch_size: int = 1024) -> None:
    """Validate a ``datasets.Dataset`` split: column types, non-empty, and every row.

    Raises:
        DatasetError: one line naming ``source``, the row and the field, and the fix.
    """
    check_features(ds.features, source)
    if len(ds) == 0:
        raise DatasetError(f"{source}: the split is empty (0 rows); generate it with n_train/n_validation >= 1")
    start = 0
    optional = [c for c in OPTIONAL_COLUMNS if c in ds.features]
    for batch in ds.iter(batch_size=batch_size):
        cols = list(batch)
        rows = [dict(zip(cols, values)) for values in zip(*(batch[c] for c in cols))]
        validate_rows(rows, source, start=start, optional=optional)
        start += len(rows)

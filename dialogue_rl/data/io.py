"""Saving and loading logged-dialogue datasets (parquet splits plus ``metadata.json``).

On-disk layout of a dataset directory::

    <out_dir>/
        train.parquet          one file per split, columns of schema.FEATURES (+ optional ones)
        validation.parquet
        metadata.json          written last

``metadata.json`` holds the caller's metadata (for generated data: env id and kwargs,
mixture, seeds, config, dataset key, ``max_turns``) plus the keys this module owns:

* ``schema_version``: :data:`~dialogue_rl.data.schema.SCHEMA_VERSION`;
* ``splits``: per split ``{"file", "sha256", "num_rows", "returns", "success_rate",
  "mean_length"}`` where ``returns`` is ``{"overall": stats, "per_policy": {policy:
  stats}}`` and ``stats`` is ``{"n", "mean", "std", "min", "max"}`` (population std).

Every file is written to a temporary name in the same directory and renamed into place
(atomic on POSIX); an older ``metadata.json`` is removed first and the new one written
last, so an interrupted save leaves a directory that does not load (and that
:func:`~dialogue_rl.data.generate.ensure_dataset` regenerates), never a silently mixed
one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dialogue_rl.data.schema import (
    SCHEMA_VERSION,
    DatasetError,
    OPTIONAL_COLUMNS,
    check_features,
    optional_columns_of,
    split_features,
    validate_dataset,
    validate_rows,
)

log = logging.getLogger(__name__)

METADATA_FILE = "metadata.json"
RESERVED_METADATA_KEYS: tuple[str, ...] = ("schema_version", "splits")
_SPLIT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_REGEN = "regenerate the dataset with scripts/generate_data.py"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write_bytes_via(path: Path, write: Any) -> str:
    """Call ``write(tmp_path)``, fsync, rename onto ``path``; return the sha256."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return digest


def _stats(values: np.ndarray) -> dict[str, float]:
    return {
        "n": int(values.size),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _split_summary(table: pa.Table) -> dict[str, Any]:
    returns = table.column("return").to_numpy().astype(np.float64)
    policies = np.asarray(table.column("policy").to_pylist(), dtype=object)
    per_policy = {str(p): _stats(returns[policies == p]) for p in sorted(set(policies.tolist()))}
    success = table.column("success").to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = table.column("length").to_numpy().astype(np.float64)
    return {
        "num_rows": table.num_rows,
        "returns": {"overall": _stats(returns), "per_policy": per_policy},
        "success_rate": float(success.mean()),
        "mean_length": float(lengths.mean()),
    }


def _to_table(split: str, data: Sequence[Mapping[str, Any]] | datasets.Dataset) -> pa.Table:
    source = f"{split} split (passed to save_dataset)"
    if isinstance(data, datasets.Dataset):
        validate_dataset(data, source)
        features = split_features(c for c in OPTIONAL_COLUMNS if c in data.features)
        table = data.with_format("arrow")[:]
        return table.select(list(features)).cast(features.arrow_schema)
    rows = list(data)
    validate_rows(rows, source)
    features = split_features(optional_columns_of(rows[0]))
    return pa.Table.from_pylist(rows, schema=features.arrow_schema)


def save_dataset(
    out_dir: str | os.PathLike,
    splits: Mapping[str, Sequence[Mapping[str, Any]] | datasets.Dataset],
    metadata: Mapping[str, Any],
) -> Path:
    """Validate and write ``<split>.parquet`` per split and ``metadata.json``, atomically.

    Args:
        out_dir: the dataset directory (created if needed; an existing dataset there is
            replaced).
        splits: split name -> rows (list of dicts in the schema) or a ``datasets.Dataset``.
        metadata: JSON-serialisable caller metadata (must not use the keys
            :data:`RESERVED_METADATA_KEYS`).

    Returns:
        The dataset directory.

    Raises:
        DatasetError: a split is empty or a row violates the schema.
        ValueError: bad split names, reserved or non-JSON metadata.
    """
    if not splits:
        raise ValueError("save_dataset: no splits given")
    for name in splits:
        if not _SPLIT_NAME.match(name) or name == Path(METADATA_FILE).stem:
            raise ValueError(f"save_dataset: bad split name {name!r} (use letters, digits, _ . -)")
    clash = [k for k in RESERVED_METADATA_KEYS if k in metadata]
    if clash:
        raise ValueError(f"save_dataset: metadata key {clash[0]!r} is reserved (written by save_dataset)")
    try:
        caller_meta = json.loads(json.dumps(dict(metadata)))
    except (TypeError, ValueError) as e:
        raise ValueError(f"save_dataset: metadata is not JSON-serialisable ({e})") from None

    tables = {name: _to_table(name, data) for name, data in splits.items()}  # validate all first
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA_FILE).unlink(missing_ok=True)

    split_meta: dict[str, Any] = {}
    for name, table in tables.items():
        file = f"{name}.parquet"
        digest = _atomic_write_bytes_via(out / file, lambda tmp, t=table: pq.write_table(t, tmp))
        split_meta[name] = {"file": file, "sha256": digest, **_split_summary(table)}

    meta = {**caller_meta, "schema_version": SCHEMA_VERSION, "splits": split_meta}
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _atomic_write_bytes_via(out / METADATA_FILE, lambda tmp: Path(tmp).write_text(text))
    counts = ", ".join(f"{k}: {v['num_rows']} rows" for k, v in split_meta.items())
    log.info("saved dataset %s (%s)", out, counts)
    return out


def _dataset_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.parent if p.name == METADATA_FILE else p


def load_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check ``metadata.json`` of a dataset directory (or its path).

    Raises:
        DatasetError: missing directory or file, invalid JSON, other schema version,
            missing ``splits`` entries.
    """
    root = _dataset_dir(path)
    file = root / METADATA_FILE
    if not root.is_dir():
        raise DatasetError(f"{root}: no such dataset directory; generate it with scripts/generate_data.py")
    if not file.is_file():
        raise DatasetError(f"{file}: missing (incomplete or foreign directory); {_REGEN}")
    try:
        meta = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{file}: not readable JSON ({msg}); {_REGEN}") from None
    if not isinstance(meta, dict):
        raise DatasetError(f"{file}: expected a JSON object; {_REGEN}")
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(
            f"{file}: schema_version is {version!r}, this code reads {SCHEMA_VERSION}; {_REGEN}"
        )
    splits = meta.get("splits")
    if not isinstance(splits, dict) or not splits:
        raise DatasetError(f"{file}: field 'splits' is missing or empty; {_REGEN}")
    for name, info in splits.items():
        for key in ("file", "sha256", "num_rows"):
            if not isinstance(info, dict) or key not in info:
                raise DatasetError(f"{file}: field 'splits.{name}.{key}' is missing; {_REGEN}")
    return meta


def verify_files(path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check that every split file listed in ``metadata.json`` exists and matches its sha256.

    Returns:
        The metadata.

    Raises:
        DatasetError: naming the file that is missing or whose checksum differs.
    """
    root = _dataset_dir(path)
    meta = dict(meta) if meta is not None else load_metadata(root)
    for name, info in meta["splits"].items():
        file = root / info["file"]
        if not file.is_file():
            raise DatasetError(f"{file}: listed in {METADATA_FILE} (split '{name}') but missing; {_REGEN}")
        digest = sha256_file(file)
        if digest != info["sha256"]:
            raise DatasetError(
                f"{file}: sha256 {digest[:12]}... does not match {METADATA_FILE} ({str(info['sha256'])[:12]}...), "
                f"the file was changed or truncated; {_REGEN}"
            )
    return meta


def _read_split(file: Path, name: str, expected_rows: Any) -> datasets.Dataset:
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(f"{file}: not a readable parquet file ({msg}); {_REGEN}") from None
    found = datasets.Features.from_arrow_schema(table.schema)
    check_features(found, str(file))
    if table.num_rows != expected_rows:
        raise DatasetError(
            f"{file}: has {table.num_rows} rows, {METADATA_FILE} says {expected_rows}; {_REGEN}"
        )
    features = split_features(c for c in OPTIONAL_COLUMNS if c in found)
    table = table.select(list(features)).cast(features.arrow_schema)
    ds = datasets.Dataset(datasets.table.InMemoryTable(table), split=datasets.NamedSplit(name))
    validate_dataset(ds, str(file))
    return ds


def load_dataset(path: str | os.PathLike) -> datasets.DatasetDict:
    """Load a dataset directory written by :func:`save_dataset`, fully validated.

    Checks, in order: ``metadata.json`` (present, JSON, schema version), each split file
    (present, sha256 as recorded, readable parquet, column types, row count), and every
    row (:func:`~dialogue_rl.data.schema.validate_rows`). The splits are in memory.

    Args:
        path: the dataset directory or its ``metadata.json``.

    Raises:
        DatasetError: a one-line message naming the file (and row and field) at fault.
    """
    root = _dataset_dir(path)
    meta = verify_files(root)
    out = datasets.DatasetDict()
    for name, info in meta["splits"].items():
        out[name] = _read_split(root / info["file"], name, info["num_rows"])
    env_id = meta.get("env_id")
    if isinstance(env_id, str):
        for name, ds in out.items():
            found = set(ds.unique("env_id"))
            if found != {env_id}:
                other = sorted(found - {env_id})[0]
                raise DatasetError(
                    f"{root / meta['splits'][name]['file']}: field 'env_id' has {other!r}, "
                    f"{METADATA_FILE} says {env_id!r}; {_REGEN}"
                )
    return out


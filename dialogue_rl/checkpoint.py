"""Atomic, checksummed, pickle-free checkpoints.

A checkpoint is a directory ``<root>/step_<N>/`` holding

* ``model.safetensors`` — the learner's weights (``safetensors.torch.save_model``,
  which handles tied weights);
* ``optimizer.safetensors`` — every tensor of the optimiser state, flattened;
* ``state.json`` — step, optimiser param groups and scalar state, RNG states,
  free-form ``extra`` (e.g. the run config) and the sha256 of both files.

It is written into a temporary directory and renamed into place, so a crash never
leaves a half-written ``step_<N>``. :func:`latest` returns the newest checkpoint whose
checksums verify and warns, naming the file, about any newer one that does not. No
pickle is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

log = logging.getLogger(__name__)

MODEL_FILE, OPTIM_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or does not fit the model."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    for pid, sc in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(sc)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(
    root: str | Path,
    step: int,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write ``<root>/step_<step>`` atomically and keep the newest ``keep`` checkpoints."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp_step_*"):  # left by a process killed while writing
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp_step_{step:08d}_", dir=root))
    try:
        save_model(module, str(tmp / MODEL_FILE))
        state: dict[str, Any] = {"step": int(step), "extra": extra or {}}
        files = [MODEL_FILE]
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIM_FILE))
            state["optimizer"] = meta
            files.append(OPTIM_FILE)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(tmp / "rng.safetensors"))
        files.append("rng.safetensors")
        state["sha256"] = {f: sha256(tmp / f) for f in files}
        with open(tmp / STATE_FILE, "w") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: str | Path) -> dict[str, Any]:
    """Read ``state.json`` and check every file's sha256; raise :class:`CheckpointError`."""
    path = Path(path)
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise CheckpointError(f"{state_file}: missing; not a checkpoint directory")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{state_file}: unreadable ({e}); the checkpoint is corrupt") from None
    for name, digest in state.get("sha256", {}).items():
        f = path / name
        if not f.is_file() or sha256(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (truncated or modified); the checkpoint is corrupt")
    return state


def latest(root: str | Path) -> Path | None:
    """Newest valid checkpoint under ``root`` (corrupt newer ones are skipped with a warning)."""
    root = Path(root)
    for path in sorted(root.glob("step_*"), reverse=True):
        try:
            verify(path)
            return path
        except CheckpointError as e:
            log.warning("skipping corrupt checkpoint: %s", e)
    return None


def load(
    path: str | Path,
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = False,
) -> dict[str, Any]:
    """Load weights (and optimiser, RNG) from a verified checkpoint; return its state."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; pass an existing checkpoint directory")
    state = verify(path)
    missing, unexpected = load_model(module, str(path / MODEL_FILE), strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path / MODEL_FILE}: does not fit the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}); check model/algo settings match the run"
        )
    if optimizer is not None and "optimizer" in state:
        optimizer.load_state_dict(_unflatten_optimizer(load_file(str(path / OPTIM_FILE)), state["optimizer"]))
    if restore_rng and (path / "rng.safetensors").is_file():
        rng = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
    return state


def resume(root: str | Path, module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
    """Load the newest valid checkpoint under ``root`` into ``module`` and ``optimizer``, RNG
    included (``resume=true`` of a run); its state, or None (logged) when there is none."""
    path = latest(root)
    if path is None:
        log.info("resume=true but no checkpoint in %s: starting from scratch", root)
        return None
    state = load(path, module, optimizer, restore_rng=True)
    log.info("resumed from %s (step %d)", path, int(state["step"]))
    return state

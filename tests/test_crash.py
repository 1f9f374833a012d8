"""Crash safety: a training process SIGKILLed at a random step resumes to the weights of an
uninterrupted run, skipping a checkpoint truncated on disk; checkpoints are pickle-free."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "train.steps=150", "train.batch_size=8",
        "train.warmup_steps=5", "train.log_every=1", "train.checkpoint_every=4", "train.keep_checkpoints=2",
        "eval.n_episodes=4", "eval.batch_size=4", "data.n_train=24", "data.n_validation=2", "progress=false",
        "device=cpu", "seed=5"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1"}


def _cmd(run: str, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "scripts/train.py"), *ARGS, *extra, f"hydra.run.dir={run}"]


def _logged_step(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    lines = [ln for ln in metrics.read_text().splitlines() if ln.strip()]
    try:
        return json.loads(lines[-1])["step"] if lines else 0
    except json.JSONDecodeError:  # a line being written
        return 0


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_weights(tmp_path):
    kill_at = random.SystemRandom().randint(9, 60)  # past two checkpoints, well before the end
    ref = subprocess.run(_cmd("ref"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    crash = tmp_path / "crash"
    with open(tmp_path / "crash.out", "w") as out:
        proc = subprocess.Popen(_cmd("crash"), cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while _logged_step(crash / "metrics.jsonl") < kill_at and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_at = _logged_step(crash / "metrics.jsonl")
    assert proc.returncode == -signal.SIGKILL, f"the run ended before the kill at step {kill_at}"
    assert not (crash / "results.json").exists() and killed_at < 150

    # a checkpoint truncated on disk: resume must skip it, say so naming the file, use the previous one
    ckpts = sorted((crash / "checkpoints").glob("step_*"))
    assert len(ckpts) == 2, ckpts
    bad = ckpts[-1] / "model.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    resumed = subprocess.run(_cmd("crash", "resume=true"), cwd=tmp_path, env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (crash / "train.log").read_text()
    assert f"{bad}: checksum mismatch" in log
    assert f"resumed from {ckpts[0]}" in log

    a = load_file(str(tmp_path / "ref/checkpoints/step_00000150/model.safetensors"))
    b = load_file(str(crash / "checkpoints/step_00000150/model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"killed at step {killed_at} (asked {kill_at}); max abs weight difference {diff}")
    assert diff == 0.0, f"killed at step {killed_at}: max abs weight difference {diff}"
    res_a, res_b = (json.loads((d / "results.json").read_text()) for d in (tmp_path / "ref", crash))
    assert res_a["eval"] == res_b["eval"]
    # safetensors and JSON only: nothing that needs pickle to load, no temporary directories left
    files = {p.name for p in (crash / "checkpoints").rglob("*") if p.is_file()}
    assert files == {"model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"}
    assert not list((crash / "checkpoints").glob(".tmp*"))


def test_library_never_unpickles():
    """Checkpoints and datasets are read with safetensors, JSON and parquet only."""
    banned = ("torch.load(", "pickle.load", "pickle.loads(", "import pickle", "dill.", "joblib.load")
    for path in [*(ROOT / "dialogue_rl").rglob("*.py"), *(ROOT / "envs").rglob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        text = path.read_text()
        for b in banned:
            assert b not in text, f"{path.relative_to(ROOT)} uses {b}"

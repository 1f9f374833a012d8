"""Data-parallel training: ``torchrun --nproc_per_node 2 scripts/train.py`` against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dialogue_rl.distributed import DistContext

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "train.steps=6", "train.batch_size=8",
        "train.warmup_steps=1", "train.log_every=1", "train.checkpoint_every=3", "eval.n_episodes=4",
        "eval.batch_size=4", "data.n_train=16", "data.n_validation=2", "progress=false", "device=cpu"]


def test_shards_cover_the_global_batch_in_order():
    for world in (1, 2, 3, 4):
        for n in (world, 7, 8, 33):
            parts = [list(range(n))[DistContext(rank=r, world_size=world).shard(n)] for r in range(world)]
            assert [i for p in parts for i in p] == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1"}


def _train(tmp_path: Path, run: str, args: list[str], nproc: int = 1) -> Path:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    out = subprocess.run([sys.executable, *launcher, str(ROOT / "scripts/train.py"), *TINY, *args,
                          f"hydra.run.dir={run}"], cwd=tmp_path, capture_output=True, text=True,
                         env=_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / run


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["bc", "ilql"])
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, algo):
    ddp = _train(tmp_path, "ddp", [f"algo={algo}"], nproc=2)
    # the same micro-batches: each of the 2 ranks takes half of the global batch of 8
    same = _train(tmp_path, "one_accum2", [f"algo={algo}", "train.grad_accum=2"])
    whole = _train(tmp_path, "one", [f"algo={algo}"])  # one micro-batch of 8
    a, b, c = _losses(ddp), _losses(same), _losses(whole)
    assert len(a) == len(b) == 6
    print(f"{algo}: max |loss 2 procs - loss 1 proc| = {max(abs(x - y) for x, y in zip(a, b)):.3g} (grad_accum=2), "
          f"{max(abs(x - y) for x, y in zip(a, c)):.3g} (grad_accum=1)")
    assert a == pytest.approx(b, abs=1e-5)
    assert a == pytest.approx(c, rel=2e-2)  # same data and weighting, other token-mean grouping
    wa = load_file(str(ddp / "checkpoints/step_00000006/model.safetensors"))
    wb = load_file(str(same / "checkpoints/step_00000006/model.safetensors"))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (ddp, same))
    assert ra.keys() == rb.keys() and ra["train"]["world_size"] == 2 and rb["train"]["world_size"] == 1
    assert ra["eval"]["mean_return"] == pytest.approx(rb["eval"]["mean_return"])
    # rank 0 wrote the checkpoints (no leftover temporary directories) and the tokenizer
    assert sorted(p.name for p in (ddp / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert (ddp / "tokenizer").is_dir()

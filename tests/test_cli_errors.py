"""Validated inputs: every user mistake is one line on stderr naming the file or key and the fix,
with exit status 2 and no traceback; a non-finite loss stops training with step, term and checkpoint.

The scripts run in-process (their ``@hydra.main`` function through ``dialogue_rl.cli.run_cli``,
as ``__main__`` does), so the cases cost milliseconds; one case also runs as a real process.
"""

import importlib.util
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dialogue_rl import train as train_mod
from dialogue_rl.algos import BC
from dialogue_rl.cli import EXIT_USER_ERROR, run_cli
from dialogue_rl.data import collate_tokens, sha256_file, tokenize_dataset
from dialogue_rl.data.generate import DataConfig, generate_and_save
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.train import NonFiniteLossError, OutputDirError, TrainConfig, check_output_dir, fit
from tests.toy_envs import StitchEnv, stitch_rows

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "train.steps=2", "train.batch_size=2",
        "train.warmup_steps=1", "eval.n_episodes=2", "eval.batch_size=2", "data.n_train=4",
        "data.n_validation=1", "progress=false"]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # Hydra finds conf/ relative to the file of a task function run as __main__ (as the CLI does)
    inspect.unwrap(mod.main).__module__ = "__main__"
    return mod


SCRIPTS = {name: _load_script(name) for name in ("train", "evaluate")}


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run a script in-process in ``tmp_path``; return (exit status, stderr)."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    monkeypatch.chdir(tmp_path)

    def call(script: str, *args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", [f"{script}.py", *args])
        try:
            rc = run_cli(SCRIPTS[script].main)
        except SystemExit as e:
            rc = e.code
        return rc, capsys.readouterr().err

    yield call
    root.handlers[:], root.level = saved  # Hydra configured logging onto captured streams


def one_line(rc: int, err: str, *needles: str) -> str:
    assert rc == EXIT_USER_ERROR, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    assert any(fix in lines[0] for fix in ("fix:", "regenerate", "generate it")), err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("bad, needles", [
    ("train.stepz=3", ["train.stepz", "unknown key", "TrainConfig", "'train.stepz=3'", "steps"]),
    ("train.steps=many", ["train.steps", "'many'", "Integer"]),
    ("algo.gama=0.9", ["algo.gama", "unknown key"]),
    ("algo=nope", ["conf/algo/nope.yaml", "bc, dpo, filtered_bc, ilql"]),
    ("env.id=dialogue_rl/Nope-v0", ["env.id", "Nope-v0", "unknown env id", "GuessWhich-v0"]),
    ("eval.n_episodes=0", ["eval.n_episodes=0", "must be >= 1"]),  # was a results.json of NaNs after training
    ("eval.seed_offset=5", ["eval.seed_offset=5", "must not overlap dataset seeds"]),  # was checked after training
])
def test_train_config_errors(cli, tmp_path, bad, needles):
    one_line(*cli("train", *TINY, bad, "hydra.run.dir=run"), *needles)
    assert not (tmp_path / "data").exists()  # failed before any work


def test_evaluate_unknown_env_and_missing_checkpoint(cli, tmp_path):
    one_line(*cli("evaluate", "policy=expert", "env.id=dialogue_rl/Nope-v0", "hydra.run.dir=a"), "env.id", "Nope-v0")
    line = one_line(*cli("evaluate", "checkpoint=runs/missing", "hydra.run.dir=b"), "checkpoint not found")
    assert str(tmp_path / "runs/missing") in line
    one_line(*cli("evaluate", "hydra.run.dir=c"), "nothing to evaluate", "checkpoint=")


def test_evaluate_run_dir_without_a_valid_checkpoint(cli, tmp_path):
    (tmp_path / "run/checkpoints/step_00000002").mkdir(parents=True)
    one_line(*cli("evaluate", "checkpoint=run", "hydra.run.dir=e"), "no valid checkpoint", str(tmp_path / "run"))


# ------------------------------------------------------------------ datasets
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    cfg = DataConfig(env_id="dialogue_rl/GuessWhich-v0", mixture={"expert": 1.0}, n_train=3, n_validation=1)
    return generate_and_save(cfg, tmp_path_factory.mktemp("ds") / "gw")


def _refresh_checksum(path: Path, split: str) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    meta["splits"][split]["sha256"] = sha256_file(path / f"{split}.parquet")
    meta["splits"][split]["num_rows"] = pq.read_metadata(path / f"{split}.parquet").num_rows
    (path / "metadata.json").write_text(json.dumps(meta))


def _missing_column(path: Path) -> None:
    pq.write_table(pq.read_table(path / "train.parquet").drop_columns(["success"]), path / "train.parquet")
    _refresh_checksum(path, "train")


def _wrong_type(path: Path) -> None:
    t = pq.read_table(path / "train.parquet")
    t = t.set_column(t.schema.get_field_index("seed"), "seed", pa.array([str(s) for s in t["seed"].to_pylist()]))
    pq.write_table(t, path / "train.parquet")
    _refresh_checksum(path, "train")


def _empty_split(path: Path) -> None:
    t = pq.read_table(path / "validation.parquet")
    pq.write_table(t.slice(0, 0), path / "validation.parquet")
    _refresh_checksum(path, "validation")


def _checksum_mismatch(path: Path) -> None:
    with open(path / "train.parquet", "ab") as f:
        f.write(b"\0")


@pytest.mark.parametrize("corrupt, file, needles", [
    (_missing_column, "train.parquet", ["column 'success' is missing"]),
    (_wrong_type, "train.parquet", ["'seed'", "string", "int64"]),
    (_empty_split, "validation.parquet", ["empty"]),
    (_checksum_mismatch, "train.parquet", ["sha256", "does not match", "metadata.json"]),
])
def test_malformed_dataset(cli, tmp_path, dataset, corrupt, file, needles):
    path = tmp_path / "bad"
    shutil.copytree(dataset, path)
    corrupt(path)
    one_line(*cli("train", *TINY, f"dataset_path={path}", "hydra.run.dir=run"), str(path / file), *needles)
    assert not (tmp_path / "run/checkpoints").exists()


def test_missing_dataset_dir(cli, tmp_path):
    one_line(*cli("train", *TINY, "dataset_path=nowhere", "hydra.run.dir=run"), str(tmp_path / "nowhere"))


# ------------------------------------------------------------------ output directory
def test_unwritable_output_dir_fails_before_any_work(cli, tmp_path):
    (tmp_path / "a_file").write_text("x")
    one_line(*cli("train", *TINY, "hydra.run.dir=a_file/run"), "a_file/run", "hydra.run.dir")
    assert not (tmp_path / "data").exists()


def test_full_disk_fails_before_training(cli, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(train_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    one_line(*cli("train", *TINY, "hydra.run.dir=run"), "run/checkpoints", "MiB free", "keep_checkpoints")
    assert not (tmp_path / "run/metrics.jsonl").exists()  # no step was taken


def test_check_output_dir(tmp_path):
    check_output_dir(tmp_path / "new/dir", need_bytes=1)
    assert (tmp_path / "new/dir").is_dir() and not list((tmp_path / "new/dir").iterdir())
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="not writable"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(OutputDirError, match="MiB free"):
        check_output_dir(tmp_path, need_bytes=1 << 62)


def test_a_real_process_exits_2_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    out = subprocess.run([sys.executable, str(ROOT / "scripts/train.py"), "env.id=nope", "hydra.run.dir=r"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    one_line(out.returncode, out.stderr, "train.py: error: env.id='nope'")


# ------------------------------------------------------------------ non-finite loss
class _NaNAt(BC):
    """BC whose loss turns NaN from step ``at`` (counted in calls to loss)."""

    def __init__(self, model, at: int) -> None:
        super().__init__(model)
        self.at, self.calls = at, 0

    def loss(self, batch):
        loss, m = super().loss(batch)
        self.calls += 1
        if self.calls > self.at:
            loss = loss * float("nan")
            m = {**m, "loss": float("nan")}
        return loss, m


def test_non_finite_loss_names_step_term_and_last_checkpoint(tmp_path):
    torch.manual_seed(0)
    tok = build_word_tokenizer(StitchEnv.vocabulary())
    data = tokenize_dataset(stitch_rows(20), make_codec(tok))
    learner = _NaNAt(build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64), tok), at=7)
    cfg = TrainConfig(steps=20, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3)
    with pytest.raises(NonFiniteLossError) as e:
        fit(learner, data, lambda ex: collate_tokens(ex, tok.pad_token_id), cfg, torch.device("cpu"),
            checkpoint_dir=tmp_path, progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert "step 7" in msg and "term: loss" in msg and str(tmp_path / "step_00000006") in msg and "fix" in msg

"""The preference learners through scripts/train.py: a reward model run and DPO from a BC run."""

import json

import pytest

from tests.test_pipeline import ROOT, TINY, _cli


def test_reward_model_run_reports_held_out_pair_accuracy(tmp_path):
    over = ["algo=reward_model", "data.n_train=40", "data.n_validation=12", "algo.group_by=none"]
    out = _cli([str(ROOT / "scripts/train.py"), *TINY, *over, "hydra.run.dir=rm"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "rm/results.json").read_text())
    assert res["algo"] == "reward_model" and 0.0 <= res["eval"]["pair_accuracy"] <= 1.0
    assert res["eval"]["n_pairs"] > 0 and res["train"]["n_pairs"] > 0


@pytest.mark.slow
def test_dpo_starts_from_a_bc_run_and_reloads(tmp_path):
    bc = _cli([str(ROOT / "scripts/train.py"), *TINY, "hydra.run.dir=bc"], tmp_path)
    assert bc.returncode == 0, bc.stderr[-3000:]
    dpo = _cli([str(ROOT / "scripts/train.py"), *TINY, "algo=dpo", "init_from=bc", "hydra.run.dir=dpo"], tmp_path)
    assert dpo.returncode == 0, dpo.stderr[-3000:]
    assert "initialised the LM from" in dpo.stdout + dpo.stderr
    res = json.loads((tmp_path / "dpo/results.json").read_text())
    ev = _cli([str(ROOT / "scripts/evaluate.py"), "checkpoint=dpo", "eval.n_episodes=4", "progress=false",
               "hydra.run.dir=ev"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads((tmp_path / "ev/results.json").read_text())
    assert res["algo"] == "dpo" and again["eval"]["mean_return"] == pytest.approx(res["eval"]["mean_return"])

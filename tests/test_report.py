"""Benchmark report: loading, errors naming the file, seeded CIs, tables, figure, script."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dialogue_rl.evaluation import bootstrap_ci
from dialogue_rl.report import (
    ReportError,
    aggregate,
    budget,
    detail_table,
    draw_figure,
    load_curves,
    load_results,
    render_markdown,
    score_table,
)

GW, MZ = "dialogue_rl/GuessWhich-v0", "dialogue_rl/MazeFO-v0"


def _result(env_id, algo, seed, score, success=0.5, ret=1.0, tps=1000.0, wall=10.0, steps=100, ci=None):
    return {
        "env_id": env_id, "algo": algo, "seed": seed,
        "config": {"model": {"name": "tiny", "pretrained": None}, "train": {"steps": steps}},
        "eval": {"mean_return": ret, "ci95": [ret, ret], "normalized_score": score,
                 "normalized_ci95": ci or [score, score], "success_rate": success, "mean_length": 3.0,
                 "n_episodes": 50},
        "train": {"steps": steps, "tokens_per_s": tps, "wall_s": wall, "total_wall_s": wall + 5.0},
    }


def _write(root: Path, sub: str, data, metrics=None) -> Path:
    d = root / sub
    d.mkdir(parents=True)
    p = d / "results.json"
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    if metrics is not None:
        (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return p


def _sweep(root: Path) -> Path:
    """GuessWhich: bc 3 seeds, mc 2 seeds (one missing); MazeFO: bc 3 seeds; one scripted row."""
    for s, score in enumerate([10.0, 20.0, 30.0]):
        curve = [{"step": 50, "eval/normalized_score": score / 2},
                 {"step": 100, "eval/normalized_score": score},
                 {"step": 100, "train/bc_loss": 1.0}]
        _write(root, f"guess_which_bc_s{s}",
               _result(GW, "bc", s, score, success=0.1 * (s + 1), tps=900.0 + s), metrics=curve)
    for s, score in [(0, 50.0), (2, 70.0)]:
        _write(root, f"guess_which_mc_s{s}", _result(GW, "mc", s, score, success=0.5, tps=800.0))
    for s in range(3):
        _write(root, f"maze_fo_bc_s{s}", _result(MZ, "bc", s, 40.0, success=0.4, ret=-2.0, tps=1200.0),
               metrics=[{"step": 10, "train/bc_loss": 2.0 - s}, {"step": 20, "train/bc_loss": 1.0}])
    _write(root / "reference", "guess_which_scripted-expert",
           _result(GW, "scripted:expert", 0, 100.0, success=1.0, ret=3.0, tps=0.0, wall=1.0, steps=0,
                   ci=[95.0, 105.0]))
    return root


# ------------------------------------------------------------------ bootstrap, by hand
def test_bootstrap_of_one_value_is_the_value():
    assert bootstrap_ci([42.0]) == (42.0, 42.0)


def test_bootstrap_of_two_values_matches_the_enumerated_resamples():
    """Two values a < b: a resample mean is a (prob 1/4), (a+b)/2 (1/2) or b (1/4).

    The 2.5% and 97.5% percentiles of 2000 such means are a and b whatever the draws
    (each extreme appears ~500 times, far more than the 50 in a tail), so the CI is
    exactly [a, b]; the bootstrap is seeded, so it is also reproducible.
    """
    a, b = 10.0, 30.0
    assert bootstrap_ci([a, b], seed=0) == (a, b)
    rng = np.random.default_rng(0)  # the same draws by hand: how often each mean occurs
    idx = rng.integers(0, 2, size=(2000, 2))
    means = np.array([a, b])[idx].mean(axis=1)
    counts = {m: int((means == m).sum()) for m in (a, (a + b) / 2, b)}
    assert sum(counts.values()) == 2000 and min(counts[a], counts[b]) > 50
    assert bootstrap_ci([a, b, 20.0], seed=3) == bootstrap_ci([a, b, 20.0], seed=3)


# ------------------------------------------------------------------ loading and errors
def test_load_results_recursive_sorted(tmp_path):
    runs = load_results(_sweep(tmp_path))
    assert len(runs) == 9
    assert {r.algo for r in runs} == {"bc", "mc", "scripted:expert"}
    assert runs[0].model == "tiny" and runs[0].wall_s == 15.0  # total_wall_s preferred


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    (json.dumps([1, 2]), "expected a JSON object"),
    (json.dumps({k: v for k, v in _result(GW, "bc", 0, 1.0).items() if k != "eval"}), "missing key 'eval"),
    (json.dumps({**_result(GW, "bc", 0, 1.0), "seed": "zero"}), "'seed' is not a number"),
    (json.dumps({**_result(GW, "bc", 0, 1.0), "eval": {**_result(GW, "bc", 0, 1.0)["eval"],
                                                       "normalized_score": None}}),
     "'eval.normalized_score' is not a number"),
])
def test_malformed_results_name_the_file(tmp_path, content, problem):
    _sweep(tmp_path)
    bad = _write(tmp_path, "guess_which_ilql_s0", content)
    with pytest.raises(ReportError) as e:
        load_results(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and problem in msg and "\n" not in msg


def test_empty_directory_and_duplicates_fail(tmp_path):
    with pytest.raises(ReportError, match="no results.json"):
        load_results(tmp_path)
    _write(tmp_path, "a", _result(GW, "bc", 0, 1.0))
    _write(tmp_path, "b", _result(GW, "bc", 0, 2.0))
    with pytest.raises(ReportError, match="duplicate run"):
        aggregate(load_results(tmp_path))


# ------------------------------------------------------------------ aggregation and tables
def test_aggregate_means_seeded_ci_and_missing_seed(tmp_path):
    cells = aggregate(load_results(_sweep(tmp_path)))
    assert [(c.env_id, c.algo) for c in cells] == [
        (GW, "bc"), (GW, "mc"), (GW, "scripted:expert"), (MZ, "bc")]
    bc, mc, ref, maze = cells
    assert bc.score == pytest.approx(20.0) and bc.seeds == (0, 1, 2)
    assert bc.ci95 == bootstrap_ci([10.0, 20.0, 30.0], n_boot=2000, seed=0)
    assert bc.success_rate == pytest.approx(0.2) and bc.tokens_per_s == pytest.approx(901.0)
    assert mc.seeds == (0, 2) and mc.ci95 == (50.0, 70.0)  # two values: the enumerable case above
    assert ref.ci95 == (95.0, 105.0) and ref.ci_over == "episodes"
    assert maze.ci95 == (40.0, 40.0)


EXPECTED_SCORES = """\
| env | bc | mc | scripted:expert |
|---|---|---|---|
| GuessWhich-v0 | 20.0 [{lo:.1f}, {hi:.1f}] | 60.0 [50.0, 70.0] (2/3 seeds) | 100.0 [95.0, 105.0] |
| MazeFO-v0 | 40.0 [40.0, 40.0] | 0/3 seeds | — |"""

EXPECTED_DETAILS = """\
| env | learner | normalized score | 95% CI | success rate | return | tokens/s | seeds |
|---|---|---|---|---|---|---|---|
| GuessWhich-v0 | bc | 20.0 | [{lo:.1f}, {hi:.1f}] | 0.20 | 1.000 | 901 | 3 |
| GuessWhich-v0 | mc | 60.0 | [50.0, 70.0] | 0.50 | 1.000 | 800 | 2/3 seeds |
| GuessWhich-v0 | scripted:expert | 100.0 | [95.0, 105.0] (episodes) | 1.00 | 3.000 | - | - |
| MazeFO-v0 | bc | 40.0 | [40.0, 40.0] | 0.40 | -2.000 | 1200 | 3 |"""


def test_tables_exactly(tmp_path):
    cells = aggregate(load_results(_sweep(tmp_path)))
    lo, hi = bootstrap_ci([10.0, 20.0, 30.0])
    assert score_table(cells, 3) == EXPECTED_SCORES.format(lo=lo, hi=hi)
    assert detail_table(cells, 3) == EXPECTED_DETAILS.format(lo=lo, hi=hi)
    assert "2/3 seeds" not in detail_table(cells, 2)


def test_markdown_header(tmp_path):
    root = _sweep(tmp_path)
    for p in root.rglob("results.json"):  # the runs end at t=1000 s (wall 15 s each) ...
        os.utime(p, (1000.0, 1000.0))
    os.utime(root / "maze_fo_bc_s2" / "results.json", (1600.0, 1600.0))  # ... but one at 1600 s
    os.utime(root / "reference" / "guess_which_scripted-expert" / "results.json", (9000.0, 9000.0))  # not trained
    runs = load_results(root)
    b = budget(runs)
    assert b.elapsed_s == pytest.approx(1600.0 - (1000.0 - 15.0))
    assert b.steps == (100,) and b.models == ("tiny",) and b.eval_episodes == (50,)
    assert b.wall_s == pytest.approx(8 * 15.0 + 6.0)
    md = render_markdown(aggregate(runs), runs, commands=["python scripts/train.py -m +experiment=x"],
                         commit="abc1234", figure="results.png")
    assert md.startswith("# Benchmark results\n\n- command: `python scripts/train.py -m +experiment=x`\n")
    assert "- commit: `abc1234`" in md
    assert ("train.steps 100; model tiny; eval.n_episodes 50; 9 runs; "
            "wall time 2.1 min (summed over runs), 10.2 min elapsed from the first training run's "
            "start to the last one's end") in md
    assert "![benchmark figure](results.png)" in md


# ------------------------------------------------------------------ curves, figure, script
def test_curves_prefer_eval_scores_and_average_seeds(tmp_path):
    curves = {(c.env_id, c.algo): c for c in load_curves(load_results(_sweep(tmp_path)))}
    gw = curves[(GW, "bc")]
    assert gw.metric == "eval/normalized_score" and gw.steps == (50, 100) and gw.values == (10.0, 20.0)
    mz = curves[(MZ, "bc")]
    assert mz.metric == "train/bc_loss" and mz.values == (1.0, 1.0) and mz.n_seeds == 3
    assert (GW, "scripted:expert") not in curves and (GW, "mc") not in curves


def test_figure_is_a_png(tmp_path):
    runs = load_results(_sweep(tmp_path / "sweep"))
    out = draw_figure(aggregate(runs), tmp_path / "fig.png", load_curves(runs))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_script_writes_report_and_fails_clearly(tmp_path, capsys):
    import runpy

    main = runpy.run_path(str(Path(__file__).parents[1] / "scripts" / "report.py"))["main"]
    sweep = _sweep(tmp_path / "sweep")
    out, fig = tmp_path / "docs" / "results.md", tmp_path / "docs" / "results.png"
    assert main([str(sweep), "--out", str(out), "--figure", str(fig)]) == 0
    text = out.read_text()
    assert "(2/3 seeds)" in text and "![benchmark figure](results.png)" in text
    assert f"python scripts/report.py {sweep}" in text and fig.is_file()
    assert main([str(sweep), "--out", str(out), "--no-figure", "--commit", "0123abc"]) == 0
    assert "- commit: `0123abc`" in out.read_text()
    bad = _write(sweep, "maze_fo_mc_s0", "{")
    assert main([str(sweep), "--no-figure"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {bad}: not valid JSON")


# ------------------------------------------------------------------ benchmark presets and resumable sweeps
ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("preset", ["benchmark_smoke", "benchmark_small", "benchmark_full"])
def test_benchmark_presets_compose(preset):
    from hydra import compose, initialize_config_dir

    from dialogue_rl.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"+experiment={preset}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        algos = [compose("train", overrides=[f"+experiment={preset}", f"algo={a}"]).algo
                 for a in params.algo.split(",")]
    names, labels = {a.name for a in algos}, {a.label for a in algos}
    assert {"bc", "filtered_bc", "ilql", "mc", "utterance_q"} <= names  # every offline learner
    assert len(labels) == len(algos)  # one run directory and one report row each
    if preset == "benchmark_full":  # the online and preference rows (too slow for the CPU presets)
        assert {"reward_model", "ppo", "ppo_learned", "dpo", "utterance_q_fbc"} <= labels
    assert cfg.skip_finished and cfg.resume
    assert params.env and params.seed is not None
    assert cfg.hydra.sweep.dir == f"multirun/{preset}"  # fixed, so a rerun resumes the same sweep
    assert cfg.train.steps > 0 and cfg.eval.n_episodes > 0


def _train_script():
    import runpy

    return runpy.run_path(str(ROOT / "scripts" / "train.py"))


def test_finished_results_reads_or_refuses(tmp_path):
    from omegaconf import OmegaConf

    finished_results = _train_script()["finished_results"]
    cfg = OmegaConf.create({"seed": 0, "train": {"steps": 5}, "skip_finished": True, "progress": False})
    assert finished_results(tmp_path, cfg) is None  # nothing there
    (tmp_path / "results.json").write_text("{")  # unreadable: run again
    assert finished_results(tmp_path, cfg) is None
    res = _result(GW, "bc", 0, 1.0)
    res["config"] = {"seed": 0, "train": {"steps": 5}, "skip_finished": False, "progress": True}
    (tmp_path / "results.json").write_text(json.dumps(res))
    assert finished_results(tmp_path, cfg)["eval"]["normalized_score"] == 1.0


def test_train_cli_skips_a_finished_run(tmp_path):
    import os
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    fake = json.dumps(_result(GW, "mc", 0, 12.5))  # its config differs: skipped anyway, with a warning
    (run / "results.json").write_text(fake)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    cmd = [sys.executable, str(ROOT / "scripts/train.py"), "algo=mc", "skip_finished=true",
           "hydra.run.dir=run"]
    out = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "skipping a finished run" in log and "finished with a different config" in log
    assert (run / "results.json").read_text() == fake and not (run / "checkpoints").exists()
    assert not (tmp_path / "data").exists()  # no work done


def test_reward_model_runs_are_not_table_rows(tmp_path):
    _write(tmp_path, "guess_which_bc_s0", _result(GW, "bc", 0, 50.0))
    _write(tmp_path, "guess_which_reward_model_s0",
           {"env_id": GW, "algo": "reward_model", "seed": 0, "eval": {"pair_accuracy": 0.9, "n_pairs": 10},
            "train": {"steps": 5, "wall_s": 1.0}})
    assert [r.algo for r in load_results(tmp_path)] == ["bc"]


def test_ppo_config_brings_its_own_train_and_eval_settings():
    from hydra import compose, initialize_config_dir

    from dialogue_rl.cli import format_error
    from dialogue_rl.config import apply_algo_settings, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        bc = compose("train", overrides=["algo=bc", "train.steps=200"])
        ppo = compose("train", overrides=["algo=ppo", "train.steps=200"])
        learned = compose("train", overrides=["algo=ppo_learned"])
        bad = compose("train", overrides=["algo=ppo", "+algo.train.stepz=3"])
    assert apply_algo_settings(bc) == bc and bc.algo.label == "bc"
    merged = apply_algo_settings(ppo)
    assert (merged.train.steps, merged.train.lr, merged.train.warmup_steps) == (30, 3e-5, 0)  # PPO iterations
    assert merged.eval.greedy is False and merged.train.batch_size == ppo.train.batch_size
    assert (learned.algo.name, learned.algo.label, learned.algo.reward_model) == ("ppo", "ppo_learned", "sweep")
    assert learned.algo.seed == learned.seed  # rollouts follow the run seed
    with pytest.raises(Exception) as e:
        apply_algo_settings(bad)
    assert format_error(e.value).startswith("config key 'train.stepz': unknown key of TrainConfig")

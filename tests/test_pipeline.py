"""End-to-end checks of the learning stack: tokenizer coverage, resume, the CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

import envs
from dialogue_rl.algos import BC
from dialogue_rl.data import collate_tokens, tokenize_dataset
from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
from dialogue_rl.models.tokenizer import codec as make_codec
from dialogue_rl.train import TrainConfig, fit
from envs.core import play_episode
from tests.toy_envs import StitchEnv, stitch_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env_id", [e for e in envs.env_ids() if "TextWorld" not in e])
def test_env_vocabulary_tokenizer_round_trips_every_utterance(env_id):
    env = gym.make(env_id).unwrapped
    tok = build_word_tokenizer(env.vocabulary())
    c = make_codec(tok)
    for name, factory in env.policies().items():
        for seed in range(5):
            for t in play_episode(env, factory, seed).turns:
                ids = c.encode(t.text)
                assert tok.unk_token_id not in ids, (name, t.text)
                assert c.decode(ids) == t.text, (name, t.text)


class _Kill(Exception):
    pass


def _resume_run(tmp_path: Path, kill_at: int | None, group: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    tok = build_word_tokenizer(StitchEnv.vocabulary())
    data = tokenize_dataset(stitch_rows(40), make_codec(tok))
    learner = BC(build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64), tok))
    cfg = TrainConfig(steps=12, batch_size=8, lr=1e-2, warmup_steps=3, log_every=1, checkpoint_every=5,
                      group_by_length=group)

    def log_fn(metrics, step):
        if kill_at is not None and step == kill_at:
            raise _Kill

    collate = lambda ex: collate_tokens(ex, tok.pad_token_id)  # noqa: E731
    kw = dict(device=torch.device("cpu"), seed=3, checkpoint_dir=tmp_path, progress=False)
    if kill_at is not None:
        with pytest.raises(_Kill):
            fit(learner, data, collate, cfg, log_fn=log_fn, **kw)
        torch.manual_seed(123)  # a fresh process: different init, restored from the checkpoint
        learner = BC(build_model(ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64), tok))
        stats = fit(learner, data, collate, cfg, resume=True, **kw)
        assert stats["start_step"] == 5
    else:
        fit(learner, data, collate, cfg, **kw)
    return {k: v.detach().clone() for k, v in learner.state_dict().items()}


@pytest.mark.parametrize("group", [0, 4])
def test_killed_run_resumes_to_identical_weights(tmp_path, group):
    full = _resume_run(tmp_path / "a", None, group)
    resumed = _resume_run(tmp_path / "b", kill_at=7, group=group)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def _cli(args, tmp_path, env=None):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, env=e, timeout=600)


TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "train.steps=4", "train.batch_size=4",
        "train.warmup_steps=1", "train.checkpoint_every=2", "eval.n_episodes=4", "eval.batch_size=4",
        "data.n_train=12", "data.n_validation=2", "progress=false"]


def test_train_cli_writes_results_and_evaluate_reloads(tmp_path):
    out = _cli([str(ROOT / "scripts/train.py"), *TINY, "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "run/results.json").read_text())
    assert res["env_id"] == "dialogue_rl/GuessWhich-v0" and res["algo"] == "ilql"  # the defaults: ILQL on GuessWhich
    assert res["config"]["algo"]["tau"] == 0.5
    for k in ("mean_return", "ci95", "normalized_score", "success_rate", "n_episodes"):
        assert k in res["eval"]
    for k in ("steps", "tokens_per_s", "wall_s"):
        assert k in res["train"]
    assert res["eval"]["n_episodes"] == 4 and (tmp_path / "run/samples.jsonl").exists()
    ev = _cli([str(ROOT / "scripts/evaluate.py"), "checkpoint=run", "eval.n_episodes=4", "progress=false",
               "hydra.run.dir=ev"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    again = json.loads((tmp_path / "ev/results.json").read_text())
    assert again["eval"]["mean_return"] == pytest.approx(res["eval"]["mean_return"])


def test_evaluate_uses_the_checkpoints_env_unless_the_command_line_sets_one(tmp_path):
    from dialogue_rl.experiment import env_set_on_command_line

    tiny = [a for a in TINY if not a.startswith("data.n_")] + ["data.n_train=8", "data.n_validation=2"]
    out = _cli([str(ROOT / "scripts/train.py"), *tiny, "algo=bc", "env=maze_fo", "+env.kwargs.max_steps=3",
                "+data.env_kwargs.max_steps=3", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    for extra, env_id, max_len in (([], "dialogue_rl/MazeFO-v0", 3), (["env=guess_which"], "dialogue_rl/GuessWhich-v0", 5)):
        ev = _cli([str(ROOT / "scripts/evaluate.py"), "checkpoint=run", "eval.n_episodes=4", "progress=false",
                   *extra, f"hydra.run.dir=ev{len(extra)}"], tmp_path)
        assert ev.returncode == 0, ev.stderr[-3000:]
        res = json.loads((tmp_path / f"ev{len(extra)}/results.json").read_text())
        # the saved 3-turn maze (kwargs included), not the command line's default GuessWhich
        assert res["env_id"] == env_id and res["eval"]["mean_length"] <= max_len
    assert env_set_on_command_line(["env=maze_fo"]) and env_set_on_command_line(["+env.kwargs.max_steps=3"])
    assert not env_set_on_command_line(["eval.n_episodes=4", "checkpoint=run", "environment=x"])


# config errors of the CLI (one line, exit status 2): tests/test_cli_errors.py


def test_utterance_q_run_reports_its_candidate_sampling_cost(tmp_path):
    """A per-utterance Q run writes what its BC candidates cost into results.json: count,
    candidates/s over sampling time, and the share of the training wall time; evaluate.py
    takes acting overrides of its learner."""
    bc = _cli([str(ROOT / "scripts/train.py"), *TINY, "algo=bc", "hydra.run.dir=bc"], tmp_path)
    assert bc.returncode == 0, bc.stderr[-3000:]
    out = _cli([str(ROOT / "scripts/train.py"), *TINY, "algo=utterance_q", "init_from=bc", "algo.n_candidates=2",
                "algo.max_utterance_tokens=4", "hydra.run.dir=run"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    train = json.loads((tmp_path / "run/results.json").read_text())["train"]
    rep = train["candidate_sampling"]
    assert rep["candidates_sampled"] > 0 and rep["candidates_per_s"] > 0
    assert 0 < rep["sampling_fraction"] < 1
    assert rep["sampling_s"] == pytest.approx(rep["sampling_fraction"] * train["wall_s"])
    # evaluate.py: algo.* overrides reach the loaded learner (an acting knob), and a key the
    # checkpoint's learner does not have is one clear line, exit status 2
    ev = _cli([str(ROOT / "scripts/evaluate.py"), "checkpoint=run", "algo=utterance_q", "algo.act_candidates=3",
               "eval.n_episodes=2", "progress=false", "hydra.run.dir=ev"], tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    res = json.loads((tmp_path / "ev/results.json").read_text())
    assert res["config"]["algo"]["act_candidates"] == 3 and res["config"]["algo"]["n_candidates"] == 2
    from dialogue_rl.experiment import load_saved_agent
    assert load_saved_agent("run", tmp_path, "cpu", {"act_candidates": 3}).learner.act_candidates == 3
    bad = _cli([str(ROOT / "scripts/evaluate.py"), "checkpoint=bc", "algo=utterance_q", "algo.act_candidates=3",
                "eval.n_episodes=2", "progress=false", "hydra.run.dir=ev_bad"], tmp_path)
    assert bad.returncode == 2 and "algo.act_candidates: not a key of the checkpoint's algo 'bc'" in bad.stderr


def test_init_from_a_bc_checkpoint_loads_tied_weights(tmp_path):
    from dialogue_rl import checkpoint as ckpt
    from dialogue_rl.experiment import _init_from

    tok = build_word_tokenizer(StitchEnv.vocabulary())
    cfg = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=64)
    torch.manual_seed(0)
    bc = BC(build_model(cfg, tok))
    path = ckpt.save(tmp_path, 1, bc)
    torch.manual_seed(1)
    fresh = build_model(cfg, tok)
    _init_from(fresh, tmp_path)
    for (k, a), (_, b) in zip(bc.model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), k
    assert fresh.lm_head.weight.data_ptr() == fresh.transformer.wte.weight.data_ptr()
    assert path.name == "step_00000001"


def test_eval_seed_offset_may_not_reach_dataset_seeds():
    from omegaconf import OmegaConf

    from dialogue_rl.experiment import ConfigError, run_eval

    cfg = OmegaConf.create({"env": {"id": "dialogue_rl/MazeFO-v0", "kwargs": {}},
                            "eval": {"n_episodes": 1, "batch_size": 1, "seed_offset": 5}, "progress": False})
    with pytest.raises(ConfigError, match="eval.seed_offset=5"):
        run_eval(None, cfg)

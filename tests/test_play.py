"""scripts/play.py: a person plays through stdin/stdout, or watches a scripted or trained agent."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import matplotlib.image as mpimg
import numpy as np
import pytest

import envs
from envs.core import AGENT, play_episode, render_transcript
from envs.maze import maze_tables, move_text

ROOT = Path(__file__).resolve().parents[1]
PLAY = ROOT / "scripts" / "play.py"


def run_play(args: list[str], stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(PLAY), *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def transcript_of(stdout: str) -> str:
    """The transcript lines play.py printed (``agent: ...`` / ``env: ...``)."""
    return "\n".join(line for line in stdout.splitlines() if line.startswith(("agent: ", "env: ")))


def final_return(stdout: str) -> float:
    (m,) = re.findall(r"^final return: (\S+)$", stdout, flags=re.MULTILINE)
    return float(m)


def success(stdout: str) -> bool:
    (m,) = re.findall(r"^success: (yes|no)$", stdout, flags=re.MULTILINE)
    return m == "yes"


def replay(env_id: str, seed: int, actions: list[str], **kwargs):
    """The env's own episode for a seed and actions: ``(env, last info, return, done)``."""
    env = gym.make(env_id, **kwargs).unwrapped
    _, info = env.reset(seed=seed)
    ret, done = 0.0, False
    for a in actions:
        assert not done
        _, r, term, trunc, info = env.step(a)
        ret += r
        done = term or trunc
    return env, info, ret, done


def test_play_guess_which_through_stdin():
    questions = ["is there a red object?", "how many objects are there?", "hello there",
                 "what shape is the big object?", "where is the cube?"]
    stdin = "help\n" + questions[0] + "\n\n" + "history\n" + "\n".join(questions[1:]) + "\n"
    out = run_play(["env=guess_which", "seed=7"], stdin)
    assert out.returncode == 0, out.stderr[-2000:]
    _, info, ret, done = replay("dialogue_rl/GuessWhich-v0", 7, questions)
    assert done
    assert "how many cubes are there?" in out.stdout  # `help` printed the env's question forms
    transcript = transcript_of(out.stdout)
    history_dump = render_transcript(info["turns"][:3])  # `history` after the first question
    assert transcript == history_dump + "\n" + render_transcript(info["turns"])
    assert final_return(out.stdout) == pytest.approx(ret, abs=1e-5)
    assert success(out.stdout) == info["success"]
    assert "pool ranked by belief" in out.stdout


def test_play_maze_with_optimal_moves():
    env = gym.make("dialogue_rl/MazeFO-v0").unwrapped
    seed = 4
    env.reset(seed=seed)
    t = maze_tables(env.layout)
    cell, moves = t.index[env.position], []
    while cell != t.goal:
        d = t.optimal_moves(cell)[0]
        moves.append(move_text(d))
        cell = int(t.nxt[cell, d])
    out = run_play(["env=maze_fo", f"seed={seed}"], "\n".join(moves) + "\n")
    assert out.returncode == 0, out.stderr[-2000:]
    _, info, ret, done = replay("dialogue_rl/MazeFO-v0", seed, moves)
    assert done and info["success"]
    assert transcript_of(out.stdout) == render_transcript(info["turns"])
    assert final_return(out.stdout) == pytest.approx(ret) == -(len(moves) - 1)
    assert success(out.stdout)
    assert "(terminated)" in out.stdout


def test_play_quit_and_end_of_input_stop_early():
    out = run_play(["env=maze_fo", "seed=1", "env.kwargs.step_reward=-2"], "move up\nquit\nmove down\n")
    assert out.returncode == 0, out.stderr[-2000:]
    _, info, ret, _ = replay("dialogue_rl/MazeFO-v0", 1, ["move up"], step_reward=-2.0)
    assert transcript_of(out.stdout) == render_transcript(info["turns"])
    assert final_return(out.stdout) == ret == -2.0
    assert "episode not finished" in out.stdout and not success(out.stdout)
    eof = run_play(["env=wordle", "seed=1"], "crane\n")  # input ends: the game stops
    assert eof.returncode == 0 and "episode not finished" in eof.stdout


def test_play_scripted_policy_saves_the_ranked_pool(tmp_path):
    png = tmp_path / "pool.png"
    out = run_play(["env=guess_which", "seed=3", "agent=scripted:expert", f"save_png={png}"])
    assert out.returncode == 0, out.stderr[-2000:]
    env = gym.make("dialogue_rl/GuessWhich-v0").unwrapped
    ep = play_episode(env, env.policies()["expert"], seed=3)
    assert transcript_of(out.stdout) == render_transcript(ep.turns)
    assert final_return(out.stdout) == pytest.approx(ep.ret, abs=1e-5)
    assert success(out.stdout) == ep.success
    img = np.round(mpimg.imread(png)[..., :3] * 255).astype(np.uint8)
    assert np.array_equal(img, env.render_pool())


def test_play_rejects_bad_arguments():
    out = run_play(["env=nope"])
    assert out.returncode == 2 and "guess_which" in out.stderr and "maze_fo" in out.stderr
    out = run_play(["env=maze_fo", "agent=scripted:nope"])
    assert out.returncode == 2 and "expert" in out.stderr
    out = run_play(["colour=red"])
    assert out.returncode == 2 and "unknown key" in out.stderr


def test_help_text_for_every_env():
    from envs.guess_which import GuessWhichEnv
    from envs.maze import MazeEnv

    for env_id in envs.env_ids():
        cls = type(gym.make(env_id).unwrapped) if "TextWorld" not in env_id else None
        if cls is not None:
            assert isinstance(cls.help_text(), str) and cls.help_text().strip(), env_id
    assert "how many" in GuessWhichEnv.help_text() and "move left" in MazeEnv.help_text()


def test_watch_a_trained_checkpoint(tmp_path, monkeypatch):
    """agent=<run dir> loads the model like scripts/evaluate.py and plays its env."""
    from omegaconf import OmegaConf

    from dialogue_rl import checkpoint as ckpt
    from dialogue_rl.algos import BC
    from dialogue_rl.models import ModelConfig, build_model, build_word_tokenizer
    from envs.maze import MazeFOEnv

    tok = build_word_tokenizer(MazeFOEnv.vocabulary())
    model_cfg = ModelConfig("t", n_layer=1, n_head=2, n_embd=16, n_positions=512)
    learner = BC(build_model(model_cfg, tok))
    run = tmp_path / "run"
    tok.save_pretrained(str(run / "tokenizer"))
    config = {
        "env": {"id": "dialogue_rl/MazeFO-v0", "kwargs": {"max_steps": 3}, "max_utterance_tokens": 4},
        "model": OmegaConf.to_container(OmegaConf.structured(model_cfg)), "algo": {"name": "bc"},
        "eval": {"greedy": True, "temperature": 1.0, "top_k": 0}, "seed": 0,
    }
    ckpt.save(run / "checkpoints", 1, learner, extra={"config": config})
    spec = importlib.util.spec_from_file_location("play_script", PLAY)
    play = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, play)
    spec.loader.exec_module(play)
    out = io.StringIO()
    assert play.main([f"agent={run}", "seed=2", "device=cpu"], stdin=io.StringIO(""), out=out) == 0
    text = out.getvalue()
    assert "dialogue_rl/MazeFO-v0, seed 2: watching" in text and "step 1" in text
    lines = transcript_of(text).splitlines()
    assert sum(1 for x in lines if x.startswith(f"{AGENT}: ")) == 3  # the checkpoint's env kwargs
    assert "final return:" in text

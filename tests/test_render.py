"""Pictures and dashboards: scene drawing (envs/render.py), GuessWhich's rgb_array frames,
evaluation replays to pictures, the run logger's local figures, the sweep progress bar."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import matplotlib.image as mpimg
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from omegaconf import OmegaConf

import envs  # noqa: F401  (registers the ids)
from envs import render as draw
from envs.core import play_episode
from envs.guess_which import Caption, EpisodeSetup, GuessWhichEnv, SceneObject, encode_scene, gid

ENV_ID = "dialogue_rl/GuessWhich-v0"


def obj(text: str) -> SceneObject:
    size, color, material, shape, position = text.split()
    return SceneObject(color=color, shape=shape, size=size, material=material, position=position)


SCENE = [obj("big red metal cube left"), obj("small blue rubber sphere middle"),
         obj("big yellow rubber cylinder right")]


def centre_pixel(frame: np.ndarray, cx: float, cy: float, dy: int = 0, dx: int = 0) -> tuple[int, ...]:
    return tuple(int(v) for v in frame[int(cy) + dy, int(cx) + dx])


@pytest.mark.parametrize("size", [draw.THUMB, (346, 438)])
def test_scene_colours_at_object_centres_shapes_sizes_positions(size):
    h, w = size
    frame = draw.draw_scene(SCENE, h, w)
    assert frame.shape == (h, w, 3) and frame.dtype == np.uint8
    layout = draw.scene_layout(SCENE, h, w)
    for o, (cx, cy, _) in zip(SCENE, layout):
        assert centre_pixel(frame, cx, cy) == draw.COLOR_RGB[o.color], o
        # position = horizontal third
        assert draw.POSITION_ZONE[o.position] == int(cx // (w / 3))
    (_, _, r_big), (_, _, r_small), _ = layout
    assert r_big == pytest.approx(1.6 * r_small)
    # a cube fills its corners (square), a sphere does not (disc)
    cx, cy, r = layout[0]
    assert centre_pixel(frame, cx, cy, dy=int(0.6 * r), dx=int(0.6 * r)) == draw.COLOR_RGB["red"]
    cx, cy, r = layout[1]
    assert centre_pixel(frame, cx, cy, dy=int(0.8 * r), dx=int(0.8 * r)) != draw.COLOR_RGB["blue"]
    # metal: a white highlight in the upper-left quarter; rubber: none
    cx, cy, r = layout[0]
    assert centre_pixel(frame, cx - 0.42 * r, cy - 0.42 * r) == draw.PAPER_RGB
    cx, cy, r = layout[2]
    window = frame[int(cy - r) : int(cy + r), int(cx - r) : int(cx + r)].reshape(-1, 3)
    assert draw.PAPER_RGB not in {tuple(int(v) for v in p) for p in window}


def _setup() -> EpisodeSetup:
    pool = np.stack([
        encode_scene([obj("big green rubber sphere left")]),
        encode_scene([obj("small purple metal cylinder middle")]),
        encode_scene(SCENE),  # the target
        encode_scene([obj("small gray rubber cube right"), obj("big cyan metal sphere left")]),
    ])
    return EpisodeSetup(pool, 2, Caption(None, (gid("color", "red"),)))


def test_guess_which_rgb_array_target_then_ranked_pool():
    env = GuessWhichEnv(render_mode="rgb_array", max_questions=2)
    shape = draw.pool_frame_shape(env.pool_size)
    before = env.render()
    assert before.shape == shape and (before == 255).all()  # blank before the first reset
    env.reset(seed=0, options={"setup": _setup()})
    frame = env.render()
    h, w, _ = draw.pool_frame_shape(4)
    assert frame.shape == (h, w, 3)
    assert np.array_equal(frame, draw.draw_scene(SCENE, h, w))  # the target while the episode runs
    env.step("is there a cube?")
    _, _, term, _, _ = env.step("how many objects are there?")
    assert term
    pool = env.render()
    assert np.array_equal(pool, env.render_pool())
    order = [i for i, _ in env.ranking()]
    assert order[0] == 2  # the caption and the answers single the target out
    y, x = draw.thumb_origin(0, 4)
    assert tuple(pool[y - 2, x - 2]) == draw.TARGET_RGB  # outlined
    for o, (cx, cy, _) in zip(SCENE, draw.scene_layout(SCENE, *draw.THUMB)):
        assert centre_pixel(pool, x + cx, y + cy) == draw.COLOR_RGB[o.color]
    # another thumbnail: plain border, its object's colour at its centre
    slot = order.index(1)
    y, x = draw.thumb_origin(slot, 4)
    assert tuple(pool[y - 1, x - 1]) == draw.BORDER_RGB and tuple(pool[y - 2, x - 2]) == draw.PAPER_RGB
    (cx, cy, _), = draw.scene_layout([obj("small purple metal cylinder middle")], *draw.THUMB)
    assert centre_pixel(pool, x + cx, y + cy) == draw.COLOR_RGB["purple"]


def test_check_env_rgb_array_with_render_check():
    env = gym.make(ENV_ID, render_mode="rgb_array").unwrapped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env)  # includes the render checks of every declared render mode
    env.reset(seed=1)
    assert env.render().dtype == np.uint8


def test_png_writer_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(7, 5, 3), dtype=np.uint8)
    path = draw.write_png(tmp_path / "a" / "x.png", img)
    back = mpimg.imread(path)
    assert back.shape == img.shape
    assert np.array_equal(np.round(back * 255).astype(np.uint8), img)


def test_render_episodes_replays_the_final_pool():
    from dialogue_rl.evaluation import render_episodes

    env = gym.make(ENV_ID).unwrapped
    ep = play_episode(env, env.policies()["expert"], seed=11)
    row = {"seed": 11, "turns": [t.to_dict() for t in ep.turns], "return": ep.ret, "success": ep.success}
    frames = render_episodes(ENV_ID, {}, [row, row], limit=1)
    assert len(frames) == 1 and frames[0][0] is row
    assert np.array_equal(frames[0][1], env.render_pool())
    assert render_episodes("dialogue_rl/MazeFO-v0", {}, [row]) == []  # no pictures for the maze


def test_eval_metrics_carry_ci_bounds():
    from dialogue_rl.evaluation import EvalResult

    res = EvalResult(ENV_ID, 0.15, (0.1, 0.2), 40.0, (30.0, 50.0), 0.5, 5.0, 10)
    m = res.metrics()
    assert m["eval/normalized_score"] == 40.0 and m["eval/mean_return"] == 0.15
    assert (m["eval/normalized_ci95_lo"], m["eval/normalized_ci95_hi"]) == (30.0, 50.0)
    assert (m["eval/ci95_lo"], m["eval/ci95_hi"]) == (0.1, 0.2)


@pytest.mark.parametrize("kind", ["none", "wandb"])
def test_run_logger_saves_dashboard_figures_locally(tmp_path, monkeypatch, kind):
    from dialogue_rl.loggers import LoggerConfig, RunLogger, read_eval_curve

    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = RunLogger(LoggerConfig(kind=kind, mode="disabled"), tmp_path, {"seed": 0}, name="t")
    for step, score in ((10, 20.0), (20, 35.0), (20, 40.0)):  # step 20 logged twice: the last row wins
        logger.log({"eval/normalized_score": score, "eval/normalized_ci95_lo": score - 5,
                    "eval/normalized_ci95_hi": score + 5, "train/loss": 1.0}, step)
    ep = {"env_id": ENV_ID, "seed": 5, "transcript": "env: hi", "return": 0.25, "success": True, "turns": []}
    logger.log_dialogues([ep] * 20, 20)
    paths = logger.log_images([(ep, draw.draw_scene(SCENE))], 20)
    logger.finish()
    rows = [json.loads(x) for x in (tmp_path / "eval_dialogues_step20.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and rows[0] == {"env": ENV_ID, "seed": 5, "transcript": "env: hi", "return": 0.25,
                                           "success": True}
    assert paths == [tmp_path / "figures" / "eval_step20_seed5.png"]
    assert mpimg.imread(paths[0]).shape == (*draw.THUMB, 3)
    curve = read_eval_curve(tmp_path / "metrics.jsonl")
    assert curve["step"].tolist() == [10, 20] and curve["value"].tolist() == [20.0, 40.0]
    assert curve["lo"].tolist() == [15.0, 35.0] and curve["hi"].tolist() == [25.0, 45.0]
    assert mpimg.imread(tmp_path / "learning_curve.png").ndim == 3


def test_sweep_progress_counts_the_jobs():
    from dialogue_rl.loggers import SweepProgress, sweep_size

    assert sweep_size(["seed=0,1,2", "algo=bc,ilql", "train.steps=3"]) == 6
    assert sweep_size(["seed=range(0,4)"]) == 4
    assert sweep_size(["algo=glob(*)"]) is None
    cb = SweepProgress()
    cfg = OmegaConf.create({"hydra": {"overrides": {"task": ["seed=0,1,2"]}}, "progress": False})
    cb.on_multirun_start(cfg)
    assert cb.total == 3
    cb.on_job_end(cfg, None)
    cb.on_job_end(cfg, None)
    assert cb.done == 2
    cb.on_multirun_end(cfg)

"""Benchmark report: aggregate a sweep's ``results.json`` files into a table and a figure.

``scripts/report.py <sweep_dir>`` is the command line; the logic lives here:

* :func:`load_results` reads every ``results.json`` under a directory (recursively) and
  validates it (:class:`ReportError`, one line naming the file and the problem);
* :func:`aggregate` groups the runs per env x learner: mean normalized score over
  training seeds with a seeded percentile bootstrap 95% CI over seeds
  (:func:`dialogue_rl.evaluation.bootstrap_ci`), mean success rate, mean return, mean
  training tokens/s, the seeds found;
* :func:`render_markdown` writes the header (commands, commit, budget, summed and elapsed
  wall time: a run ends when its ``results.json`` is written, its mtime)
  and the tables, marking cells with fewer seeds than expected (``"2/3 seeds"``);
* :func:`load_curves` and :func:`draw_figure` draw grouped bars per env with CI whiskers
  and, when the runs' ``metrics.jsonl`` hold them, learning curves (PNG, Agg backend).

Scripted rows (``algo = "scripted:<policy>"``, written by ``scripts/evaluate.py
policy=<p>``) have no training seed: their CI is the one over evaluation episodes
stored in their ``results.json``, and they are never marked as missing seeds.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dialogue_rl.evaluation import bootstrap_ci

log = logging.getLogger(__name__)

SCRIPTED_PREFIX = "scripted:"
RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"
N_BOOT = 2000
BOOT_SEED = 0


class ReportError(ValueError):
    """A results file is missing, malformed or inconsistent (one line naming the file)."""


@dataclass(frozen=True)
class RunResult:
    """The fields of one ``results.json`` the report uses."""

    path: Path
    env_id: str
    algo: str
    seed: int
    normalized_score: float
    mean_return: float
    success_rate: float
    n_episodes: int
    steps: int
    tokens_per_s: float
    wall_s: float
    normalized_ci95: tuple[float, float] | None = None
    finished_at: float | None = None  # the results file's mtime (written once, atomically, at the end)
    config: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def scripted(self) -> bool:
        return self.algo.startswith(SCRIPTED_PREFIX)

    @property
    def model(self) -> str | None:
        m = self.config.get("model") if isinstance(self.config, Mapping) else None
        if not isinstance(m, Mapping):
            return None
        return m.get("pretrained") or m.get("name")


@dataclass(frozen=True)
class Cell:
    """One env x learner aggregate."""

    env_id: str
    algo: str
    seeds: tuple[int, ...]
    score: float
    ci95: tuple[float, float]
    success_rate: float
    mean_return: float
    tokens_per_s: float
    wall_s: float
    ci_over: str = "seeds"  # "seeds", or "episodes" for a scripted row

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def scripted(self) -> bool:
        return self.algo.startswith(SCRIPTED_PREFIX)


# ---------------------------------------------------------------------------- loading
def _get(d: Mapping[str, Any], dotted: str, path: Path) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            raise ReportError(f"{path}: missing key '{dotted}'")
        cur = cur[part]
    return cur


def _number(d: Mapping[str, Any], dotted: str, path: Path) -> float:
    v = _get(d, dotted, path)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ReportError(f"{path}: '{dotted}' is not a number ({v!r})")
    return float(v)


def _string(d: Mapping[str, Any], dotted: str, path: Path) -> str:
    v = _get(d, dotted, path)
    if not isinstance(v, str) or not v:
        raise ReportError(f"{path}: '{dotted}' is not a non-empty string ({v!r})")
    return v


def parse_result(data: Any, path: Path) -> RunResult:
    """Validate one decoded ``results.json`` (raises :class:`ReportError`)."""
    if not isinstance(data, Mapping):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    seed = _number(data, "seed", path)
    if seed != int(seed):
        raise ReportError(f"{path}: 'seed' is not an integer ({seed!r})")
    ci = data.get("eval", {}).get("normalized_ci95") if isinstance(data.get("eval"), Mapping) else None
    if ci is not None:
        ok = isinstance(ci, list) and len(ci) == 2 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in ci)
        if not ok:
            raise ReportError(f"{path}: 'eval.normalized_ci95' is not a [lo, hi] pair ({ci!r})")
        ci = (float(ci[0]), float(ci[1]))
    wall_s = _number(data, "train.wall_s", path)
    total = data["train"].get("total_wall_s")  # includes data, evaluation; preferred when present
    if isinstance(total, (int, float)) and not isinstance(total, bool):
        wall_s = float(total)
    config = data.get("config", {})
    return RunResult(
        path=path,
        env_id=_string(data, "env_id", path),
        algo=_string(data, "algo", path),
        seed=int(seed),
        normalized_score=_number(data, "eval.normalized_score", path),
        mean_return=_number(data, "eval.mean_return", path),
        success_rate=_number(data, "eval.success_rate", path),
        n_episodes=int(_number(data, "eval.n_episodes", path)),
        steps=int(_number(data, "train.steps", path)),
        tokens_per_s=_number(data, "train.tokens_per_s", path),
        wall_s=wall_s,
        normalized_ci95=ci,
        config=config if isinstance(config, Mapping) else {},
    )


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot be read ({e})") from None


def load_result(path: str | Path, data: Any = None) -> RunResult:
    """Validate one ``results.json`` (read unless ``data`` is its decoded content; its
    mtime is the run's end)."""
    path = Path(path)
    data = _read(path) if data is None else data
    return dataclasses.replace(parse_result(data, path), finished_at=path.stat().st_mtime)


def is_scorer_result(data: Any) -> bool:
    """A run of a learner that does not act (the reward model): held-out metrics, no score."""
    ev = data.get("eval") if isinstance(data, Mapping) else None
    return isinstance(ev, Mapping) and "normalized_score" not in ev and "pair_accuracy" in ev


def load_results(sweep_dir: str | Path) -> list[RunResult]:
    """Every ``results.json`` under ``sweep_dir`` (recursively), validated, in path order."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory")
    paths = sorted(root.rglob(RESULTS_FILE))
    if not paths:
        raise ReportError(f"{root}: no {RESULTS_FILE} found (is this a sweep directory?)")
    results = []
    for p in paths:
        data = _read(p)
        if is_scorer_result(data):  # e.g. the reward model a ppo_learned row trains against
            log.info("%s: a non-acting run (held-out metrics only), not a table row", p)
            continue
        results.append(load_result(p, data))
    return results


# ---------------------------------------------------------------------------- aggregation
def algo_sort_key(algo: str) -> tuple[int, str]:
    """Learners first (alphabetically), then scripted reference rows."""
    return (1 if algo.startswith(SCRIPTED_PREFIX) else 0, algo)


def aggregate(runs: Sequence[RunResult], n_boot: int = N_BOOT, seed: int = BOOT_SEED) -> list[Cell]:
    """One :class:`Cell` per env x learner, sorted by env then learner.

    Raises :class:`ReportError` when the same env, learner and seed appear twice
    (two sweeps under one directory): the report would silently average duplicates.
    """
    groups: dict[tuple[str, str], dict[int, RunResult]] = defaultdict(dict)
    for r in runs:
        seen = groups[(r.env_id, r.algo)]
        if r.seed in seen:
            raise ReportError(
                f"{r.path}: duplicate run ({r.env_id}, {r.algo}, seed {r.seed}) also in {seen[r.seed].path}; "
                "report one sweep directory at a time")
        seen[r.seed] = r
    cells = []
    for (env_id, algo), by_seed in groups.items():
        rs = [by_seed[s] for s in sorted(by_seed)]
        scores = [r.normalized_score for r in rs]
        ci, over = bootstrap_ci(scores, n_boot=n_boot, seed=seed), "seeds"
        if len(rs) == 1 and rs[0].scripted and rs[0].normalized_ci95 is not None:
            ci, over = rs[0].normalized_ci95, "episodes"
        cells.append(Cell(
            env_id=env_id, algo=algo, seeds=tuple(sorted(by_seed)), score=float(np.mean(scores)),
            ci95=(float(ci[0]), float(ci[1])), success_rate=float(np.mean([r.success_rate for r in rs])),
            mean_return=float(np.mean([r.mean_return for r in rs])),
            tokens_per_s=float(np.mean([r.tokens_per_s for r in rs])),
            wall_s=float(sum(r.wall_s for r in rs)),
            ci_over=over,
        ))
    return sorted(cells, key=lambda c: (c.env_id, algo_sort_key(c.algo)))


@dataclass(frozen=True)
class Budget:
    """What the runs were given, read from their results (training runs only)."""

    steps: tuple[int, ...]
    models: tuple[str, ...]
    eval_episodes: tuple[int, ...]
    n_runs: int
    wall_s: float
    elapsed_s: float | None = None  # first trained run's start to the last one's end

    def describe(self) -> str:
        def vals(xs: Iterable[Any]) -> str:
            xs = list(xs)
            return ", ".join(str(x) for x in xs) if xs else "n/a"

        return (f"train.steps {vals(self.steps)}; model {vals(self.models)}; "
                f"eval.n_episodes {vals(self.eval_episodes)}; {self.n_runs} runs; "
                f"wall time {format_duration(self.wall_s)} (summed over runs)"
                + ("" if self.elapsed_s is None else
                   f", {format_duration(self.elapsed_s)} elapsed from the first training run's start "
                   "to the last one's end"))


def elapsed(runs: Sequence[RunResult]) -> float | None:
    """``max(end) - min(end - wall_s)`` over runs with a known end time (None if none has)."""
    timed = [r for r in runs if r.finished_at is not None]
    if not timed:
        return None
    return max(r.finished_at for r in timed) - min(r.finished_at - r.wall_s for r in timed)


def budget(runs: Sequence[RunResult]) -> Budget:
    trained = [r for r in runs if not r.scripted]
    return Budget(
        steps=tuple(sorted({r.steps for r in trained})),
        models=tuple(sorted({m for r in trained if (m := r.model)})),
        eval_episodes=tuple(sorted({r.n_episodes for r in runs})),
        n_runs=len(runs),
        wall_s=float(sum(r.wall_s for r in runs)),
        elapsed_s=elapsed(trained),
    )


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------- markdown
def short_env(env_id: str) -> str:
    return env_id.split("/", 1)[-1]


def _f(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def seeds_label(cell: Cell | None, expected: int) -> str:
    """``"3"`` when complete, ``"2/3 seeds"`` when fewer than expected (scripted rows: ``"-"``)."""
    if cell is not None and cell.scripted:
        return "-"
    n = 0 if cell is None else cell.n_seeds
    return str(n) if n >= expected else f"{n}/{expected} seeds"


def score_table(cells: Sequence[Cell], expected_seeds: int) -> str:
    """Env rows x learner columns: ``mean [lo, hi]`` (plus ``(2/3 seeds)`` when incomplete)."""
    envs = sorted({c.env_id for c in cells})
    algos = sorted({c.algo for c in cells}, key=algo_sort_key)
    by = {(c.env_id, c.algo): c for c in cells}
    lines = ["| env | " + " | ".join(algos) + " |", "|---" * (len(algos) + 1) + "|"]
    for env in envs:
        row = []
        for algo in algos:
            c = by.get((env, algo))
            if c is None:
                row.append("—" if algo.startswith(SCRIPTED_PREFIX) else f"0/{expected_seeds} seeds")
                continue
            text = f"{_f(c.score, 1)} [{_f(c.ci95[0], 1)}, {_f(c.ci95[1], 1)}]"
            if not c.scripted and c.n_seeds < expected_seeds:
                text += f" ({seeds_label(c, expected_seeds)})"
            row.append(text)
        lines.append(f"| {short_env(env)} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def detail_table(cells: Sequence[Cell], expected_seeds: int) -> str:
    """One row per env x learner with every aggregate."""
    lines = [
        "| env | learner | normalized score | 95% CI | success rate | return | tokens/s | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        ci = f"[{_f(c.ci95[0], 1)}, {_f(c.ci95[1], 1)}]" + (" (episodes)" if c.ci_over == "episodes" else "")
        tps = "-" if c.scripted else _f(c.tokens_per_s, 0)
        lines.append(
            f"| {short_env(c.env_id)} | {c.algo} | {_f(c.score, 1)} | {ci} | {_f(c.success_rate, 2)} | "
            f"{_f(c.mean_return, 3)} | {tps} | {seeds_label(c, expected_seeds)} |")
    return "\n".join(lines)


def render_markdown(
    cells: Sequence[Cell],
    runs: Sequence[RunResult],
    expected_seeds: int = 3,
    commands: Sequence[str] = (),
    commit: str | None = None,
    figure: str | None = None,
    title: str = "Benchmark results",
) -> str:
    """The report: header (commands, commit, budget), score table, details, figure link."""
    b = budget(runs)
    header = [f"# {title}", ""]
    header += [f"- command: `{c}`" for c in commands]
    header += [
        f"- commit: `{commit or 'unknown'}`",
        f"- budget: {b.describe()}",
        (f"- score: D4RL-normalized return (0 = random policy, 100 = expert policy), mean over training "
         f"seeds; 95% CI: percentile bootstrap over seeds ({N_BOOT} resamples, seed {BOOT_SEED}); "
         f"seeds expected per cell: {expected_seeds} (fewer are marked \"n/{expected_seeds} seeds\"); "
         "scripted rows are one evaluation of a scripted policy, CI over its episodes."),
        "",
    ]
    body = ["## Normalized score", "", score_table(cells, expected_seeds), "",
            "## Details", "", detail_table(cells, expected_seeds), ""]
    if figure:
        body += [f"![benchmark figure]({figure})", ""]
    return "\n".join(header + body)


def sweep_commands(sweep_dir: str | Path) -> list[str]:
    """The sweep command lines recorded in every ``multirun.yaml`` under ``sweep_dir``."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    out = []
    for p in sorted(Path(sweep_dir).rglob("multirun.yaml")):
        try:
            cfg = OmegaConf.load(p)
            job = OmegaConf.select(cfg, "hydra.job.name") or "train"
            task = list(OmegaConf.select(cfg, "hydra.overrides.task") or [])
            hyd = [o for o in OmegaConf.select(cfg, "hydra.overrides.hydra") or []
                   if o != "hydra.mode=MULTIRUN"]
        except (OSError, YAMLError, OmegaConfBaseException) as e:  # only loses a header line
            log.warning("%s: cannot read the sweep command (%s)", p, e)
            continue
        out.append(" ".join([f"python scripts/{job}.py -m", *task, *hyd]))
    return out


# ---------------------------------------------------------------------------- curves and figure
EVAL_METRIC = "eval/normalized_score"
TRAIN_METRIC = "train/bc_loss"  # every learner logs it: the data NLL, comparable


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Rows of a ``metrics.jsonl``; an unreadable line (a run killed mid-write) is skipped."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: not JSON, skipped", path, i)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
    return rows


@dataclass(frozen=True)
class Curve:
    env_id: str
    algo: str
    metric: str
    steps: tuple[int, ...]
    values: tuple[float, ...]  # mean over the seeds that logged that step
    n_seeds: int


def load_curves(runs: Sequence[RunResult]) -> list[Curve]:
    """Per env x learner learning curves from the runs' ``metrics.jsonl`` (training runs only).

    The metric is the periodic evaluation's normalized score when the env's runs logged
    it at two steps or more, else the BC loss (the dataset NLL, which every learner logs,
    unlike its total loss, which sums different terms per learner). Values at a step are averaged over
    the seeds that logged it (later rows of a resumed run replace earlier ones).
    """
    per_run: dict[tuple[str, str], list[dict[str, dict[int, float]]]] = defaultdict(list)
    for r in runs:
        p = r.path.parent / METRICS_FILE
        if r.scripted or not p.is_file():
            continue
        series: dict[str, dict[int, float]] = {EVAL_METRIC: {}, TRAIN_METRIC: {}}
        for row in read_metrics(p):
            for m, values in series.items():
                v = row.get(m)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    values[row["step"]] = float(v)
        per_run[(r.env_id, r.algo)].append(series)
    metric_of_env: dict[str, str] = {}
    for (env, _), rs in per_run.items():
        if any(len(s[EVAL_METRIC]) >= 2 for s in rs):
            metric_of_env[env] = EVAL_METRIC
        else:
            metric_of_env.setdefault(env, TRAIN_METRIC)
    curves = []
    for (env, algo), rs in sorted(per_run.items(), key=lambda kv: (kv[0][0], algo_sort_key(kv[0][1]))):
        metric = metric_of_env[env]
        by_step: dict[int, list[float]] = defaultdict(list)
        for s in rs:
            for step, v in s[metric].items():
                by_step[step].append(v)
        if not by_step:
            continue
        steps = tuple(sorted(by_step))
        curves.append(Curve(env, algo, metric, steps, tuple(float(np.mean(by_step[s])) for s in steps),
                            n_seeds=len(rs)))
    return curves


def draw_figure(cells: Sequence[Cell], path: str | Path, curves: Sequence[Curve] = ()) -> Path:
    """Grouped bars (one group per env, one bar per learner, CI whiskers) and learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    envs = sorted({c.env_id for c in cells})
    algos = sorted({c.algo for c in cells}, key=algo_sort_key)
    by = {(c.env_id, c.algo): c for c in cells}
    curve_envs = sorted({c.env_id for c in curves})
    ncols = max(1, len(curve_envs))
    nrows = 2 if curve_envs else 1
    fig = plt.figure(figsize=(max(6.0, 1.2 * len(envs) * max(1, len(algos)) / 2.5, 3.5 * ncols), 4.0 * nrows),
                     layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    ax = fig.add_subplot(grid[0, :])
    colors = {a: plt.get_cmap("tab10")(i % 10) for i, a in enumerate(algos)}
    width = 0.8 / max(1, len(algos))
    x = np.arange(len(envs))
    for i, algo in enumerate(algos):
        ys, lo, hi, xs = [], [], [], []
        for j, env in enumerate(envs):
            c = by.get((env, algo))
            if c is None:
                continue
            xs.append(x[j] - 0.4 + width * (i + 0.5))
            ys.append(c.score)
            lo.append(max(0.0, c.score - c.ci95[0]))
            hi.append(max(0.0, c.ci95[1] - c.score))
        scripted = algo.startswith(SCRIPTED_PREFIX)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=algo, color=colors[algo],
               hatch="//" if scripted else None, alpha=0.6 if scripted else 1.0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(100, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(x, [short_env(e) for e in envs])
    ax.set_xlim(-0.5, len(envs) - 0.5)
    ax.set_ylabel("normalized score (95% CI)")
    ax.set_title("Normalized score per env (0 random, 100 expert)")
    ax.legend(fontsize="small", ncols=min(len(algos), 4))
    for k, env in enumerate(curve_envs):
        cax = fig.add_subplot(grid[1, k])
        metric = ""
        for cv in (c for c in curves if c.env_id == env):
            metric = cv.metric
            cax.plot(cv.steps, cv.values, marker="o" if len(cv.steps) < 20 else None, markersize=3,
                     label=f"{cv.algo} ({cv.n_seeds})", color=colors.get(cv.algo))
        cax.set_title(short_env(env), fontsize="medium")
        cax.set_xlabel("step")
        cax.set_ylabel(metric)
        cax.legend(fontsize="x-small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def relative_link(target: str | Path, from_file: str | Path) -> str:
    """``target`` relative to the directory of ``from_file`` (for the markdown image link)."""
    return os.path.relpath(Path(target).resolve(), Path(from_file).resolve().parent)

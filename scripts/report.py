"""Aggregate a benchmark sweep into a markdown table and a figure.

    python scripts/report.py multirun/benchmark_small
    python scripts/report.py multirun/benchmark_small --expected-seeds 3 \\
        --out docs/results.md --figure docs/results.png

Reads every ``results.json`` under the sweep directory (recursively, so the scripted
reference rows evaluated into ``<sweep_dir>/reference`` are included). Defaults:
``<sweep_dir>/results.md`` and ``<sweep_dir>/results.png``. A malformed results file
stops the report with one line naming it (exit status 1). The logic is in
:mod:`dialogue_rl.report`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import subprocess
import sys
from pathlib import Path

from dialogue_rl.report import (
    ReportError,
    aggregate,
    draw_figure,
    load_curves,
    load_results,
    relative_link,
    render_markdown,
    sweep_commands,
)

log = logging.getLogger("report")


def git_commit() -> str | None:
    """The short commit of the repository this script is in, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="a Hydra sweep directory with results.json files")
    ap.add_argument("--expected-seeds", type=int, default=3, help="seeds per env x learner; fewer are marked")
    ap.add_argument("--out", type=Path, default=None, help="markdown file (default: <sweep_dir>/results.md)")
    ap.add_argument("--figure", type=Path, default=None, help="PNG figure (default: <sweep_dir>/results.png)")
    ap.add_argument("--no-figure", action="store_true", help="write the table only")
    ap.add_argument("--commit", default=None,
                    help="the commit the runs were made at (default: this repository's HEAD)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = args.out or args.sweep_dir / "results.md"
    fig_path = None if args.no_figure else (args.figure or args.sweep_dir / "results.png")
    try:
        runs = load_results(args.sweep_dir)
        cells = aggregate(runs)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if fig_path is not None:
        draw_figure(cells, fig_path, load_curves(runs))
        log.info("figure -> %s", fig_path)
    commands = sweep_commands(args.sweep_dir) + [shlex.join(["python", "scripts/report.py", *argv])]
    text = render_markdown(cells, runs, expected_seeds=args.expected_seeds, commands=commands,
                           commit=args.commit or git_commit(), figure=relative_link(fig_path, out) if fig_path else None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    log.info("%d runs, %d env x learner cells -> %s", len(runs), len(cells), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

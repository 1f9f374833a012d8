"""Speed and memory figures of the lab, as ratios measured in one run.

    python scripts/bench.py --quick --json bench.json [--device cpu|cuda] [--model tiny]

Measures, each with min/median/max over repeats (definitions in ``dialogue_rl/bench.py``):
- the fp32 matmul peak of this machine (GFLOP/s);
- BC, ILQL and per-utterance Q update times on the same GuessWhich batch and model,
  their ratios, training tokens/s and model FLOPs utilisation against the peak;
- multi-turn rollouts of 64 GuessWhich episodes: KV cache across turns vs re-encoding
  the history each turn vs Hugging Face ``generate`` each turn;
- env steps/s of every registered env in both views (random agent);
- peak resident memory of training and of evaluation.
Writes ``docs/performance.md`` (``--doc``) and the JSON (``--json``). ``device=cuda`` is
accepted as well as ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dialogue_rl.bench import BenchConfig, render_markdown, run_bench
from dialogue_rl.models import MODEL_PRESETS

log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Hydra-style overrides (device=cuda, model=small) are accepted too.
    argv = [f"--{a}" if "=" in a and not a.startswith("-") else a for a in argv]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer repeats (under 3 minutes on 2 cores)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--doc", type=Path, default=Path("docs/performance.md"),
                    help="markdown report (default docs/performance.md; 'none' to skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="tiny", choices=sorted(MODEL_PRESETS))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--no-rss", action="store_true", help="skip the peak-memory subprocesses")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kw = dict(device=args.device, model=args.model, batch_size=args.batch_size, rss=not args.no_rss)
    cfg = BenchConfig.quick(**kw) if args.quick else BenchConfig(**kw)
    res = run_bench(cfg)
    for k, v in res.items():
        if not isinstance(v, dict):
            log.info("%s: %s", k, f"{v:.4g}" if isinstance(v, float) else v)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    if str(args.doc) != "none":
        args.doc.parent.mkdir(parents=True, exist_ok=True)
        cmd = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.doc.write_text(render_markdown(res, cmd.strip()))


if __name__ == "__main__":
    main()

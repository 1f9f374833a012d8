"""Fuzz every registered env id at volume and print the counts (bench mode of ``envs.fuzz``).

    python scripts/fuzz.py                          # 10,000 utterances per env id and view
    python scripts/fuzz.py -n 500 --env MazeFO-v0 --view token
    python scripts/fuzz.py --json fuzz.json         # the counts as JSON too

Prints one row per env id and view: utterances sent, episodes, steps, utterances the
env did not understand, exceptions and contract violations (see ``envs/fuzz.py`` for
the kinds of utterances and the checks), then the first exceptions and violations.
Exits with status 1 if any env raised or broke the contract.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import envs
from envs.fuzz import CATEGORIES, VIEWS, FuzzStats, fuzz_env


def _select(names: list[str] | None) -> list[str]:
    ids = envs.env_ids()
    if not names:
        return ids
    chosen = [i for i in ids if any(i == n or i.split("/", 1)[1] == n for n in names)]
    unknown = [n for n in names if not any(i == n or i.split("/", 1)[1] == n for i in ids)]
    if unknown:
        raise SystemExit(f"fuzz.py: error: unknown env id {unknown[0]!r}; fix: use one of {', '.join(ids)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=10_000, help="utterances per env id and view (default 10000)")
    ap.add_argument("--env", nargs="*", help="env ids (with or without the dialogue_rl/ prefix); default all")
    ap.add_argument("--view", nargs="*", choices=VIEWS, default=list(VIEWS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the counts to this file")
    ap.add_argument("--show", type=int, default=5, help="exceptions / violations printed per row")
    args = ap.parse_args(argv)

    rows: list[FuzzStats] = []
    head = f"{'env id':44s} {'view':9s} {'utterances':>10s} {'episodes':>8s} {'steps':>8s} {'invalid':>8s} " \
           f"{'exceptions':>10s} {'violations':>10s} {'seconds':>8s}"
    print(head)
    print("-" * len(head))
    for env_id in _select(args.env):
        for view in args.view:
            s = fuzz_env(env_id, args.n, view, seed=args.seed)
            rows.append(s)
            print(f"{env_id:44s} {view:9s} {s.utterances:10d} {s.episodes:8d} {s.steps:8d} {s.invalid:8d} "
                  f"{len(s.exceptions):10d} {len(s.violations):10d} {s.seconds:8.1f}", flush=True)
            for line in (s.exceptions + s.violations)[: args.show]:
                print(f"    {line}")
    total = sum(s.utterances for s in rows)
    bad = sum(len(s.exceptions) + len(s.violations) for s in rows)
    per_cat = {c: sum(s.by_category[c] for s in rows) for c in CATEGORIES}
    print(f"total: {total} utterances ({', '.join(f'{c} {n}' for c, n in per_cat.items())}); "
          f"{bad} exceptions or violations")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{**asdict(s), "by_category": dict(s.by_category)} for s in rows], f, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Import a human dialogue corpus into the lab's dataset format (parquet splits + metadata.json).

    python scripts/import_corpus.py dealornodeal --input ../shared/corpora/dealornodeal/val.txt --output data/dnd_human
    python scripts/import_corpus.py dealornodeal --input train=../shared/corpora/dealornodeal/train_raw.txt \\
        --input validation=../shared/corpora/dealornodeal/val.txt --output data/dnd_human
    python scripts/import_corpus.py craigslistbargain --input ../shared/corpora/craigslistbargain/validation.json \\
        --output data/cb_human

``--input`` takes ``FILE`` or ``SPLIT=FILE`` and may repeat; without a split name it is
guessed from the file name (``val``/``valid``/``dev`` -> validation, ``test`` -> test, else
train). Skipped lines are counted by reason (logged and written to ``metadata.json``
under ``import``); a malformed line never stops the import. Exit status 1 when a split
ends up empty.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from dialogue_rl.corpora import craigslist, dealornodeal
from dialogue_rl.data.io import save_dataset

log = logging.getLogger("import_corpus")

CORPORA = ("dealornodeal", "craigslistbargain")


def split_of(spec: str) -> tuple[str, Path]:
    """``"train=path"`` -> ("train", path); a bare path gets a split guessed from its name."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        return name, Path(path)
    stem = Path(spec).stem.lower()
    if any(k in stem for k in ("val", "dev")):
        return "validation", Path(spec)
    if "test" in stem:
        return "test", Path(spec)
    return "train", Path(spec)


def run(corpus: str, inputs: list[str], output: str, sides: str = "both", role: str = "seller") -> dict[str, Any]:
    """Import every input file as a split and save the dataset; returns its metadata."""
    splits: dict[str, list[dict]] = {}
    per_split: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    for spec in inputs:
        name, path = split_of(spec)
        if name in splits:
            raise SystemExit(f"split {name!r} given twice; name them: --input train=FILE --input validation=FILE")
        if not path.is_file():
            raise SystemExit(f"{path}: no such file")
        if corpus == "dealornodeal":
            rows, report = dealornodeal.import_file(path, sides=sides)
            meta = dealornodeal.metadata(path, report, sides)
        else:
            rows, report = craigslist.import_file(path, role=role)
            meta = craigslist.metadata(path, report, role)
        log.info("%s -> %s: %s", path, name, report.summary())
        if not rows:
            raise SystemExit(f"{path}: no dialogue could be imported ({report.summary()})")
        splits[name] = rows
        per_split[name] = {"input_file": meta.pop("input_file"), "import": meta.pop("import")}
    meta["inputs"] = per_split
    out = save_dataset(output, splits, meta)
    log.info("wrote %s (%s)", out, ", ".join(f"{k}: {len(v)} rows" for k, v in splits.items()))
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("corpus", choices=CORPORA)
    p.add_argument("--input", action="append", required=True, metavar="[SPLIT=]FILE", help="input file (repeatable)")
    p.add_argument("--output", required=True, help="dataset directory to write")
    p.add_argument(
        "--sides", choices=dealornodeal.SIDES, default="both",
        help="dealornodeal: keep both views of each dialogue (default) or one",
    )
    p.add_argument("--role", choices=("seller", "buyer"), default="seller", help="craigslistbargain: the agent's side")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(args.corpus, args.input, args.output, sides=args.sides, role=args.role)
    return 0


if __name__ == "__main__":
    sys.exit(main())

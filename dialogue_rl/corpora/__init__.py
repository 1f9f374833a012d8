"""Importers of human dialogue corpora into the lab's dataset schema (DESIGN.md section 4).

* :mod:`~dialogue_rl.corpora.dealornodeal` - Deal or No Deal (Lewis et al. 2017), both the
  split format (``val.txt``) and the raw format (``train_raw.txt``), for
  ``dialogue_rl/DealOrNoDeal-v0``;
* :mod:`~dialogue_rl.corpora.craigslist` - CraigslistBargain (He et al. 2018) JSON lines,
  for ``dialogue_rl/Bargaining-v0`` (seller as the agent, CHAI's reward).

Every importer returns rows plus an :class:`ImportReport` (lines read, rows kept, lines
skipped by reason, outcome counts); a malformed line is skipped and counted, never fatal.
Texts are sanitised with :func:`envs.core.sanitize`; the opening env turn states the
scenario in the same words as the env, so a model cloned on human play can play the env.
Rows have ``policy="human"``, ``terminated=True`` and a ``seed`` that is a hash of the
dialogue (shared by both sides of it), **not** a replayable ``reset`` seed.

The command line is ``scripts/import_corpus.py``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HUMAN_POLICY = "human"
SEED_SEMANTICS = (
    "hash of the dialogue (sha256, first 63 bits), shared by both sides of a dialogue; "
    "not a reset seed: imported episodes cannot be replayed in the env"
)


def dialogue_hash(key: str) -> int:
    """A stable non-negative int64 id for a dialogue (the rows' ``seed``)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") & (2**63 - 1)


@dataclass
class ImportReport:
    """What an import did: lines read, rows kept, lines skipped by reason, outcomes."""

    lines: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)
    first_skipped_line: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, line_no: int) -> None:
        self.skipped[reason] += 1
        self.first_skipped_line.setdefault(reason, line_no)

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_total": int(sum(self.skipped.values())),
            "first_skipped_line": dict(sorted(self.first_skipped_line.items())),
            "outcomes": dict(sorted(self.outcomes.items())),
            "notes": dict(sorted(self.notes.items())),
        }

    def summary(self) -> str:
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.lines} lines, {self.kept} rows kept, skipped {sum(self.skipped.values())} ({skipped})"


def merge_consecutive(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Join consecutive utterances of one speaker with a space (the schema alternates turns)."""
    out: list[tuple[str, str]] = []
    for speaker, text in turns:
        if out and out[-1][0] == speaker:
            prev = out[-1][1]
            out[-1] = (speaker, f"{prev} {text}".strip() if prev else text)
        else:
            out.append((speaker, text))
    return out


__all__ = ["HUMAN_POLICY", "ImportReport", "SEED_SEMANTICS", "dialogue_hash", "merge_consecutive"]

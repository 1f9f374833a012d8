"""Deal or No Deal (Lewis et al. 2017) importer: ``val.txt`` / ``train_raw.txt`` -> lab rows.

Both formats have one line per participant's view; every dialogue appears twice, once
from each side. The line's ``YOU`` side becomes the agent (speaker ``agent``) and
``THEM`` the environment (speaker ``env``).

* **split format** (``val.txt``, ``test.txt``, ``train.txt``)::

    <input> c0 v0 c1 v1 c2 v2 </input> <dialogue> YOU: ... <eos> THEM: ... <eos> ... THEM: <selection>
    </dialogue> <output> item0=a item1=b item2=c item0=d item1=e item2=f </output>
    <partner_input> c0 w0 c1 w1 c2 w2 </partner_input>

  ``<output>`` is this side's take then the partner's, or six ``<disagree>`` /
  ``<no_agreement>`` / ``<disconnect>`` (then both selections are unknown).
* **raw format** (``data.txt``, ``train_raw.txt``)::

    c0 v0 c1 v1 c2 v2 YOU: ... <eos> THEM: ... <eos> YOU: <selection> item0=a item1=b item2=c <eos>
    reward=R agree|disagree c0 w0 c1 w1 c2 w2

  the selection is this side's own take (or ``no agreement`` / ``disconnect``); the
  partner's take is the complement on ``agree`` and is read from the mirrored line
  (the other side's view) on ``disagree`` when that line is in the file.

Rendering (the words of ``dialogue_rl/DealOrNoDeal-v0``): the opening env turn is
:func:`envs.negotiation.opening_text` of the counts and the agent's values; the closing
``<selection>`` becomes the two sides' selections in :func:`envs.negotiation.selection_text`
form (``"select: 2 books, 0 hats, 1 ball."``), agent's and partner's in the order the
form was opened, an unknown selection or no agreement as ``"no deal."``; when the partner
opened the form, a last env turn says ``"deal."`` or ``"no deal."`` as the env does.

Reward: on the agent's selection turn (its last turn), the agent's value of its take on
an agreement (complementary selections), else 0; ``success`` = agreement. Utterances are
sanitised with :func:`envs.core.sanitize`; consecutive utterances of one side are joined.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from envs.core import AGENT, ENV, sanitize
from envs.negotiation import opening_text, selection_text

from dialogue_rl.corpora import (
    HUMAN_POLICY,
    SEED_SEMANTICS,
    ImportReport,
    dialogue_hash,
    merge_consecutive,
)

log = logging.getLogger(__name__)

ENV_ID = "dialogue_rl/DealOrNoDeal-v0"
NO_DEAL_TEXT = "no deal."
SIDES = ("both", "one")

Take = tuple[int, int, int]

_SPLIT_RE = re.compile(
    r"^<input>(?P<input>.*?)</input>\s*<dialogue>(?P<dialogue>.*?)</dialogue>\s*"
    r"<output>(?P<output>.*?)</output>\s*<partner_input>(?P<partner>.*?)</partner_input>\s*$"
)
_TURN_RE = re.compile(r"(YOU|THEM):")
_ITEM_RE = re.compile(r"^item([012])=(\d+)$")
_RAW_TAIL_RE = re.compile(
    r"^(?P<dialogue>.*?)(?P<opener>YOU|THEM): <selection> (?P<sel>.*?) <eos> "
    r"reward=(?P<reward>.*?) (?P<agree>agree|disagree)$"
)


class SkipLine(ValueError):
    """A line that cannot be imported; ``args[0]`` is the reason (a short snake_case key)."""


@dataclass(frozen=True)
class Record:
    """One side's view of a dialogue, parsed."""

    line_no: int
    counts: Take
    values: Take
    partner_values: Take
    turns: tuple[tuple[str, str], ...]  # (YOU|THEM, raw text), the <selection> marker excluded
    opener: str  # who opened the selection form: YOU or THEM
    own: Take | None  # this side's selection (None: unknown / no agreement)
    partner: Take | None  # the partner's selection
    outcome: str  # agree, disagree, no_agreement, disconnect
    raw_reward: float | None = None  # the raw format's reward=R

    def key(self) -> str:
        """Identifies the dialogue regardless of the side (both views share it)."""
        inputs = sorted([(self.counts, self.values), (self.counts, self.partner_values)])
        return repr((inputs, [t for _, t in self.turns]))

    def mirror_key(self) -> tuple:
        """Key of this line's exact mirror (the other side's view)."""
        flipped = tuple(("THEM" if s == "YOU" else "YOU", t) for s, t in self.turns)
        return (self.counts, self.partner_values, self.values, flipped)

    def own_key(self) -> tuple:
        return (self.counts, self.values, self.partner_values, self.turns)


def _ints(text: str, n: int, reason: str) -> list[int]:
    parts = text.split()
    if len(parts) != n:
        raise SkipLine(reason)
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise SkipLine(reason) from None


def _pool(raw: list[int], reason: str) -> tuple[Take, Take]:
    counts = (raw[0], raw[2], raw[4])
    values = (raw[1], raw[3], raw[5])
    if any(c < 1 for c in counts) or any(v < 0 for v in values):
        raise SkipLine(reason)
    if sum(c * v for c, v in zip(counts, values)) != 10:
        raise SkipLine("values_do_not_total_10")
    return counts, values  # type: ignore[return-value]


def _split_turns(dialogue: str) -> list[tuple[str, str]]:
    parts = _TURN_RE.split(dialogue)
    if parts[0].strip():
        raise SkipLine("bad_dialogue")
    turns: list[tuple[str, str]] = []
    for i in range(1, len(parts) - 1, 2):
        text = parts[i + 1].strip()
        if text.endswith("<eos>"):
            text = text[: -len("<eos>")].strip()
        turns.append((parts[i], text))
    if not turns:
        raise SkipLine("no_turns")
    return turns


def _take(tokens: list[str]) -> Take:
    got: dict[int, int] = {}
    for tok in tokens:
        m = _ITEM_RE.match(tok)
        if not m:
            raise SkipLine("bad_selection")
        got[int(m.group(1))] = int(m.group(2))
    if sorted(got) != [0, 1, 2]:
        raise SkipLine("bad_selection")
    return got[0], got[1], got[2]


def parse_split_line(line: str, line_no: int = 0) -> Record:
    """Parse one line of the split format (``val.txt``); raises :class:`SkipLine`."""
    m = _SPLIT_RE.match(line.strip())
    if not m:
        raise SkipLine("not_split_format")
    counts, values = _pool(_ints(m.group("input"), 6, "bad_input"), "bad_input")
    pcounts, pvalues = _pool(_ints(m.group("partner"), 6, "bad_partner_input"), "bad_partner_input")
    if pcounts != counts:
        raise SkipLine("partner_counts_differ")
    turns = _split_turns(m.group("dialogue"))
    opener, last = turns[-1]
    if last != "<selection>":
        raise SkipLine("no_selection")
    out = m.group("output").split()
    if len(out) != 6:
        raise SkipLine("bad_output")
    own = partner = None
    if all(o.startswith("item") for o in out):
        own, partner = _take(out[:3]), _take(out[3:])
        outcome = "agree" if all(a + b == c for a, b, c in zip(own, partner, counts)) else "disagree"
    elif len(set(out)) == 1 and out[0] in ("<disagree>", "<no_agreement>", "<disconnect>"):
        outcome = out[0][1:-1]
    else:
        raise SkipLine("bad_output")
    return Record(line_no, counts, values, pvalues, tuple(turns[:-1]), opener, own, partner, outcome)


def parse_raw_line(line: str, line_no: int = 0) -> Record:
    """Parse one line of the raw format (``train_raw.txt``); raises :class:`SkipLine`."""
    tokens = line.split()
    if len(tokens) < 14:
        raise SkipLine("truncated_line")
    counts, values = _pool(_ints(" ".join(tokens[:6]), 6, "bad_input"), "bad_input")
    pcounts, pvalues = _pool(_ints(" ".join(tokens[-6:]), 6, "bad_partner_input"), "bad_partner_input")
    if pcounts != counts:
        raise SkipLine("partner_counts_differ")
    body = " ".join(tokens[6:-6])
    m = _RAW_TAIL_RE.match(body)
    if not m:
        raise SkipLine("no_selection")
    turns = _split_turns(m.group("dialogue")) if m.group("dialogue").strip() else []
    sel = m.group("sel").strip()
    agree = m.group("agree") == "agree"
    raw_reward: float | None = None
    own: Take | None = None
    if sel in ("no agreement", "disconnect"):
        outcome = "no_agreement" if sel == "no agreement" else "disconnect"
    else:
        own = _take(sel.split())
        try:
            raw_reward = float(m.group("reward"))
        except ValueError:
            raise SkipLine("bad_reward") from None
        outcome = "agree" if agree else "disagree"
    partner: Take | None = None
    if outcome == "agree" and own is not None:
        partner = (counts[0] - own[0], counts[1] - own[1], counts[2] - own[2])
    return Record(line_no, counts, values, pvalues, tuple(turns), m.group("opener"), own, partner, outcome, raw_reward)


def parse_line(line: str, line_no: int = 0) -> Record:
    """Parse a line of either format (detected by ``<input>``); raises :class:`SkipLine`."""
    s = line.strip()
    if not s:
        raise SkipLine("empty_line")
    return parse_split_line(s, line_no) if s.startswith("<input>") else parse_raw_line(s, line_no)


def record_to_row(rec: Record, env_id: str = ENV_ID) -> dict[str, Any]:
    """The lab row (DESIGN.md section 4) of one side's view."""
    agreed = (
        rec.outcome == "agree"
        and rec.own is not None
        and rec.partner is not None
        and all(a + b == c for a, b, c in zip(rec.own, rec.partner, rec.counts))
    )
    reward = float(sum(n * v for n, v in zip(rec.own, rec.values))) if agreed and rec.own else 0.0
    own_text = selection_text(rec.own) if rec.own is not None and rec.outcome != "no_agreement" else NO_DEAL_TEXT
    partner_text = selection_text(rec.partner) if rec.partner is not None else NO_DEAL_TEXT
    body = merge_consecutive(
        [(AGENT if s == "YOU" else ENV, sanitize(t)) for s, t in rec.turns]
    )
    turns: list[dict[str, Any]] = [{"speaker": ENV, "text": opening_text(rec.counts, rec.values), "reward": 0.0}]
    turns += [{"speaker": sp, "text": tx, "reward": 0.0} for sp, tx in body]
    if rec.opener == "YOU":
        closing = [(AGENT, own_text, reward), (ENV, partner_text, 0.0)]
    else:
        closing = [(ENV, partner_text, 0.0), (AGENT, own_text, reward), (ENV, "deal." if agreed else NO_DEAL_TEXT, 0.0)]
    for sp, tx, r in closing:
        if turns[-1]["speaker"] == sp and sp == AGENT:  # the agent spoke last: the selection joins its turn
            turns[-1] = {"speaker": AGENT, "text": f"{turns[-1]['text']} {tx}".strip(), "reward": r}
        else:
            turns.append({"speaker": sp, "text": tx, "reward": r})
    n_agent = sum(1 for t in turns if t["speaker"] == AGENT)
    return {
        "env_id": env_id,
        "seed": dialogue_hash(rec.key()),
        "policy": HUMAN_POLICY,
        "turns": turns,
        "return": reward,
        "length": n_agent,
        "success": bool(agreed),
        "terminated": True,
    }


def import_lines(
    lines: list[str], sides: str = "both", env_id: str = ENV_ID
) -> tuple[list[dict[str, Any]], ImportReport]:
    """Rows of a Deal or No Deal file's lines, and the report.

    Args:
        lines: the file's lines (either format, even mixed).
        sides: ``"both"`` keeps every line (each dialogue twice, once from each side);
            ``"one"`` keeps the first line of each dialogue only.
        env_id: the env id written into the rows.
    """
    if sides not in SIDES:
        raise ValueError(f"sides={sides!r}: expected one of {SIDES}")
    report = ImportReport()
    records: list[Record] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines (e.g. the trailing newline) are not data
        report.lines += 1
        try:
            records.append(parse_line(line, i))
        except SkipLine as e:
            report.skip(str(e.args[0]), i)
    # the raw format does not say what the partner selected on a disagreement: its mirror line does
    by_own = {r.own_key(): r for r in records}
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for rec in records:
        if rec.partner is None and rec.outcome == "disagree":
            mirror = by_own.get(rec.mirror_key())
            if mirror is not None and mirror.own is not None:
                rec = dataclasses.replace(rec, partner=mirror.own)
            else:
                report.notes["partner_selection_unknown"] += 1
        key = rec.key()
        if sides == "one" and key in seen:
            report.notes["second_side_dropped"] += 1
            continue
        seen.add(key)
        row = record_to_row(rec, env_id)
        if rec.raw_reward is not None and rec.outcome == "agree" and abs(rec.raw_reward - row["return"]) > 1e-6:
            report.notes["raw_reward_mismatch"] += 1
        report.outcomes[rec.outcome] += 1
        report.kept += 1
        rows.append(row)
    if report.skipped:
        log.warning("dealornodeal: skipped %d lines: %s", sum(report.skipped.values()), dict(report.skipped))
    return rows, report


def import_file(
    path: str | os.PathLike, sides: str = "both", env_id: str = ENV_ID
) -> tuple[list[dict[str, Any]], ImportReport]:
    """Rows and report of a Deal or No Deal file (``val.txt`` or ``train_raw.txt`` format)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    return import_lines(lines, sides=sides, env_id=env_id)


def metadata(path: str | os.PathLike, report: ImportReport, sides: str, env_id: str = ENV_ID) -> dict[str, Any]:
    """The ``metadata.json`` fields of an import (``save_dataset`` adds the split stats)."""
    return {
        "env_id": env_id,
        "env_kwargs": {},
        "source": "dealornodeal",
        "corpus": "Deal or No Deal (Lewis et al. 2017), CC BY-NC 4.0",
        "input_file": os.path.basename(os.fspath(path)),
        "policy": HUMAN_POLICY,
        "agent_side": "YOU",
        "sides": sides,
        "sides_note": (
            "both: every dialogue appears twice, once from each side"
            if sides == "both"
            else "one: only the first line of each dialogue is kept"
        ),
        "seed_semantics": SEED_SEMANTICS,
        "reward": "agent's value of its take on an agreement (0-10), else 0, on its selection turn",
        "text": "human utterances sanitised with envs.core.sanitize; selections in the env's words",
        "import": report.to_dict(),
    }


__all__ = [
    "ENV_ID", "Record", "SkipLine", "import_file", "import_lines", "metadata", "parse_line",
    "parse_raw_line", "parse_split_line", "record_to_row",
]

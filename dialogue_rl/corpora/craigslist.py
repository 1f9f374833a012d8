"""CraigslistBargain (He et al. 2018) importer: JSON lines -> lab rows for ``Bargaining-v0``.

Input: one dialogue per line (a JSON list of them is accepted too) with ``agent_info``
{``Role``: [...], ``Target``, ``Bottomline``}, ``agent_turn`` [int], ``utterance`` [str],
``dialogue_acts`` {``intent``: [str], ``price``: [float, -1 if none]} and ``items``
{``Category``, ``Price`` (the listing price), ``Title``, ...}, indexed by agent id.

The seller is the agent by default (``role="buyer"`` imports the buyer's side for
``dialogue_rl/BargainingBuyer-v0``). Rendering, in the words of the env: the opening env
turn is :func:`envs.bargaining.opening_text` (``"you are the seller. listing: bike for
$450."``); an utterance event keeps its sanitised text; the empty-text events become
``"offer: $243."`` (offer), ``"deal."`` (accept), ``"no deal."`` (reject) and
``"no deal. bye."`` (quit); consecutive events of one side are joined.

Outcome: the last ``accept`` / ``reject`` / ``quit`` event ends the dialogue (later
events are dropped). An accept closes a deal at the price of the last ``offer`` event
before it; reject and quit are no deal. Reward (CHAI): on the agent's last turn,
``10 * (p / listing - 1)`` for the seller (``10 * (1 - p / listing)`` for the buyer) when
``0.5 <= p / listing <= 1.5``, else -20; no deal -20. ``success``: a deal in that range.

Skipped, by reason: ``bad_json``, ``bad_fields`` (missing/ill-typed fields, lists of
different lengths), ``no_role`` (no seller/buyer), ``bad_listing_price``,
``missing_dialogue_acts`` (every intent empty: the offer/accept events cannot be read),
``no_outcome`` (no accept/reject/quit), ``accept_without_offer`` (no priced offer before
the accept), ``no_agent_turn``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

from envs.bargaining import ROLES, opening_text, price_text, reward_for
from envs.core import AGENT, ENV, sanitize

from dialogue_rl.corpora import HUMAN_POLICY, SEED_SEMANTICS, ImportReport, dialogue_hash, merge_consecutive

log = logging.getLogger(__name__)

ENV_IDS: dict[str, str] = {"seller": "dialogue_rl/Bargaining-v0", "buyer": "dialogue_rl/BargainingBuyer-v0"}
FINAL_INTENTS = ("accept", "reject", "quit")
EVENT_TEXT: dict[str, str] = {"accept": "deal.", "reject": "no deal.", "quit": "no deal. bye."}


class SkipDialogue(ValueError):
    """A dialogue that cannot be imported; ``args[0]`` is the reason."""


def _field(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            raise SkipDialogue("bad_fields")
        d = d[p]
    return d


def _list(d: Any, *path: str) -> list:
    v = _field(d, *path)
    if not isinstance(v, list):
        raise SkipDialogue("bad_fields")
    return v


def dialogue_to_row(d: dict[str, Any], role: str = "seller", key: str = "") -> dict[str, Any]:
    """The lab row of one CraigslistBargain dialogue (raises :class:`SkipDialogue`)."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}: expected one of {ROLES}")
    roles = _list(d, "agent_info", "Role")
    if role not in roles:
        raise SkipDialogue("no_role")
    me = roles.index(role)
    prices = _list(d, "items", "Price")
    cats = _list(d, "items", "Category")
    if me >= len(prices) or me >= len(cats):
        raise SkipDialogue("bad_fields")
    try:
        listing = float(prices[me])
    except (TypeError, ValueError):
        raise SkipDialogue("bad_listing_price") from None
    if not math.isfinite(listing) or listing <= 0:
        raise SkipDialogue("bad_listing_price")
    category = sanitize(cats[me]) or "item"
    who = _list(d, "agent_turn")
    texts = _list(d, "utterance")
    intents = _list(d, "dialogue_acts", "intent")
    acts_price = _list(d, "dialogue_acts", "price")
    if not (len(who) == len(texts) == len(intents) == len(acts_price)) or not who:
        raise SkipDialogue("bad_fields")
    if not any(isinstance(i, str) and i for i in intents):
        raise SkipDialogue("missing_dialogue_acts")
    final = max((k for k, i in enumerate(intents) if i in FINAL_INTENTS), default=-1)
    if final < 0:
        raise SkipDialogue("no_outcome")
    price: float | None = None
    if intents[final] == "accept":
        for k in range(final - 1, -1, -1):
            if intents[k] == "offer":
                try:
                    p = float(acts_price[k])
                except (TypeError, ValueError):
                    p = -1.0
                if math.isfinite(p) and p > 0:
                    price = p
                    break
        if price is None:
            raise SkipDialogue("accept_without_offer")
    events: list[tuple[str, str]] = []
    for k in range(final + 1):
        text = texts[k] if isinstance(texts[k], str) else ""
        intent = intents[k] if isinstance(intents[k], str) else ""
        if text.strip():
            out = sanitize(text)
        elif intent == "offer":
            try:
                p = float(acts_price[k])
            except (TypeError, ValueError):
                p = -1.0
            if not (math.isfinite(p) and p > 0):
                continue
            out = f"offer: {price_text(p)}."
        elif intent in EVENT_TEXT:
            out = EVENT_TEXT[intent]
        else:
            continue  # an empty event we cannot read
        events.append((AGENT if who[k] == me else ENV, out))
    body = merge_consecutive(events)
    if not any(sp == AGENT for sp, _ in body):
        raise SkipDialogue("no_agent_turn")
    reward = reward_for(role, price, listing)
    last_agent = max(i for i, (sp, _) in enumerate(body) if sp == AGENT)
    turns = [{"speaker": ENV, "text": opening_text(role, category, listing), "reward": 0.0}]
    turns += [
        {"speaker": sp, "text": tx, "reward": reward if i == last_agent else 0.0} for i, (sp, tx) in enumerate(body)
    ]
    success = price is not None and 0.5 <= price / listing <= 1.5
    return {
        "env_id": ENV_IDS[role],
        "seed": dialogue_hash(key or json.dumps(d, sort_keys=True)),
        "policy": HUMAN_POLICY,
        "turns": turns,
        "return": float(reward),
        "length": sum(1 for sp, _ in body if sp == AGENT),
        "success": bool(success),
        "terminated": True,
    }


def _records(text: str) -> list[tuple[int, str]]:
    """``(line number, json text)`` per dialogue: JSON lines, or one JSON list."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [(i + 1, json.dumps(x)) for i, x in enumerate(items)]
    return [(i + 1, line) for i, line in enumerate(text.splitlines()) if line.strip()]


def import_text(text: str, role: str = "seller") -> tuple[list[dict[str, Any]], ImportReport]:
    """Rows and report of a CraigslistBargain file's contents."""
    if role not in ROLES:
        raise ValueError(f"role={role!r}: expected one of {ROLES}")
    report = ImportReport()
    rows: list[dict[str, Any]] = []
    for line_no, raw in _records(text):
        report.lines += 1
        try:
            d = json.loads(raw)
        except ValueError:
            report.skip("bad_json", line_no)
            continue
        try:
            if not isinstance(d, dict):
                raise SkipDialogue("bad_fields")
            row = dialogue_to_row(d, role=role, key=raw.strip())
        except SkipDialogue as e:
            report.skip(str(e.args[0]), line_no)
            continue
        report.kept += 1
        intents = d["dialogue_acts"]["intent"]
        final = max(k for k, i in enumerate(intents) if i in FINAL_INTENTS)
        outcome = intents[final] if row["success"] or intents[final] != "accept" else "accept_out_of_range"
        report.outcomes[outcome] += 1
        rows.append(row)
    if report.skipped:
        log.warning("craigslistbargain: skipped %d dialogues: %s", sum(report.skipped.values()), dict(report.skipped))
    return rows, report


def import_file(path: str | os.PathLike, role: str = "seller") -> tuple[list[dict[str, Any]], ImportReport]:
    """Rows and report of a CraigslistBargain JSON-lines file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return import_text(f.read(), role=role)


def metadata(path: str | os.PathLike, report: ImportReport, role: str = "seller") -> dict[str, Any]:
    """The ``metadata.json`` fields of an import (``save_dataset`` adds the split stats)."""
    return {
        "env_id": ENV_IDS[role],
        "env_kwargs": {} if role == "seller" else {"role": "buyer"},
        "source": "craigslistbargain",
        "corpus": "CraigslistBargain (He et al. 2018)",
        "input_file": os.path.basename(os.fspath(path)),
        "policy": HUMAN_POLICY,
        "agent_side": role,
        "sides": "one",
        "seed_semantics": SEED_SEMANTICS,
        "reward": (
            "CHAI: deal at p gives 10 * (p / listing - 1) for the seller (10 * (1 - p / listing) for the "
            "buyer) if 0.5 <= p / listing <= 1.5, else -20; no deal -20; on the agent's last turn"
        ),
        "text": "human utterances sanitised with envs.core.sanitize; offer/accept/reject/quit events in the env's words",
        "import": report.to_dict(),
    }


__all__ = ["ENV_IDS", "SkipDialogue", "dialogue_to_row", "import_file", "import_text", "metadata"]

"""Deal or No Deal: split a pool of books, hats and balls with a partner whose values are hidden.

The rules of Lewis et al. (2017), "Deal or No Deal? End-to-End Learning for Negotiation
Dialogues", with a scripted partner that understands offers by keyword.

Utterance protocol (what the partner understands; also what the corpus importer writes):

* **offer** -- any sentence naming items, with counts as digits, number words
  (``zero``/``no`` .. ``ten``, ``a``/``an``/``single``, ``both``, ``all``/``every``) or
  ``the`` (``the book`` = 1, ``the hats`` = all hats); a bare plural means all of that
  item, a bare singular one. The owner of each item is the nearest preceding pronoun
  (``i``/``me``/``im``/``ill`` = the speaker, ``you``/``u`` = the listener; ``my``/``your`` are
  ignored), overridden by a following ``for me``/``to you``/``mine``/``yours``; a
  negation (``not``, ``don't``, ``can't``, ``never``) after the pronoun flips it. ``the rest``,
  ``everything else``, ``the others``, ``everything``, ``nothing`` and ``one of each`` work
  too. Items the speaker did not place go to the listener if the speaker claimed some
  items for itself, else to the speaker. Examples: ``"i need the book and 2 hats."``,
  ``"you can have the balls."``, ``"i take 2 books and 1 hat, you get 1 book and 3 balls."``.
* **selection** -- an utterance containing ``select`` (or ``selection``), naming the items
  the *speaker* takes; unnamed items count 0: ``"select: 2 books, 0 hats, 1 ball."``.
  Counts are not clipped to the pool (over-claiming is allowed and breaks the deal).
* ``"deal."`` (also ok, okay, sure, yes, agreed, accept, fine) -- accept the proposal on
  the table; ``"no."`` (nope, never, not) -- reject it and ask for a counter-offer;
  ``"no deal."`` (no agreement, quit, walk away) -- leave without agreement.

The partner answers an offer with ``"deal."`` (the offer is now on the table) or a
counter-offer in the fixed form ``"i take <items>, you get <items>."``; after the
agent's ``"deal."`` it makes its **selection** (``"select: 1 book, 0 hats, 2 balls."``,
the partner's own take), after which the agent must select too (an offer, ``deal``,
``no deal`` or ``no`` are read as a selection of that split, the complement, and no
agreement). When the agent selects first, the partner answers with its own selection
(the complement when the split is acceptable to it, else its own last proposal) and the
episode ends.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.core import AGENT, ENV, DialogueEnv, PolicyFactory, Reply, Turn

logger = logging.getLogger(__name__)

ITEMS: tuple[str, str, str] = ("book", "hat", "ball")
"""Item types, in the corpus order (item0, item1, item2)."""
TOTAL_VALUE = 10
"""Each side's values total this over the pool."""
PARTNER_TYPES: tuple[str, ...] = ("greedy", "fair", "accommodating")
"""Scripted partner types (``partner_type="mixed"`` draws one per episode)."""

SELF, OTHER = 0, 1
_ALL, _THE = -1, -2  # count sentinels
_EVERYTHING, _NOTHING, _REST, _EACH = -1, -2, -3, -4  # pseudo items

_TOKEN_RE = re.compile(r"[a-z]+|[0-9]+")
_OPENING_RE = re.compile(
    r"pool: (\d+) books?, (\d+) hats?, (\d+) balls?\. your values: book (\d+), hat (\d+), ball (\d+)\."
)

_ITEM_WORDS: dict[str, tuple[int, bool]] = {
    "book": (0, False), "books": (0, True),
    "hat": (1, False), "hats": (1, True),
    "ball": (2, False), "balls": (2, True),
    "basketball": (2, False), "basketballs": (2, True),
}
_NUMBER_WORDS: dict[str, int] = {
    "zero": 0, "no": 0, "none": 0, "one": 1, "a": 1, "an": 1, "single": 1, "two": 2, "both": 2,
    "couple": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "all": _ALL, "every": _ALL, "each": _ALL,
}
_DETERMINERS = frozenset({"the", "those", "these", "that", "this", "my", "your"})
_ADJECTIVES = frozenset({"other", "remaining", "extra", "more", "of"})
_SELF_WORDS = frozenset({"i", "me", "im", "ill", "id", "ive", "myself", "mine"})
_OTHER_WORDS = frozenset({"you", "u", "youll", "youre", "yourself", "yours"})
_POSTFIX_ONLY = frozenset({"mine", "yours"})
_NEGATIONS = frozenset({"not", "dont", "cant", "wont", "t", "cannot", "never", "nt"})
_REST_WORDS = frozenset({"rest", "others", "remaining", "remainder", "left"})
_ACCEPT_WORDS = frozenset(
    {"deal", "ok", "okay", "sure", "yes", "yeah", "yep", "agreed", "agree", "accept", "fine"}
)
_REJECT_WORDS = frozenset({"no", "nope", "not", "never", "nah", "reject", "refuse", "t"})
_SELECT_WORDS = frozenset({"select", "selection"})

Split = tuple[int, int, int]


# ---------------------------------------------------------------------- scenarios
_COUNTS: tuple[Split, ...] = tuple(
    c for c in itertools.product(range(1, 5), repeat=3) if 5 <= sum(c) <= 7  # type: ignore[misc]
)


#: Every value vector with entries 0..10, in ``itertools.product`` order.
_VALUE_GRID = np.array(list(itertools.product(range(TOTAL_VALUE + 1), repeat=3)), dtype=np.int64)
_VALUE_GRID.setflags(write=False)


@functools.lru_cache(maxsize=None)
def value_vectors(counts: Split) -> tuple[Split, ...]:
    """Every non-negative integer value vector whose total over ``counts`` is 10 (in
    ``itertools.product`` order)."""
    rows = _VALUE_GRID[_VALUE_GRID @ np.asarray(counts, dtype=np.int64) == TOTAL_VALUE]
    return tuple(_t(v) for v in rows.tolist())


@functools.lru_cache(maxsize=None)
def splits(counts: Split) -> np.ndarray:
    """All takes ``(a0, a1, a2)`` with ``0 <= a_i <= counts_i`` (read-only ``int64`` array)."""
    arr = np.array(list(itertools.product(*(range(c + 1) for c in counts))), dtype=np.int64)
    arr.setflags(write=False)
    return arr


@functools.lru_cache(maxsize=None)
def partner_candidates(counts: Split, values: Split) -> np.ndarray:
    """Partner value vectors compatible with the pool and the agent's values.

    Every item type must be worth something to at least one side.
    """
    ws = np.array(value_vectors(counts), dtype=np.int64).reshape(-1, 3)
    arr = ws[(ws + np.asarray(values, dtype=np.int64) > 0).all(axis=1)]
    arr.setflags(write=False)
    return arr


def sample_scenario(rng: np.random.Generator) -> tuple[Split, Split, Split]:
    """Counts (1-4 each, 5-7 in all), agent values and partner values (each total 10).

    Uniform over counts, then over the agent's value vectors, then over the partner's
    compatible value vectors (one ``rng.random`` draw).
    """
    u = rng.random(3).tolist()
    counts = _COUNTS[int(u[0] * len(_COUNTS))]
    vs = value_vectors(counts)
    values = vs[int(u[1] * len(vs))]
    ws = partner_candidates(counts, values)
    partner = ws[int(u[2] * len(ws))]
    return counts, values, (int(partner[0]), int(partner[1]), int(partner[2]))


@functools.lru_cache(maxsize=None)
def _denied_table(counts: Split) -> np.ndarray:
    """``D[i, j]``: items the request ``splits(counts)[i]`` asks for that take ``[j]`` denies, x1000."""
    s = splits(counts)
    arr = np.maximum(s[:, None, :] - s[None, :, :], 0).sum(axis=2) * 1000
    arr.setflags(write=False)
    return arr


def _split_index(counts: Split, take: Sequence[int]) -> int:
    """Row of ``take`` in :func:`splits` (``itertools.product`` order)."""
    return (int(take[0]) * (counts[1] + 1) + int(take[1])) * (counts[2] + 1) + int(take[2])


@functools.lru_cache(maxsize=None)
def _partner_value_table(counts: Split, partner_values: Split) -> tuple[np.ndarray, np.ndarray, int]:
    """The partner's value of the complement of every agent take in :func:`splits`, its
    preference key for counter-offers (its value first, then items left to the agent),
    and the largest value."""
    s = splits(counts)
    pv = (np.asarray(counts) - s) @ np.asarray(partner_values)
    key = pv * 10 + s.sum(axis=1)
    pv.setflags(write=False)
    key.setflags(write=False)
    return pv, key, int(pv.max())


@functools.lru_cache(maxsize=None)
def _split_tuples(counts: Split) -> tuple[Split, ...]:
    """:func:`splits` as tuples of Python ints."""
    return tuple(_t(row) for row in splits(counts).tolist())


# ---------------------------------------------------------------------- text forms
def item_phrase(count: int, item: int) -> str:
    """``"1 book"``, ``"0 hats"``, ``"3 balls"``."""
    return f"{count} {ITEMS[item]}{'' if count == 1 else 's'}"


def _join_and(parts: Sequence[str]) -> str:
    if not parts:
        return "nothing"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _t(x: Sequence[int]) -> Split:
    return (int(x[0]), int(x[1]), int(x[2]))


def items_text(take: Sequence[int]) -> str:
    """The non-zero items of a take, ``"2 books and 1 hat"`` (``"nothing"`` if empty)."""
    return _items_text(_t(take))


@functools.lru_cache(maxsize=None)
def _items_text(take: Split) -> str:
    return _join_and([item_phrase(int(n), i) for i, n in enumerate(take) if n > 0])


def opening_text(counts: Sequence[int], values: Sequence[int]) -> str:
    """The env's opening turn: ``"pool: 2 books, 1 hat, 3 balls. your values: book 3, hat 1, ball 1."``."""
    return _opening_text(_t(counts), _t(values))


@functools.lru_cache(maxsize=None)
def _opening_text(counts: Split, values: Split) -> str:
    pool = ", ".join(item_phrase(int(c), i) for i, c in enumerate(counts))
    vals = ", ".join(f"{ITEMS[i]} {int(v)}" for i, v in enumerate(values))
    return f"pool: {pool}. your values: {vals}."


def parse_opening(text: str) -> tuple[Split, Split] | None:
    """Inverse of :func:`opening_text`: ``(counts, values)`` or ``None``."""
    return _opening_cached(text)


@functools.lru_cache(maxsize=4096)
def _opening_cached(text: str) -> tuple[Split, Split] | None:
    m = _OPENING_RE.search(text)
    if not m:
        return None
    g = [int(x) for x in m.groups()]
    return (g[0], g[1], g[2]), (g[3], g[4], g[5])


def selection_text(take: Sequence[int]) -> str:
    """``"select: 2 books, 0 hats, 1 ball."`` (the speaker's own take, every item named)."""
    return _selection_text(_t(take))


@functools.lru_cache(maxsize=None)
def _selection_text(take: Split) -> str:
    return "select: " + ", ".join(item_phrase(int(n), i) for i, n in enumerate(take)) + "."


def proposal_text(take: Sequence[int], pool: Sequence[int]) -> str:
    """The speaker takes ``take``, the listener the rest: ``"i take 2 books, you get 1 hat."``."""
    return _proposal_text(_t(take), _t(pool))


@functools.lru_cache(maxsize=None)
def _proposal_text(take: Split, pool: Split) -> str:
    rest = [int(c) - int(n) for c, n in zip(pool, take)]
    return f"i take {items_text(take)}, you get {items_text(rest)}."


# ---------------------------------------------------------------------- parsing
@dataclass(frozen=True)
class Parsed:
    """A parsed utterance. ``kind`` is ``offer``, ``select``, ``accept``, ``reject`` or ``walk``.

    ``take`` is the speaker's own take (offers: clipped to the pool; selections: as said).
    """

    kind: str
    take: Split | None = None


def _count_before(tokens: Sequence[str], j: int) -> int | None:
    """The count word governing the item word at ``tokens[j]`` (None: bare item)."""
    k = j - 1
    seen_det = False
    steps = 0
    while k >= 0 and steps < 4:
        w = tokens[k]
        if w.isdigit():
            return int(w)
        if w in _NUMBER_WORDS:
            if w == "no" and seen_det:
                return None
            return _NUMBER_WORDS[w]
        if w in _DETERMINERS:
            seen_det = True
        elif w not in _ADJECTIVES:
            break
        k -= 1
        steps += 1
    return _THE if seen_det else None


def _claims(tokens: Sequence[str]) -> list[list[int]]:
    """``[owner, item_or_pseudo, count]`` claims in sentence order (owner None -> speaker)."""
    claims: list[list[Any]] = []
    pending: list[list[Any]] = []
    owner: int | None = None
    neg = False
    n = len(tokens)
    for i, w in enumerate(tokens):
        prev = tokens[i - 1] if i else ""
        nxt = tokens[i + 1] if i + 1 < n else ""
        if w in _SELF_WORDS or w in _OTHER_WORDS:
            who = SELF if w in _SELF_WORDS else OTHER
            if prev in ("for", "to") or w in _POSTFIX_ONLY:
                for c in pending:
                    c[0] = who
                pending = []
            else:
                owner, neg = who, False
                pending = []
            continue
        if w in _NEGATIONS:
            neg = True
            continue
        cur = owner if owner is None or not neg else 1 - owner
        claim: list[Any] | None = None
        if w in _ITEM_WORDS:
            item, plural = _ITEM_WORDS[w]
            cnt = _count_before(tokens, i)
            if cnt is None:
                cnt = _ALL if plural else 1
            elif cnt == _THE:
                cnt = _ALL if plural else 1
            claim = [cur, item, cnt]
        elif w == "each" and prev == "of" and i >= 2:
            c2 = tokens[i - 2]
            cnt = int(c2) if c2.isdigit() else _NUMBER_WORDS.get(c2, 1)
            claim = [cur, _EACH, 1 if cnt == _ALL else cnt]
        elif w in _REST_WORDS or (w == "else" and prev in ("everything", "anything", "all")):
            claim = [cur, _REST, 0]
        elif w in ("everything", "anything") and nxt != "else":
            claim = [cur, _EVERYTHING, 0]
        elif w == "all" and nxt in ("", "of", "for", "and", "then", "please", "to", "if") and (
            nxt != "of" or tokens[i + 2 : i + 3] == ["it"]
        ):
            claim = [cur, _EVERYTHING, 0]
        elif w == "nothing":
            claim = [cur, _NOTHING, 0]
        if claim is not None:
            claims.append(claim)
            pending.append(claim)
    return claims


def _resolve(claims: list[list[int]], pool: Sequence[int], selection: bool) -> Split:
    own: list[int | None] = [None, None, None]
    other: list[int | None] = [None, None, None]
    rest_owner: int | None = None
    for who, item, cnt in claims:
        who = SELF if who is None else who
        side = own if who == SELF else other
        opp = other if who == SELF else own
        if item >= 0:
            side[item] = int(pool[item]) if cnt == _ALL else int(cnt)
        elif item == _EACH:
            for i in range(3):
                side[i] = int(cnt)
        elif item == _EVERYTHING:
            for i in range(3):
                side[i], opp[i] = int(pool[i]), 0
        elif item == _NOTHING:
            for i in range(3):
                side[i] = 0
        elif item == _REST:
            rest_owner = who
    claimed_own = any(x is not None and x > 0 for x in own)
    take: list[int] = []
    for i in range(3):
        c = int(pool[i])
        if own[i] is not None:
            t = own[i]
        elif other[i] is not None:
            t = max(0, c - min(int(other[i]), c))  # type: ignore[arg-type]
        elif rest_owner is not None:
            t = c if rest_owner == SELF else 0
        elif selection:
            t = 0
        else:
            t = 0 if claimed_own else c
        if not selection:
            t = min(max(int(t), 0), c)
        take.append(int(t))
    return take[0], take[1], take[2]


def parse_utterance(text: str, pool: Sequence[int]) -> Parsed | None:
    """Parse one utterance against the pool; ``None`` when it cannot be understood."""
    return _parse_cached(text, (int(pool[0]), int(pool[1]), int(pool[2])))


@functools.lru_cache(maxsize=8192)
def _parse_cached(text: str, pool: Split) -> Parsed | None:
    tokens = _TOKEN_RE.findall(text.lower())
    if not tokens:
        return None
    claims = _claims(tokens)
    if any(w in _SELECT_WORDS for w in tokens):
        if not claims:
            if "deal" in tokens and "no" not in tokens:
                return Parsed("accept")
            return Parsed("walk") if "no" in tokens or "agreement" in tokens else None
        return Parsed("select", _resolve(claims, pool, selection=True))
    if claims:
        return Parsed("offer", _resolve(claims, pool, selection=False))
    joined = " " + " ".join(tokens) + " "
    if any(p in joined for p in (" no deal ", " no agreement ", " quit ", " walk away ", " nodeal ")):
        return Parsed("walk")
    if any(w in _REJECT_WORDS for w in tokens):
        return Parsed("reject")
    if any(w in _ACCEPT_WORDS for w in tokens):
        return Parsed("accept")
    return None


# ---------------------------------------------------------------------- partner
@dataclass(frozen=True)
class PartnerProfile:
    """A scripted partner's fixed parameters for one episode (values out of 10).

    It proposes splits worth at least ``level`` to itself, starting at ``start`` and
    lowering ``level`` by ``step`` after every counter-offer, down to ``floor``; it
    accepts an offer worth at least ``level`` (``accept_any_above_floor``: at least
    ``floor`` from the start).
    """

    kind: str
    start: float
    floor: float
    step: float
    accept_any_above_floor: bool

    @classmethod
    def sample(cls, kind: str, u: float) -> PartnerProfile:
        """The profile of a ``kind`` partner; ``u`` in [0, 1) picks the floor."""
        if kind == "greedy":
            return cls(kind, 10.0, 6.0 + float(u >= 0.5), 0.5, False)
        if kind == "fair":
            return cls(kind, 7.0, 5.0, 1.0, False)
        if kind == "accommodating":
            return cls(kind, 6.0, 2.0 + float(u >= 0.5), 1.0, True)
        raise ValueError(f"unknown partner type {kind!r}; expected one of {PARTNER_TYPES}")


class DealOrNoDealEnv(DialogueEnv):
    """Deal or No Deal (Lewis et al. 2017): divide books, hats and balls with a partner.

    **Description.** A pool of three item types (book, hat, ball), 1-4 of each and 5-7
    items in all, is to be divided. The agent and the partner each have private
    non-negative integer values per item type that total 10 over the pool; every item
    type is worth something to at least one side. They alternate free-form utterances;
    the negotiation ends with both sides' selections (see the module docstring for the
    utterance protocol). The partner's values and type (``greedy``: asks for nearly
    everything and concedes half a point per counter-offer down to 6-7; ``fair``: starts
    at 7 and settles for an even split, 5; ``accommodating``: accepts any offer worth
    2-3 to it) are hidden and drawn per episode.

    **Action space.** ``Text`` over :data:`envs.core.CHARSET`, up to 256 characters.

    **Observation space.** ``Text``: the transcript (``observation="history"``) or the
    latest env utterance (``observation="last"``).

    **Rewards.** On the turn that completes both selections: the agent's value of what
    it receives (0-10) if the two selections are complementary (they add up to the
    pool), else 0. No agreement (``"no deal."``) gives 0; so does hitting the turn
    limit. An utterance the partner cannot parse gets ``"i do not understand."`` and
    ``invalid_penalty`` (default 0). All other turns give 0.

    **Starting state.** ``"pool: 2 books, 1 hat, 3 balls. your values: book 3, hat 1,
    ball 1."``; the agent speaks first.

    **Episode end.** Terminated when both sides have selected or one side says "no
    deal"; truncated after ``max_turns`` agent utterances (default 10). ``info["success"]``
    is true on an agreement.

    **Arguments.** ``partner_type``: ``"mixed"`` (one of :data:`PARTNER_TYPES` uniformly
    per episode) or a single type; ``max_turns``; ``invalid_penalty``; ``observation``;
    ``render_mode``. ``reset(options=...)`` may fix the scenario (``counts``, ``values``,
    ``partner_values``, e.g. one from the corpus) and/or the ``partner_type``.

    **Version history.** v0: initial version.
    """

    def __init__(
        self,
        partner_type: str = "mixed",
        max_turns: int = 10,
        invalid_penalty: float = 0.0,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            max_turns=max_turns, observation=observation, invalid_penalty=invalid_penalty, render_mode=render_mode
        )
        if partner_type != "mixed" and partner_type not in PARTNER_TYPES:
            raise ValueError(f"partner_type={partner_type!r}: expected 'mixed' or one of {PARTNER_TYPES}")
        self.partner_type = partner_type
        self._counts: Split = (1, 1, 1)
        self._values: Split = (0, 0, 0)
        self._partner_values: Split = (0, 0, 0)
        self._profile = PartnerProfile("fair", 7.0, 5.0, 1.0, False)
        self._pv = np.zeros(0)
        self._pref = np.zeros(0)
        self._pv_max = 0
        self._level = 0.0
        self._standing: Split | None = None
        self._last_request: Split | None = None
        self._partner_selection: Split | None = None

    # ------------------------------------------------------------------ hooks
    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        rng = self.np_random
        self._counts, self._values, self._partner_values = sample_scenario(rng)
        u = rng.random(2).tolist()
        kind = self.partner_type
        if options:
            self._apply_options(options)
            kind = str(options.get("partner_type", kind))
            if kind != "mixed" and kind not in PARTNER_TYPES:
                raise ValueError(f"options['partner_type']={kind!r}: expected 'mixed' or one of {PARTNER_TYPES}")
        if kind == "mixed":
            kind = PARTNER_TYPES[int(u[0] * len(PARTNER_TYPES))]
        self._profile = PartnerProfile.sample(kind, u[1])
        self._pv, self._pref, self._pv_max = _partner_value_table(self._counts, self._partner_values)
        self._level = min(self._profile.start, float(self._pv_max))
        self._standing = None
        self._last_request = None
        self._partner_selection = None
        return [opening_text(self._counts, self._values)]

    def _apply_options(self, options: dict[str, Any]) -> None:
        """A given scenario (``counts``, ``values``, ``partner_values``), e.g. a corpus one."""
        keys = ("counts", "values", "partner_values")
        if not any(k in options for k in keys):
            return
        try:
            counts, values, partner = (tuple(int(x) for x in options[k]) for k in keys)
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"reset options: give all of {keys} as three integers each") from None
        if not (len(counts) == len(values) == len(partner) == 3) or min(counts) < 1:
            raise ValueError(f"reset options: bad scenario {counts}, {values}, {partner}")
        for v in (values, partner):
            if min(v) < 0 or sum(c * x for c, x in zip(counts, v)) != TOTAL_VALUE:
                raise ValueError(f"reset options: values {v} must be >= 0 and total {TOTAL_VALUE} over {counts}")
        self._counts, self._values, self._partner_values = counts, values, partner  # type: ignore[assignment]

    def hidden_state(self) -> dict[str, Any]:
        p = self._profile
        return {
            "counts": self._counts,
            "values": self._values,
            "partner_values": self._partner_values,
            "partner_type": p.kind,
            "partner_floor": p.floor,
        }

    def _respond(self, utterance: str) -> Reply | None:
        parsed = parse_utterance(utterance, self._counts)
        if parsed is None:
            return None
        if self._partner_selection is not None:
            return self._final(parsed, utterance)
        if parsed.kind == "select":
            return self._agent_selects(parsed.take)  # type: ignore[arg-type]
        if parsed.kind == "walk":
            return Reply("no deal.", 0.0, terminated=True)
        if parsed.kind == "accept" and self._standing is not None:
            self._partner_selection = self._complement(self._standing)
            return Reply(selection_text(self._partner_selection))
        if parsed.kind == "offer":
            take = parsed.take
            assert take is not None
            self._last_request = take
            if self._partner_value_of(take) >= self._accept_level():
                self._standing = take
                return Reply("deal.")
            return self._counter(concede=True)
        # reject, or accept with nothing on the table
        return self._counter(concede=parsed.kind == "reject")

    # --------------------------------------------------------------- partner
    def _complement(self, take: Sequence[int]) -> Split:
        c = self._counts
        return (c[0] - int(take[0]), c[1] - int(take[1]), c[2] - int(take[2]))

    def _value(self, take: Sequence[int]) -> int:
        return int(sum(int(n) * v for n, v in zip(take, self._values)))

    def _partner_value_of(self, agent_take: Sequence[int]) -> int:
        return int(sum((c - int(n)) * w for c, n, w in zip(self._counts, agent_take, self._partner_values)))

    def _accept_level(self) -> float:
        return self._profile.floor if self._profile.accept_any_above_floor else self._level

    def _counter(self, concede: bool) -> Reply:
        """Counter-offer: among splits worth >= level to the partner, the one denying the
        fewest items of the agent's last request, then the best for the partner, then the
        one leaving the agent the most items."""
        if concede and self._standing is not None:
            self._level = max(self._profile.floor, self._level - self._profile.step)
        pv = self._pv
        key = self._pref
        if self._last_request is not None:
            key = key - _denied_table(self._counts)[_split_index(self._counts, self._last_request)]
        if self._level <= self._pv_max:
            key = np.where(pv >= self._level - 1e-9, key, -(10**9))
        take = _split_tuples(self._counts)[int(key.argmax())]
        self._standing = take
        return Reply(proposal_text(self._complement(take), self._counts))

    def _agent_selects(self, take: Split) -> Reply:
        """The agent selected first: the partner selects and the game ends."""
        fits = all(0 <= t <= c for t, c in zip(take, self._counts))
        if fits and self._partner_value_of(take) >= self._accept_level():
            mine = self._complement(take)
        else:
            standing = self._standing
            mine = self._complement(standing) if standing is not None else self._best_for_partner()
        return self._outcome(take, mine, selection_text(mine))

    def _best_for_partner(self) -> Split:
        i = int(np.argmax(self._pref))
        return self._complement(_split_tuples(self._counts)[i])

    def _final(self, parsed: Parsed, utterance: str) -> Reply:
        """The partner has selected; the agent's utterance is read as its selection."""
        mine = self._partner_selection
        assert mine is not None
        if parsed.kind in ("select", "offer"):
            take = parsed.take
            if parsed.kind == "offer":  # re-read with selection semantics
                take = _resolve(_claims(_TOKEN_RE.findall(utterance)), self._counts, selection=True)
        elif parsed.kind == "accept":
            take = self._complement(mine)
        else:  # walk / reject: no agreement
            return Reply("no deal.", 0.0, terminated=True)
        assert take is not None
        r = self._outcome(take, mine, "")
        return Reply("deal." if r.success else "no deal.", r.reward, terminated=True, success=r.success)

    def _outcome(self, agent_take: Sequence[int], partner_take: Sequence[int], text: str) -> Reply:
        agreed = all(int(a) + int(b) == c for a, b, c in zip(agent_take, partner_take, self._counts))
        reward = float(self._value(agent_take)) if agreed else 0.0
        return Reply(text, reward, terminated=True, success=agreed)

    # ------------------------------------------------------------ vocabulary
    @classmethod
    def vocabulary(cls) -> list[str]:
        words = set(_ITEM_WORDS) | set(_NUMBER_WORDS) | _DETERMINERS | _ADJECTIVES | _SELF_WORDS
        words |= _OTHER_WORDS | _NEGATIONS | _REST_WORDS | _ACCEPT_WORDS | _REJECT_WORDS | _SELECT_WORDS
        words |= {
            "pool", "your", "values", "take", "get", "need", "want", "have", "give", "can", "for", "to",
            "and", "else", "everything", "anything", "nothing", "agreement", "quit", "walk", "away",
            "do", "understand", "how", "about", "would", "like", "keep", "it", "if", "then", "please",
        }
        return sorted(words)

    @classmethod
    def help_text(cls) -> str:
        return (
            "divide the books, hats and balls; you score your values of what you get (0 without a deal).\n"
            "  offer:   i take 2 books and 1 hat, you get the rest. | you can have the balls. | i need the book.\n"
            "  answer:  deal. (accept the proposal on the table) | no. (ask for a better one) | no deal. (leave)\n"
            "  select:  select: 2 books, 0 hats, 1 ball. (your own take; after the partner selects, or to end)\n"
            "counts as digits or words (two, both, all, a); 'the rest', 'everything else', 'one of each'."
        )

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        return {
            "random": lambda env, rng: RandomNegotiator(rng),
            "naive": lambda env, rng: NaiveNegotiator(),
            "expert": lambda env, rng: ExpertNegotiator(max_turns=getattr(env, "max_turns", 10)),
        }


# ---------------------------------------------------------------------- policies
def _scenario(turns: Sequence[Turn]) -> tuple[Split, Split]:
    """Pool and own values from the opening turn (policies read them from the text)."""
    if turns and turns[0].speaker == ENV:
        sc = _opening_cached(turns[0].text)
        if sc is not None:
            return sc
    for t in turns:
        if t.speaker == ENV:
            sc = parse_opening(t.text)
            if sc is not None:
                return sc
    return (1, 1, 1), (0, 0, 0)


def _last_env(turns: Sequence[Turn]) -> str:
    return turns[-1].text if turns and turns[-1].speaker == ENV else ""


def _partner_selected(turns: Sequence[Turn]) -> Split | None:
    """The partner's selection if its latest utterance is one."""
    last = _last_env(turns)
    if not last.startswith("select:") or len(turns) < 2:
        return None
    counts, _ = _scenario(turns)
    p = parse_utterance(last, counts)
    return p.take if p is not None and p.kind == "select" else None


@dataclass
class RandomNegotiator:
    """Uniform over the utterance kinds: a random offer, deal, no, no deal, a random selection."""

    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        counts, _ = _scenario(turns)
        u = self.rng.random(4)
        take = tuple(int(x * (c + 1)) for x, c in zip(u, counts))
        kind = int(u[3] * 5)
        if kind == 0:
            return proposal_text(take, counts)
        if kind == 1:
            return "deal."
        if kind == 2:
            return "no."
        if kind == 3:
            return "no deal."
        return selection_text(take)


@dataclass
class NaiveNegotiator:
    """Asks for its most valuable item type, then accepts whatever the partner answers."""

    def act(self, turns: Sequence[Turn]) -> str:
        counts, values = _scenario(turns)
        sel = _partner_selected(turns)
        if sel is not None:
            return selection_text(tuple(c - s for c, s in zip(counts, sel)))
        n_agent = sum(1 for t in turns if t.speaker == AGENT)
        if n_agent == 0:
            best = int(np.argmax(values))
            ask = [0, 0, 0]
            ask[best] = counts[best]
            return f"i need {items_text(ask)}."
        last = _last_env(turns)
        if last == "deal.":
            for t in reversed(turns):
                if t.speaker == AGENT:
                    p = parse_utterance(t.text, counts)
                    if p is not None and p.take is not None:
                        return selection_text(p.take)
                    break
        return "deal."


@dataclass
class ExpertNegotiator:
    """Models the partner's values from its proposals and holds out for a high, acceptable split.

    Belief: a posterior over the partner value vectors compatible with the pool (total
    10, every item worth something to someone), with log-likelihood ``beta * w . take / 10``
    for each partner proposal (a partner asks for what it values) and for each offer it
    accepted, and ``-beta/2 * w . take / 10`` for each offer it rejected. Each turn it
    proposes the split maximising its own value subject to an expected partner value of
    at least ``aspiration[k]`` (rising with the turn index ``k``), accepts the partner's
    proposal by selecting it when it is worth as much as that plan or the turn limit
    is close, and answers a partner selection with the complement.
    """

    max_turns: int = 10
    beta: float = 3.0
    aspiration: tuple[float, ...] = (3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5)

    def act(self, turns: Sequence[Turn]) -> str:
        counts, values = _scenario(turns)
        pool = np.asarray(counts)
        sel = _partner_selected(turns)
        if sel is not None:
            return selection_text(tuple(c - s for c, s in zip(counts, sel)))
        last = _last_env(turns)
        my_last: Split | None = None
        partner_prop: Split | None = None
        W = partner_candidates(counts, values)
        if W.size == 0:
            return "deal."
        logp = np.zeros(len(W))
        for i, t in enumerate(turns):
            if t.speaker == AGENT:
                p = parse_utterance(t.text, counts)
                my_last = p.take if p is not None and p.kind == "offer" else my_last
                continue
            if i == 0:
                continue
            p = parse_utterance(t.text, counts)
            if p is None:
                continue
            if p.kind == "offer" and p.take is not None:
                # p.take is the partner's take; the agent's take is the complement
                partner_prop = tuple(int(c - x) for c, x in zip(counts, p.take))  # type: ignore[assignment]
                logp += self.beta * (W @ np.asarray(p.take)) / TOTAL_VALUE
                if my_last is not None:
                    logp -= 0.5 * self.beta * (W @ (pool - np.asarray(my_last))) / TOTAL_VALUE
            elif p.kind == "accept" and my_last is not None:
                logp += self.beta * (W @ (pool - np.asarray(my_last))) / TOTAL_VALUE
        if last == "deal." and my_last is not None:
            return selection_text(my_last)
        post = np.exp(logp - logp.max())
        post /= post.sum()
        S = splits(counts)
        own = S @ np.asarray(values)
        exp_pv = post @ (W @ (pool - S).T)
        k = sum(1 for t in turns if t.speaker == AGENT)
        remaining = self.max_turns - k
        asp = self.aspiration[min(k, len(self.aspiration) - 1)]
        ok = exp_pv >= asp - 1e-9
        if not ok.any():
            ok = exp_pv >= exp_pv.max() - 1e-9
        key = np.where(ok, own * 100.0 + exp_pv, -np.inf)
        plan = S[int(np.argmax(key))]
        plan_value = int(own[int(np.argmax(key))])
        if partner_prop is not None:
            prop_value = int(np.dot(partner_prop, values))
            if prop_value >= plan_value or remaining <= 1:
                return selection_text(partner_prop)
        if remaining <= 1:
            return selection_text(tuple(int(x) for x in plan))
        return proposal_text(tuple(int(x) for x in plan), counts)


__all__ = [
    "DealOrNoDealEnv", "ExpertNegotiator", "ITEMS", "NaiveNegotiator", "PARTNER_TYPES", "Parsed",
    "PartnerProfile", "RandomNegotiator", "item_phrase", "items_text", "opening_text", "parse_opening",
    "parse_utterance", "proposal_text", "sample_scenario", "selection_text", "splits", "value_vectors",
]

"""Price bargaining over a listing, in the style of CraigslistBargain (He et al. 2018).

Utterance protocol (what the partner understands; also what the corpus importer writes):

* **price offer** -- any utterance with a price: ``"how about $450?"``, ``"$400 is my best."``,
  ``"i can do 1,200"``, ``"1.2k"``. Prices are digits with an optional ``$``, thousands
  commas, decimals and a ``k`` suffix; when several appear, the last plausible one counts
  (plausible: between 5% and 20 times the listing price). Number words (``"twelve
  hundred"``) are not parsed.
* ``"deal."`` (ok, okay, sure, yes, agreed, accept, fine, sold) -- accept the partner's
  price on the table (with none on the table, the partner names its price).
* ``"no."`` (nope, too high, too low, cannot) -- reject: the partner concedes and counters.
* ``"no deal."`` (quit, bye, walk away, goodbye) -- leave without a deal.

The partner answers ``"deal."`` (episode ends with a deal at the agent's price),
``"how about $380?"`` (a counter-offer, now on the table), or ``"no deal. bye."``
(it walks away). The importer renders CraigslistBargain's offer/accept/reject/quit
events as ``"offer: $243."``, ``"deal."``, ``"no deal."`` and ``"no deal. bye."``.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.core import AGENT, ENV, DialogueEnv, PolicyFactory, Reply, Turn

logger = logging.getLogger(__name__)

ROLES: tuple[str, str] = ("seller", "buyer")
PARTNER_TYPES: tuple[str, ...] = ("patient", "impatient", "bargain_hunter")
"""Scripted partner types (``partner_type="mixed"`` draws one per episode)."""

#: Category -> (low, high) listing price range (log-uniform).
CATEGORIES: dict[str, tuple[float, float]] = {
    "furniture": (20.0, 1000.0),
    "housing": (800.0, 4000.0),
    "electronics": (20.0, 1000.0),
    "bike": (50.0, 1500.0),
    "car": (1500.0, 20000.0),
    "phone": (30.0, 800.0),
}
_CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)

NO_DEAL_REWARD = -20.0
"""CHAI's reward for no deal, and for a deal outside [0.5, 1.5] x listing."""
PRICE_RANGE = (0.5, 1.5)

_PRICE_RE = re.compile(r"(\$)?(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?( ?k\b)?")
_TOKEN_RE = re.compile(r"[a-z]+")
_OPENING_RE = re.compile(r"you are the (seller|buyer)\. listing: ([a-z ]+) for \$(\d+)\.")
_ACCEPT_WORDS = frozenset(
    {"deal", "ok", "okay", "sure", "yes", "yeah", "agreed", "agree", "accept", "fine", "sold"}
)
_REJECT_WORDS = frozenset({"no", "nope", "cannot", "cant", "t", "not", "never", "nah", "reject", "high", "low"})
_WALK_PHRASES: tuple[str, ...] = (" no deal ", " quit ", " bye ", " goodbye ", " walk away ", " forget it ")


def reward_for(role: str, price: float | None, listing: float) -> float:
    """CHAI's reward: seller ``10 * (p / listing - 1)``, buyer ``10 * (1 - p / listing)``.

    Only for ``0.5 <= p / listing <= 1.5``; outside that range, and with no deal
    (``price=None``), the reward is :data:`NO_DEAL_REWARD` (-20).
    """
    if price is None or listing <= 0:
        return NO_DEAL_REWARD
    x = price / listing
    if not PRICE_RANGE[0] <= x <= PRICE_RANGE[1]:
        return NO_DEAL_REWARD
    return 10.0 * (x - 1.0) if role == "seller" else 10.0 * (1.0 - x)


def parse_price(text: str, listing: float | None = None) -> float | None:
    """The last plausible price in ``text`` (``"$1,200"``, ``"1.2k"``, ``"450"``), or ``None``.

    Never raises. With ``listing``, only prices between 5% and 20x the listing count.
    """
    found: float | None = None
    for m in _PRICE_RE.finditer(text.lower()):
        dollar, digits, frac, k = m.groups()
        try:
            v = float(digits.replace(",", "") + (frac or ""))
        except ValueError:
            continue
        if k:
            v *= 1000.0
        if not math.isfinite(v) or v <= 0:
            continue
        if listing is not None and listing > 0 and not 0.05 * listing <= v <= 20.0 * listing:
            continue
        found = v
    return found


@dataclass(frozen=True)
class Parsed:
    """A parsed utterance: ``kind`` is ``offer`` (with ``price``), ``accept``, ``reject`` or ``walk``."""

    kind: str
    price: float | None = None


@functools.lru_cache(maxsize=8192)
def parse_utterance(text: str, listing: float | None = None) -> Parsed | None:
    """Parse one utterance; ``None`` when it cannot be understood."""
    price = parse_price(text, listing)
    if price is not None:
        return Parsed("offer", price)
    tokens = _TOKEN_RE.findall(text.lower())
    if not tokens:
        return None
    joined = " " + " ".join(tokens) + " "
    if any(p in joined for p in _WALK_PHRASES):
        return Parsed("walk")
    if any(w in _REJECT_WORDS for w in tokens):
        return Parsed("reject")
    if any(w in _ACCEPT_WORDS for w in tokens):
        return Parsed("accept")
    return None


def nice_price(price: float, listing: float) -> int:
    """Round to a human-looking price: whole dollars under $100, then 5, 10, 50."""
    step = 1 if listing < 100 else 5 if listing < 1000 else 10 if listing < 5000 else 50
    return max(step, int(round(price / step)) * step)


def opening_text(role: str, category: str, listing: float) -> str:
    """``"you are the seller. listing: bike for $450."``"""
    return f"you are the {role}. listing: {category} for ${int(round(listing))}."


def parse_opening(text: str) -> tuple[str, str, float] | None:
    """Inverse of :func:`opening_text`: ``(role, category, listing)`` or ``None``."""
    m = _OPENING_RE.search(text)
    if not m:
        return None
    return m.group(1), m.group(2), float(m.group(3))


def price_text(price: float) -> str:
    return f"${int(round(price))}"


# ---------------------------------------------------------------------- partner
@dataclass(frozen=True)
class PartnerProfile:
    """The partner's hidden parameters, as fractions of the listing price.

    It opens at ``target``, concedes ``rate`` of the remaining gap to ``reservation``
    (the most a buyer pays / the least a seller takes) after every rejected round,
    accepts any agent price at least as good as its own next offer (``eager``: any price
    within its reservation from the second turn on, or within ``gap`` of its next
    offer), and walks away once ``patience`` agent turns have passed without a deal.
    """

    kind: str
    target: float
    reservation: float
    rate: float
    patience: int
    eager: bool
    gap: float

    @classmethod
    def sample(cls, kind: str, partner_role: str, u: Sequence[float], max_turns: int) -> PartnerProfile:
        """Draw a profile from four uniforms ``u`` in [0, 1)."""
        lerp = lambda lo, hi, x: lo + (hi - lo) * float(x)  # noqa: E731
        if kind == "patient":
            t, r, rate, patience, eager = lerp(0.6, 0.8, u[0]), lerp(0.85, 1.05, u[1]), 0.2, max_turns, False
        elif kind == "impatient":
            t, r, rate, eager = lerp(0.7, 0.9, u[0]), lerp(0.9, 1.1, u[1]), 0.45, True
            patience = 3 + int(u[2] * 3)
        elif kind == "bargain_hunter":
            t, r, rate, patience, eager = lerp(0.45, 0.6, u[0]), lerp(0.65, 0.85, u[1]), 0.2, 6, False
        else:
            raise ValueError(f"unknown partner type {kind!r}; expected one of {PARTNER_TYPES}")
        if partner_role == "seller":  # mirror around the listing price: sellers want more
            t, r = 2.0 - t, 2.0 - r
        return cls(kind, t, r, rate, patience, eager, 0.03)


class BargainingEnv(DialogueEnv):
    """Haggle over the price of a Craigslist-style listing with a scripted partner.

    **Description.** Both sides see a listing (category and listing price). The agent
    is the seller (``role="seller"``, default) or the buyer; the partner plays the other
    side with a hidden target price, reservation price (budget) and type: ``patient``
    (opens at 60-80% of the listing, concedes 20% of the gap a round, never walks
    away), ``impatient`` (opens at 70-90%, concedes fast, accepts any price within its
    budget of 90-110% from the second turn on, walks away after 3-5 turns),
    ``bargain_hunter`` (opens at 45-60%, budget 65-85%, walks away after 6 turns). For
    a buyer agent the partner is a seller with the same types mirrored around the
    listing price (e.g. a patient seller opens at 120-140% and will go down to 95-115%).
    See the module docstring for the utterance protocol.

    **Action space.** ``Text`` over :data:`envs.core.CHARSET`, up to 256 characters.

    **Observation space.** ``Text``: the transcript or (``observation="last"``) the
    latest env utterance.

    **Rewards.** CHAI's CraigslistBargain reward on the turn that ends the episode: a
    deal at price ``p`` gives the seller ``10 * (p / listing - 1)`` and the buyer
    ``10 * (1 - p / listing)`` if ``0.5 <= p / listing <= 1.5``, else -20; no deal gives
    -20 (the agent or the partner walks away, or the partner leaves at the turn limit).
    An utterance the partner cannot parse gets ``"i do not understand."`` and
    ``invalid_penalty`` (default 0). All other turns give 0.

    **Starting state.** ``"you are the seller. listing: bike for $450."``; the agent speaks first.

    **Episode end.** Terminated on a deal or a walk-away. On the ``max_turns``-th agent
    utterance (default 10) without a deal the partner leaves (``"no deal. i have to
    go."``, -20, terminated), so the no-deal penalty is always paid on the last agent
    turn. ``info["success"]`` is true on a deal inside the [0.5, 1.5] x listing range.

    **Arguments.** ``role`` (``"seller"``/``"buyer"``), ``partner_type`` (``"mixed"`` or
    one of :data:`PARTNER_TYPES`), ``max_turns``, ``invalid_penalty``, ``observation``,
    ``render_mode``. ``reset(options=...)`` may fix ``category``, ``listing`` (whole
    dollars) and/or ``partner_type``.

    **Version history.** v0: initial version.
    """

    def __init__(
        self,
        role: str = "seller",
        partner_type: str = "mixed",
        max_turns: int = 10,
        invalid_penalty: float = 0.0,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            max_turns=max_turns, observation=observation, invalid_penalty=invalid_penalty, render_mode=render_mode
        )
        if role not in ROLES:
            raise ValueError(f"role={role!r}: expected one of {ROLES}")
        if partner_type != "mixed" and partner_type not in PARTNER_TYPES:
            raise ValueError(f"partner_type={partner_type!r}: expected 'mixed' or one of {PARTNER_TYPES}")
        self.role = role
        self.partner_role = "buyer" if role == "seller" else "seller"
        self.partner_type = partner_type
        self._category = _CATEGORY_NAMES[0]
        self._listing = 100.0
        self._profile = PartnerProfile("patient", 0.7, 0.9, 0.2, max_turns, False, 0.03)
        self._offer: float | None = None  # partner's price on the table, fraction of listing

    # ------------------------------------------------------------------ hooks
    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        u = self.np_random.random(7).tolist()
        self._category = _CATEGORY_NAMES[int(u[0] * len(_CATEGORY_NAMES))]
        lo, hi = CATEGORIES[self._category]
        raw = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * float(u[1]))
        self._listing = float(nice_price(raw, raw))
        kind = self.partner_type
        if options:
            if "category" in options:
                cat = str(options["category"])
                if cat not in CATEGORIES:
                    raise ValueError(f"options['category']={cat!r}: expected one of {_CATEGORY_NAMES}")
                self._category = cat
            if "listing" in options:
                listing = float(options["listing"])
                if not (math.isfinite(listing) and listing >= 1):
                    raise ValueError(f"options['listing']={listing!r}: expected a price >= 1")
                self._listing = float(round(listing))
            kind = str(options.get("partner_type", kind))
            if kind != "mixed" and kind not in PARTNER_TYPES:
                raise ValueError(f"options['partner_type']={kind!r}: expected 'mixed' or one of {PARTNER_TYPES}")
        if kind == "mixed":
            kind = PARTNER_TYPES[int(u[2] * len(PARTNER_TYPES))]
        self._profile = PartnerProfile.sample(kind, self.partner_role, u[3:], self.max_turns)
        self._offer = None
        return [opening_text(self.role, self._category, self._listing)]

    def hidden_state(self) -> dict[str, Any]:
        p = self._profile
        return {
            "category": self._category,
            "listing": self._listing,
            "partner_type": p.kind,
            "target": round(p.target * self._listing, 6),
            "reservation": round(p.reservation * self._listing, 6),
            "patience": p.patience,
        }

    def _respond(self, utterance: str) -> Reply | None:
        parsed = parse_utterance(utterance, self._listing)
        last_turn = self.agent_turns + 1 >= self.max_turns
        if parsed is None:
            if last_turn:
                return Reply(
                    "i do not understand. no deal, i have to go.", self.invalid_penalty + NO_DEAL_REWARD,
                    terminated=True,
                )
            return None
        if parsed.kind == "walk":
            return Reply("no deal.", NO_DEAL_REWARD, terminated=True)
        if parsed.kind == "accept" and self._offer is not None:
            return self._deal(self._offer * self._listing, "deal.")
        if parsed.kind == "offer":
            assert parsed.price is not None
            x = parsed.price / self._listing
            if self._partner_accepts(x, last_turn):
                return self._deal(parsed.price, "deal.")
        # a price the partner does not take, a rejection, or "deal" with nothing on the table
        if last_turn:
            return Reply("no deal. i have to go.", NO_DEAL_REWARD, terminated=True)
        if self.agent_turns + 1 >= self._profile.patience:
            return Reply("no deal. bye.", NO_DEAL_REWARD, terminated=True)
        self._offer = self._next_offer()
        return Reply(f"how about {price_text(self._offer * self._listing)}?")

    # --------------------------------------------------------------- partner
    def _better(self, x: float, y: float) -> bool:
        """Whether price fraction ``x`` is at least as good as ``y`` for the partner."""
        return x <= y + 1e-9 if self.partner_role == "buyer" else x >= y - 1e-9

    def _next_offer(self) -> float:
        p = self._profile
        if self._offer is None:
            x = p.target
        else:
            x = self._offer + p.rate * (p.reservation - self._offer)
        return nice_price(x * self._listing, self._listing) / self._listing

    def _partner_accepts(self, x: float, last_turn: bool) -> bool:
        p = self._profile
        nxt = self._next_offer()
        if self._better(x, nxt):
            return True
        if not self._better(x, p.reservation):
            return False
        if p.eager and self.agent_turns >= 1:
            return True
        return abs(x - nxt) <= p.gap or last_turn

    def _deal(self, price: float, text: str) -> Reply:
        r = reward_for(self.role, price, self._listing)
        in_range = PRICE_RANGE[0] <= price / self._listing <= PRICE_RANGE[1]
        return Reply(text, r, terminated=True, success=in_range)

    # ------------------------------------------------------------ vocabulary
    @classmethod
    def vocabulary(cls) -> list[str]:
        words = set(_ACCEPT_WORDS) | set(_REJECT_WORDS) | set(_CATEGORY_NAMES) | set(ROLES)
        for p in _WALK_PHRASES:
            words |= set(p.split())
        words |= {
            "you", "are", "the", "listing", "for", "how", "about", "i", "have", "to", "go", "do",
            "understand", "offer", "is", "my", "best", "can", "price", "k", "too", "much", "bargain",
            "hunter", "final", "it", "that", "what", "would", "take", "pay",
        }
        return sorted(words)

    @classmethod
    def help_text(cls) -> str:
        return (
            "haggle over the listing's price (seller: high is good; buyer: low is good).\n"
            "  offer:   how about $450? | $400 is my best. | i can do 1,200 | 1.2k\n"
            "  answer:  deal. (accept the price on the table) | no. (ask the partner to move) | no deal. (leave)\n"
            "a deal outside 0.5-1.5 times the listing, or no deal, scores -20."
        )

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        return {
            "random": lambda env, rng: RandomBargainer(rng),
            "anchoring_low": lambda env, rng: AnchoringBargainer(),
            "expert": lambda env, rng: ExpertBargainer(max_turns=getattr(env, "max_turns", 10)),
        }


# ---------------------------------------------------------------------- policies
def _listing_of(turns: Sequence[Turn]) -> tuple[str, float]:
    for t in turns:
        if t.speaker == ENV:
            o = parse_opening(t.text)
            if o is not None:
                return o[0], o[2]
    return "seller", 100.0


def _partner_prices(turns: Sequence[Turn], listing: float) -> list[float]:
    """The partner's counter-offers so far, in dollars (the opening excluded)."""
    out: list[float] = []
    for t in turns[1:]:
        if t.speaker == ENV:
            p = parse_price(t.text, listing)
            if p is not None:
                out.append(p)
    return out


@dataclass
class RandomBargainer:
    """Uniform over: a random price in [0.3, 1.7] x listing, deal, no, no deal."""

    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        _, listing = _listing_of(turns)
        u = self.rng.random(2)
        kind = int(u[0] * 4)
        if kind == 0:
            return f"how about {price_text(nice_price((0.3 + 1.4 * float(u[1])) * listing, listing))}?"
        return ("deal.", "no.", "no deal.")[kind - 1]


@dataclass
class AnchoringBargainer:
    """Anchors near the partner's side (90% of the listing as a seller, 110% as a buyer)
    and accepts the partner's first counter-offer: concedes to a poor price."""

    def act(self, turns: Sequence[Turn]) -> str:
        role, listing = _listing_of(turns)
        if not any(t.speaker == AGENT for t in turns):
            x = 0.9 if role == "seller" else 1.1
            return f"how about {price_text(nice_price(x * listing, listing))}?"
        return "deal."


@dataclass
class ExpertBargainer:
    """Reads the partner's type from its offers and concedes just enough.

    Works in "gain space" ``y = p / listing`` for a seller and ``y = 2 - p / listing`` for
    a buyer (the partner types are mirrored the same way). It opens at ``open_at``; a
    first counter-offer at or below ``hunter_below`` marks a bargain hunter (it then
    concedes half the gap a round and closes by the 5th utterance, before the hunter
    walks away); a partner that moves by ``fast_step`` or more in one round looks
    impatient (close at once); otherwise it concedes ``concede`` of the gap a round and
    accepts when the gap is below ``close_gap`` or at the last turn. It never accepts a
    price outside [0.5, 1.5] x listing (that pays -20, as no deal does).
    """

    max_turns: int = 10
    open_at: float = 1.1
    second_ask: float = 0.95
    concede: float = 0.3
    close_gap: float = 0.03
    hunter_below: float = 0.6
    fast_step: float = 0.07

    def act(self, turns: Sequence[Turn]) -> str:
        role, listing = _listing_of(turns)
        sign = 1.0 if role == "seller" else -1.0
        to_y = lambda x: 1.0 + sign * (x - 1.0)  # noqa: E731  (an involution)
        k = sum(1 for t in turns if t.speaker == AGENT)
        theirs = [to_y(p / listing) for p in _partner_prices(turns, listing)]
        asked = (parse_price(t.text, listing) for t in turns if t.speaker == AGENT)
        mine = [to_y(p / listing) for p in asked if p]
        if not theirs:
            return self._ask(self.open_at, to_y, listing)
        bid = theirs[-1]
        prev = mine[-1] if mine else self.open_at
        valid = PRICE_RANGE[0] <= bid <= PRICE_RANGE[1]
        hunter = theirs[0] <= self.hunter_below + 1e-9
        fast = len(theirs) >= 2 and theirs[-1] - theirs[-2] >= self.fast_step
        deadline = 4 if hunter else 2 if fast else self.max_turns - 1
        if valid and (k >= deadline or prev - bid <= self.close_gap):
            return "deal."
        if k == 1 and not hunter:
            ask = max(self.second_ask, bid + self.close_gap)
        else:
            ask = prev - (0.5 if hunter else self.concede) * (prev - bid)
        if ask - bid <= self.close_gap and valid:
            return "deal."
        return self._ask(ask, to_y, listing)

    @staticmethod
    def _ask(y: float, to_y: Any, listing: float) -> str:
        return f"how about {price_text(nice_price(to_y(y) * listing, listing))}?"


__all__ = [
    "AnchoringBargainer", "BargainingEnv", "CATEGORIES", "ExpertBargainer", "NO_DEAL_REWARD",
    "PARTNER_TYPES", "PartnerProfile", "Parsed", "RandomBargainer", "ROLES", "nice_price", "opening_text",
    "parse_opening", "parse_price", "parse_utterance", "price_text", "reward_for",
]

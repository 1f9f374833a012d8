"""Negotiation envs (Deal or No Deal, Bargaining), their policies, and the corpus importers."""

from __future__ import annotations

import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from envs.bargaining import (
    NO_DEAL_REWARD,
    BargainingEnv,
    parse_price,
    reward_for,
)
from envs.bargaining import parse_utterance as parse_bargain
from envs.core import AGENT, CHARSET, ENV, NOT_UNDERSTOOD, play_episode
from envs.negotiation import DealOrNoDealEnv, opening_text, parse_opening, parse_utterance, selection_text
from envs.token_view import WordTokenizer, join_pieces, pre_tokenize

CORPORA = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpora"

# counts (1 book, 2 hats, 3 balls); agent values 4/0/2 (4 + 0 + 6 = 10); partner 0/2/2 (0 + 4 + 6)
SCENARIO = {"counts": (1, 2, 3), "values": (4, 0, 2), "partner_values": (0, 2, 2)}


def _dnd(partner_type: str = "accommodating", **kw) -> DealOrNoDealEnv:
    env = DealOrNoDealEnv(**kw)
    env.reset(seed=0, options={**SCENARIO, "partner_type": partner_type})
    return env


# ---------------------------------------------------------------- deal validity and rewards
def test_complementary_selections_pay_the_agents_value():
    env = _dnd()
    _, r, term, _, info = env.step("i take the book and 3 balls.")  # partner keeps 2 hats: worth 4 >= its floor
    assert info["turns"][-1].text == "deal." and r == 0.0 and not term
    _, r, term, _, info = env.step("select: 1 book, 0 hats, 3 balls.")
    assert info["turns"][-1].text == selection_text((0, 2, 0))
    assert term and r == 10.0 and info["success"]


def test_over_claiming_selection_breaks_the_deal():
    env = _dnd()
    _, r, term, _, info = env.step("select: 1 book, 2 hats, 3 balls.")  # everything: partner will not agree
    assert term and r == 0.0 and not info["success"]
    partner = parse_utterance(info["turns"][-1].text, SCENARIO["counts"])
    assert partner is not None and partner.kind == "select" and sum(partner.take) > 0
    env = _dnd()
    *_, info = env.step("select: 5 books.")  # more than the pool: never complementary
    assert info["turns"][-1].text.startswith("select:") and not info["success"]


def test_partner_selects_first_then_agent_agrees_or_disagrees():
    env = _dnd()
    env.step("i take the book and 3 balls.")
    _, r, term, _, info = env.step("deal.")
    assert info["turns"][-1].text == selection_text((0, 2, 0)) and not term and r == 0.0
    _, r, term, _, info = env.step("deal.")  # "deal" after a selection = the complement
    assert term and r == 10.0 and info["turns"][-1].text == "deal."
    env = _dnd()
    env.step("i take the book and 3 balls.")
    env.step("deal.")
    _, r, term, _, info = env.step("select: 1 book, 1 hat, 3 balls.")  # disagreement
    assert term and r == 0.0 and not info["success"] and info["turns"][-1].text == "no deal."


def test_no_deal_and_turn_limit_give_zero():
    env = _dnd()
    _, r, term, trunc, info = env.step("no deal.")
    assert term and not trunc and r == 0.0 and not info["success"]
    env = _dnd("greedy", max_turns=3)
    rewards = []
    for _ in range(3):
        _, r, term, trunc, info = env.step("i need everything.")
        rewards.append(r)
    assert trunc and not term and rewards == [0.0, 0.0, 0.0]


def test_greedy_partner_counters_and_concedes():
    env = _dnd("greedy")
    _, _, _, _, info = env.step("i need 3 balls and the book.")
    first = info["turns"][-1].text
    assert first.startswith("i take ") and ", you get " in first
    levels = []
    for _ in range(4):
        _, _, term, _, info = env.step("no.")
        p = parse_utterance(info["turns"][-1].text, SCENARIO["counts"])
        levels.append(sum(x * w for x, w in zip(p.take, SCENARIO["partner_values"])))
    assert levels == sorted(levels, reverse=True) and levels[-1] >= 6  # slow concessions, floor 6-7


def test_invalid_utterance_is_not_understood_and_changes_nothing():
    env = _dnd(invalid_penalty=-1.0)
    before = (env.hidden_state(), env._level, env._standing)
    _, r, term, _, info = env.step("the weather is nice today")
    assert info["turns"][-1].text == NOT_UNDERSTOOD and r == -1.0 and not term and info["valid"] is False
    assert (env.hidden_state(), env._level, env._standing) == before


def test_scenarios_follow_the_rules():
    env = DealOrNoDealEnv()
    for seed in range(300):
        env.reset(seed=seed)
        h = env.hidden_state()
        c, v, w = h["counts"], h["values"], h["partner_values"]
        assert all(1 <= x <= 4 for x in c) and 5 <= sum(c) <= 7
        assert sum(a * b for a, b in zip(c, v)) == 10 == sum(a * b for a, b in zip(c, w))
        assert min(v) >= 0 and min(w) >= 0 and all(a + b > 0 for a, b in zip(v, w))
        assert parse_opening(opening_text(c, v)) == (c, v)


def test_reset_options_validate_the_scenario():
    with pytest.raises(ValueError):
        DealOrNoDealEnv().reset(seed=0, options={"counts": (1, 1, 1), "values": (1, 1, 1), "partner_values": (4, 3, 3)})


# ---------------------------------------------------------------- the keyword parser
POOL = (3, 2, 1)  # 3 books, 2 hats, 1 ball
PHRASINGS = [
    ("i need the book and 2 hats", "offer", (1, 2, 0)),
    ("you can have the balls", "offer", (3, 2, 0)),
    ("i take 2 books and 1 hat, you get 1 book and 1 ball.", "offer", (2, 1, 0)),
    ("give me all the hats", "offer", (0, 2, 0)),
    ("i want one book and the ball, you get the rest", "offer", (1, 0, 1)),
    ("so the hats and a book for me?", "offer", (1, 2, 0)),
    ("i'll give the hats to you", "offer", (3, 0, 1)),
    ("i don't need the hats", "offer", (3, 0, 1)),
    ("one of each", "offer", (1, 1, 1)),
    ("i want everything", "offer", (3, 2, 1)),
    ("i would like two of the books", "offer", (2, 0, 0)),
    ("the hats are yours", "offer", (3, 0, 1)),
    ("i'll take all of it", "offer", (3, 2, 1)),
    ("i need 5 books", "offer", (3, 0, 0)),
    ("three books for me, you can have the rest", "offer", (3, 0, 0)),
    ("you get four hats", "offer", (3, 0, 1)),
    ("I NEED THE BALL!!", "offer", (0, 0, 1)),
    ("give me the basketball and a hat", "offer", (0, 1, 1)),
    ("you take the books, i keep the rest", "offer", (0, 2, 1)),
    ("can i have both hats?", "offer", (0, 2, 0)),
    ("i'd like the books and you can have the hat and the ball", "offer", (3, 1, 0)),
    ("zero books, two hats and one ball for me", "offer", (0, 2, 1)),
    ("no books for me, i want the hats", "offer", (0, 2, 0)),
    ("you can have 1 book if i get the rest", "offer", (2, 2, 1)),
    ("how about you get 2 books and i get the hats and ball?", "offer", (1, 2, 1)),
    ("i want a couple of hats", "offer", (0, 2, 0)),
    ("i'll take the hats. you can have everything else", "offer", (0, 2, 0)),
    ("2 books please", "offer", (2, 0, 0)),
    ("you can have all the books and the ball", "offer", (0, 2, 0)),
    ("select: 2 books, 0 hats, 1 ball.", "select", (2, 0, 1)),
    ("select: 1 book, 2 hats.", "select", (1, 2, 0)),
    ("select: nothing.", "select", (0, 0, 0)),
    ("select: 5 books", "select", (5, 0, 0)),
    ("deal.", "accept", None),
    ("okay", "accept", None),
    ("sure, sounds good", "accept", None),
    ("no.", "reject", None),
    ("nope", "reject", None),
    ("no deal.", "walk", None),
    ("i quit", "walk", None),
    ("walk away", "walk", None),
]


@pytest.mark.parametrize("text,kind,take", PHRASINGS)
def test_keyword_parser(text, kind, take):
    p = parse_utterance(text, POOL)
    assert p is not None and (p.kind, p.take) == (kind, take)


@pytest.mark.parametrize("text", ["", "hello there", "select.", "what do you think?", "!!!"])
def test_keyword_parser_unparseable(text):
    assert parse_utterance(text, POOL) is None


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=200), st.text(alphabet=CHARSET, max_size=200)))
def test_parsers_never_crash(text):
    p = parse_utterance(text, POOL)
    if p is not None and p.kind == "offer":
        assert all(0 <= t <= c for t, c in zip(p.take, POOL))
    parse_price(text, 450.0)
    parse_bargain(text, 450.0)


# ---------------------------------------------------------------- bargaining
@pytest.mark.parametrize(
    "text,listing,price",
    [
        ("how about 450", 500.0, 450.0),
        ("how about $450?", 500.0, 450.0),
        ("$400 is my best", 500.0, 400.0),
        ("i can do $1,200 for it", 1500.0, 1200.0),
        ("1.2k and it's yours", 1500.0, 1200.0),
        ("would you take 99.50?", 120.0, 99.5),
        ("it is 2 years old, i want 300", 350.0, 300.0),
        ("i was looking in the 1000-1500$ range", 2000.0, 1500.0),
        ("twelve hundred", 1500.0, None),
        ("no numbers here", 100.0, None),
        ("$0", 100.0, None),
        ("9" * 400, 100.0, None),
        ("$1,2,3,4", 100.0, None),
    ],
)
def test_price_parsing(text, listing, price):
    got = parse_price(text, listing)
    assert got == price if price is None else got == pytest.approx(price)


def test_price_parsing_without_listing_and_sanitized_commas():
    from envs.core import sanitize

    assert parse_price(sanitize("$1,200!")) == 1200.0
    assert parse_price("1.5 k") == 1500.0


def test_chai_reward():
    assert reward_for("seller", 450.0, 500.0) == pytest.approx(-1.0)
    assert reward_for("seller", 600.0, 500.0) == pytest.approx(2.0)
    assert reward_for("buyer", 450.0, 500.0) == pytest.approx(1.0)
    assert reward_for("seller", 750.0, 500.0) == pytest.approx(5.0)  # edge 1.5 is in range
    assert reward_for("seller", 250.0, 500.0) == pytest.approx(-5.0)  # edge 0.5 is in range
    assert reward_for("seller", 760.0, 500.0) == NO_DEAL_REWARD
    assert reward_for("buyer", 240.0, 500.0) == NO_DEAL_REWARD
    assert reward_for("seller", None, 500.0) == NO_DEAL_REWARD


def _bargain(partner_type: str, role: str = "seller", **kw) -> BargainingEnv:
    env = BargainingEnv(role=role, partner_type=partner_type, **kw)
    env.reset(seed=3, options={"category": "bike", "listing": 500})
    return env


def test_bargaining_deal_on_partner_price_and_on_agent_price():
    env = _bargain("patient")
    h = env.hidden_state()
    _, r, term, _, info = env.step("how about $600?")
    bid = parse_price(info["turns"][-1].text, 500.0)
    assert not term and r == 0.0 and bid is not None and bid <= h["reservation"]
    _, r, term, _, info = env.step("deal.")
    assert term and info["success"] and r == pytest.approx(10 * (bid / 500 - 1))
    env = _bargain("patient")
    _, r, term, _, info = env.step("i can let it go for $260.")  # below the buyer's target: accepted
    assert term and info["turns"][-1].text == "deal." and r == pytest.approx(-4.8)


def test_bargaining_no_deal_paths_pay_minus_20():
    env = _bargain("patient")
    _, r, term, _, _ = env.step("no deal.")
    assert term and r == NO_DEAL_REWARD
    env = _bargain("patient", max_turns=3)
    rs = [env.step("$900, not a cent less")[1] for _ in range(3)]
    assert rs == [0.0, 0.0, NO_DEAL_REWARD] and not env.turns[-1].text.startswith("deal")
    env = _bargain("impatient")
    rs, done = [], False
    while not done:
        _, r, term, trunc, info = env.step("$5000")
        rs.append(r)
        done = term or trunc
    assert rs[-1] == NO_DEAL_REWARD and len(rs) == env.hidden_state()["patience"]
    env = _bargain("patient", max_turns=2)
    env.step("hello")
    _, r, term, _, _ = env.step("gibberish")  # not understood on the last turn: the partner leaves
    assert term and r == NO_DEAL_REWARD


def test_bargaining_buyer_role_mirrors():
    env = _bargain("patient", role="buyer")
    assert env.turns[0].text == "you are the buyer. listing: bike for $500."
    _, _, _, _, info = env.step("how about $300?")
    ask = parse_price(info["turns"][-1].text, 500.0)
    assert ask is not None and ask > 500.0  # a patient seller opens above the listing
    _, r, term, _, info = env.step("ok, deal")
    assert term and r == pytest.approx(10 * (1 - ask / 500))


def test_bargaining_invalid_keeps_state():
    env = _bargain("patient")
    before = (env.hidden_state(), env._offer)
    _, r, term, _, info = env.step("tell me about the bike")
    assert info["valid"] is False and info["turns"][-1].text == NOT_UNDERSTOOD and not term and r == 0.0
    assert (env.hidden_state(), env._offer) == before


# ---------------------------------------------------------------- policies and references
def _returns(env, name: str, seeds) -> np.ndarray:
    factory = env.policies()[name]
    return np.array([play_episode(env, factory, s).ret for s in seeds])


def _ci(x: np.ndarray) -> float:
    return 1.96 * float(x.std(ddof=1)) / math.sqrt(len(x))


ORDER = {
    "dialogue_rl/DealOrNoDeal-v0": ("expert", "naive", "random"),
    "dialogue_rl/Bargaining-v0": ("expert", "anchoring_low", "random"),
    "dialogue_rl/BargainingBuyer-v0": ("expert", "anchoring_low", "random"),
}


def _check_order(env_id: str, n: int) -> dict[str, tuple[float, float]]:
    import gymnasium as gym

    env = gym.make(env_id).unwrapped
    stats = {}
    for name in ORDER[env_id]:
        r = _returns(env, name, range(n))
        stats[name] = (float(r.mean()), _ci(r))
    best, mid, low = (stats[k][0] for k in ORDER[env_id])
    assert best > mid > low, (env_id, stats)
    return stats


@pytest.mark.parametrize("env_id", list(ORDER))
def test_skill_levels_are_ordered_fast(env_id):
    _check_order(env_id, 100)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(ORDER))
def test_skill_levels_are_ordered_500_episodes(env_id):
    stats = _check_order(env_id, 500)
    names = ORDER[env_id]
    # the gaps are far beyond the confidence intervals
    assert stats[names[0]][0] - stats[names[0]][1] > stats[names[1]][0] + stats[names[1]][1]
    print(env_id, {k: f"{m:.2f} +- {c:.2f}" for k, (m, c) in stats.items()})


NEGOTIATION_IDS = [i for i in envs.env_ids() if "DealOrNoDeal" in i or "Bargaining" in i]


def _check_reference(env_id: str, n: int) -> None:
    import gymnasium as gym

    env = gym.make(env_id).unwrapped
    ref = envs.reference_returns(env_id)
    for name, const in (("random", ref.random), ("expert", ref.expert)):
        r = _returns(env, name, range(n))
        assert abs(r.mean() - const) <= _ci(r) + 0.01, (env_id, name, r.mean(), const, _ci(r))


@pytest.mark.parametrize("env_id", NEGOTIATION_IDS)
def test_reference_returns_recomputed_fast(env_id):
    _check_reference(env_id, 200)


@pytest.mark.slow
@pytest.mark.parametrize("env_id", NEGOTIATION_IDS)
def test_reference_returns_recomputed_2000(env_id):
    _check_reference(env_id, 2000)


# ---------------------------------------------------------------- vocabulary and canonical text
@pytest.mark.parametrize("env_cls,kwargs", [(DealOrNoDealEnv, {}), (BargainingEnv, {}), (BargainingEnv, {"role": "buyer"})])
def test_env_utterances_are_canonical_and_in_vocabulary(env_cls, kwargs):
    env = env_cls(**kwargs)
    tok = WordTokenizer.from_words(env.vocabulary())
    for name, factory in env.policies().items():
        for seed in range(40):
            ep = play_episode(env, factory, seed)
            for t in ep.turns:
                assert set(t.text) <= set(CHARSET) and t.text == t.text.lower()
                assert join_pieces(pre_tokenize(t.text)) == t.text, t.text
                assert tok.unk_token_id not in tok.encode(t.text), (t.speaker, t.text)  # env and policies


# ---------------------------------------------------------------- importers (fixtures)
DND_SPLIT = """\
<input> 2 2 1 4 2 1 </input> <dialogue> YOU: i want the hat and one book <eos> THEM: you can have the hat , i need the books and balls <eos> YOU: ok <eos> THEM: <selection> </dialogue> <output> item0=0 item1=1 item2=0 item0=2 item1=0 item2=2 </output> <partner_input> 2 3 1 0 2 2 </partner_input>
<input> 2 3 1 0 2 2 </input> <dialogue> THEM: i want the hat and one book <eos> YOU: you can have the hat , i need the books and balls <eos> THEM: ok <eos> YOU: <selection> </dialogue> <output> item0=2 item1=0 item2=2 item0=0 item1=1 item2=0 </output> <partner_input> 2 2 1 4 2 1 </partner_input>
<input> 1 4 4 1 1 2 </input> <dialogue> YOU: i need everything \N{EM DASH} all of it <eos> THEM: no way <eos> YOU: <selection> </dialogue> <output> <no_agreement> <no_agreement> <no_agreement> <no_agreement> <no_agreement> <no_agreement> </output> <partner_input> 1 2 4 1 1 4 </partner_input>
<input> 1 2 4 1 1 4 </input> <dialogue> THEM: i need everything \N{EM DASH} all of it <eos> YOU: no way <eos> THEM: <selection> </dialogue> <output> <no_agreement> <no_agreement> <no_agreement> <no_agreement> <no_agreement> <no_agreement> </output> <partner_input> 1 4 4 1 1 2 </partner_input>
<input> 1 4 4 1 1 2 </input> <dialogue> YOU: book and ball for me <eos> THEM: <selection> </dialogue> <output> <disagree> <disagree> <disagree> <disagree> <disagree> <disagree> </output> <partner_input> 1 2 4 1 1 4 </partner_input>
<input> 1 2 3 </input> <dialogue> YOU: hi <eos> THEM: <selection> </dialogue> <output> <disagree> <disagree> <disagree> <disagree> <disagree> <disagree> </output> <partner_input> 1 2 4 1 1 4 </partner_input>
<input> 1 1 1 1 1 1 </input> <dialogue> YOU: hi <eos> THEM: <selection> </dialogue> <output> <disagree> <disagree> <disagree> <disagree> <disagree> <disagree> </output> <partner_input> 1 1 1 1 1 1 </partner_input>
<input> 1 4 4 1 1 2 </input> <dialogue> YOU: hi <eos> THEM: bye <eos> </dialogue> <output> <disagree> <disagree> <disagree> <disagree> <disagree> <disagree> </output> <partner_input> 1 2 4 1 1 4 </partner_input>
hello world

"""

DND_RAW = """\
2 2 1 4 2 1 YOU: i want the hat and one book <eos> THEM: you can have the hat <eos> YOU: <selection> item0=1 item1=1 item2=0 <eos> reward=6 disagree 2 3 1 0 2 2
2 3 1 0 2 2 THEM: i want the hat and one book <eos> YOU: you can have the hat <eos> THEM: <selection> item0=2 item1=0 item2=2 <eos> reward=10 disagree 2 2 1 4 2 1
1 4 4 1 1 2 YOU: you take the hats <eos> THEM: deal <eos> YOU: <selection> item0=1 item1=0 item2=1 <eos> reward=6 agree 1 2 4 1 1 4
1 4 4 1 1 2 THEM: give me everything <eos> YOU: no <eos> THEM: <selection> no agreement <eos> reward=no agreement agree 1 2 4 1 1 4
1 4 4 1 1 2 YOU: hi <eos> reward=3
1 4 4 1 1 2 YOU: hi <eos> THEM: ok <eos> YOU: <selection> item0=1 item1=0 <eos> reward=6 agree 1 2 4 1 1 4
"""


def test_dealornodeal_split_format_fixture():
    from dialogue_rl.corpora.dealornodeal import import_lines

    rows, rep = import_lines(DND_SPLIT.splitlines())
    assert rep.lines == 9 and rep.kept == 5
    assert dict(rep.skipped) == {
        "bad_input": 1, "values_do_not_total_10": 1, "no_selection": 1, "truncated_line": 1,
    }
    assert dict(rep.outcomes) == {"agree": 2, "no_agreement": 2, "disagree": 1}
    a, b = rows[0], rows[1]  # one dialogue, both sides
    assert a["seed"] == b["seed"] and a["policy"] == "human" and a["env_id"] == "dialogue_rl/DealOrNoDeal-v0"
    assert a["turns"][0] == {"speaker": ENV, "text": opening_text((2, 1, 2), (2, 4, 1)), "reward": 0.0}
    assert [t["speaker"] for t in a["turns"]] == [ENV, AGENT, ENV, AGENT, ENV, AGENT, ENV]
    assert a["turns"][-3]["text"] == selection_text((2, 0, 2))  # THEM opened the selection form
    assert a["turns"][-2] == {"speaker": AGENT, "text": selection_text((0, 1, 0)), "reward": 4.0}
    assert a["turns"][-1]["text"] == "deal."
    assert (a["return"], a["success"], a["length"]) == (4.0, True, 3)
    assert b["turns"][-2] == {"speaker": AGENT, "text": selection_text((2, 0, 2)), "reward": 10.0}
    assert b["turns"][-1] == {"speaker": ENV, "text": selection_text((0, 1, 0)), "reward": 0.0}
    assert b["return"] == 10.0
    for r in rows[2:]:
        assert r["return"] == 0.0 and not r["success"] and r["turns"][-1]["text"] == "no deal."
    assert "\N{EM DASH}" not in rows[2]["turns"][1]["text"] and set(rows[2]["turns"][1]["text"]) <= set(CHARSET)
    one, rep1 = import_lines(DND_SPLIT.splitlines(), sides="one")
    assert len(one) == 3 and rep1.notes["second_side_dropped"] == 2


def test_dealornodeal_raw_format_fixture():
    from dialogue_rl.corpora.dealornodeal import import_lines

    rows, rep = import_lines(DND_RAW.splitlines())
    assert rep.kept == 4 and dict(rep.skipped) == {"truncated_line": 1, "bad_selection": 1}
    assert dict(rep.outcomes) == {"disagree": 2, "agree": 1, "no_agreement": 1}
    dis = rows[0]
    assert dis["return"] == 0.0 and not dis["success"]
    assert dis["turns"][-2]["text"] == selection_text((1, 1, 0))
    assert dis["turns"][-1]["text"] == selection_text((2, 0, 2))  # from the mirrored line
    agree = rows[2]
    assert agree["return"] == 6.0 and agree["success"] and agree["turns"][-1]["text"] == selection_text((0, 4, 0))
    assert rows[3]["turns"][-2]["text"] == "no deal." and rows[3]["return"] == 0.0
    assert not rep.notes.get("raw_reward_mismatch")


def _cb(role_order, turns, intents, prices, listing=200.0):
    who, texts = zip(*turns)
    return json.dumps({
        "agent_info": {"Bottomline": ["None", "None"], "Role": role_order, "Target": [150.0, 200.0]},
        "agent_turn": list(who), "utterance": list(texts),
        "dialogue_acts": {"intent": intents, "price": prices},
        "items": {"Category": ["bike", "bike"], "Price": [listing, listing], "Title": ["x", "x"],
                  "Description": ["", ""], "Images": ["", ""]},
    })


CB = "\n".join([
    _cb(["buyer", "seller"], [(0, "would you take 150?"), (1, "How about $180"), (0, ""), (1, "")],
        ["init-price", "counter-price", "offer", "accept"], [150.0, 180.0, 170.0, -1.0]),
    _cb(["seller", "buyer"], [(1, "is it still available?"), (0, "Yes! $195"), (1, "too much"), (1, "")],
        ["inquiry", "init-price", "disagree", "quit"], [-1.0, 195.0, -1.0, -1.0]),
    _cb(["buyer", "seller"], [(0, "hi"), (1, "hello"), (0, ""), (1, "")], ["", "", "", ""], [-1.0] * 4),
    _cb(["buyer", "seller"], [(0, "hi"), (1, "")], ["intro", "accept"], [-1.0, -1.0]),
    _cb(["buyer", "seller"], [(0, "hi"), (1, "$190")], ["intro", "init-price"], [-1.0, 190.0]),
    _cb(["buyer", "seller"], [(0, "50 bucks"), (0, ""), (1, "")], ["init-price", "offer", "accept"], [50.0, 50.0, -1.0]),
    "{not json",
])


def test_craigslist_fixture():
    from dialogue_rl.corpora.craigslist import import_text

    rows, rep = import_text(CB)
    assert rep.lines == 7 and rep.kept == 3
    assert dict(rep.skipped) == {
        "missing_dialogue_acts": 1, "accept_without_offer": 1, "no_outcome": 1, "bad_json": 1,
    }
    deal, quit_, low = rows
    assert [t["speaker"] for t in deal["turns"]] == [ENV, ENV, AGENT, ENV, AGENT]
    assert deal["turns"][0]["text"] == "you are the seller. listing: bike for $200."
    assert deal["turns"][2]["text"] == "how about $180" and deal["turns"][3]["text"] == "offer: $170."
    assert deal["turns"][-1] == {"speaker": AGENT, "text": "deal.", "reward": pytest.approx(-1.5)}
    assert deal["return"] == pytest.approx(-1.5) and deal["success"] and deal["env_id"] == "dialogue_rl/Bargaining-v0"
    assert quit_["return"] == -20.0 and not quit_["success"] and quit_["turns"][-1]["text"] == "too much no deal. bye."
    assert quit_["turns"][-2] == {"speaker": AGENT, "text": "yes! $195", "reward": -20.0}
    assert low["return"] == -20.0 and not low["success"]  # 50 / 200 < 0.5
    buyer, _ = import_text(CB, role="buyer")
    assert buyer[0]["return"] == pytest.approx(1.5) and buyer[0]["env_id"] == "dialogue_rl/BargainingBuyer-v0"


def test_importer_rows_round_trip_through_the_dataset_io(tmp_path):
    from dialogue_rl.corpora.dealornodeal import import_lines
    from dialogue_rl.data.io import load_dataset, load_metadata

    spec = importlib.util.spec_from_file_location("import_corpus", Path(__file__).resolve().parents[1] / "scripts" / "import_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = mod.main

    rows, _ = import_lines(DND_SPLIT.splitlines())
    f = tmp_path / "val.txt"
    f.write_text(DND_SPLIT)
    assert main(["dealornodeal", "--input", str(f), "--output", str(tmp_path / "out")]) == 0
    dd = load_dataset(tmp_path / "out")
    assert dd["validation"].num_rows == len(rows)
    meta = load_metadata(tmp_path / "out")
    assert meta["sides"] == "both" and meta["inputs"]["validation"]["import"]["skipped_total"] == 4


# ---------------------------------------------------------------- importers (real corpora)
@pytest.mark.skipif(not (CORPORA / "dealornodeal" / "val.txt").is_file(), reason=f"corpus not found at {CORPORA}")
def test_real_dealornodeal_counts():
    from dialogue_rl.corpora.dealornodeal import import_file

    rows, rep = import_file(CORPORA / "dealornodeal" / "val.txt")
    assert rep.kept == 1087 and not rep.skipped
    assert dict(rep.outcomes) == {"agree": 844, "disagree": 129, "no_agreement": 108, "disconnect": 6}
    assert sum(r["success"] for r in rows) == 844
    rows, rep = import_file(CORPORA / "dealornodeal" / "train_raw.txt")
    assert rep.kept == 10095 and not rep.skipped and not rep.notes.get("raw_reward_mismatch")
    assert dict(rep.outcomes) == {"agree": 7883, "disagree": 1067, "no_agreement": 1084, "disconnect": 61}


@pytest.mark.skipif(
    not (CORPORA / "craigslistbargain" / "validation.json").is_file(), reason=f"corpus not found at {CORPORA}"
)
def test_real_craigslist_counts():
    from dialogue_rl.corpora.craigslist import import_file

    rows, rep = import_file(CORPORA / "craigslistbargain" / "validation.json")
    assert rep.lines == 597 and rep.kept == 432
    assert dict(rep.skipped) == {"missing_dialogue_acts": 144, "no_outcome": 21}
    assert dict(rep.outcomes) == {"accept": 373, "accept_out_of_range": 9, "reject": 26, "quit": 24}


# ---------------------------------------------------------------- throughput
@pytest.mark.slow
@pytest.mark.parametrize("env_cls", [DealOrNoDealEnv, BargainingEnv])
def test_random_agent_throughput(env_cls):
    env = env_cls()
    factory = env.policies()["random"]
    steps, t0 = 0, time.process_time()
    for seed in range(3000):
        steps += play_episode(env, factory, seed).agent_turns
    rate = steps / (time.process_time() - t0)
    print(f"{env_cls.__name__}: {rate:.0f} utterance steps/s (CPU time, reset and policy included)")
    assert rate > 5000

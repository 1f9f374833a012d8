"""Twenty questions over a built-in ontology of everyday objects.

The table below lists, for each of 13 categories, its objects and each object's true
boolean attributes; every attribute not listed is false. An object's answer vector is
its category plus its attributes, and every object has a distinct vector (checked by
the tests), so a perfect questioner can always single the object out.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.core import AGENT, ENV, NOT_UNDERSTOOD, DialogueEnv, PolicyFactory, Reply, Turn, words

logger = logging.getLogger(__name__)

#: Attribute key -> the canonical yes/no question.
ATTRIBUTES: dict[str, str] = {
    "alive": "is it alive?",
    "big": "is it bigger than a breadbox?",
    "heavy": "is it heavier than a person?",
    "long": "is it longer than a car?",
    "metal": "is it made of metal?",
    "wood": "is it made of wood?",
    "plastic": "is it made of plastic?",
    "fabric": "is it made of fabric?",
    "glass": "is it made of glass?",
    "leather": "is it made of leather?",
    "kitchen": "is it used in a kitchen?",
    "edible": "can you eat it?",
    "cook": "do you cook it?",
    "sweet": "is it sweet?",
    "tree": "does it grow on trees?",
    "farm": "is it found on a farm?",
    "electric": "does it use electricity?",
    "screen": "does it have a screen?",
    "buttons": "does it have buttons?",
    "engine": "does it have an engine?",
    "wheels": "does it have wheels?",
    "fly": "can it fly?",
    "water": "is it found in water?",
    "legs": "does it have legs?",
    "fur": "does it have fur?",
    "teeth": "does it have teeth?",
    "outdoors": "is it usually found outdoors?",
    "soft": "is it soft?",
    "sharp": "is it sharp?",
    "noise": "does it make noise?",
    "pet": "is it kept as a pet?",
    "hot": "does it get hot?",
    "liquid": "can it hold liquid?",
    "handle": "does it have a handle?",
    "sit": "can you sit on it?",
    "strings": "does it have strings?",
    "blow": "do you blow into it?",
    "feet": "do you wear it on your feet?",
    "round": "is it round?",
    "green": "is it green?",
    "red": "is it red?",
    "yellow": "is it yellow?",
    "white": "is it white?",
}

#: Category key -> the canonical category question.
CATEGORIES: dict[str, str] = {
    "animal": "is it an animal?",
    "plant": "is it a plant?",
    "fruit": "is it a fruit?",
    "vegetable": "is it a vegetable?",
    "dish": "is it prepared food?",
    "tool": "is it a tool?",
    "vehicle": "is it a vehicle?",
    "furniture": "is it furniture?",
    "clothing": "is it clothing?",
    "instrument": "is it a musical instrument?",
    "appliance": "is it an appliance?",
    "kitchenware": "is it kitchenware?",
    "toy": "is it a toy?",
}

# category -> "object: true attributes; object: ...". Compact on purpose.
_TABLE: dict[str, str] = {
    "animal": """
        dog: alive big legs noise pet fur soft teeth;
        cat: alive big legs noise pet fur soft teeth sharp;
        horse: alive big heavy legs noise fur teeth farm outdoors sit;
        cow: alive big heavy legs noise fur teeth farm outdoors;
        elephant: alive big heavy legs noise teeth outdoors long;
        mouse: alive legs fur soft teeth;
        rabbit: alive legs fur soft teeth pet;
        lion: alive big heavy legs noise fur teeth outdoors sharp yellow;
        whale: alive big heavy long water noise;
        bat: alive fly fur legs teeth;
        monkey: alive big legs noise fur teeth outdoors;
        sheep: alive big legs noise fur soft teeth farm outdoors white;
        pig: alive big heavy legs noise teeth farm;
        eagle: alive big fly legs outdoors sharp;
        owl: alive fly legs outdoors noise;
        penguin: alive big legs water outdoors white;
        chicken: alive legs noise farm outdoors;
        duck: alive legs fly water noise farm outdoors yellow;
        parrot: alive legs fly noise pet green red;
        shark: alive big heavy water sharp teeth;
        salmon: alive big water edible cook;
        goldfish: alive water pet yellow;
        frog: alive legs water green noise outdoors;
        snake: alive outdoors sharp long green;
        turtle: alive legs water green pet;
        bee: alive fly legs noise sharp outdoors yellow;
        ant: alive legs outdoors;
        butterfly: alive fly legs outdoors;
        spider: alive legs;
        ladybug: alive fly legs red round outdoors""",
    "plant": """
        tree: alive big heavy wood outdoors green;
        rose: alive outdoors red sharp;
        cactus: alive outdoors green sharp;
        grass: alive outdoors green soft farm;
        sunflower: alive big outdoors yellow;
        fern: alive outdoors green;
        tulip: alive outdoors red;
        bamboo: alive big outdoors green wood;
        moss: alive outdoors green soft;
        seaweed: alive water green edible""",
    "fruit": """
        apple: edible tree round red green sweet;
        banana: edible tree sweet yellow;
        orange: edible tree round sweet;
        lemon: edible tree yellow;
        grape: edible round sweet green;
        strawberry: edible red sweet;
        watermelon: edible big round green red sweet;
        cherry: edible tree round red sweet;
        pineapple: edible sweet sharp yellow;
        peach: edible tree round sweet soft;
        coconut: edible tree round liquid""",
    "vegetable": """
        carrot: edible farm;
        potato: edible farm cook;
        onion: edible farm cook round;
        lettuce: edible farm green soft;
        broccoli: edible farm green cook;
        pumpkin: edible farm big round cook;
        corn: edible farm cook sweet yellow;
        pea: edible farm green round cook;
        cucumber: edible farm green;
        mushroom: edible cook outdoors;
        tomato: edible farm red round""",
    "dish": """
        bread: edible cook soft;
        cheese: edible farm soft yellow;
        pizza: edible cook hot round;
        cake: edible sweet cook soft;
        cookie: edible sweet cook round;
        egg: edible cook round farm white;
        soup: edible cook hot;
        sandwich: edible;
        rice: edible cook white;
        chocolate: edible sweet;
        popcorn: edible cook noise white""",
    "tool": """
        hammer: metal wood handle noise;
        saw: metal sharp handle noise teeth;
        screwdriver: metal plastic handle;
        wrench: metal;
        drill: metal plastic electric noise handle sharp;
        shovel: metal wood big outdoors handle;
        axe: metal wood big sharp handle outdoors;
        ladder: metal big legs;
        scissors: metal plastic sharp handle;
        rake: metal wood big outdoors handle teeth""",
    "vehicle": """
        car: metal glass big heavy wheels engine outdoors noise sit;
        bicycle: metal big wheels outdoors sit;
        bus: metal glass big heavy wheels engine outdoors noise sit long yellow;
        train: metal glass big heavy wheels engine noise sit long outdoors electric;
        airplane: metal glass big heavy wheels engine noise sit long fly outdoors white;
        boat: metal big heavy engine water outdoors sit noise;
        truck: metal glass big heavy wheels engine outdoors noise sit long;
        motorcycle: metal big heavy wheels engine outdoors noise sit;
        helicopter: metal glass big heavy engine noise sit fly outdoors;
        submarine: metal big heavy engine water sit long;
        tractor: metal glass big heavy wheels engine outdoors noise sit farm red""",
    "furniture": """
        chair: wood legs sit big;
        table: wood legs big kitchen;
        bed: wood fabric soft big heavy legs sit;
        sofa: fabric soft big heavy legs sit;
        desk: wood legs big heavy;
        shelf: wood big;
        wardrobe: wood big heavy;
        bench: wood metal legs big outdoors sit;
        stool: wood legs sit round;
        mirror: glass;
        rug: fabric soft big""",
    "clothing": """
        shirt: fabric soft buttons;
        hat: fabric round;
        shoe: leather feet;
        sock: fabric soft feet;
        coat: fabric soft buttons big;
        glove: leather soft;
        scarf: fabric soft;
        dress: fabric soft big;
        belt: leather metal;
        boot: leather feet outdoors;
        jeans: fabric buttons;
        tie: fabric""",
    "instrument": """
        guitar: wood strings noise big;
        piano: wood big heavy noise legs strings buttons;
        drum: noise round wood;
        violin: wood strings noise;
        trumpet: metal noise blow yellow;
        flute: metal noise blow;
        harp: wood metal strings noise big;
        harmonica: metal plastic noise blow;
        bell: metal noise;
        saxophone: metal noise blow yellow buttons big""",
    "appliance": """
        fridge: electric metal big heavy kitchen white;
        oven: electric metal big heavy kitchen hot;
        toaster: electric metal kitchen hot;
        microwave: electric metal glass kitchen hot buttons big;
        kettle: electric metal kitchen hot handle liquid;
        television: electric glass plastic big screen noise;
        computer: electric plastic screen buttons;
        phone: electric glass plastic screen buttons noise;
        radio: electric plastic noise buttons;
        blender: electric plastic glass kitchen noise sharp buttons liquid;
        fan: electric plastic noise;
        lamp: electric glass hot;
        clock: electric round noise;
        vacuum: electric plastic noise big wheels""",
    "kitchenware": """
        spoon: metal kitchen handle;
        fork: metal kitchen handle teeth;
        knife: metal kitchen handle sharp;
        plate: kitchen round white;
        cup: kitchen handle liquid;
        pan: metal kitchen handle hot round;
        bowl: kitchen round liquid;
        bottle: glass plastic liquid;
        jar: glass kitchen liquid;
        teapot: kitchen handle liquid hot""",
    "toy": """
        ball: round outdoors;
        kite: fly fabric plastic outdoors;
        doll: plastic legs;
        puzzle: wood;
        balloon: round fly blow red;
        yoyo: round plastic;
        teddy: fabric soft fur legs;
        marble: glass round;
        robot: electric metal plastic legs noise;
        skateboard: wood wheels outdoors;
        frisbee: plastic round fly outdoors""",
}


def _parse_table() -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray]:
    names: list[str] = []
    cats: list[str] = []
    rows: list[np.ndarray] = []
    attr_index = {a: i for i, a in enumerate(ATTRIBUTES)}
    for cat, block in _TABLE.items():
        for entry in block.split(";"):
            name, _, attrs = entry.strip().partition(":")
            row = np.zeros(len(ATTRIBUTES), dtype=bool)
            for a in attrs.split():
                row[attr_index[a]] = True  # KeyError here = typo in the table
            names.append(name.strip())
            cats.append(cat)
            rows.append(row)
    return tuple(names), tuple(cats), np.stack(rows)


OBJECTS: tuple[str, ...]
"""Every object name, in table order."""
OBJECT_CATEGORIES: tuple[str, ...]
"""The category of each object of :data:`OBJECTS`."""
OBJECTS, OBJECT_CATEGORIES, _ATTR_TABLE = _parse_table()

#: Non-guess questions: attributes then categories. ``ANSWERS[q, o]`` is the true
#: answer of question ``q`` about object ``o`` (read-only).
QUESTION_KEYS: tuple[str, ...] = tuple(ATTRIBUTES) + tuple(CATEGORIES)
QUESTION_TEXTS: tuple[str, ...] = tuple(ATTRIBUTES.values()) + tuple(CATEGORIES.values())
ANSWERS: np.ndarray = np.concatenate(
    [_ATTR_TABLE.T, np.array([[c == k for c in OBJECT_CATEGORIES] for k in CATEGORIES], dtype=bool)]
)
ANSWERS.setflags(write=False)

_OBJECT_INDEX = {n: i for i, n in enumerate(OBJECTS)}


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def guess_text(name: str) -> str:
    """The canonical utterance naming an object: ``"is it a hammer?"``."""
    return f"is it {article(name)} {name}?"


def _question_lookup() -> dict[tuple[str, ...], tuple[str, int]]:
    table: dict[tuple[str, ...], tuple[str, int]] = {}
    for q, text in enumerate(QUESTION_TEXTS):
        table[tuple(words(text))] = ("ask", q)
    for o, name in enumerate(OBJECTS):
        for form in ("is it a", "is it an", "is it"):
            key = (*form.split(), name)
            if key in table:
                raise AssertionError(f"ambiguous question form {key}")
            table[key] = ("guess", o)
    return table


_LOOKUP = _question_lookup()

INTRO = "i am thinking of an object. ask me yes or no questions to find it, or name it."
YES, NO = "yes.", "no."
CORRECT = "yes! you got it."


def parse_question(utterance: str) -> tuple[str, int] | None:
    """``("ask", question index)``, ``("guess", object index)`` or ``None``."""
    return _LOOKUP.get(tuple(words(utterance)))


class TwentyQuestionsEnv(DialogueEnv):
    """Twenty questions: find the hidden object with yes/no questions.

    ## Description

    The environment thinks of one object from a built-in ontology of 162 everyday
    objects in 13 categories (animals, plants, fruit, vegetables, prepared food, tools,
    vehicles, furniture, clothing, musical instruments, appliances, kitchenware, toys),
    each described by 43 boolean attributes. The agent asks yes/no questions and wins
    by naming the object. The oracle answers exactly from the table (optionally with
    answer noise). Every object has a distinct answer vector.

    ## Action Space

    ``Text`` over :data:`envs.core.CHARSET`. Understood utterances (case, punctuation
    and extra spaces are ignored):

    * an attribute question, e.g. ``"is it alive?"``, ``"is it made of metal?"``,
      ``"is it bigger than a breadbox?"`` (:data:`ATTRIBUTES`);
    * a category question, e.g. ``"is it an animal?"`` (:data:`CATEGORIES`);
    * a guess naming an object, ``"is it a hammer?"`` (the article may be ``a``,
      ``an`` or absent).

    ## Observation Space

    ``Text``: the transcript (``history``, default) or the last reply (``last``).
    The opening turn is the task text; replies are ``"yes."``, ``"no."``,
    ``"yes! you got it."`` or ``"i do not understand."``.

    ## Rewards

    ``question_reward`` (-1) for every question, including wrong guesses; 0 for the
    question that names the object. An utterance that is not understood costs
    ``invalid_penalty`` (-1, the price of a question) and counts as a question.

    ## Starting State

    The object is drawn uniformly from :data:`OBJECTS` with the reset seed
    (``options={"target": name}`` fixes it).

    ## Episode End

    * Terminated (success) when the agent names the object.
    * Truncated after ``max_questions`` (20) agent utterances without the right guess
      (the contract's turn limit; no further reward was possible, so a learner that
      bootstraps on truncation loses nothing).

    ## Arguments

    * ``max_questions=20``: turn limit.
    * ``answer_noise=0.0``: probability that the answer to an attribute or category
      question is flipped (drawn from the env's seeded generator; guesses are always
      answered truthfully).
    * ``question_reward=-1.0``, ``invalid_penalty=-1.0``: reward variants.
    * ``observation="history"`` or ``"last"``; ``render_mode=None`` or ``"ansi"``.

    ## Version History

    * v0: initial version (162 objects, 43 attributes, 13 categories).
    """

    def __init__(
        self,
        max_questions: int = 20,
        answer_noise: float = 0.0,
        question_reward: float = -1.0,
        invalid_penalty: float = -1.0,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            max_turns=max_questions, observation=observation, invalid_penalty=invalid_penalty,
            render_mode=render_mode,
        )
        if not 0.0 <= answer_noise <= 1.0:
            raise ValueError(f"answer_noise={answer_noise}: must be in [0, 1]")
        self.answer_noise = float(answer_noise)
        self.question_reward = float(question_reward)
        self._target = 0

    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        target = (options or {}).get("target")
        if target is not None:
            if target not in _OBJECT_INDEX:
                raise ValueError(f"unknown target {target!r}")
            self._target = _OBJECT_INDEX[target]
        else:
            self._target = int(self.np_random.integers(len(OBJECTS)))
        return [INTRO]

    def _respond(self, utterance: str) -> Reply | None:
        parsed = _LOOKUP.get(tuple(words(utterance)))
        if parsed is None:
            return None
        kind, idx = parsed
        if kind == "guess":
            if idx == self._target:
                return Reply(CORRECT, 0.0, terminated=True, success=True)
            return Reply(NO, self.question_reward)
        answer = bool(ANSWERS[idx, self._target])
        if self.answer_noise > 0.0 and self.np_random.random() < self.answer_noise:
            answer = not answer
        return Reply(YES if answer else NO, self.question_reward)

    def hidden_state(self) -> dict[str, str]:
        return {"target": OBJECTS[self._target]}

    @classmethod
    def vocabulary(cls) -> list[str]:
        texts = [INTRO, YES, NO, CORRECT, NOT_UNDERSTOOD, "a an", *QUESTION_TEXTS, *OBJECTS]
        return sorted({w for t in texts for w in words(t)} | {"?", ".", "!", ","})

    @classmethod
    def help_text(cls) -> str:
        def wrap(items: Sequence[str]) -> str:
            return "\n".join(textwrap.wrap(" | ".join(items), 100, initial_indent="  ", subsequent_indent="  "))

        return (
            "ask yes/no questions, exactly in these forms (case and punctuation ignored):\n"
            f"{wrap(list(ATTRIBUTES.values()))}\n"
            "categories:\n"
            f"{wrap(list(CATEGORIES.values()))}\n"
            "or name the object: is it a hammer? (any of the objects below)\n"
            f"{wrap(list(OBJECTS))}"
        )

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        return {
            "random": lambda env, rng: RandomQuestioner(rng),
            "novice": lambda env, rng: NoviceQuestioner(rng, n_questions=int(rng.integers(3, 9))),
            "expert": lambda env, rng: HalvingQuestioner(rng),
        }


# ---------------------------------------------------------------------- policies
@dataclass
class _Tracker:
    """What the dialogue so far says about the object, parsed incrementally from turns.

    ``mismatch[o]`` counts answers that contradict object ``o`` (so answer noise only
    lowers an object's rank instead of ruling it out); wrongly guessed objects are
    excluded. Works on any history, whoever produced it.
    """

    mismatch: np.ndarray = field(default_factory=lambda: np.zeros(len(OBJECTS), dtype=np.int64))
    excluded: np.ndarray = field(default_factory=lambda: np.zeros(len(OBJECTS), dtype=bool))
    asked: np.ndarray = field(default_factory=lambda: np.zeros(len(QUESTION_KEYS), dtype=bool))
    n_asked: int = 0
    _seen: int = 0

    def update(self, turns: Sequence[Turn]) -> None:
        if len(turns) < self._seen:  # a new episode's history: start over
            self.__init__()  # type: ignore[misc]
        i = max(self._seen, 1)
        while i + 1 < len(turns):
            t, reply = turns[i], turns[i + 1]
            if t.speaker == AGENT and reply.speaker == ENV:
                parsed = parse_question(t.text)
                if parsed is not None and reply.text in (YES, NO):
                    kind, idx = parsed
                    if kind == "guess":
                        self.excluded[idx] = True
                    else:
                        self.asked[idx] = True
                        self.n_asked += 1
                        self.mismatch += ANSWERS[idx] != (reply.text == YES)
                i += 2
            else:
                i += 1
        self._seen = i

    def candidates(self) -> np.ndarray:
        """Indices of the not-yet-guessed objects with the fewest contradictions."""
        score = np.where(self.excluded, np.iinfo(np.int64).max, self.mismatch)
        return np.flatnonzero(score == score.min())


@dataclass
class RandomQuestioner:
    """Uniform over every understood question form: attributes, categories, guesses."""

    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        k = int(self.rng.integers(len(QUESTION_TEXTS) + len(OBJECTS)))
        return QUESTION_TEXTS[k] if k < len(QUESTION_TEXTS) else guess_text(OBJECTS[k - len(QUESTION_TEXTS)])


@dataclass
class NoviceQuestioner:
    """Asks ``n_questions`` random unasked attribute/category questions, then guesses at
    random among the objects consistent with the answers."""

    rng: np.random.Generator
    n_questions: int = 5
    tracker: _Tracker = field(default_factory=_Tracker)

    def act(self, turns: Sequence[Turn]) -> str:
        tr = self.tracker
        tr.update(turns)
        if tr.n_asked < self.n_questions:
            unasked = np.flatnonzero(~tr.asked)
            if unasked.size:
                return QUESTION_TEXTS[int(self.rng.choice(unasked))]
        return guess_text(OBJECTS[int(self.rng.choice(tr.candidates()))])


@dataclass
class HalvingQuestioner:
    """Expert: asks the question whose yes-fraction over the candidates is closest to 1/2.

    It guesses (at random among the candidates) once at most ``guess_below`` candidates
    remain or no question splits them: with guesses free on success, naming one of 3
    candidates costs 1 question in expectation, splitting them 4/3 (and 2 candidates:
    1/2 against 1), so guessing early is the cheaper move.
    """

    rng: np.random.Generator
    guess_below: int = 3
    tracker: _Tracker = field(default_factory=_Tracker)

    def act(self, turns: Sequence[Turn]) -> str:
        tr = self.tracker
        tr.update(turns)
        cand = tr.candidates()
        n = cand.size
        if n > self.guess_below:
            yes = ANSWERS[:, cand].sum(axis=1)
            useful = (yes > 0) & (yes < n) & ~tr.asked
            if useful.any():
                gap = np.where(useful, np.abs(2 * yes - n), np.iinfo(np.int64).max)
                best = np.flatnonzero(gap == gap.min())
                return QUESTION_TEXTS[int(self.rng.choice(best))]
        return guess_text(OBJECTS[int(self.rng.choice(cand))])

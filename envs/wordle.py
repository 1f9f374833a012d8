"""Wordle: find a hidden five-letter word from per-letter colour feedback.

The word lists are stored compactly below: :data:`ANSWERS` (696 common English
words, the hidden words) and :data:`ALLOWED` (the answers plus 195 more accepted
guesses). Feedback for every (guess, answer) pair is computed once, vectorised with
numpy (:func:`feedback_table`), which keeps the expert fast.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from envs.core import (
    AGENT,
    ENV,
    NOT_UNDERSTOOD,
    DialogueEnv,
    EpsilonPolicy,
    PolicyFactory,
    Reply,
    Turn,
    words,
)

logger = logging.getLogger(__name__)

_ANSWER_WORDS = """
    abide erase
    about above abuse actor acute admit adopt adult after again agent agree ahead alarm album alert
    alike alive allow alone along alter among anger angle angry apart apple apply arena argue arise
    array aside asset audio audit avoid award aware awful bacon badge badly baker basic basin basis
    batch beach beard beast began begin begun being below bench berry birth black blade blame blank
    blast blend bless blind block blood bloom board boast bonus boost booth bound brain brake brand
    brass brave bread break breed brick bride brief bring broad broke brown brush build built bunch
    burst buyer cabin cable camel canal candy carry catch cause chain chair chalk charm chart chase
    cheap check cheek cheer chess chest chick chief child chill china choir chose civil claim class
    clean clear clerk click cliff climb clock close cloth cloud coach coast color couch could count
    court cover crack craft crane crash crazy cream crime crisp cross crowd crown crude cruel crush
    curve cycle daily dairy dance death debut decay delay delta dense depth devil diary dirty doubt
    dough draft drama drank drawn dream dress dried drift drill drink drive drove dying eager early
    earth eaten eight elbow elder elect elite empty enemy enjoy enter entry equal error essay event
    every exact exist extra faint faith false fancy fault feast fence fever fiber field fifth fifty
    fight final first flame flash fleet flesh float flock flood floor flour fluid focus force forge
    forth forty forum found frame fraud fresh front frost fruit fully funny giant given glass globe
    glory glove grace grade grain grand grant grape graph grasp grass grave great greed green greet
    grief grill gross group grown guard guess guest guide guilt habit happy harsh heart heavy hello
    hence honey honor horse hotel house human humor hurry ideal image imply index inner input issue
    ivory jeans jelly jewel joint judge juice knife knock known label labor large laser later laugh
    layer learn lease least leave legal lemon level light limit linen liver local logic loose lover
    lower loyal lucky lunch magic major maker march match maybe mayor meant medal media melon mercy
    merit metal meter might minor minus mixed model money month moral motor mount mouse mouth movie
    music naked nasty naval nerve never newly night noble noise north novel nurse occur ocean offer
    often olive onion opera orbit order organ other ought ounce outer owner paint panel panic paper
    party pasta patch pause peace peach pearl penny phase phone photo piano piece pilot pinch pitch
    pizza place plain plane plant plate plaza plead point polar porch pound power press price pride
    prime print prior prize proof proud prove pulse punch pupil purse queen quick quiet quite quote
    radar radio raise rally ranch range rapid ratio reach react ready realm rebel refer relax reply
    rider ridge rifle right rigid rival river roast robin robot rocky rough round route royal rural
    salad sauce scale scare scarf scene scent scope score scout screw sense serve seven shade shake
    shall shape share shark sharp sheep sheet shelf shell shift shine shirt shock shoot shore short
    shout sight silly since skill skirt skull sleep slice slide slope small smart smell smile smoke
    snake solid solve sorry sound south space spare speak speed spell spend spent spice spine split
    spoke spoon sport spray squad stack staff stage stain stair stake stamp stand stare start state
    steak steal steam steel steep stick still stock stone stood store storm story stove strap straw
    strip stuck study stuff style sugar suite sunny super sweet swept swing sword table taken taste
    teach teeth thank theme there thick thief thing think third those three threw throw thumb tiger
    tight timer tired title toast today token tooth topic total touch tough tower toxic trace track
    trade trail train trait trash treat trend trial tribe trick tried truck truly trust truth tulip
    twice twist uncle under union unity until upper upset urban usage usual valid value valve video
    vinyl virus visit vital vivid vocal voice voter wagon waste watch water whale wheat wheel where
    which while white whole whose wider woman world worry worse worst worth would wound write wrong
    wrote yacht yield young youth zebra"""
_EXTRA_WORDS = """
    adapt alien alley amuse anvil apron arrow attic bagel baton bingo bison blimp bluff bored bossy
    brisk broom budge bugle cargo cater cedar cider cigar clamp clasp claws cobra cocoa comet coral
    crate crumb cubic daisy dealt decor diner ditch dizzy dodge donor dozen drain dryer eagle easel
    ember envoy epoch fable fairy feral ferry fetch fiery flair flake flask flint flirt flute foamy
    foggy frail fudge gauge gecko ghost giddy gleam glide gloom gravy grind grunt gusty hatch haunt
    hazel heist hinge hippo hobby hoist hound husky igloo inlet irony jazzy joker jolly kayak kebab
    khaki kiosk koala latch lilac llama lodge lofty lunar lyric mango manor maple marsh mocha moose
    motel mural nacho nanny nifty ninja noisy nudge oasis otter ozone paddy panda patio pecan perch
    petal plaid plank plume plump pouch prank prism puppy quail quilt quirk rainy raven relic rhino
    rodeo rusty salsa satin sauna scuba shrub siren skunk slate sleek slime sloth smirk snack snore
    spade spark spiky squid stork sushi swamp swoop syrup tacky tango tapir tease thorn tiara topaz
    torch tuner tutor ulcer uncut unzip vapor vault venom vigor viper vodka waltz weary whisk witty
    yearn yummy zesty"""

#: The hidden words (sorted).
ANSWERS: tuple[str, ...] = tuple(sorted(set(_ANSWER_WORDS.split())))
#: Every accepted guess (sorted): the answers plus less common words.
ALLOWED: tuple[str, ...] = tuple(sorted(set(ANSWERS) | set(_EXTRA_WORDS.split())))
_ALLOWED_INDEX = {w: i for i, w in enumerate(ALLOWED)}
_ANSWER_INDEX = {w: i for i, w in enumerate(ANSWERS)}

WORD_LENGTH = 5
GREY, YELLOW, GREEN = 0, 1, 2
COLOURS: tuple[str, str, str] = ("grey", "yellow", "green")
_COLOUR_CODE = {c: i for i, c in enumerate(COLOURS)}
N_PATTERNS = 3**WORD_LENGTH
SOLVED_CODE = N_PATTERNS - 1  # all green

INTRO = "guess the hidden five letter word. you have 6 guesses."
NOT_IN_LIST = "not in word list."
SOLVED = "you got it!"


def _letters(ws: Sequence[str]) -> np.ndarray:
    return np.frombuffer("".join(ws).encode("ascii"), dtype=np.uint8).reshape(len(ws), WORD_LENGTH)


def feedback_codes(guesses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """Feedback of every guess against every answer as codes ``sum_i colour_i * 3**i``.

    Standard duplicate-letter rules: greens first; then, left to right, a letter is
    yellow while the answer still has unmatched copies of it, else grey.
    Returns a ``(len(guesses), len(answers))`` uint8 array.
    """
    g = _letters(guesses)[:, None, :]  # (G, 1, 5)
    a = _letters(answers)[None, :, :]  # (1, A, 5)
    green = g == a  # (G, A, 5)
    codes = np.zeros(green.shape[:2], dtype=np.int64)
    for i in range(WORD_LENGTH):
        gi = g[:, :, i : i + 1]  # (G, 1, 1)
        # copies of this letter in the answer that no green has used
        avail = ((a == gi) & ~green).sum(axis=2)
        # earlier non-green guess positions with the same letter (each used one copy)
        prior = ((g[:, :, :i] == gi) & ~green[:, :, :i]).sum(axis=2) if i else 0
        yellow = ~green[:, :, i] & (avail > prior)
        colour = np.where(green[:, :, i], GREEN, np.where(yellow, YELLOW, GREY))
        codes += colour * 3**i
    return codes.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def feedback_table() -> np.ndarray:
    """``feedback_table()[ALLOWED index, ANSWERS index]``: the feedback code (read-only)."""
    table = feedback_codes(ALLOWED, ANSWERS)
    table.setflags(write=False)
    return table


def feedback(guess: str, answer: str) -> tuple[int, ...]:
    """Per-letter colours (0 grey, 1 yellow, 2 green) of ``guess`` against ``answer``."""
    return decode(int(feedback_codes([guess], [answer])[0, 0]))


def decode(code: int) -> tuple[int, ...]:
    return tuple((code // 3**i) % 3 for i in range(WORD_LENGTH))


def feedback_text(guess: str, code: int) -> str:
    """Canonical feedback: ``"s green, p grey, e yellow, e grey, d grey."``."""
    return ", ".join(f"{c} {COLOURS[k]}" for c, k in zip(guess, decode(code))) + "."


def parse_guess(utterance: str) -> str | None:
    """The five-letter word of ``"crane"`` or ``"guess crane"``, else ``None``."""
    w = words(utterance)
    if len(w) == 2 and w[0] == "guess":
        w = w[1:]
    if len(w) == 1 and len(w[0]) == WORD_LENGTH:
        return w[0]
    return None


def parse_feedback(guess: str, text: str) -> int | None:
    """The feedback code written in ``text`` for ``guess``, or ``None`` if it is none."""
    w = words(text)
    if len(w) < 2 * WORD_LENGTH:
        return None
    code = 0
    for i in range(WORD_LENGTH):
        letter, colour = w[2 * i], w[2 * i + 1]
        if letter != guess[i] or colour not in _COLOUR_CODE:
            return None
        code += _COLOUR_CODE[colour] * 3**i
    return code


class WordleEnv(DialogueEnv):
    """Wordle as a dialogue: guess the hidden five-letter word in six tries.

    ## Description

    The environment hides a word from :data:`ANSWERS` (696 common English words). Each
    agent utterance is a guess; the reply colours every letter of the guess, with the
    standard duplicate-letter rules: a letter in the right place is ``green``; a letter
    elsewhere in the word is ``yellow`` as long as the word has copies of it not already
    matched (greens first, then left to right); otherwise ``grey``.

    ## Action Space

    ``Text`` over :data:`envs.core.CHARSET`: a guess, ``"crane"`` (or ``"guess crane"``).
    A five-letter word outside :data:`ALLOWED` (891 words) is answered
    ``"not in word list."``; anything else is not understood.

    ## Observation Space

    ``Text``: the transcript (``history``, default) or the last reply (``last``).
    Feedback reads ``"s green, p grey, e yellow, e grey, d grey."``, and a solving guess
    adds ``"you got it!"``.

    ## Rewards

    ``guess_reward`` (-1) per guess, 0 for the guess that solves the puzzle. A word not in
    the list or an utterance not understood also costs a guess (-1, ``invalid_penalty``).

    ## Starting State

    The hidden word is drawn uniformly from :data:`ANSWERS` with the reset seed
    (``options={"target": word}`` fixes it).

    ## Episode End

    * Terminated (success) when the guess is the hidden word.
    * Truncated after ``max_guesses`` (6) agent utterances (the contract's turn limit).

    ## Arguments

    * ``max_guesses=6``, ``guess_reward=-1.0``, ``invalid_penalty=-1.0``.
    * ``observation="history"`` or ``"last"``; ``render_mode=None`` or ``"ansi"``.

    ## Version History

    * v0: initial version (696 answers, 891 allowed guesses).
    """

    def __init__(
        self,
        max_guesses: int = 6,
        guess_reward: float = -1.0,
        invalid_penalty: float = -1.0,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            max_turns=max_guesses, observation=observation, invalid_penalty=invalid_penalty,
            render_mode=render_mode,
        )
        self.guess_reward = float(guess_reward)
        self._target = 0

    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        target = (options or {}).get("target")
        if target is not None:
            if target not in _ANSWER_INDEX:
                raise ValueError(f"unknown target {target!r}")
            self._target = _ANSWER_INDEX[target]
        else:
            self._target = int(self.np_random.integers(len(ANSWERS)))
        return [INTRO.replace("6", str(self.max_turns))]

    def _respond(self, utterance: str) -> Reply | None:
        guess = parse_guess(utterance)
        if guess is None:
            return None
        g = _ALLOWED_INDEX.get(guess)
        if g is None:
            return Reply(NOT_IN_LIST, self.invalid_penalty)
        code = int(feedback_table()[g, self._target])
        text = feedback_text(guess, code)
        if code == SOLVED_CODE:
            return Reply(f"{text} {SOLVED}", 0.0, terminated=True, success=True)
        return Reply(text, self.guess_reward)

    def hidden_state(self) -> dict[str, str]:
        return {"target": ANSWERS[self._target]}

    @classmethod
    def vocabulary(cls) -> list[str]:
        texts = [INTRO, NOT_IN_LIST, SOLVED, NOT_UNDERSTOOD, "guess", *COLOURS, *ALLOWED]
        base = {w for t in texts for w in words(t)}
        base |= set("abcdefghijklmnopqrstuvwxyz0123456789") | {".", ",", "!"}
        return sorted(base)

    @classmethod
    def help_text(cls) -> str:
        return (
            "guess the hidden five-letter word: type it (crane) or 'guess crane'.\n"
            "feedback per letter: green = right place, yellow = elsewhere in the word, grey = not in it\n"
            "(duplicate letters count as often as the word has them). words outside the list cost a guess."
        )

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        return {
            "random": lambda env, rng: RandomGuesser(rng),
            "novice": lambda env, rng: EpsilonPolicy(ConsistentGuesser(rng), RandomGuesser(rng), 0.5, rng),
            "consistent": lambda env, rng: ConsistentGuesser(rng),
            "expert": lambda env, rng: ExpertGuesser(rng),
        }


# ---------------------------------------------------------------------- policies
@dataclass
class _Candidates:
    """The answers consistent with the feedback in the dialogue so far (incremental)."""

    mask: np.ndarray = field(default_factory=lambda: np.ones(len(ANSWERS), dtype=bool))
    _seen: int = 0

    def update(self, turns: Sequence[Turn]) -> np.ndarray:
        if len(turns) < self._seen:
            self.__init__()  # type: ignore[misc]
        table = feedback_table()
        for i in range(max(self._seen, 1), len(turns) - 1):
            t, reply = turns[i], turns[i + 1]
            if t.speaker != AGENT or reply.speaker != ENV:
                continue
            guess = parse_guess(t.text)
            g = None if guess is None else _ALLOWED_INDEX.get(guess)
            if g is None:
                continue
            code = parse_feedback(guess, reply.text)
            if code is not None:
                self.mask &= table[g] == code
        self._seen = max(len(turns) - 1, self._seen)
        return self.mask


@dataclass
class RandomGuesser:
    """A uniformly random allowed word every turn."""

    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        return ALLOWED[int(self.rng.integers(len(ALLOWED)))]


@dataclass
class ConsistentGuesser:
    """A random answer consistent with all feedback so far (hard mode, no lookahead)."""

    rng: np.random.Generator
    cands: _Candidates = field(default_factory=_Candidates)

    def act(self, turns: Sequence[Turn]) -> str:
        idx = np.flatnonzero(self.cands.update(turns))
        if idx.size == 0:  # feedback from a foreign history contradicts the list
            return ANSWERS[int(self.rng.integers(len(ANSWERS)))]
        return ANSWERS[int(self.rng.choice(idx))]


@dataclass
class ExpertGuesser:
    """Minimises the expected number of remaining candidates after the guess.

    For every allowed guess ``g`` the candidates split by feedback pattern into groups
    of sizes ``n_p``; the expected remaining count is ``sum_p n_p**2 / n``. A guess that
    is itself a candidate solves the puzzle with probability ``1/n``, so its score is
    ``sum_p n_p**2 - 1`` (the solved group leaves nothing). Ties go to the first word.
    With at most two candidates it guesses one of them.
    """

    rng: np.random.Generator
    cands: _Candidates = field(default_factory=_Candidates)

    def act(self, turns: Sequence[Turn]) -> str:
        idx = np.flatnonzero(self.cands.update(turns))
        if idx.size == 0:
            return ANSWERS[int(self.rng.integers(len(ANSWERS)))]
        if idx.size <= 2:
            return ANSWERS[int(idx[0])]
        return ALLOWED[_best_guess(tuple(idx.tolist()))]


@functools.lru_cache(maxsize=64)
def _best_guess(candidates: tuple[int, ...]) -> int:
    table = feedback_table()
    idx = np.asarray(candidates)
    codes = table[:, idx].astype(np.int64)  # (G, n)
    n_guess = codes.shape[0]
    keys = (np.arange(n_guess)[:, None] * N_PATTERNS + codes).ravel()
    counts = np.bincount(keys, minlength=n_guess * N_PATTERNS).reshape(n_guess, N_PATTERNS)
    score = (counts.astype(np.int64) ** 2).sum(axis=1)
    is_cand = np.zeros(n_guess, dtype=bool)
    is_cand[[_ALLOWED_INDEX[ANSWERS[i]] for i in candidates]] = True
    score = score - is_cand
    return int(np.argmin(score))

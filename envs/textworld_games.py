"""TextWorld games as dialogue environments (optional extra ``textworld``).

Games are generated from seeds with the real TextWorld engine (the same generator as
``tw-make``) the first time they are needed and cached on disk (see
:func:`cache_dir`); later runs load them from the cache. Nothing is downloaded: the
TextWorld wheel ships the Inform 7 compiler.

``textworld`` is imported lazily, only when a game is generated or played, so
``import envs`` stays cheap. :func:`textworld_specs` lists the ids registered when the
package is installed (none otherwise).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from envs.core import (
    MAX_OBSERVATION_CHARS,
    NOT_UNDERSTOOD,
    DialogueEnv,
    EpsilonPolicy,
    PolicyFactory,
    ReferenceReturns,
    Reply,
    SwitchPolicy,
    Turn,
    sanitize,
)
from envs.token_view import join_pieces, pre_tokenize

logger = logging.getLogger(__name__)

#: Challenge short name -> TextWorld challenge id.
CHALLENGES: dict[str, str] = {
    "coin_collector": "tw-coin_collector",
    "treasure_hunter": "tw-treasure_hunter",
}

#: Words of Inform 7 library messages a game may print besides its own source text.
_LIBRARY_TEXT = (
    "you are carrying nothing. you scored out of a possible, in turns. the end. "
    "your score has just gone up by one point. points. you have lost. you have won. "
    "taken. dropped. opened. closed. unlocked. locked. you can't see any such thing. "
    "you see nothing special about it. it is empty. nothing happens. you are carrying: "
    "that's not a verb i recognise. you can't go that way. i only understood you as far as wanting to. "
    "you are now carrying. you put the on the. you take the from the. you open the. you unlock the. "
    "with. into. onto. is. are. a. an. the. and. it's. there. here. nothing. something. "
)


def textworld_available() -> bool:
    """Whether the ``textworld`` package is installed (without importing it)."""
    try:
        return importlib.util.find_spec("textworld") is not None
    except (ImportError, ValueError):  # e.g. blocked with sys.modules["textworld"] = None
        return False


def cache_dir() -> Path:
    """Where generated games live: ``$DIALOGUE_RL_CACHE/textworld``, else
    ``$XDG_CACHE_HOME/dialogue_rl/textworld`` (``~/.cache`` by default)."""
    root = os.environ.get("DIALOGUE_RL_CACHE")
    if root:
        return Path(root) / "textworld"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "dialogue_rl" / "textworld"


def game_file(challenge: str, level: int, seed: int) -> Path:
    """Path of the compiled game (generated on first use, atomically)."""
    import textworld

    name = f"{challenge}-level{level}-seed{seed}-tw{textworld.__version__}"
    path = cache_dir() / f"{name}.z8"
    if path.exists():
        return path
    import textworld.challenges
    import textworld.generator

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
    try:
        options = textworld.GameOptions()
        options.seeds = int(seed)
        options.path = str(tmp / f"{name}.z8")
        options.file_ext = ".z8"
        options.force_recompile = True
        _, make_game, _ = textworld.challenges.CHALLENGES[CHALLENGES[challenge]]
        logger.info("generating TextWorld game %s", name)
        game = make_game(settings={"level": int(level)}, options=options)
        compiled = Path(textworld.generator.compile_game(game, options))
        for ext in (".json", ".ni"):  # the .z8 last: its presence marks a complete entry
            if compiled.with_suffix(ext).exists():
                os.replace(compiled.with_suffix(ext), path.with_suffix(ext))
        os.replace(compiled, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


_ROOM_RE = re.compile(r"-=\s*(.*?)\s*=-")
_STARS_RE = re.compile(r"\*{2,}\s*(.*?)\s*\*{2,}")


def clean_text(text: str) -> str:
    """Game output as canonical project text: no ASCII-art banner, no prompt, no
    restart menu, room headers as sentences, charset only, tokenizer round-trip."""
    text = text.split("Would you like to RESTART")[0]
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(">"):  # the prompt line, with the status bar (room, score/moves)
            continue
        visible = s.replace(" ", "")
        if sum(ch.isalpha() for ch in visible) < 0.5 * len(visible):  # banner art
            continue
        s = _ROOM_RE.sub(r"\1.", s)
        s = _STARS_RE.sub(r"\1.", s)
        lines.append(s)
    return join_pieces(pre_tokenize(sanitize(" ".join(lines), MAX_OBSERVATION_CHARS)))


class _HybridMethod:
    """A method bound to the instance when called on one, else to the class."""

    def __init__(self, func: Any) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj: Any, cls: type) -> Any:
        return functools.partial(self.func, cls if obj is None else obj)


class TextWorldEnv(DialogueEnv):
    """A TextWorld game as a dialogue: the agent types commands, the game narrates.

    ## Description

    Adapter over the real TextWorld engine. Each id has a pool of games generated from
    ``game_seeds`` with a TextWorld challenge at a difficulty ``level``:
    ``coin_collector`` (walk through rooms to a coin and take it) or ``treasure_hunter``
    (find and take the named object; taking a wrong one loses). The opening turn is the
    game's objective and first room; every reply is the game's narration, sanitised
    into the project charset (banner, prompt and restart menu removed).

    ## Action Space

    ``Text`` over :data:`envs.core.CHARSET`: one game command. Only the commands the
    engine lists as admissible in the current state (``info["admissible_commands"]``,
    e.g. ``"go north"``, ``"take coin"``, ``"open door"``) are played; anything else is
    answered ``"i do not understand."`` without touching the game.

    ## Observation Space

    ``Text``: the transcript (``history``, default) or the last reply (``last``).
    ``info`` also carries ``admissible_commands``, ``score``, ``max_score``, ``won`` and
    ``lost``.

    ## Rewards

    The change of the game score at each command (coin collector and treasure hunter:
    +1 for the winning command), plus ``step_reward`` (0) per command. An utterance
    that is not understood costs ``invalid_penalty`` (0).

    ## Starting State

    The game is drawn uniformly from the pool with the reset seed; the game itself is
    deterministic.

    ## Episode End

    * Terminated when the game ends: won (success) or lost (treasure hunter, a wrong
      object taken).
    * Truncated after ``max_turns`` agent utterances.

    ## Arguments

    * ``challenge``: ``"coin_collector"`` or ``"treasure_hunter"``.
    * ``level``: TextWorld difficulty (coin collector 1-300, treasure hunter 1-30).
    * ``game_seeds=(0, 1, 2, 3)``: the pool (use disjoint seeds for held-out games).
    * ``max_turns=50``, ``step_reward=0.0``, ``invalid_penalty=0.0``.
    * ``observation="history"`` or ``"last"``; ``render_mode=None`` or ``"ansi"``.

    Copies (``copy.deepcopy``, pickling) drop the live game engine and must be reset.
    :meth:`reward_of` replays on a fresh env with the same arguments.

    ## Version History

    * v0: initial version (TextWorld 1.6+).
    """

    def __init__(
        self,
        challenge: str = "coin_collector",
        level: int = 5,
        game_seeds: Sequence[int] = (0, 1, 2, 3),
        max_turns: int = 50,
        step_reward: float = 0.0,
        invalid_penalty: float = 0.0,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        if challenge not in CHALLENGES:
            raise ValueError(f"challenge={challenge!r}: expected one of {sorted(CHALLENGES)}")
        if not game_seeds:
            raise ValueError("game_seeds must not be empty")
        super().__init__(
            max_turns=max_turns, observation=observation, invalid_penalty=invalid_penalty,
            render_mode=render_mode,
        )
        self._init_kwargs: dict[str, Any] = {
            "challenge": challenge, "level": int(level), "game_seeds": tuple(int(s) for s in game_seeds),
            "max_turns": max_turns, "step_reward": step_reward, "invalid_penalty": invalid_penalty,
            "observation": observation, "render_mode": render_mode,
        }
        self.challenge = challenge
        self.level = int(level)
        self.game_seeds = tuple(int(s) for s in game_seeds)
        self.step_reward = float(step_reward)
        self._engines: dict[int, Any] = {}
        self._game = self.game_seeds[0]
        self._state: Any = None
        self._score = 0

    # ---------------------------------------------------------------- engine
    def _engine(self, seed: int) -> Any:
        if seed not in self._engines:
            import textworld

            infos = textworld.EnvInfos(
                admissible_commands=True, policy_commands=True, max_score=True, score=True,
                won=True, lost=True, extras=["walkthrough"],
            )
            path = game_file(self.challenge, self.level, seed)
            with warnings.catch_warnings():  # jericho: "not fully supported" (TextWorld keeps score)
                warnings.simplefilter("ignore")
                self._engines[seed] = textworld.start(str(path), request_infos=infos)
        return self._engines[seed]

    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        game = (options or {}).get("game_seed")
        if game is None:
            game = self.game_seeds[int(self.np_random.integers(len(self.game_seeds)))]
        self._game = int(game)
        self._state = self._engine(self._game).reset()
        self._score = int(self._state.score or 0)
        return [clean_text(self._state.feedback) or "you are in a game."]

    def _respond(self, utterance: str) -> Reply | None:
        if self._state is None or utterance not in self.admissible_commands:
            return None
        state, _, done = self._engines[self._game].step(utterance)
        self._state = state
        score = int(state.score or 0)
        reward = float(score - self._score) + self.step_reward
        self._score = score
        won = bool(state.won)
        return Reply(clean_text(state.feedback) or "nothing happens.", reward, terminated=bool(done), success=won)

    @property
    def admissible_commands(self) -> list[str]:
        """The commands the engine accepts now (sorted; what ``info`` reports)."""
        if self._state is None or self._done:
            return []
        return sorted({sanitize(c) for c in (self._state.admissible_commands or [])} - {""})

    @property
    def policy_commands(self) -> list[str]:
        """TextWorld's winning command sequence from the current state."""
        return [] if self._state is None else [sanitize(c) for c in (self._state.policy_commands or [])]

    @property
    def walkthrough(self) -> list[str]:
        """The game's walkthrough from its start state."""
        if self._state is None:
            return []
        return [sanitize(c) for c in (self._state.get("extra.walkthrough") or [])]

    def hidden_state(self) -> dict[str, Any]:
        return {"challenge": self.challenge, "level": self.level, "game_seed": self._game}

    def _info(self) -> dict[str, Any]:
        info = super()._info()
        st = self._state
        info.update(
            admissible_commands=self.admissible_commands,
            score=self._score,
            max_score=int(st.max_score or 0) if st is not None else 0,
            won=bool(st.won) if st is not None else False,
            lost=bool(st.lost) if st is not None else False,
        )
        return info

    def reward_of(self, turns: Sequence[Turn | dict], seed: int | None = None) -> list[float]:
        """Replays the logged agent utterances on a fresh env with the same arguments."""
        env = type(self)(**self._init_kwargs)
        try:
            return DialogueEnv.reward_of(env, turns, seed)
        finally:
            env.close()

    def close(self) -> None:
        for eng in self._engines.values():
            eng.close()
        self._engines = {}
        self._state = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_engines"] = {}
        state["_state"] = None
        state["_done"] = True
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict) -> TextWorldEnv:
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__setstate__({k: copy.deepcopy(v, memo) for k, v in self.__getstate__().items()})
        return new

    # ---------------------------------------------------------------- vocabulary
    @_HybridMethod
    def vocabulary(self_or_cls: Any) -> list[str]:
        """On an instance: every word of its games' sources and of the Inform 7 library
        messages (generates the pool if needed). On the class: the library words only."""
        texts = [_LIBRARY_TEXT, NOT_UNDERSTOOD, "you are in a game. nothing happens."]
        if isinstance(self_or_cls, TextWorldEnv):
            for seed in self_or_cls.game_seeds:
                path = game_file(self_or_cls.challenge, self_or_cls.level, seed)
                for ext in (".ni", ".json"):
                    p = path.with_suffix(ext)
                    if p.exists():
                        texts.append(sanitize(p.read_text(errors="replace"), 1 << 24))
        pieces = {p for t in texts for p in pre_tokenize(t)}
        pieces |= {str(d) for d in range(10)}
        return sorted(pieces)

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        def stitch(env: DialogueEnv, rng: np.random.Generator) -> SwitchPolicy:
            assert isinstance(env, TextWorldEnv)
            k = math.ceil(len(env.walkthrough) / 2)
            return SwitchPolicy(WalkthroughCommand(env, rng), RandomCommand(env, rng), k)

        return {
            "random": lambda env, rng: RandomCommand(env, rng),
            "noisy": lambda env, rng: EpsilonPolicy(WalkthroughCommand(env, rng), RandomCommand(env, rng), 0.3, rng),
            "expert": lambda env, rng: WalkthroughCommand(env, rng),
            "stitch": stitch,
        }


# ---------------------------------------------------------------------- policies
# TextWorld policies read what the engine reports to every agent in ``info`` (the
# admissible commands, and for the expert TextWorld's own winning policy from the
# current state), never the game file.
@dataclass
class RandomCommand:
    """A uniformly random admissible command."""

    env: TextWorldEnv
    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        cmds = self.env.admissible_commands
        return cmds[int(self.rng.integers(len(cmds)))] if cmds else "look"


@dataclass
class WalkthroughCommand:
    """Expert: the next command of TextWorld's walkthrough from the current state
    (it recovers from any earlier detour), else a random admissible command."""

    env: TextWorldEnv
    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        cmds = self.env.admissible_commands
        plan = self.env.policy_commands
        if plan and plan[0] in cmds:
            return plan[0]
        return cmds[int(self.rng.integers(len(cmds)))] if cmds else "look"


#: (id, kwargs, reference returns): random = mean over seeds 0..299 (recomputed by the slow
#: test in tests/test_text_games.py); the walkthrough expert always wins (score 1).
_TEXTWORLD_IDS: tuple[tuple[str, dict[str, Any], ReferenceReturns], ...] = (
    ("dialogue_rl/TextWorld-CoinCollector-Easy-v0",
     {"challenge": "coin_collector", "level": 5, "max_turns": 30}, ReferenceReturns(random=0.34, expert=1.0)),
    ("dialogue_rl/TextWorld-CoinCollector-Hard-v0",
     {"challenge": "coin_collector", "level": 110, "max_turns": 60}, ReferenceReturns(random=0.02, expert=1.0)),
    ("dialogue_rl/TextWorld-TreasureHunter-Easy-v0",
     {"challenge": "treasure_hunter", "level": 5, "max_turns": 30}, ReferenceReturns(random=0.36, expert=1.0)),
    ("dialogue_rl/TextWorld-TreasureHunter-Medium-v0",
     {"challenge": "treasure_hunter", "level": 15, "max_turns": 60}, ReferenceReturns(random=0.26, expert=1.0)),
)


#: The TextWorld env ids (registered only when the ``textworld`` extra is installed).
TEXTWORLD_ENV_IDS: tuple[str, ...] = tuple(i for i, _, _ in _TEXTWORLD_IDS)


def textworld_specs() -> tuple[tuple[str, str, dict, ReferenceReturns], ...]:
    """Registry entries of the TextWorld ids, or ``()`` when ``textworld`` is absent."""
    if not textworld_available():
        return ()
    entry = "envs.textworld_games:TextWorldEnv"
    return tuple((i, entry, kw, ref) for i, kw, ref in _TEXTWORLD_IDS)

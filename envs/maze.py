"""A fixed grid maze in text, fully observed (``MazeFO``) or partially observed (``MazePO``).

The maze is a constant (:data:`LAYOUT`); shortest-path distances and, for the
partially observed variant, a Bayes-optimal policy over belief states are computed
once per layout (:func:`maze_tables`, :func:`belief_policy`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import deque
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

#: The default maze: ``#`` wall, ``.`` free, ``G`` the goal (42 free cells).
LAYOUT = """
###########
#....#....#
#.##.#.##.#
#.#.......#
#.#.###.#.#
#...#..G#.#
###.#####.#
#.........#
###########
"""

DIRECTIONS: tuple[str, str, str, str] = ("up", "down", "left", "right")
_DELTAS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_SYNONYMS = {"up": 0, "north": 0, "down": 1, "south": 1, "left": 2, "west": 2, "right": 3, "east": 3}
_FILLER = frozenset({"move", "go", "walk", "step", "head", "please", "to", "the", "one", "i", "will", "and"})

_POSITION_RE = re.compile(r"you are at row ([0-9]+), column ([0-9]+)")


def parse_move(utterance: str) -> int | None:
    """Direction index of ``"move left"``, ``"go left"``, ``"left"``, ``"west"``..., else ``None``.

    Exactly one direction word and otherwise only filler words (move, go, walk, step,
    head, please, to, the, one, i, will, and).
    """
    dirs = []
    for w in words(utterance):
        if w in _SYNONYMS:
            dirs.append(_SYNONYMS[w])
        elif w not in _FILLER:
            return None
    return dirs[0] if len(dirs) == 1 else None


def move_text(direction: int) -> str:
    """The canonical action utterance: ``"move left."``."""
    return f"move {DIRECTIONS[direction]}."


@dataclass(frozen=True)
class MazeTables:
    """Precomputed structure of a layout. Cells are the free squares in reading order."""

    cells: tuple[tuple[int, int], ...]
    goal: int
    #: ``nxt[c, d]``: the cell reached from ``c`` moving ``d``, or -1 for a wall.
    nxt: np.ndarray
    #: ``walls[c]``: bit ``d`` set when direction ``d`` is blocked.
    walls: np.ndarray
    #: ``dist[c]``: shortest-path length from ``c`` to the goal.
    dist: np.ndarray
    index: dict[tuple[int, int], int]

    def optimal_moves(self, cell: int) -> list[int]:
        return [d for d in range(4) if self.nxt[cell, d] >= 0 and self.dist[self.nxt[cell, d]] < self.dist[cell]]


@functools.lru_cache(maxsize=8)
def maze_tables(layout: str) -> MazeTables:
    grid = [row for row in layout.strip().splitlines()]
    if len({len(r) for r in grid}) != 1:
        raise ValueError("maze layout rows must have equal length")
    cells = tuple((r, c) for r, row in enumerate(grid) for c, ch in enumerate(row) if ch in ".G")
    goals = [i for i, (r, c) in enumerate(cells) if grid[r][c] == "G"]
    if len(goals) != 1:
        raise ValueError("maze layout needs exactly one goal G")
    index = {rc: i for i, rc in enumerate(cells)}
    nxt = np.full((len(cells), 4), -1, dtype=np.int64)
    walls = np.zeros(len(cells), dtype=np.int64)
    for i, (r, c) in enumerate(cells):
        for d, (dr, dc) in enumerate(_DELTAS):
            j = index.get((r + dr, c + dc))
            if j is None:
                walls[i] |= 1 << d
            else:
                nxt[i, d] = j
    goal = goals[0]
    dist = np.full(len(cells), -1, dtype=np.int64)
    dist[goal] = 0
    queue = deque([goal])
    while queue:
        i = queue.popleft()
        for j in nxt[i]:
            if j >= 0 and dist[j] < 0:
                dist[j] = dist[i] + 1
                queue.append(int(j))
    if (dist < 0).any():
        raise ValueError("maze layout: some free cells cannot reach the goal")
    for a in (nxt, walls, dist):
        a.setflags(write=False)
    return MazeTables(cells, goal, nxt, walls, dist, index)


def walls_text(mask: int) -> str:
    names = [DIRECTIONS[d] for d in range(4) if mask >> d & 1]
    return "walls: " + (", ".join(names) if names else "none") + "."


def parse_walls(text: str) -> int | None:
    """The wall mask written in ``"... walls: up, left."``, or ``None``."""
    _, sep, rest = text.rpartition("walls:")
    if not sep:
        return None
    mask = 0
    for w in words(rest):
        if w in DIRECTIONS:
            mask |= 1 << DIRECTIONS.index(w)
    return mask


# ------------------------------------------------------------------ belief planning
def _bits(mask: int) -> list[int]:
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def _outcomes(t: MazeTables, belief: int, d: int) -> dict[tuple[bool, int], int]:
    """Split a belief by what moving ``d`` would show: (bumped, walls) -> next belief.

    Cells that would step onto the goal end the episode and are left out.
    """
    out: dict[tuple[bool, int], int] = {}
    for c in _bits(belief):
        j = int(t.nxt[c, d])
        if j < 0:
            key, cell = (True, int(t.walls[c])), c
        elif j == t.goal:
            continue
        else:
            key, cell = (False, int(t.walls[j])), j
        out[key] = out.get(key, 0) | (1 << cell)
    return out


@functools.lru_cache(maxsize=8)
def belief_policy(layout: str) -> dict[int, tuple[tuple[int, ...], float]]:
    """Bayes-optimal actions of the partially observed maze, for every reachable belief.

    A belief is the set (bit mask over cells) of positions consistent with the history;
    the start is uniform over the non-goal cells and moves are deterministic, so every
    position in the set is equally likely (two histories that agree never merge).
    Value iteration on ``V(B) = min_d [1 + sum_o P(o | B, d) V(B_o)]`` with ``V = 0``
    once the goal is reached gives the minimal expected number of steps; returns
    ``belief -> (optimal directions, V(B))``.
    """
    t = maze_tables(layout)
    starts: dict[int, int] = {}
    for c in range(len(t.cells)):
        if c != t.goal:
            w = int(t.walls[c])
            starts[w] = starts.get(w, 0) | (1 << c)
    trans: dict[int, list[list[tuple[float, int]]]] = {}
    queue = deque(starts.values())
    while queue:
        b = queue.popleft()
        if b in trans:
            continue
        n = b.bit_count()
        per_action = []
        for d in range(4):
            outs = _outcomes(t, b, d)
            per_action.append([(nb.bit_count() / n, nb) for nb in outs.values()])
            queue.extend(nb for nb in outs.values() if nb not in trans)
        trans[b] = per_action
    value = dict.fromkeys(trans, 0.0)
    for _ in range(10_000):
        delta = 0.0
        for b, per_action in trans.items():
            v = min(1.0 + sum(p * value[nb] for p, nb in outs) for outs in per_action)
            delta = max(delta, abs(v - value[b]))
            value[b] = v
        if delta < 1e-10:
            break
    policy = {}
    for b, per_action in trans.items():
        q = [1.0 + sum(p * value[nb] for p, nb in outs) for outs in per_action]
        best = min(q)
        policy[b] = (tuple(d for d in range(4) if q[d] <= best + 1e-9), value[b])
    logger.debug("belief policy: %d reachable beliefs", len(policy))
    return policy


class MazeEnv(DialogueEnv):
    """Navigate a fixed text maze to the goal (``MazeFO-v0`` / ``MazePO-v0``).

    ## Description

    A grid maze (:data:`LAYOUT`, 42 free cells) with one fixed goal. The agent moves one
    cell per utterance. With ``observability="full"`` (MazeFO) every env utterance states
    the agent's position, the goal's position and the walls around the agent. With
    ``observability="partial"`` (MazePO) it states only the walls around the agent, so
    the agent must infer where it is from the history of moves and walls (many cells
    look alike: the task is a POMDP even with the full transcript).

    ## Action Space

    ``Text`` over :data:`envs.core.CHARSET`: ``"move up."``, ``"move down."``,
    ``"move left."``, ``"move right."``; paraphrases with one direction word (``up``,
    ``down``, ``left``, ``right`` or ``north``, ``south``, ``west``, ``east``) and only
    filler words (``"go left"``, ``"left"``, ``"please move west"``) are understood.

    ## Observation Space

    ``Text``: the transcript (``history``, default) or the last reply (``last``). Replies:
    ``"you moved left. you are at row 3, column 2. the goal is at row 5, column 7.
    walls: up, down."`` (full) or ``"you moved left. walls: up, down."`` (partial);
    ``"you bumped into a wall. ..."`` when the move is blocked;
    ``"you moved right. you reached the goal!"`` at the goal. Rows and columns count
    from 0 at the top-left corner of the layout (the outer wall included).

    ## Rewards

    ``step_reward`` (-1) per move, 0 for the move that reaches the goal. Bumping into a
    wall leaves the agent in place and costs a step (-1). An utterance that is not
    understood costs ``invalid_penalty`` (-1) and counts as a step.

    ## Starting State

    The start cell is uniform among the free cells other than the goal, drawn with the
    reset seed (``options={"start": (row, column)}`` fixes it).

    ## Episode End

    * Terminated (success) when the agent reaches the goal.
    * Truncated after ``max_steps`` (100) agent utterances (the contract's turn limit).

    ## Arguments

    * ``observability="full"`` or ``"partial"`` (the two registered ids).
    * ``max_steps=100``, ``step_reward=-1.0``, ``invalid_penalty=-1.0``.
    * ``layout=LAYOUT``: another maze (``#`` wall, ``.`` free, one ``G``).
    * ``observation="history"`` or ``"last"``; ``render_mode=None`` or ``"ansi"``.

    ## Version History

    * v0: initial version.
    """

    def __init__(
        self,
        observability: str = "full",
        max_steps: int = 100,
        step_reward: float = -1.0,
        invalid_penalty: float = -1.0,
        layout: str = LAYOUT,
        observation: str = "history",
        render_mode: str | None = None,
    ) -> None:
        super().__init__(
            max_turns=max_steps, observation=observation, invalid_penalty=invalid_penalty,
            render_mode=render_mode,
        )
        if observability not in ("full", "partial"):
            raise ValueError(f"observability={observability!r}: expected 'full' or 'partial'")
        self.observability = observability
        self.step_reward = float(step_reward)
        self.layout = layout
        self.tables = maze_tables(layout)
        self._start = 0
        self._pos = 0

    @property
    def fully_observed(self) -> bool:
        return self.observability == "full"

    @property
    def position(self) -> tuple[int, int]:
        """The agent's (row, column). Read only by oracle-style policies."""
        return self.tables.cells[self._pos]

    def _new_episode(self, options: dict[str, Any] | None) -> list[str]:
        t = self.tables
        start = (options or {}).get("start")
        if start is not None:
            cell = t.index.get(tuple(start))  # type: ignore[arg-type]
            if cell is None or cell == t.goal:
                raise ValueError(f"start={start!r} is not a free non-goal cell")
            self._start = cell
        else:
            k = int(self.np_random.integers(len(t.cells) - 1))
            self._start = k + (k >= t.goal)
        self._pos = self._start
        return ["find the goal. " + self._state_text()]

    def _state_text(self) -> str:
        t = self.tables
        w = walls_text(int(t.walls[self._pos]))
        if not self.fully_observed:
            return w
        (r, c), (gr, gc) = t.cells[self._pos], t.cells[t.goal]
        return f"you are at row {r}, column {c}. the goal is at row {gr}, column {gc}. {w}"

    def _respond(self, utterance: str) -> Reply | None:
        d = parse_move(utterance)
        if d is None:
            return None
        j = int(self.tables.nxt[self._pos, d])
        if j < 0:
            return Reply("you bumped into a wall. " + self._state_text(), self.step_reward)
        self._pos = j
        if j == self.tables.goal:
            return Reply(f"you moved {DIRECTIONS[d]}. you reached the goal!", 0.0, terminated=True, success=True)
        return Reply(f"you moved {DIRECTIONS[d]}. " + self._state_text(), self.step_reward)

    def hidden_state(self) -> dict[str, tuple[int, int]]:
        return {"start": self.tables.cells[self._start]}

    @classmethod
    def vocabulary(cls) -> list[str]:
        texts = [
            "find the goal. you are at row, column. the goal is at row, column. walls: none.",
            "you moved. you bumped into a wall. you reached the goal!", NOT_UNDERSTOOD,
            " ".join(DIRECTIONS), " ".join(_SYNONYMS), " ".join(_FILLER),
        ]
        return sorted({w for t in texts for w in words(t)} | set("0123456789") | {".", ",", "!", ":"})

    @classmethod
    def help_text(cls) -> str:
        return (
            "move one cell a turn: move up. | move down. | move left. | move right.\n"
            "also: north, south, west, east; 'go left', 'left', 'please move west' (one direction word).\n"
            "rows and columns count from 0 at the top-left corner; a blocked move bumps into the wall."
        )

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        return {
            "random": lambda env, rng: RandomMover(rng),
            "noisy": lambda env, rng: EpsilonPolicy(_expert(env, rng), RandomMover(rng), 0.3, rng),
            "expert": _expert,
            "stitch": lambda env, rng: HalfOptimalMover(env, rng),
        }


class MazeFOEnv(MazeEnv):
    __doc__ = MazeEnv.__doc__

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("observability", "full")
        super().__init__(**kwargs)


class MazePOEnv(MazeEnv):
    __doc__ = MazeEnv.__doc__

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("observability", "partial")
        super().__init__(**kwargs)

    @classmethod
    def policies(cls) -> dict[str, PolicyFactory]:
        pols = dict(super().policies())
        pols["oracle"] = lambda env, rng: OracleMover(env, rng)
        return pols


def _expert(env: DialogueEnv, rng: np.random.Generator) -> Any:
    assert isinstance(env, MazeEnv)
    if env.fully_observed:
        return ShortestPathMover(env.layout, rng)
    return BeliefMover(env.layout, rng)


# ---------------------------------------------------------------------- policies
@dataclass
class RandomMover:
    """A uniformly random direction every turn."""

    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        return move_text(int(self.rng.integers(4)))


@dataclass
class ShortestPathMover:
    """Expert of the fully observed maze: reads the position from the last env turn and
    takes a shortest-path move (ties broken at random)."""

    layout: str
    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        t = maze_tables(self.layout)
        cell = _parse_position(t, turns)
        if cell is None:
            return move_text(int(self.rng.integers(4)))
        moves = t.optimal_moves(cell)
        return move_text(moves[int(self.rng.integers(len(moves)))])


def _parse_position(t: MazeTables, turns: Sequence[Turn]) -> int | None:
    for turn in reversed(turns):
        if turn.speaker == ENV:
            m = _POSITION_RE.search(turn.text)
            return None if m is None else t.index.get((int(m.group(1)), int(m.group(2))))
    return None


@dataclass
class BeliefMover:
    """Expert of the partially observed maze, acting from the history only.

    Tracks the set of positions consistent with the walls seen and the moves made
    (bumps included) and plays the Bayes-optimal action of :func:`belief_policy`
    (minimal expected steps to the goal under a uniform start).
    """

    layout: str
    rng: np.random.Generator
    belief: int = -1
    _seen: int = 0

    def update(self, turns: Sequence[Turn]) -> int:
        t = maze_tables(self.layout)
        if len(turns) < self._seen or self.belief < 0:
            self._seen, self.belief = 0, 0
        i = self._seen
        if i == 0 and turns:
            w = parse_walls(turns[0].text)
            self.belief = 0 if w is None else sum(
                1 << c for c in range(len(t.cells)) if c != t.goal and t.walls[c] == w
            )
            i = 1
        while i + 1 < len(turns):
            a, reply = turns[i], turns[i + 1]
            if a.speaker == AGENT and reply.speaker == ENV:
                d = parse_move(a.text)
                w = parse_walls(reply.text)
                if d is not None and w is not None:
                    outs = _outcomes(t, self.belief, d)
                    self.belief = outs.get((reply.text.startswith("you bumped"), w), 0)
                i += 2
            else:
                i += 1
        self._seen = i
        return self.belief

    def act(self, turns: Sequence[Turn]) -> str:
        belief = self.update(turns)
        entry = belief_policy(self.layout).get(belief)
        if entry is None:  # inconsistent history (not produced by this maze)
            return move_text(int(self.rng.integers(4)))
        moves = entry[0]
        return move_text(moves[int(self.rng.integers(len(moves)))])


@dataclass
class OracleMover:
    """Upper reference of the partially observed maze: shortest path from the true
    position, read from the env (not from the observation)."""

    env: MazeEnv
    rng: np.random.Generator

    def act(self, turns: Sequence[Turn]) -> str:
        t = self.env.tables
        moves = t.optimal_moves(t.index[self.env.position])
        return move_text(moves[int(self.rng.integers(len(moves)))])


@dataclass
class HalfOptimalMover:
    """Stitching generator: shortest-path moves in the half of the maze that holds the
    goal, uniformly random moves in the other half (split at the middle column).

    It needs the true position: in the fully observed maze that is in the observation;
    in the partially observed maze it reads the env (an oracle-style *generator*; its
    logged actions are still ordinary utterances).
    """

    env: MazeEnv
    rng: np.random.Generator
    split: int = field(init=False)

    def __post_init__(self) -> None:
        width = len(self.env.layout.strip().splitlines()[0])
        self.split = width // 2

    def _goal_side(self, col: int) -> bool:
        goal_col = self.env.tables.cells[self.env.tables.goal][1]
        return (col >= self.split) == (goal_col >= self.split)

    def act(self, turns: Sequence[Turn]) -> str:
        t = self.env.tables
        cell = t.index[self.env.position] if not self.env.fully_observed else _parse_position(t, turns)
        if cell is None or not self._goal_side(t.cells[cell][1]):
            return move_text(int(self.rng.integers(4)))
        moves = t.optimal_moves(cell)
        return move_text(moves[int(self.rng.integers(len(moves)))])

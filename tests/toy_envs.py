"""Small environments for tests of the env core, the token view and the learners."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from envs.core import DialogueEnv, Reply, Turn, words


class GuessNumberEnv(DialogueEnv):
    """Guess a hidden number 1..n: "is it k?" is answered "higher"/"lower"/"yes".

    Reward -1 a question, 0 for the right guess; anything else is not understood
    (penalty -1).
    """

    def __init__(self, n: int = 4, max_turns: int = 6, **kwargs: Any) -> None:
        super().__init__(max_turns=max_turns, invalid_penalty=-1.0, **kwargs)
        self.n = n
        self._target = 0

    def _new_episode(self, options):
        self._target = int(self.np_random.integers(1, self.n + 1))
        return [f"guess my number from 1 to {self.n}."]

    def _respond(self, utterance: str):
        w = words(utterance)
        if w[:2] != ["is", "it"] or len(w) != 3 or not w[2].isdigit():
            return None
        k = int(w[2])
        if k == self._target:
            return Reply("yes!", 0.0, terminated=True, success=True)
        return Reply("higher." if k < self._target else "lower.", -1.0)

    def hidden_state(self):
        return {"target": self._target}

    @classmethod
    def vocabulary(cls):
        return ["guess", "my", "number", "from", "to", "is", "it", "yes", "higher", "lower", "i", "do", "not", "understand"]

    @classmethod
    def policies(cls):
        return {"random": lambda env, rng: _Fixed(rng, env.n), "expert": lambda env, rng: _Bisect(env.n)}


class _Fixed:
    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self.rng, self.n = rng, n

    def act(self, turns: Sequence[Turn]) -> str:
        return f"is it {int(self.rng.integers(1, self.n + 1))}?"


class _Bisect:
    def __init__(self, n: int) -> None:
        self.lo, self.hi = 1, n

    def act(self, turns: Sequence[Turn]) -> str:
        last = turns[-1].text
        if turns[-1].speaker == "env" and len(turns) > 1:
            mid = (self.lo + self.hi) // 2
            if last.startswith("higher"):
                self.lo = mid + 1
            elif last.startswith("lower"):
                self.hi = mid - 1
        return f"is it {(self.lo + self.hi) // 2}?"

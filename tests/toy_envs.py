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


class StitchEnv(DialogueEnv):
    """Two choices, each rewarded on its own: the known-optimal stitching task.

    Turn 1: "left" earns +1, "right" 0. The env replies "ok." either way. Turn 2:
    "up" earns +1, "down" 0, and the episode terminates. Optimal return 2 ("left",
    "up"). In the behaviour data (:func:`stitch_rows`) the majority choice is wrong
    at both nodes of the dialogue tree and the optimal dialogue is rare (5%): one
    policy is good at turn 1 only, another at turn 2 only. BC follows the majority
    (return 0); a value learner takes the best branch at each node (return 2).
    Dialogue histories form a tree, so per-node choice is what stitching means here.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_turns=2, **kwargs)

    def _new_episode(self, options):
        return ["choose left or right."]

    def _respond(self, utterance: str):
        w = words(utterance)
        first = self._agent_turns == 0
        opts = ("left", "right") if first else ("up", "down")
        if len(w) != 1 or w[0] not in opts:
            return None
        reward = 1.0 if w[0] in ("left", "up") else 0.0
        return Reply("ok." if first else "done.", reward, terminated=not first, success=reward > 0 and not first)

    def hidden_state(self):
        return {}

    @classmethod
    def vocabulary(cls):
        return ["choose", "left", "or", "right", "ok", "done", "up", "down", "i", "do", "not", "understand"]

    @classmethod
    def policies(cls):
        def fixed(a: str, b: str):
            return lambda env, rng: _Script([a, b])

        return {"left_down": fixed("left", "down"), "right_up": fixed("right", "up"),
                "random": fixed("right", "down"), "expert": fixed("left", "up")}


class _Script:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def act(self, turns: Sequence[Turn]) -> str:
        return self.lines[sum(1 for t in turns if t.speaker == "agent")]


def stitch_rows(n: int = 300) -> list[dict]:
    """Behaviour data for :class:`StitchEnv`: 35% left/down, 5% left/up, 25% right/up, 35% right/down."""
    from envs.core import play_episode

    env = StitchEnv()
    pols = env.policies()
    names = ["left_down"] * 7 + ["expert"] + ["right_up"] * 5 + ["random"] * 7
    rows = []
    for i in range(n):
        name = names[i % len(names)]
        ep = play_episode(env, pols[name], seed=i)
        rows.append({"env_id": "stitch", "seed": i, "policy": name, "turns": [t.to_dict() for t in ep.turns],
                     "return": ep.ret, "length": ep.agent_turns, "success": ep.success})
    return rows


def fit_on_stitch(learner: Any, tokenizer: Any, steps: int = 150, lr: float = 3e-3) -> None:
    """Train ``learner`` on :func:`stitch_rows` with the shared loop (CPU, quiet)."""
    import torch

    from dialogue_rl.train import TrainConfig, fit

    data = learner.make_examples(stitch_rows(), _codec(tokenizer), 64)
    cfg = TrainConfig(steps=steps, batch_size=32, lr=lr, warmup_steps=20, log_every=10**9, checkpoint_every=10**9)
    fit(learner, data, lambda ex: learner.collate(ex, tokenizer.pad_token_id), cfg, torch.device("cpu"),
        progress=False)


def stitch_mean_return(agent: Any, episodes: int = 5) -> float:
    """Mean return of a batched agent over ``episodes`` seeded :class:`StitchEnv` episodes."""
    env = StitchEnv()
    rets = []
    for seed in range(episodes):
        _, info = env.reset(seed=seed)
        ret, done = 0.0, False
        while not done:
            _, r, term, trunc, info = env.step(agent.act([info["turns"]], [0])[0])
            ret += r
            done = term or trunc
        rets.append(ret)
    return sum(rets) / len(rets)


def _codec(tokenizer: Any):
    from dialogue_rl.models.tokenizer import codec

    return codec(tokenizer)

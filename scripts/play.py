"""Play an environment in the terminal, or watch an agent play it.

    python scripts/play.py env=guess_which seed=3                   # you ask the questions
    python scripts/play.py env=maze_fo                              # a random episode (seed printed)
    python scripts/play.py env=guess_which agent=scripted:expert save_png=pool.png
    python scripts/play.py agent=runs/<run>                         # watch a trained agent (its env)
    python scripts/play.py env=wordle env.kwargs.max_guesses=8      # an env variant

You play the agent's side against the env's scripted partner over plain stdin/stdout,
so a game can be scripted (``printf 'move up\\nmove left\\n' | python scripts/play.py
env=maze_fo seed=1``). Every turn is printed as a transcript line (``agent: ...`` /
``env: ...``, exactly the env's history observation), each agent turn followed by its
reward and the running return. Commands at the prompt: ``help`` (the forms the partner
understands, the env's ``help_text()``), ``history`` (the transcript so far), ``quit``
(end now; end of input also quits). At the end: the return, success, the hidden state
revealed; for GuessWhich the pool ranked by the env's belief (``save_png=<path>`` saves
it as a picture, target outlined).

Arguments (``key=value``):

* ``env``: a name of ``conf/env/*.yaml`` (``guess_which``, ``maze_fo``,
  ``deal_or_no_deal``, ...) or a registered id (``dialogue_rl/MazePO-v0``); default
  ``guess_which``, or the checkpoint's env with ``agent=<checkpoint>``.
* ``env.kwargs.<name>=<value>``: constructor arguments (values parsed as YAML).
* ``seed``: the episode (default: a random one, printed so it can be replayed).
* ``agent``: ``scripted:<policy>`` (one of the env's ``policies()``) or a run directory /
  ``checkpoints/step_*`` directory written by ``scripts/train.py``; absent: you play.
* ``save_png``: where to save the final picture (envs with ``rgb_array`` rendering).
* ``device`` (``auto``) for checkpoints; ``delay`` (seconds between an agent's turns).

The env configs are read directly instead of composing ``conf/train.yaml`` with Hydra:
composing that config imports the whole training stack (several seconds) before the
first prompt. Playing the partner's side (e.g. the other negotiator) is not supported:
the partners are scripted inside the envs.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import gymnasium as gym
import numpy as np
import yaml
from gymnasium.envs.registration import load_env_creator

import envs
from envs.core import AGENT, DialogueEnv, Turn, policy_rng, render_transcript, render_turn
from envs.guess_which import GuessWhichEnv
from envs.render import write_png

ROOT = Path(__file__).resolve().parents[1]
ENV_CONF = ROOT / "conf" / "env"
KEYS = ("env", "seed", "agent", "save_png", "device", "delay")
COMMANDS = {"help": "help", "?": "help", "quit": "quit", "exit": "quit", "history": "history"}
SCRIPTED = "scripted:"


class UsageError(ValueError):
    """A bad command-line argument (one line naming it and the fix)."""


@dataclass
class PlayArgs:
    env: str | None = None
    seed: int | None = None
    agent: str | None = None
    save_png: str | None = None
    device: str = "auto"
    delay: float = 0.0
    env_kwargs: dict[str, Any] = field(default_factory=dict)


def env_names() -> list[str]:
    return sorted(p.stem for p in ENV_CONF.glob("*.yaml"))


def parse_args(argv: Sequence[str]) -> PlayArgs:
    """``key=value`` arguments (see the module docstring)."""
    args = PlayArgs()
    for a in argv:
        key, sep, value = a.partition("=")
        if not sep:
            raise UsageError(f"{a!r}: expected key=value, key one of {', '.join(KEYS)} or env.kwargs.<name>")
        if key.startswith("env.kwargs."):
            args.env_kwargs[key[len("env.kwargs."):]] = yaml.safe_load(value)
        elif key == "seed":
            try:
                args.seed = int(value)
            except ValueError:
                raise UsageError(f"seed={value!r}: expected an integer") from None
        elif key == "delay":
            try:
                args.delay = float(value)
            except ValueError:
                raise UsageError(f"delay={value!r}: expected seconds") from None
        elif key in KEYS:
            setattr(args, key, value or None)
        else:
            raise UsageError(f"unknown key {key!r}: expected one of {', '.join(KEYS)} or env.kwargs.<name>")
    return args


def resolve_env(name: str) -> tuple[str, dict[str, Any]]:
    """``(env id, kwargs)`` of a ``conf/env`` name or a registered id."""
    if name in envs.env_ids():
        return name, {}
    path = ENV_CONF / f"{name}.yaml"
    if not path.is_file():
        raise UsageError(f"env={name!r}: unknown; choose one of {', '.join(env_names())} or a registered id")
    conf = yaml.safe_load(path.read_text())
    env_id = conf["id"]
    if env_id not in envs.env_ids():
        raise UsageError(f"env={name!r}: {env_id} is not registered here (a missing optional extra?)")
    return env_id, dict(conf.get("kwargs") or {})


def make_env(env_id: str, kwargs: dict[str, Any], pictures: bool) -> DialogueEnv:
    """The env (unwrapped); with ``render_mode="rgb_array"`` when ``pictures`` and it draws any."""
    env_cls = load_env_creator(gym.spec(env_id).entry_point)
    if pictures and "rgb_array" in getattr(env_cls, "metadata", {}).get("render_modes", ()):
        kwargs = {**kwargs, "render_mode": "rgb_array"}
    return gym.make(env_id, **kwargs).unwrapped


# ------------------------------------------------------------------------ players
class Human:
    """Reads utterances from ``stdin``; handles the ``help``/``history``/``quit`` commands."""

    def __init__(self, env: DialogueEnv, stdin: TextIO, out: TextIO) -> None:
        self.env, self.stdin, self.out = env, stdin, out
        self.echo = not stdin.isatty()  # show scripted input like a terminal would

    def act(self, turns: Sequence[Turn]) -> str | None:
        """The next utterance, or None to quit."""
        while True:
            self.out.write("you> ")
            self.out.flush()
            line = self.stdin.readline()
            if not line:  # end of input
                self.out.write("\n")
                return None
            text = line.rstrip("\n")
            if self.echo:
                self.out.write(text + "\n")
            command = COMMANDS.get(text.strip().lower())
            if command == "quit":
                return None
            if command == "help":
                print(self.env.help_text(), file=self.out)
            elif command == "history":
                print(render_transcript(turns), file=self.out)
            elif text.strip():
                return text


class Scripted:
    """A scripted policy of the env (``agent=scripted:<name>``), seeded like ``play_episode``."""

    def __init__(self, env: DialogueEnv, name: str) -> None:
        pols = env.policies()
        if name not in pols:
            raise UsageError(f"agent=scripted:{name}: unknown; choose one of {', '.join(sorted(pols))}")
        self.env, self.factory, self.policy = env, pols[name], None

    def reset(self, seed: int) -> None:
        self.policy = self.factory(self.env, policy_rng(seed))

    def act(self, turns: Sequence[Turn]) -> str:
        return self.policy.act(turns)


class Trained:
    """A trained agent from a checkpoint (``dialogue_rl.experiment.load_saved_agent``)."""

    def __init__(self, agent: Any, env: DialogueEnv) -> None:
        self.agent, self.env = agent, env

    def reset(self, seed: int) -> None:
        self.agent.reset([self.env], [seed])

    def act(self, turns: Sequence[Turn]) -> str:
        return self.agent.act([list(turns)], [0])[0]


# ---------------------------------------------------------------------------- game
@dataclass
class Outcome:
    turns: list[Turn]
    ret: float
    success: bool
    ended: str  # "terminated", "truncated" or "quit"


def play(env: DialogueEnv, seed: int, player: Any, out: TextIO, delay: float = 0.0) -> Outcome:
    """One episode on ``seed``: print the transcript as it grows, rewards and the return."""
    _, info = env.reset(seed=seed)
    if hasattr(player, "reset"):
        player.reset(seed)
    for t in info["turns"]:
        print(render_turn(t), file=out)
    ret, ended = 0.0, "quit"
    while True:
        utterance = player.act(info["turns"])
        if utterance is None:
            break
        _, reward, term, trunc, info = env.step(utterance)
        ret += reward
        for t in info["turns"][-2:]:
            print(render_turn(t), file=out)
        print(f"    reward {reward:+.4f}   return {ret:+.4f}", file=out)
        out.flush()
        if term or trunc:
            ended = "terminated" if term else "truncated"
            break
        if delay > 0 and not isinstance(player, Human):
            time.sleep(delay)
    return Outcome(info["turns"], ret, bool(info["success"]) and ended != "quit", ended)


def report(env: DialogueEnv, outcome: Outcome, out: TextIO, save_png: str | None) -> None:
    n = sum(1 for t in outcome.turns if t.speaker == AGENT)
    state = "episode not finished" if outcome.ended == "quit" else outcome.ended
    print(f"game over after {n} agent turns ({state}).", file=out)
    print(f"final return: {outcome.ret:.6g}", file=out)
    print(f"success: {'yes' if outcome.success else 'no'}", file=out)
    if isinstance(env, GuessWhichEnv):
        target = env.setup.target
        pool = env.pool
        print("pool ranked by belief (* = the target):", file=out)
        for rank, (i, b) in enumerate(env.ranking(), 1):
            mark = "*" if i == target else " "
            desc = "; ".join(o.describe() for o in pool[i])
            print(f" {mark}{rank:3d}. {100 * b:5.1f}%  {desc}", file=out)
    else:
        print(f"hidden state: {json.dumps(env.hidden_state(), default=str)}", file=out)
    if save_png:
        if "rgb_array" not in env.metadata.get("render_modes", ()):
            print(f"warning: {type(env).__name__} draws no pictures; save_png ignored", file=sys.stderr)
            return
        frame = env.render_pool() if isinstance(env, GuessWhichEnv) else env.render()
        path = write_png(save_png, np.asarray(frame, dtype=np.uint8))
        print(f"saved the final picture to {path}", file=out)


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stdin, out = stdin or sys.stdin, out or sys.stdout
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__, file=out)
        return 0
    try:
        args = parse_args(argv)
        trained = None
        env_id, kwargs = resolve_env(args.env or "guess_which")
        if args.agent and not args.agent.startswith(SCRIPTED):
            from dialogue_rl.experiment import load_saved_agent

            trained = load_saved_agent(args.agent, Path.cwd(), args.device)
            if args.env is None:  # the checkpoint's own env
                env_id, kwargs = trained.config.env.id, dict(trained.config.env.kwargs)
        env = make_env(env_id, {**kwargs, **args.env_kwargs}, pictures=bool(args.save_png))
        seed = args.seed if args.seed is not None else int(np.random.default_rng().integers(1_000_000))
        if args.agent is None:
            player: Any = Human(env, stdin, out)
            who = "you are the agent; `help` lists what the partner understands, `quit` ends"
        elif trained is not None:
            env_cfg = None if args.env is None else {"id": env_id, "kwargs": kwargs}
            player = Trained(trained.agent(seed, env=env_cfg), env)
            who = f"watching {trained.path} ({trained.config.algo.name}, step {trained.step})"
        else:
            name = args.agent[len(SCRIPTED):]
            player = Scripted(env, name)
            who = f"watching the scripted policy {name!r}"
    except UsageError as e:
        print(f"play.py: {e}", file=sys.stderr)
        return 2
    print(f"{env_id}, seed {seed}: {who}.", file=out)
    outcome = play(env, seed, player, out, args.delay)
    report(env, outcome, out, args.save_png)
    return 0


if __name__ == "__main__":
    sys.exit(main())

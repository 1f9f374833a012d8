"""Behaviour-policy specs: the strings that name a dataset's policies.

Grammar (whitespace around names is ignored)::

    spec := NAME            a policy of env.policies()
          | NAME > NAME @ K   SwitchPolicy(A, B, K): A for the first K agent turns, then B
          | NAME ~ NAME @ P   EpsilonPolicy(A, B, P): each turn B with probability P, else A

``K`` is an integer >= 0 and ``P`` a float in [0, 1]. Composites take plain names only
(no nesting). ``"expert>random@2"`` is stitching data: good early, poor late.

Randomness: the composite's first policy gets the episode's policy generator itself, so
``"A>B@k"`` acts exactly like ``"A"`` for its first ``k`` turns; ``B`` and the epsilon
coin get independent children spawned from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from envs.core import DialogueEnv, EpsilonPolicy, Policy, PolicyFactory, SwitchPolicy

_COMPOSITE = re.compile(r"^\s*([^>~@\s]+)\s*([>~])\s*([^>~@\s]+)\s*@\s*([^>~@\s]+)\s*$")
_NAME = re.compile(r"^\s*([^>~@\s]+)\s*$")


@dataclass(frozen=True)
class PolicySpec:
    """A parsed spec: ``op`` is ``None`` (plain), ``">"`` (switch) or ``"~"`` (epsilon)."""

    first: str
    op: str | None = None
    second: str | None = None
    param: float = 0.0


def _bad(spec: str, why: str, valid: list[str]) -> ValueError:
    return ValueError(
        f"bad policy spec {spec!r}: {why}; valid names: {', '.join(valid)}; "
        "composites: 'A>B@k' (switch after k agent turns), 'A~B@p' (epsilon mix)"
    )


def parse_spec(spec: str, valid: list[str] | None = None) -> PolicySpec:
    """Parse a spec string; check the names against ``valid`` when given.

    Raises:
        ValueError: a one-line message listing the valid names and the grammar.
    """
    names = sorted(valid) if valid is not None else []
    if not isinstance(spec, str):
        raise _bad(str(spec), f"expected a string, got {type(spec).__name__}", names)
    m = _COMPOSITE.match(spec)
    if m:
        first, op, second, raw = m.groups()
        if op == ">":
            if not re.fullmatch(r"[0-9]+", raw):
                raise _bad(spec, f"switch point {raw!r} must be an integer >= 0", names)
            param = float(int(raw))
        else:
            try:
                param = float(raw)
            except ValueError:
                raise _bad(spec, f"epsilon {raw!r} is not a number", names) from None
            if not (math.isfinite(param) and 0.0 <= param <= 1.0):
                raise _bad(spec, f"epsilon {raw!r} must be in [0, 1]", names)
        parsed = PolicySpec(first, op, second, param)
    else:
        m = _NAME.match(spec)
        if not m:
            raise _bad(spec, "not a policy name or composite", names)
        parsed = PolicySpec(m.group(1))
    if valid is not None:
        for name in (parsed.first, parsed.second):
            if name is not None and name not in valid:
                raise _bad(spec, f"unknown policy {name!r}", names)
    return parsed


def _child(rng: np.random.Generator) -> np.random.Generator:
    """An independent generator derived from ``rng`` without consuming its stream."""
    try:
        return rng.spawn(1)[0]
    except (TypeError, ValueError):  # generator not built from a SeedSequence
        return np.random.default_rng(rng.bit_generator.random_raw(2).tolist())


def resolve_policy(env: DialogueEnv, spec: str) -> PolicyFactory:
    """The :data:`~envs.core.PolicyFactory` of a spec over ``env.policies()``.

    Raises:
        ValueError: unknown name or malformed spec (the message lists the valid names).
    """
    table = env.policies()
    parsed = parse_spec(spec, list(table))
    first = table[parsed.first]
    if parsed.op is None:
        return first
    second = table[parsed.second]  # type: ignore[index]
    if parsed.op == ">":
        k = int(parsed.param)

        def switch(env: DialogueEnv, rng: np.random.Generator) -> Policy:
            return SwitchPolicy(first(env, rng), second(env, _child(rng)), k)

        return switch
    eps = parsed.param

    def epsilon(env: DialogueEnv, rng: np.random.Generator) -> Policy:
        noise_rng, coin_rng = _child(rng), _child(rng)
        return EpsilonPolicy(first(env, rng), second(env, noise_rng), eps, coin_rng)

    return epsilon

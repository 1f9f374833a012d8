"""Filtered behaviour cloning (%BC): BC on the top fraction of dialogues by return.

.. math::

    D_{\\%} = \\{\\tau \\in D : R(\\tau) \\ge q_{1 - \\%}(R)\\}, \\qquad
    L_{\\%BC}(\\theta) = L_{BC}(\\theta; D_{\\%})

``fraction`` is the kept share (default 0.1 = 10% BC). Ties at the threshold are
broken by dataset order so exactly ``ceil(fraction * N)`` dialogues are kept.
"""

from __future__ import annotations

import math

import numpy as np

from dialogue_rl.algos.bc import BC


def top_fraction(returns: list[float], fraction: float) -> list[int]:
    """Indices of the ``ceil(fraction * N)`` highest returns (stable order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"filtered_bc fraction={fraction}: must be in (0, 1]")
    k = max(1, math.ceil(fraction * len(returns)))
    order = np.argsort(-np.asarray(returns, dtype=np.float64), kind="stable")
    return sorted(order[:k].tolist())


class FilteredBC(BC):
    """BC on the best ``fraction`` of the dataset by return."""

    name = "filtered_bc"

    def __init__(self, model, fraction: float = 0.1) -> None:
        super().__init__(model)
        self.fraction = fraction

    def prepare_dataset(self, examples: list[dict], rows_returns: list[float]) -> list[dict]:
        return [examples[i] for i in top_fraction(rows_returns, self.fraction)]

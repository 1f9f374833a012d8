"""dialogue-rl: the learning lab (datasets, models, offline learners, evaluation).

Environments live in the separate ``envs`` package; this package depends on it,
never the other way round.
"""

__version__ = "0.1.0"

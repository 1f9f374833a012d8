"""Learners, one per file. ``LEARNERS`` maps an algo name to its class."""

from dialogue_rl.algos.base import Learner, TokenBatch, action_logprobs, shifted_action_mask
from dialogue_rl.algos.bc import BC
from dialogue_rl.algos.dpo import DPO
from dialogue_rl.algos.filtered_bc import FilteredBC, top_fraction
from dialogue_rl.algos.ilql import ILQL
from dialogue_rl.algos.mc import MC
from dialogue_rl.algos.ppo import PPO
from dialogue_rl.algos.reward_model import RewardModel
from dialogue_rl.algos.utterance_q import UtteranceQ

LEARNERS: dict[str, type[Learner]] = {
    "bc": BC, "filtered_bc": FilteredBC, "ilql": ILQL, "mc": MC, "utterance_q": UtteranceQ,
    "reward_model": RewardModel, "dpo": DPO, "ppo": PPO,
}

__all__ = ["BC", "DPO", "ILQL", "LEARNERS", "MC", "PPO", "FilteredBC", "Learner", "RewardModel", "TokenBatch", "UtteranceQ",
           "action_logprobs", "shifted_action_mask", "top_fraction"]

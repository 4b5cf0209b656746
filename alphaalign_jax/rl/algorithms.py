"""The RL algorithms a config can name, and what each is made of: the one place to add one.

An algorithm is its advantage estimator, a function of the rewards of each prompt's group
(GRPO's group-normalised reward, RLOO's leave-one-out baseline), or ``None`` when a learned
critic estimates them (PPO: GAE over the critic's values, the reward on the last token); and
the config values it sets. Those values are applied when the config is built
(``base_config(algorithm)``, ``--config=FILE:ppo``), before command-line overrides, so a flag
always wins and ``config.json`` holds every value a run used. Nothing outside this module asks
an algorithm's name: the trainer calls the estimator it finds here, or the critic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from alphaalign_jax.rl.advantages import group_advantages
from alphaalign_jax.rl.rloo import leave_one_out_advantages

@dataclasses.dataclass(frozen=True)
class AdvantageSettings:
    scale_by_std: bool  # divide group-normalised advantages by the group's reward std


# [num_prompts, G] rewards and their settings -> [num_prompts, G] advantages
GroupEstimator = Callable[[np.ndarray, AdvantageSettings], np.ndarray]


def group_normalised(rewards: np.ndarray, settings: AdvantageSettings) -> np.ndarray:
    """GRPO's (and DAPO's, Dr.GRPO's without the std): the reward against its group's."""
    return np.asarray(group_advantages(rewards, scale_by_std=settings.scale_by_std))


def leave_one_out(rewards: np.ndarray, settings: AdvantageSettings) -> np.ndarray:
    """RLOO's: the reward against the mean of the group's other rewards."""
    del settings  # no setting: the baseline is the estimator
    return leave_one_out_advantages(rewards)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    advantages: GroupEstimator | None  # None: a critic's values and GAE
    defaults: Mapping[str, Any]  # "section.field" -> value, set when the config is built
    summary: str

    @property
    def critic(self) -> bool:
        """Whether the algorithm trains a critic (its advantages come from it)."""
        return self.advantages is None


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", group_normalised, {},
              "GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, k3 KL"),
    Algorithm("dapo", group_normalised,
              {"algo.clip_high": 0.28, "algo.aggregation": "token_mean"},
              "DAPO (Yu et al. 2025): clip-higher and the token-level mean"),
    Algorithm("dr_grpo", group_normalised,
              {"algo.scale_by_std": False, "algo.aggregation": "dr_grpo"},
              "Dr.GRPO (Liu et al. 2025): no std division, a constant length normaliser"),
    Algorithm("rloo", leave_one_out, {},
              "RLOO (Ahmadian et al. 2024): each rollout against the mean reward of its "
              "group's others (unbiased, no std division); the clipped ratio and k3 KL as GRPO"),
    Algorithm("ppo", None,
              {"algo.aggregation": "token_mean", "algo.beta": 0.0, "algo.mini_batches": 2},
              "PPO (the paper's main runs, veRL's defaults): a critic, GAE (gamma = lambda = "
              "1), the reward on the last token, whitened advantages, no KL unless "
              "algo.kl_penalty (in the reward) or algo.beta (in the loss), 2 mini-batches"),
)}


def get(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]


def apply(config, name: str) -> None:
    """Name ``config``'s algorithm and set the values it fixes (call before overrides)."""
    algorithm = get(name)
    config.algo.name = name
    for path, value in algorithm.defaults.items():
        section, field = path.split(".")
        config[section][field] = value

"""The RL algorithms a config can name, and what each is made of: the one place to add one.

An algorithm is an advantage estimator ("group": each rollout's reward against its prompt's
group of G; "gae": GAE over a learned critic's values, the reward on the last token), whether it
trains a critic, and the config values it sets. Those values are applied when the config is
built (``base_config(algorithm)``, ``--config=FILE:ppo``), before command-line overrides, so a
flag always wins and ``config.json`` holds every value a run used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal


@dataclasses.dataclass(frozen=True)
class Algorithm:
    name: str
    advantages: Literal["group", "gae"]
    critic: bool
    defaults: Mapping[str, Any]  # "section.field" -> value, set when the config is built
    summary: str


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("grpo", "group", False, {},
              "GRPO (Shao et al. 2024): group-normalised advantages, clipped ratio, k3 KL"),
    Algorithm("dapo", "group", False,
              {"algo.clip_high": 0.28, "algo.aggregation": "token_mean"},
              "DAPO (Yu et al. 2025): clip-higher and the token-level mean"),
    Algorithm("dr_grpo", "group", False,
              {"algo.scale_by_std": False, "algo.aggregation": "dr_grpo"},
              "Dr.GRPO (Liu et al. 2025): no std division, a constant length normaliser"),
    Algorithm("ppo", "gae", True,
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

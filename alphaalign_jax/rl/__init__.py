"""GRPO numerics: group advantages, the clipped policy loss, fused log-probs, the optimizer."""

from alphaalign_jax.rl.advantages import group_advantages
from alphaalign_jax.rl.logprobs import scaled_logits, token_logprobs
from alphaalign_jax.rl.losses import AGGREGATIONS, finalize, grpo_loss
from alphaalign_jax.rl.optim import make_optimizer, make_schedule

__all__ = [
    "AGGREGATIONS",
    "finalize",
    "group_advantages",
    "grpo_loss",
    "make_optimizer",
    "make_schedule",
    "scaled_logits",
    "token_logprobs",
]

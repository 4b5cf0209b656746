"""Group-relative advantages for GRPO-style policy optimisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(
    rewards: jax.Array, *, scale_by_std: bool = True, eps: float = 1e-6
) -> jax.Array:
    """Advantages of G rollouts per prompt relative to their own group.

    GRPO (Shao et al. 2024): ``A_ij = (r_ij - mean_j r_ij) / (std_j r_ij + eps)``.
    Dr.GRPO (Liu et al. 2025) drops the std division (``scale_by_std=False``),
    ``A_ij = r_ij - mean_j r_ij``, because dividing by the group std up-weights
    prompts that are nearly always solved or always failed.

    The std is the *population* std (ddof=0, NumPy's default), not the sample
    std (ddof=1) that TRL/veRL get from ``torch.std``. It is defined for G=1
    (an all-zero advantage instead of NaN) and is the maximum-likelihood scale
    of the group; the two differ only by the constant factor sqrt(G/(G-1))
    (1.07 for G=8), i.e. a rescaling of the learning rate. A group whose
    rewards are all equal gets advantage exactly 0.

    Args:
      rewards: [num_prompts, G] scalar reward per rollout, grouped by prompt.
      scale_by_std: divide by the group std (GRPO) or not (Dr.GRPO).
      eps: added to the std so constant groups do not divide by zero.

    Returns:
      [num_prompts, G] advantages, float32 (float64 if the rewards are).
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [num_prompts, G], got shape {rewards.shape}")
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    # A constant group carries no signal, but float rounding leaves its mean a
    # hair off (8 x 0.7 in float32: 6e-8, which / (std + eps) becomes 0.056 for
    # every rollout), so it is zeroed exactly rather than through the formula.
    constant = (rewards == rewards[:, :1]).all(axis=1, keepdims=True)
    centred = jnp.where(constant, 0.0, rewards - rewards.mean(axis=1, keepdims=True))
    if not scale_by_std:
        return centred
    return centred / (rewards.std(axis=1, keepdims=True) + eps)

"""REINFORCE leave-one-out (RLOO) advantages: each rollout against the mean of the others.

Ahmadian et al. 2024 ("Back to Basics"): with G samples of one prompt, the baseline of sample i
is the mean reward of the other G - 1, ``A_i = r_i - mean_{j != i} r_j``. It is unbiased (the
baseline does not depend on r_i) where GRPO's group mean is not, and it divides by no std, so a
nearly solved prompt is not up-weighted. Algebraically ``A_i = G / (G - 1) (r_i - mean_j r_j)``,
Dr.GRPO's centred reward scaled by a constant, but it is computed here as written.
"""

from __future__ import annotations

import numpy as np


def leave_one_out_advantages(rewards: np.ndarray) -> np.ndarray:
    """[num_prompts, G] rewards -> [num_prompts, G] advantages, each reward minus the mean of
    its group's other rewards; a group whose rewards are all equal gets exactly 0."""
    rewards = np.asarray(rewards)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be [num_prompts, G >= 2] (a leave-one-out baseline needs "
                         f"another sample of the prompt), got shape {rewards.shape}")
    rewards = rewards.astype(np.promote_types(rewards.dtype, np.float32))
    group = rewards.shape[1]
    others_mean = (rewards.sum(axis=1, keepdims=True) - rewards) / (group - 1)
    constant = (rewards == rewards[:, :1]).all(axis=1, keepdims=True)
    return np.where(constant, 0.0, rewards - others_mean).astype(rewards.dtype)

"""Numeric reward combination over [num_prompts, group_size] rollouts (jitted JAX).

R_h (benign prompts only): z-normalise the reward-model scores within each
prompt's group, R_h = max(z, 0) for non-refusals and 0 for refusals.
Total: R_s for harmful prompts, R_s + R_h for benign ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _row_mask(is_benign: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """[P] per-prompt flags broadcast to the [P, G] rollouts."""
    is_benign = jnp.asarray(is_benign, dtype=bool)
    if is_benign.shape != shape[:1]:
        raise ValueError(f"is_benign must be [num_prompts]={shape[:1]}, got {is_benign.shape}")
    return jnp.broadcast_to(is_benign[:, None], shape)


def group_normalise(
    values: jax.Array, mask: jax.Array | None = None, eps: float = 1e-6
) -> jax.Array:
    """z = (x - mean) / (std + eps) within each row over the entries in ``mask``.

    The std is the population std (ddof=0) of the masked entries. Entries
    outside the mask get 0. A row whose masked entries are all equal (zero
    std, including a single entry) or that has no masked entry at all gets
    exactly 0 everywhere, never NaN, and never the tiny rounding residue of its
    mean blown up by 1/eps.
    """
    values = jnp.asarray(values)
    values = values.astype(jnp.promote_types(values.dtype, jnp.float32))
    if values.ndim != 2:
        raise ValueError(f"values must be [num_prompts, group_size], got shape {values.shape}")
    mask = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask, dtype=bool)
    count = mask.sum(axis=1, keepdims=True)
    safe_count = jnp.maximum(count, 1)
    mean = jnp.where(mask, values, 0.0).sum(axis=1, keepdims=True) / safe_count
    centred = jnp.where(mask, values - mean, 0.0)
    std = jnp.sqrt((centred**2).sum(axis=1, keepdims=True) / safe_count)
    big = jnp.finfo(values.dtype).max
    row_max = jnp.where(mask, values, -big).max(axis=1, keepdims=True)
    row_min = jnp.where(mask, values, big).min(axis=1, keepdims=True)
    constant = row_max <= row_min  # all masked entries equal, or none masked
    return jnp.where(mask & ~constant, centred / (std + eps), 0.0)


@functools.partial(jax.jit, static_argnames=("refusals_in_stats",))
def helpfulness_reward(
    scores: jax.Array,
    is_refusal: jax.Array,
    is_benign: jax.Array,
    eps: float = 1e-6,
    refusals_in_stats: bool = True,
) -> jax.Array:
    """R_h: max(z, 0) of the reward-model scores, 0 for refusals and harmful prompts.

    Args:
      scores: [P, G] reward-model scores of each rollout.
      is_refusal: [P, G] V_r of each rollout.
      is_benign: [P] whether each prompt is benign.
      eps: added to the group std (``group_normalise``).
      refusals_in_stats: whether refusals enter the group mean/std. True (the
        default) is the paper's formula read literally: z over all n rollouts
        of the prompt. Refusals usually score low under a reward model, so
        they lower the mean and every answering rollout gains; with False, z
        compares the answering rollouts only with each other (pure quality
        signal; a group with a single answering rollout then gets 0).

    Returns:
      [P, G] float32 helpfulness rewards, >= 0 and finite for finite scores.
    """
    is_refusal = jnp.asarray(is_refusal, dtype=bool)
    mask = None if refusals_in_stats else ~is_refusal
    z = group_normalise(scores, mask, eps)
    keep = _row_mask(is_benign, z.shape) & ~is_refusal
    return jnp.where(keep, jnp.maximum(z, 0.0), 0.0)


@functools.partial(jax.jit, static_argnames=("normalise_each",))
def total_reward(
    safety: jax.Array,
    helpfulness: jax.Array,
    is_benign: jax.Array,
    normalise_each: bool = False,
    eps: float = 1e-6,
) -> jax.Array:
    """R_s for harmful prompts, R_s + R_h for benign ones, shaped [P, G].

    With ``normalise_each`` both rewards are first z-normalised within each
    prompt's group, so that the two (on different scales: R_s takes a few
    discrete values, R_h is a clipped z-score) weigh equally in the sum.
    """
    safety = jnp.asarray(safety)
    helpfulness = jnp.asarray(helpfulness)
    if normalise_each:
        safety = group_normalise(safety, eps=eps)
        helpfulness = group_normalise(helpfulness, eps=eps)
    return safety + jnp.where(_row_mask(is_benign, safety.shape), helpfulness, 0.0)


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over ``mask``; 0 when the mask is empty (the count says so)."""
    values = jnp.asarray(values, dtype=jnp.float32)
    return jnp.where(mask, values, 0.0).sum() / jnp.maximum(mask.sum(), 1)


@jax.jit
def reward_metrics(
    format_score: jax.Array,
    refusal: jax.Array,
    safety: jax.Array,
    helpfulness: jax.Array,
    total: jax.Array,
    is_benign: jax.Array,
) -> dict[str, jax.Array]:
    """Per-class means for logging: each reward by prompt class.

    All inputs but ``is_benign`` ([P]) are [P, G]. A class absent from the
    batch gets 0 for its means (not NaN), and ``count/<class>`` (rollouts of
    that class) tells a reader to ignore them.
    """
    benign = _row_mask(is_benign, jnp.shape(format_score))
    harmful = ~benign
    return {
        "count/harmful": harmful.sum(),
        "count/benign": benign.sum(),
        "format_rate/harmful": _masked_mean(format_score, harmful),
        "format_rate/benign": _masked_mean(format_score, benign),
        "refusal_rate/harmful": _masked_mean(refusal, harmful),
        "over_refusal_rate/benign": _masked_mean(refusal, benign),
        "safety_reward/harmful": _masked_mean(safety, harmful),
        "safety_reward/benign": _masked_mean(safety, benign),
        "helpfulness_reward/benign": _masked_mean(helpfulness, benign),
        "reward/harmful": _masked_mean(total, harmful),
        "reward/benign": _masked_mean(total, benign),
    }

"""The GRPO policy loss as (sum, count) so micro-batches accumulate exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "dr_grpo")


def grpo_loss(
    logp: jax.Array,
    old_logp: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    ref_logp: jax.Array | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    beta: float = 0.0,
    aggregation: str = "token_mean",
    max_completion_len: int | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Clipped-ratio GRPO loss with an optional k3 KL penalty.

    Per completion token t of sequence i, with r = exp(logp - old_logp):

        pg = -min(r * A_i, clip(r, 1 - clip_low, 1 + clip_high) * A_i)
        kl = exp(ref_logp - logp) - (ref_logp - logp) - 1        (k3 estimator)
        l  = pg + beta * kl

    GRPO (Shao et al. 2024) uses clip_low == clip_high; DAPO (Yu et al. 2025)
    raises clip_high ("clip-higher") so low-probability tokens can grow.

    The loss is returned as ``(loss_sum, count)`` such that summing both over
    any split of the batch into micro-batches and taking
    ``finalize(sum_loss_sum, sum_count)`` equals the full-batch loss exactly:

      * ``token_mean``: sum_t l / number of tokens (DAPO's token-level mean).
      * ``seq_mean_token_mean``: mean over sequences of the per-sequence token
        mean (GRPO as published); loss_sum = sum of per-sequence means, count =
        number of sequences with >= 1 token.
      * ``dr_grpo``: sum_t l / (num_sequences * max_completion_len), a constant
        normaliser free of the length bias (Dr.GRPO, Liu et al. 2025). Sequences
        whose mask is all zero (batch padding) are not counted, so
        count = (sequences with >= 1 token) * max_completion_len, which is
        B * max_completion_len for an unpadded batch.

    Padding positions (mask 0) may hold arbitrary log-probabilities: they are
    replaced before ``exp`` so neither value nor gradient can become inf/NaN,
    and an all-zero mask gives loss_sum = count = 0.

    Args:
      logp: [B, T] log-probabilities of the taken tokens under the policy
        being optimised (differentiated).
      old_logp: [B, T] log-probabilities under the policy that sampled.
      advantages: [B] one advantage per sequence (GRPO), or [B, T] one per token (PPO's GAE).
      mask: [B, T] 0/1 (bool or float) marking completion tokens.
      ref_logp: [B, T] reference-model log-probabilities; needed only when
        beta > 0 (if given with beta == 0 the KL is still reported in aux).
      clip_low, clip_high: ratio clip range [1 - clip_low, 1 + clip_high].
      beta: KL coefficient, a static Python float.
      aggregation: one of AGGREGATIONS.
      max_completion_len: the constant normaliser of ``dr_grpo``.

    Returns:
      ``(loss_sum, count, aux)``. ``aux`` holds token-level sums, each to be
      divided by ``aux["token_count"]`` (e.g. with ``finalize``):
      ``pg_loss_sum``, ``clip_low_sum`` / ``clip_high_sum`` (tokens where the
      lower / upper clip is active, i.e. its gradient is zero), ``ratio_sum``,
      ``ratio_sq_sum`` and, when ref_logp is given, ``kl_sum``; plus
      ``token_count`` and ``seq_count``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(
            f"unknown aggregation {aggregation!r}; valid: {', '.join(AGGREGATIONS)}"
        )
    if aggregation == "dr_grpo" and (max_completion_len is None or max_completion_len <= 0):
        raise ValueError(
            f"aggregation='dr_grpo' needs max_completion_len > 0, got {max_completion_len!r}"
        )
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low!r}")
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high!r}")
    if not beta >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    if beta > 0.0 and ref_logp is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logp (the reference model's log-probs)")

    dtype = jnp.promote_types(jnp.result_type(logp), jnp.float32)
    logp = logp.astype(dtype)
    mask = jnp.asarray(mask).astype(dtype)
    valid = mask != 0
    adv = jnp.asarray(advantages).astype(dtype)
    adv = adv[:, None] if adv.ndim == 1 else adv

    def masked_sum(x: jax.Array) -> jax.Array:
        return (x * mask).sum()

    log_ratio = jnp.where(valid, logp - old_logp.astype(dtype), 0.0)
    ratio = jnp.exp(log_ratio)
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg = -jnp.minimum(ratio * adv, clipped * adv)

    seq_len = mask.sum(axis=1)
    has_tokens = seq_len > 0
    aux = {
        "pg_loss_sum": masked_sum(pg),
        "clip_low_sum": masked_sum(((ratio < 1.0 - clip_low) & (adv < 0)).astype(dtype)),
        "clip_high_sum": masked_sum(((ratio > 1.0 + clip_high) & (adv > 0)).astype(dtype)),
        "ratio_sum": masked_sum(ratio),
        "ratio_sq_sum": masked_sum(ratio * ratio),
        "token_count": mask.sum(),
        "seq_count": has_tokens.sum().astype(dtype),
    }

    per_token = pg
    if ref_logp is not None:
        delta = jnp.where(valid, ref_logp.astype(dtype) - logp, 0.0)
        kl = jnp.exp(delta) - delta - 1.0
        aux["kl_sum"] = masked_sum(kl)
        if beta > 0.0:
            per_token = pg + beta * kl

    if aggregation == "seq_mean_token_mean":
        seq_sums = (per_token * mask).sum(axis=1)
        loss_sum = (seq_sums / jnp.where(has_tokens, seq_len, 1.0)).sum()
        count = aux["seq_count"]
    else:
        loss_sum = masked_sum(per_token)
        count = aux["token_count"]
        if aggregation == "dr_grpo":
            count = aux["seq_count"] * max_completion_len
    return loss_sum, count, aux


def finalize(loss_sum: jax.Array, count: jax.Array) -> jax.Array:
    """``loss_sum / max(count, 1)``: the mean from accumulated (sum, count); 0 when empty."""
    return loss_sum / jnp.maximum(count, 1)


def nll_loss(logp: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Supervised fine-tuning on the masked tokens: the token-mean negative log-likelihood as
    ``(loss_sum, count, aux)``, accumulated over micro-batches like :func:`grpo_loss`."""
    mask = jnp.asarray(mask).astype(jnp.float32)
    nll = -jnp.where(mask != 0, logp, 0.0).astype(jnp.float32)
    count = mask.sum()
    return (nll * mask).sum(), count, {"token_count": count,
                                       "seq_count": (mask.sum(axis=1) > 0).sum().astype(count.dtype)}


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               *, clip: float) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """PPO's clipped value loss, token mean as ``(loss_sum, count, aux)``:

        0.5 * max((V - R)^2, (V_old + clip(V - V_old, -clip, clip) - R)^2)

    ``aux``: ``vf_clip_sum`` (tokens where the clipped term is the larger, so its gradient
    is zero), ``value_sum``, ``token_count``.
    """
    mask = jnp.asarray(mask).astype(jnp.float32)
    values = values.astype(jnp.float32)
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    unclipped_sq = jnp.square(values - returns)
    clipped_sq = jnp.square(clipped - returns)
    per_token = 0.5 * jnp.maximum(unclipped_sq, clipped_sq)
    count = mask.sum()
    return (per_token * mask).sum(), count, {
        "vf_clip_sum": ((clipped_sq > unclipped_sq) * mask).sum(),
        "value_sum": (values * mask).sum(), "token_count": count}

"""Per-token log-probabilities and entropies without materialising [B, T, V] logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alphaalign_jax import sharding as shd


def scaled_logits(
    hidden: jax.Array,
    unembed: jax.Array,
    *,
    temperature: float = 1.0,
    vocab_major: bool = False,
) -> jax.Array:
    """float32 ``(hidden @ unembed) / temperature`` over the last axis of ``hidden``.

    The one definition of the sampling distribution's logits: the sampler and
    the trainer must both use it, so that the log-probabilities the trainer
    recomputes are those of the distribution the tokens were drawn from. The
    matmul accumulates in float32 from the inputs' own dtype (a bf16 x bf16
    product is exact in float32), so no float32 copy of the unembedding is made.

    Args:
      hidden: [..., D] final hidden states.
      unembed: [D, V], or [V, D] with ``vocab_major=True`` (a tied embedding table).
      temperature: sampling temperature (> 0).
    """
    spec = "...d,vd->...v" if vocab_major else "...d,dv->...v"
    logits = jnp.einsum(spec, hidden, unembed, preferred_element_type=jnp.float32)
    return logits / temperature


def token_logprobs(
    hidden: jax.Array,
    unembed: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int = 128,
    vocab_major: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """log p(targets) and the entropy of the temperature-scaled softmax, per token.

    The full logits are [B, T, V] float32 (GBs for a 150k vocabulary), so the
    sequence is cut into chunks of ``chunk_size`` positions and processed with
    ``lax.map``; with more than one chunk each is ``jax.checkpoint``-ed, so the
    backward pass keeps only the chunk inputs and recomputes one chunk's
    [B, chunk, V] logits at a time. A single chunk is not recomputed: its
    softmax is kept for the backward, which starts with it, so the memory peak
    is the same and a head product and an exp pass are saved.
    T need not be a multiple of ``chunk_size`` (padded internally).
    A low-precision unembedding is upcast once to float32 (one extra copy, the
    size of its float32 gradient) so its gradient accumulates in float32.

    ``logp = z[target] - logsumexp(z)`` and ``entropy = -sum(p * log p)`` with
    ``z = scaled_logits(...)`` (float32, divided by ``temperature``), both from
    one exponential pass ``w = exp(z - max z)``: ``logsumexp(z) = max z + log s``
    with ``s = sum w``, and ``entropy = log s - sum(w * (z - max z)) / s``, whose
    two terms are small for a peaked distribution (not ``logsumexp(z) - sum(p * z)``,
    which cancels catastrophically in float32 there).

    Args:
      hidden: [B, T, D] hidden states that predict ``targets``.
      unembed: [D, V], or [V, D] with ``vocab_major=True``.
      targets: [B, T] integer token ids.
      temperature: sampling temperature, as used by the sampler.
      chunk_size: sequence positions per chunk (memory ~ B * chunk_size * V * 4 bytes).
      vocab_major: layout of ``unembed``.

    Returns:
      ``(logp, entropy)``, both [B, T] float32.
    """
    if hidden.ndim != 3 or targets.shape != hidden.shape[:2]:
        raise ValueError(
            f"need hidden [B, T, D] and targets [B, T]; got {hidden.shape} and {targets.shape}"
        )
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0, got {chunk_size}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, seq_len, dim = hidden.shape
    chunk = min(chunk_size, seq_len)
    num_chunks = -(-seq_len // chunk)
    pad = num_chunks * chunk - seq_len
    # The unembedding's gradient is summed over chunks by lax.map: in bf16 that
    # rounds once per chunk (4x the error of one rounding at 64 chunks), so the
    # loop carries a float32 copy and its gradient is rounded once at the end.
    unembed = unembed.astype(jnp.promote_types(unembed.dtype, jnp.float32))
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # [num_chunks, B, chunk, ...]: lax.map iterates over the leading axis.
    hidden = hidden.reshape(batch, num_chunks, chunk, dim).swapaxes(0, 1)
    targets = targets.reshape(batch, num_chunks, chunk).swapaxes(0, 1)

    def one_chunk(h: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = shd.constrain_rows(h)  # each chip its rows' logits, not every row's
        logits = scaled_logits(h, unembed, temperature=temperature, vocab_major=vocab_major)
        # log p(t) = z_t - logsumexp(z): its gradient is one pass over the logits (softmax
        # minus the target's one-hot), not log_softmax's materialised [.., V] log-probs.
        shifted = logits - jax.lax.stop_gradient(logits.max(axis=-1, keepdims=True))
        weights = jnp.exp(shifted)
        total = weights.sum(axis=-1)
        log_total = jnp.log(total)
        target_logp = jnp.take_along_axis(shifted, t[..., None], axis=-1)[..., 0] - log_total
        entropy = log_total - (weights * shifted).sum(axis=-1) / total
        return target_logp, entropy

    if num_chunks > 1:
        one_chunk = jax.checkpoint(one_chunk)
    logp, entropy = jax.lax.map(lambda xs: one_chunk(*xs), (hidden, targets))

    def unchunk(x: jax.Array) -> jax.Array:
        return x.swapaxes(0, 1).reshape(batch, num_chunks * chunk)[:, :seq_len]

    return unchunk(logp), unchunk(entropy)

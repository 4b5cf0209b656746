"""The jitted GRPO update: teacher-forced log-probs, micro-batched (sum, count) loss, optax.

Everything here is a pure function of arrays, jitted once per run: the policy
parameters and optimizer state are donated, micro-batches are a ``lax.scan``
(so gradient accumulation is exact: gradients of the loss *sums* are added and
divided once by the total count), and a non-finite loss or gradient leaves the
parameters untouched and is reported to the host, which stops the run.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from alphaalign_jax.rl.logprobs import token_logprobs
from alphaalign_jax.rl.losses import finalize, grpo_loss

Array = jax.Array


class UpdateBatch(NamedTuple):
    """One rollout batch laid out for teacher forcing.

    ``tokens`` is the left-padded prompt (``prompt_len`` columns) followed by
    the right-padded completion; ``attention_mask`` marks real tokens of both.
    """

    tokens: Array  # [B, P + C] int32
    attention_mask: Array  # [B, P + C] bool
    completion_mask: Array  # [B, C] float32
    old_logp: Array  # [B, C] sampler log-probs (the behaviour policy)
    ref_logp: Array  # [B, C] reference log-probs (zeros when beta == 0)
    advantages: Array  # [B]


class LossSettings(NamedTuple):
    """Static loss settings (hashable, so they are jit-static)."""

    clip_low: float
    clip_high: float
    beta: float
    aggregation: str
    max_completion_len: int
    temperature: float
    logprob_chunk: int


def completion_logprobs(model: nnx.Module, tokens: Array, attention_mask: Array,
                        completion_len: int, temperature: float, chunk: int
                        ) -> tuple[Array, Array]:
    """log p and entropy of each completion token under ``model`` ([B, C] each).

    The hidden state at position t predicts token t + 1, so the completion's
    C tokens are predicted by the C positions ending one before the last.
    """
    hidden, _ = model.hidden_states(tokens, attention_mask)
    predicting = hidden[:, -completion_len - 1:-1]
    targets = tokens[:, -completion_len:]
    return token_logprobs(predicting, model.unembedding(), targets, temperature=temperature,
                          chunk_size=chunk)


def split_micro(batch: UpdateBatch, micro_batch_size: int) -> UpdateBatch:
    """[B, ...] -> [B / m, m, ...] for ``lax.scan`` over micro-batches."""
    return jax.tree.map(lambda x: x.reshape((-1, micro_batch_size) + x.shape[1:]), batch)


def reference_logprobs(graphdef: nnx.GraphDef, ref_params: nnx.State, rest: nnx.State,
                       tokens: Array, attention_mask: Array, *, completion_len: int,
                       micro_batch_size: int, temperature: float, chunk: int) -> Array:
    """Frozen-reference log-probs of the completion tokens, micro-batch by micro-batch."""
    model = nnx.merge(graphdef, ref_params, rest)

    def one(xs):
        logp, _ = completion_logprobs(model, xs[0], xs[1], completion_len, temperature, chunk)
        return logp

    shape = (-1, micro_batch_size)
    out = jax.lax.map(one, (tokens.reshape(shape + tokens.shape[1:]),
                            attention_mask.reshape(shape + attention_mask.shape[1:])))
    return out.reshape(tokens.shape[0], completion_len)


def train_step(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
               opt_state: optax.OptState, batch: UpdateBatch, *, tx: optax.GradientTransformation,
               settings: LossSettings, micro_batch_size: int
               ) -> tuple[nnx.State, optax.OptState, dict[str, Array]]:
    """One optimizer update over the whole batch (accumulated over micro-batches)."""
    use_ref = settings.beta > 0

    def loss_sums(p, mb: UpdateBatch):
        model = nnx.merge(graphdef, p, rest)
        logp, entropy = completion_logprobs(model, mb.tokens, mb.attention_mask,
                                            settings.max_completion_len, settings.temperature,
                                            settings.logprob_chunk)
        loss_sum, count, aux = grpo_loss(
            logp, mb.old_logp, mb.advantages, mb.completion_mask,
            ref_logp=mb.ref_logp if use_ref else None, clip_low=settings.clip_low,
            clip_high=settings.clip_high, beta=settings.beta, aggregation=settings.aggregation,
            max_completion_len=settings.max_completion_len)
        mask = mb.completion_mask
        aux = dict(aux, entropy_sum=(entropy * mask).sum(),
                   logp_diff_sum=(jnp.abs(jax.lax.stop_gradient(logp) - mb.old_logp) * mask).sum())
        return loss_sum, (count, aux)

    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def accumulate(carry, mb):
        grads, loss_sum, count, aux = carry
        (ls, (c, a)), g = grad_fn(params, mb)
        grads = jax.tree.map(jnp.add, grads, g)
        aux = jax.tree.map(jnp.add, aux, a)
        return (grads, loss_sum + ls, count + c, aux), None

    micro = split_micro(batch, micro_batch_size)
    first = jax.tree.map(lambda x: x[0], micro)
    aux_shape = jax.eval_shape(lambda: loss_sums(params, first)[1][1])
    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32),
             jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                                      aux_shape))
    (grads, loss_sum, count, aux), _ = jax.lax.scan(accumulate, zeros, micro)
    grads = jax.tree.map(lambda g: finalize(g, count), grads)
    loss = finalize(loss_sum, count)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, new_opt_state = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = functools.partial(jnp.where, finite)
    new_params = jax.tree.map(keep, new_params, params)
    new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
    per_token = {"pg_loss": "pg_loss_sum", "clip_frac/low": "clip_low_sum",
                 "clip_frac/high": "clip_high_sum", "ratio_mean": "ratio_sum",
                 "entropy": "entropy_sum", "logprob_diff/sampler_vs_trainer": "logp_diff_sum",
                 "kl": "kl_sum"}
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "tokens": aux["token_count"],
               **{name: finalize(aux[key], aux["token_count"])
                  for name, key in per_token.items() if key in aux}}
    return new_params, new_opt_state, metrics

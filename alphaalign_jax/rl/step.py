"""The jitted updates: teacher-forced log-probs (and critic values), micro-batched (sum, count)
losses, optax.

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
from jax.sharding import Mesh

from alphaalign_jax import sharding as shd
from alphaalign_jax.models.transformer import SharedPrefix, default_positions, init_cache
from alphaalign_jax.rl.logprobs import token_logprobs
from alphaalign_jax.rl.losses import finalize, grpo_loss, nll_loss, value_loss

Array = jax.Array


class NonFiniteError(RuntimeError):
    """A non-finite loss or gradient: the update was not applied and the run stops."""


class UpdateBatch(NamedTuple):
    """One rollout batch of P prompts x G rollouts, laid out for teacher forcing.

    Each prompt is stored once (left-padded); its G completions follow it in
    rows ``p * G ... p * G + G - 1`` (right-padded). The update runs the prompt
    once per group and its completions over the prompt's KV cache, so a long
    prompt costs one row of compute, not G.
    """

    prompt_ids: Array  # [P, L] int32, left-padded
    prompt_mask: Array  # [P, L] bool
    completion_ids: Array  # [P * G, C] int32, right-padded
    completion_mask: Array  # [P * G, C] float32: tokens in the loss
    old_logp: Array  # [P * G, C] sampler log-probs (the behaviour policy)
    ref_logp: Array  # [P * G, C] reference log-probs (zeros when beta == 0)
    advantages: Array  # [P * G] one a rollout (GRPO), or [P * G, C] one a token (PPO)
    old_values: Array | None = None  # [P * G, C] the critic's values at sampling (PPO)
    returns: Array | None = None  # [P * G, C] the critic's targets (PPO)


class LossSettings(NamedTuple):
    """Static loss settings (hashable, so they are jit-static)."""

    clip_low: float
    clip_high: float
    beta: float
    aggregation: str
    max_completion_len: int
    temperature: float
    logprob_chunk: int
    group_size: int = 1  # G: rollouts per prompt in an UpdateBatch
    remat: bool = False  # recompute each block in the backward pass (memory for compute)
    # "clipped": the clipped-ratio policy-gradient loss (advantages, old log-probs);
    # "nll": supervised fine-tuning on the masked tokens (the RFT warm start).
    kind: str = "clipped"
    # The ratio against the stop-gradient of the update's own log-probs (exactly 1), not the
    # sampler's: right when a step makes one update on fresh rollouts (pi_old is pi_theta).
    on_policy: bool = False


def completion_logprobs(model: nnx.Module, tokens: Array, attention_mask: Array,
                        completion_len: int, temperature: float, chunk: int
                        ) -> tuple[Array, Array]:
    """log p and entropy of each completion token under ``model`` ([B, C] each), from one
    forward over whole ``[prompt | completion]`` rows (the reference for the grouped pass).

    The hidden state at position t predicts token t + 1, so the completion's
    C tokens are predicted by the C positions ending one before the last.
    """
    hidden, _ = model.hidden_states(tokens, attention_mask)
    predicting = hidden[:, -completion_len - 1:-1]
    targets = tokens[:, -completion_len:]
    return token_logprobs(predicting, model.unembedding(), targets, temperature=temperature,
                          chunk_size=chunk)


def grouped_completion_hidden(model: nnx.Module, prompt_ids: Array, prompt_mask: Array,
                              completion_ids: Array, group_size: int, remat: bool = False
                              ) -> Array:
    """Hidden states ``[P * G, C, D]`` at the positions predicting each completion token
    (the state each token is chosen in), for G completions per prompt, the prompt computed once.

    The prompt pass fills a KV cache that the completions (all but their last token, which
    predicts nothing) attend to as a shared prefix (one copy a prompt, models.SharedPrefix).
    The last prompt position predicts completion token 0. Gradients flow through the shared
    cache into the prompt pass, so the result and its gradient equal the full forward's.
    Completions are right-padded, so causality alone keeps real tokens off padding.
    ``remat`` recomputes each block in the backward pass (Transformer.hidden_states).
    """
    num_prompts, width = prompt_ids.shape
    completion_len = completion_ids.shape[1]
    cache = init_cache(model.config, num_prompts, width, model.dtype)
    hidden, cache = model.hidden_states(prompt_ids, prompt_mask,
                                        positions=default_positions(prompt_mask), cache=cache,
                                        cache_index=0, remat=remat)
    first = jnp.repeat(hidden[:, -1:], group_size, axis=0)  # predicts completion token 0
    start = jnp.repeat(prompt_mask.sum(axis=1, keepdims=True), group_size, axis=0)
    positions = start + jnp.arange(completion_len - 1)[None]
    rest, _ = model.hidden_states(completion_ids[:, :-1], positions=positions, remat=remat,
                                  prefix=SharedPrefix(cache, prompt_mask.astype(jnp.bool_)))
    return jnp.concatenate([first, rest], axis=1)


def grouped_completion_logprobs(model: nnx.Module, prompt_ids: Array, prompt_mask: Array,
                                completion_ids: Array, group_size: int, temperature: float,
                                chunk: int, remat: bool = False) -> tuple[Array, Array]:
    """``completion_logprobs`` of G completions per prompt, the prompt computed once."""
    predicting = grouped_completion_hidden(model, prompt_ids, prompt_mask, completion_ids,
                                           group_size, remat)
    return token_logprobs(predicting, model.unembedding(), completion_ids,
                          temperature=temperature, chunk_size=chunk)


def grouped_completion_values(critic: nnx.Module, prompt_ids: Array, prompt_mask: Array,
                              completion_ids: Array, group_size: int, remat: bool = False
                              ) -> Array:
    """The critic's value ``V(s_t)`` before each completion token, ``[P * G, C]`` float32
    (a 1-label classifier head applied at every position)."""
    hidden = grouped_completion_hidden(critic, prompt_ids, prompt_mask, completion_ids,
                                       group_size, remat)
    return jnp.einsum("bcd,d->bc", hidden, critic.score[...][:, 0].astype(hidden.dtype)
                      ).astype(jnp.float32)


def split_micro(batch: UpdateBatch, prompts_per_micro: int, group_size: int,
                mesh: Mesh | None = None) -> UpdateBatch:
    """[P, ...] / [P * G, ...] -> [P / k, k, ...] / [P / k, k * G, ...] for ``lax.scan``
    over micro-batches of k whole groups, each spread over the ``mesh``'s batch axes."""
    spread = shd.spread_micro_batches(mesh)

    def split(x: Array, rows: int) -> Array:
        return spread(x.reshape((-1, rows) + x.shape[1:]))

    per_row = ("completion_ids", "completion_mask", "old_logp", "ref_logp", "advantages",
               "old_values", "returns")
    return batch._replace(
        prompt_ids=split(batch.prompt_ids, prompts_per_micro),
        prompt_mask=split(batch.prompt_mask, prompts_per_micro),
        **{f: split(getattr(batch, f), prompts_per_micro * group_size) for f in per_row
           if getattr(batch, f) is not None})


def _per_token_pass(fn, batch: UpdateBatch, prompts_per_micro: int, group_size: int,
                    mesh: Mesh | None) -> Array:
    """``fn(micro_batch) -> [rows, C]`` over micro-batches (no gradient), as one [P * G, C]."""
    out = jax.lax.map(fn, split_micro(batch, prompts_per_micro, group_size, mesh))
    return out.reshape(batch.completion_ids.shape)


def reference_logprobs(graphdef: nnx.GraphDef, ref_params: nnx.State, rest: nnx.State,
                       batch: UpdateBatch, *, prompts_per_micro: int, group_size: int,
                       temperature: float, chunk: int, mesh: Mesh | None = None) -> Array:
    """Frozen-reference log-probs of the completion tokens, micro-batch by micro-batch."""
    model = nnx.merge(graphdef, ref_params, rest)
    return _per_token_pass(lambda mb: grouped_completion_logprobs(
        model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, group_size, temperature,
        chunk)[0], batch, prompts_per_micro, group_size, mesh)


def critic_values(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                  batch: UpdateBatch, *, prompts_per_micro: int, group_size: int,
                  mesh: Mesh | None = None) -> Array:
    """The critic's values of the rollouts as sampled (PPO's V_old), micro-batch by micro-batch."""
    critic = nnx.merge(graphdef, params, rest)
    return _per_token_pass(lambda mb: grouped_completion_values(
        critic, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, group_size),
        batch, prompts_per_micro, group_size, mesh)


def apply_accumulated(params: nnx.State, opt_state: optax.OptState, micro: UpdateBatch,
                      loss_sums, tx: optax.GradientTransformation):
    """One optimizer update from ``loss_sums(params, micro_batch) -> (sum, (count, aux))``
    accumulated over the leading axis of ``micro`` (exact: sums are added, then divided once
    by the total count). A non-finite loss or gradient leaves params and state untouched.

    Returns ``(params, opt_state, loss, grad_norm, finite, aux sums)``.
    """
    grad_fn = jax.value_and_grad(loss_sums, has_aux=True)

    def accumulate(carry, mb):
        grads, loss_sum, count, aux = carry
        (ls, (c, a)), g = grad_fn(params, mb)
        grads = jax.tree.map(jnp.add, grads, g)
        aux = jax.tree.map(jnp.add, aux, a)
        return (grads, loss_sum + ls, count + c, aux), None

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
    return (jax.tree.map(keep, new_params, params), jax.tree.map(keep, new_opt_state, opt_state),
            loss, grad_norm, finite, aux)


def jit_update(update, param_shardings, opt_shardings, replicated):
    """``update(params, rest, opt_state, batch) -> (params, opt_state, metrics)`` jitted with
    the parameters and optimizer state donated and kept in their shardings (metrics
    replicated): the one way every optimizer step here (policy, critic, warm start) is built."""
    return jax.jit(update, donate_argnums=(0, 2),
                   out_shardings=(param_shardings, opt_shardings, replicated))


def train_step(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
               opt_state: optax.OptState, batch: UpdateBatch, *, tx: optax.GradientTransformation,
               settings: LossSettings, micro_batch_size: int, mesh: Mesh | None = None
               ) -> tuple[nnx.State, optax.OptState, dict[str, Array]]:
    """One optimizer update over the whole batch (accumulated over micro-batches, each
    spread over the ``mesh``'s batch axes)."""
    use_ref = settings.beta > 0

    def loss_sums(p, mb: UpdateBatch):
        model = nnx.merge(graphdef, p, rest)
        logp, entropy = grouped_completion_logprobs(
            model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, settings.group_size,
            settings.temperature, settings.logprob_chunk, settings.remat)
        mask = mb.completion_mask
        if settings.kind == "nll":
            loss_sum, count, aux = nll_loss(logp, mask)
        else:
            old_logp = jax.lax.stop_gradient(logp) if settings.on_policy else mb.old_logp
            loss_sum, count, aux = grpo_loss(
                logp, old_logp, mb.advantages, mask,
                ref_logp=mb.ref_logp if use_ref else None, clip_low=settings.clip_low,
                clip_high=settings.clip_high, beta=settings.beta,
                aggregation=settings.aggregation, max_completion_len=settings.max_completion_len)
            current = jax.lax.stop_gradient(logp)
            aux["logp_diff_sum"] = (jnp.abs(current - mb.old_logp) * mask).sum()  # the sampler's
            aux["ratio_dev_sq_sum"] = jnp.where(  # the loss's ratio
                mask > 0, jnp.expm1(current - old_logp) ** 2, 0.0).sum()
        aux["entropy_sum"] = (entropy * mask).sum()
        return loss_sum, (count, aux)

    new_params, new_opt_state, loss, grad_norm, finite, aux = apply_accumulated(
        params, opt_state, _micro(batch, micro_batch_size, settings.group_size, mesh),
        loss_sums, tx)
    per_token = {"pg_loss": "pg_loss_sum", "clip_frac/low": "clip_low_sum",
                 "clip_frac/high": "clip_high_sum", "ratio_mean": "ratio_sum",
                 "entropy": "entropy_sum", "logprob_diff/sampler_vs_trainer": "logp_diff_sum",
                 "kl": "kl_sum"}
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite,
               "tokens": aux["token_count"],
               **{name: finalize(aux[key], aux["token_count"])
                  for name, key in per_token.items() if key in aux}}
    if "ratio_dev_sq_sum" in aux:  # the ratio's spread about 1: 0 when pi_old is pi_theta
        metrics["ratio_rms_from_1"] = jnp.sqrt(finalize(aux["ratio_dev_sq_sum"],
                                                        aux["token_count"]))
    return new_params, new_opt_state, metrics


def _micro(batch: UpdateBatch, micro_batch_size: int, group_size: int,
           mesh: Mesh | None) -> UpdateBatch:
    if micro_batch_size % group_size:
        raise ValueError(f"micro_batch_size={micro_batch_size} must hold whole groups of "
                         f"{group_size} rollouts")
    return split_micro(batch, micro_batch_size // group_size, group_size, mesh)


def critic_step(graphdef: nnx.GraphDef, params: nnx.State, rest: nnx.State,
                opt_state: optax.OptState, batch: UpdateBatch, *,
                tx: optax.GradientTransformation, value_clip: float, group_size: int,
                micro_batch_size: int, remat: bool = False, mesh: Mesh | None = None
                ) -> tuple[nnx.State, optax.OptState, dict[str, Array]]:
    """One optimizer update of the critic on PPO's clipped value loss (token mean)."""
    def loss_sums(p, mb: UpdateBatch):
        critic = nnx.merge(graphdef, p, rest)
        values = grouped_completion_values(critic, mb.prompt_ids, mb.prompt_mask,
                                           mb.completion_ids, group_size, remat)
        loss_sum, count, aux = value_loss(values, mb.old_values, mb.returns, mb.completion_mask,
                                          clip=value_clip)
        return loss_sum, (count, aux)

    new_params, new_opt_state, loss, grad_norm, finite, aux = apply_accumulated(
        params, opt_state, _micro(batch, micro_batch_size, group_size, mesh), loss_sums, tx)
    tokens = aux["token_count"]
    return new_params, new_opt_state, {
        "critic/value_loss": loss, "critic/grad_norm": grad_norm, "critic/finite": finite,
        "critic/clip_frac": finalize(aux["vf_clip_sum"], tokens),
        "critic/value_mean": finalize(aux["value_sum"], tokens)}

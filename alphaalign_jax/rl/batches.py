"""Host rollouts to device update batches, and a batch's mini-batches.

An update batch holds each group's prompt once, at the sampler's bucketed width, and the
completions cut to a bucket of the longest one, not ``max_prompt_len`` and
``max_new_tokens``: a few static widths, each pair compiled once; the cut columns are
padding, outside every loss and metric.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alphaalign_jax import sharding as shd
from alphaalign_jax.rl.step import UpdateBatch
from alphaalign_jax.sampling import Rollouts, bucket


def device_batch(mesh, prompt_ids, prompt_mask, completion_ids, completion_mask, old_logp,
                 advantages) -> UpdateBatch:
    """Host arrays in the UpdateBatch layout ([P, L] prompts, [P * G, C] rows) on the mesh,
    batch-sharded; reference log-probs zero until the reference pass fills them."""
    rows = len(completion_ids)
    per_row = shd.batch_sharding(mesh, 2, rows)
    prompt_ids, prompt_mask = jax.device_put(
        (prompt_ids.astype(np.int32), prompt_mask.astype(bool)),
        shd.batch_sharding(mesh, 2, len(prompt_ids)))
    completion_ids, completion_mask, old_logp = jax.device_put(
        (completion_ids.astype(np.int32), completion_mask.astype(np.float32),
         old_logp.astype(np.float32)), per_row)
    return UpdateBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, old_logp,
                       jnp.zeros_like(old_logp),
                       jax.device_put(advantages.astype(np.float32),
                                      shd.batch_sharding(mesh, 1, rows)))


def rollout_batch(mesh, rollouts: Rollouts, group_size: int,
                  loss_rows: np.ndarray) -> UpdateBatch:
    """A step's rollouts (G a prompt) as an update batch, advantages zero until estimated;
    rows outside ``loss_rows`` (dynamic-sampling filler) are masked out of the loss."""
    cols = slice(0, min(bucket(int(rollouts.lengths.max()), 16),
                        rollouts.completion_ids.shape[1]))
    return device_batch(mesh, rollouts.prompt_ids[::group_size],
                        rollouts.prompt_mask[::group_size], rollouts.completion_ids[:, cols],
                        (rollouts.completion_mask & loss_rows[:, None])[:, cols],
                        rollouts.logprobs[:, cols], np.zeros(len(loss_rows), np.float32))


@functools.partial(jax.jit, static_argnums=2)
def _take_groups(batch: UpdateBatch, order: jax.Array, group_size: int) -> tuple[UpdateBatch, ...]:
    """Mini-batches of whole groups: ``order[i]`` lists the prompts of mini-batch i."""
    rows = (order[..., None] * group_size + jnp.arange(group_size)).reshape(order.shape[0], -1)

    def take(x, index):
        return None if x is None else x[index]

    per_prompt = {"prompt_ids", "prompt_mask"}
    return tuple(UpdateBatch(**{f: take(getattr(batch, f), order[i] if f in per_prompt else rows[i])
                                for f in UpdateBatch._fields})
                 for i in range(order.shape[0]))


def mini_batches(batch: UpdateBatch, n: int, group_size: int,
                 rng: np.random.Generator) -> list[UpdateBatch]:
    """``n`` shares of whole groups in an order drawn from ``rng`` (one batch when n is 1)."""
    if n == 1:
        return [batch]
    prompts = batch.prompt_ids.shape[0]
    order = rng.permutation(prompts)
    return list(_take_groups(batch, order.reshape(n, prompts // n), group_size))

"""The KL reference: a frozen copy of the policy, and its log-probs of each rollout batch."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from alphaalign_jax.rl.step import UpdateBatch


def frozen_copy(params: nnx.State, dtype: jnp.dtype) -> nnx.State:
    """A copy of ``params`` with the floating weights wider than ``dtype`` (the compute
    dtype) stored in it, all but the unembedding. The layers read every weight in the
    compute dtype (they cast it to the activations'), so under bf16 compute the copy gives
    the float32 one's log-probs bit for bit at about half the memory; the log-probs' head
    matmul reads the unembedding as stored (rl/logprobs.py), so it keeps its own dtype
    (tests/test_grouped_update.py)."""
    unembedding = "lm_head" if "lm_head" in params else "embed_tokens"

    def one(path, x):
        wide = jnp.issubdtype(x.dtype, jnp.floating) and \
            jnp.dtype(x.dtype).itemsize > jnp.dtype(dtype).itemsize
        if wide and path[0].key != unembedding:
            return x.astype(dtype)
        return jnp.copy(x)

    return jax.tree_util.tree_map_with_path(one, params)


class Reference:
    """``params`` frozen in the compute ``dtype`` (None when no KL term needs a reference:
    then no pass runs); ``program(params, rest, batch)`` is the jitted reference log-prob
    pass. Under LoRA ``params`` are the adapters: the base they sit on is the policy's own."""

    def __init__(self, params: nnx.State | None, program: Callable, dtype: jnp.dtype) -> None:
        self.dtype = jnp.dtype(dtype)
        self.params = None if params is None else frozen_copy(params, self.dtype)
        self.program = program

    @property
    def active(self) -> bool:
        return self.params is not None

    def reset(self, params: nnx.State) -> None:
        """A copy of ``params`` becomes the reference (RL's start after a warm start)."""
        if self.active:
            self.params = frozen_copy(params, self.dtype)

    def logprobs(self, batch: UpdateBatch, rest: nnx.State) -> UpdateBatch:
        """``batch`` with the reference's log-probs of its completions."""
        if not self.active:
            return batch
        return batch._replace(ref_logp=self.program(self.params, rest, batch))

"""The KL reference: a frozen copy of the policy, and its log-probs of each rollout batch."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from alphaalign_jax.rl.step import UpdateBatch


class Reference:
    """``params`` frozen (None when no KL term needs a reference: then no pass runs);
    ``program(params, rest, batch)`` is the jitted reference log-prob pass."""

    def __init__(self, params: nnx.State | None, program: Callable) -> None:
        self.params = None if params is None else jax.tree.map(jnp.copy, params)
        self.program = program

    @property
    def active(self) -> bool:
        return self.params is not None

    def reset(self, params: nnx.State) -> None:
        """A copy of ``params`` becomes the reference (RL's start after a warm start)."""
        if self.active:
            self.params = jax.tree.map(jnp.copy, params)

    def logprobs(self, batch: UpdateBatch, rest: nnx.State) -> UpdateBatch:
        """``batch`` with the reference's log-probs of its completions."""
        if not self.active:
            return batch
        return batch._replace(ref_logp=self.program(self.params, rest, batch))

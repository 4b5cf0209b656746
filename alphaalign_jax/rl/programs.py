"""The policy's compiled programs of a run: the optimizer step and the reference pass.

The trainer runs them and ``aot`` lowers the very same functions for a TPU slice, so a plan
compiles what a run executes.
"""

from __future__ import annotations

import dataclasses

import jax
import optax
from flax import nnx

from alphaalign_jax import sharding as shd
from alphaalign_jax.rl.step import LossSettings, jit_update, reference_logprobs, train_step


@dataclasses.dataclass(frozen=True)
class UpdateSettings:
    """How a step's rollout batch becomes optimizer updates."""

    loss: LossSettings
    micro_batch_size: int  # sequences a gradient micro-batch
    mini_batches: int  # optimizer steps an epoch, each over a share of the groups
    num_updates: int  # epochs over each rollout batch
    recompute_old_logprobs: bool  # pi_old from the trainer's forward, not the sampler's


def update_programs(settings: UpdateSettings, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, mesh, *, param_shardings, opt_shardings,
                    on_trace=lambda: None):
    """The jitted optimizer step (parameters and optimizer state donated) and the
    teacher-forced log-prob pass (the reference's, and pi_old's when recomputed). ``on_trace``
    runs each time the step is traced (a compile counter)."""
    loss = settings.loss

    def step_fn(params, rest, opt_state, batch):
        on_trace()
        with shd.activations_over(mesh):
            return train_step(graphdef, params, rest, opt_state, batch, tx=tx, settings=loss,
                              micro_batch_size=settings.micro_batch_size, mesh=mesh)

    def ref_fn(ref_params, rest, batch):
        with shd.activations_over(mesh):
            return reference_logprobs(
                graphdef, ref_params, rest, batch,
                prompts_per_micro=settings.micro_batch_size // loss.group_size,
                group_size=loss.group_size, temperature=loss.temperature,
                chunk=loss.logprob_chunk, mesh=mesh)

    step = jit_update(step_fn, param_shardings, opt_shardings, shd.replicated(mesh))
    return step, jax.jit(ref_fn)

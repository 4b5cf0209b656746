"""PPO's critic on the mesh: its parameters, Adam state and jitted programs, in one object.

The critic has the policy's architecture with a scalar value head at every position (a 1-label
classifier): started from the policy with a zero head, or from an HF sequence-classification
directory (``algo.critic_dir``). Its parameters and optimizer state are sharded by the same rules
as the policy's and checkpointed beside them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import optax
from flax import nnx

from alphaalign_jax import sharding as shd
from alphaalign_jax.models import CheckpointError, Transformer, from_pretrained, value_model
from alphaalign_jax.rl.gae import ppo_advantages
from alphaalign_jax.rl.optim import OptimizerSettings, optimizer
from alphaalign_jax.rl.step import UpdateBatch, critic_step, critic_values, jit_update


@dataclasses.dataclass(frozen=True)
class CriticSettings:
    critic_dir: str  # HF 1-label classifier to start from; "" = the policy with a zero head
    dtype: str
    param_dtype: str
    scan_layers: bool
    remat: bool
    optimizer: OptimizerSettings
    value_clip: float
    kl_penalty: float
    gamma: float
    lam: float
    whiten_advantages: bool
    micro_batch_size: int
    group_size: int


def critic_programs(settings: CriticSettings, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, mesh, *, param_shardings, opt_shardings):
    """The critic's jitted value pass (V_old of a rollout batch) and update (parameters and
    optimizer state donated): what the trainer runs and ``aot`` compiles for a TPU."""
    s, group = settings, settings.group_size

    def values_fn(params, rest, batch):
        with shd.activations_over(mesh):
            return critic_values(graphdef, params, rest, batch,
                                 prompts_per_micro=s.micro_batch_size // group,
                                 group_size=group, mesh=mesh)

    def step_fn(params, rest, opt_state, batch):
        with shd.activations_over(mesh):
            return critic_step(graphdef, params, rest, opt_state, batch, tx=tx,
                               value_clip=s.value_clip, group_size=group,
                               micro_batch_size=s.micro_batch_size, remat=s.remat, mesh=mesh)

    return jax.jit(values_fn), jit_update(step_fn, param_shardings, opt_shardings,
                                          shd.replicated(mesh))


class Critic:
    def __init__(self, settings: CriticSettings, policy: Transformer, mesh):
        s = settings
        if s.critic_dir:
            model = from_pretrained(s.critic_dir, dtype=s.dtype, mesh=mesh,
                                    param_dtype=s.param_dtype, scan_layers=s.scan_layers)
            if model.config.num_labels != 1 or model.config.hidden_size != \
                    policy.config.hidden_size:
                raise CheckpointError(
                    f"config.algo.critic_dir={s.critic_dir}: a critic is a 1-label "
                    f"sequence classifier of the policy's width ({policy.config.hidden_size}); "
                    f"this one has {model.config.num_labels} labels and width "
                    f"{model.config.hidden_size}")
        else:
            model = value_model(policy, mesh)
        self.model_config = model.config
        self.graphdef, self.params, self.rest = nnx.split(model, nnx.Param, ...)
        self.tx, _ = optimizer(s.optimizer)
        self.opt_state = shd.init_optimizer(self.tx, self.params, mesh)
        self._values, self._step = critic_programs(
            s, self.graphdef, self.tx, mesh, param_shardings=shd.shardings_of(self.params),
            opt_shardings=shd.shardings_of(self.opt_state))
        self._advantages = jax.jit(functools.partial(
            ppo_advantages, kl_penalty=s.kl_penalty, gamma=s.gamma, lam=s.lam,
            whiten_advantages=s.whiten_advantages))

    def state(self) -> dict:
        """What a checkpoint holds of the critic."""
        return {"critic_params": nnx.to_pure_dict(self.params),
                "critic_opt_state": self.opt_state}

    def restore(self, state: dict) -> None:
        nnx.replace_by_pure_dict(self.params, state["critic_params"])
        self.opt_state = state["critic_opt_state"]

    def estimate(self, batch: UpdateBatch, scores: jax.Array
                 ) -> tuple[UpdateBatch, dict[str, jax.Array]]:
        """``batch`` with GAE advantages, the values as sampled and their targets filled in."""
        values = self._values(self.params, self.rest, batch)
        advantages, returns, metrics = self._advantages(
            scores, values, batch.completion_mask, batch.old_logp, batch.ref_logp)
        return batch._replace(advantages=advantages, old_values=values, returns=returns), metrics

    def update(self, batch: UpdateBatch) -> dict[str, jax.Array]:
        self.params, self.opt_state, metrics = self._step(self.params, self.rest,
                                                          self.opt_state, batch)
        return metrics

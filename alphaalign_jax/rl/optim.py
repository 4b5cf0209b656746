"""AdamW with linear warmup, cosine or constant schedule and global-norm clipping."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


def _check(name: str, value: float, ok: bool, requirement: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


def make_schedule(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_lr_ratio: float = 0.0,
) -> optax.Schedule:
    """Learning rate as a function of the optimizer-update count ``step`` (from 0).

    Warmup: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps``, so
    the first update already moves (HF/veRL start at exactly 0, wasting one
    update) and the peak is reached at the last warmup step.
    Then ``constant``: ``lr``; ``cosine``: with ``p = (step - warmup) /
    (total - warmup)`` clipped to [0, 1],
    ``lr * (m + (1 - m) * (1 + cos(pi * p)) / 2)`` where ``m = min_lr_ratio``,
    reaching ``m * lr`` at ``step = total_steps``.
    """
    _check("learning_rate", learning_rate, learning_rate >= 0, ">= 0")
    _check("total_steps", total_steps, total_steps >= 1, ">= 1")
    _check("warmup_steps", warmup_steps, 0 <= warmup_steps <= total_steps,
           f"in [0, total_steps={total_steps}]")
    _check("schedule", schedule, schedule in SCHEDULES, f"one of {SCHEDULES}")
    _check("min_lr_ratio", min_lr_ratio, 0 <= min_lr_ratio <= 1, "in [0, 1]")
    decay_steps = max(total_steps - warmup_steps, 1)

    def schedule_fn(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = learning_rate * jnp.minimum((step + 1) / max(warmup_steps, 1), 1.0)
        if schedule == "constant":
            return warm
        progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + jnp.cos(math.pi * progress))
        return jnp.where(step < warmup_steps, warm, learning_rate * cosine)

    return schedule_fn


def decay_mask(params: optax.Params) -> optax.Params:
    """True for parameters with >= 2 dims: norms and biases (1-D) get no weight decay."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
    min_lr_ratio: float = 0.0,
    decay_1d_params: bool = False,
    mu_dtype: str = "float32",
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW (Loshchilov & Hutter 2019) behind global-norm clipping.

    ``total_steps`` and the schedule count optimizer updates (several per
    rollout batch when the trainer makes several policy updates on it).
    Clipping is skipped when ``max_grad_norm`` is None or <= 0. Weight decay
    skips 1-D parameters (norm scales, biases), the usual convention since
    decaying them only shrinks the normalisation, unless ``decay_1d_params``.
    ``mu_dtype``: the first moment's dtype (bfloat16 halves it).

    Returns:
      ``(optimizer, schedule_fn)``; ``schedule_fn(step)`` is the learning rate
      of update ``step``, for logging.
    """
    schedule_fn = make_schedule(
        learning_rate=learning_rate,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        schedule=schedule,
        min_lr_ratio=min_lr_ratio,
    )
    _check("weight_decay", weight_decay, weight_decay >= 0, ">= 0")
    _check("b1", b1, 0 <= b1 < 1, "in [0, 1)")
    _check("b2", b2, 0 <= b2 < 1, "in [0, 1)")
    _check("eps", eps, eps >= 0, ">= 0")
    adamw = optax.adamw(
        schedule_fn,
        b1=b1,
        b2=b2,
        eps=eps,
        weight_decay=weight_decay,
        mask=None if decay_1d_params else decay_mask,
        mu_dtype=jnp.dtype(mu_dtype),
    )
    if max_grad_norm is None or max_grad_norm <= 0:
        return adamw, schedule_fn
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw), schedule_fn


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """One optimizer's settings (the policy's, the critic's or the warm start's)."""

    learning_rate: float
    total_steps: int  # optimizer updates in the run: the schedule's length
    warmup_steps: int
    schedule: str
    weight_decay: float
    b1: float
    b2: float
    eps: float
    max_grad_norm: float
    mu_dtype: str = "float32"


def optimizer(settings: OptimizerSettings) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """:func:`make_optimizer` of ``settings``."""
    return make_optimizer(**dataclasses.asdict(settings))

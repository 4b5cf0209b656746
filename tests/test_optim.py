"""make_optimizer / make_schedule against hand-computed values."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alphaalign_jax.rl import make_optimizer, make_schedule

LR = 1e-3


@pytest.mark.parametrize(
    "schedule,warmup,min_ratio,expected",
    [
        # warmup 2 of 10 steps: lr*(s+1)/2, then cosine over the 8 remaining steps
        ("cosine", 2, 0.1, {0: 0.5 * LR, 1: LR, 2: LR, 6: LR * (0.1 + 0.9 * 0.5),
                            9: LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 7 / 8))),
                            10: 0.1 * LR, 50: 0.1 * LR}),
        ("cosine", 0, 0.0, {0: LR, 5: LR * 0.5, 10: 0.0}),
        ("constant", 4, 0.0, {0: 0.25 * LR, 2: 0.75 * LR, 3: LR, 9: LR, 100: LR}),
    ],
)
def test_schedule_values(schedule, warmup, min_ratio, expected):
    fn = make_schedule(learning_rate=LR, total_steps=10, warmup_steps=warmup,
                       schedule=schedule, min_lr_ratio=min_ratio)
    for step, want in expected.items():
        np.testing.assert_allclose(float(fn(step)), want, rtol=1e-6, atol=1e-12, err_msg=f"step {step}")


def first_update(grads, params, **kw):
    opt, _ = make_optimizer(learning_rate=LR, total_steps=10, **kw)
    updates, _ = opt.update(grads, opt.init(params), params)
    return updates


def test_first_update_clipping_and_decay_mask():
    # First AdamW step: m_hat = g, v_hat = g^2, so update = -lr * (g / (|g| + eps) + wd * p).
    # A large eps makes the update depend on |g|, which exposes the clipping.
    params = {"w": jnp.full((2, 2), 2.0), "norm": jnp.ones(1)}
    grads = {"w": jnp.full((2, 2), 4.0), "norm": jnp.full(1, 6.0)}  # global norm 10
    kw = dict(eps=1.0, weight_decay=0.1, b1=0.9, b2=0.999)

    def want(g, p, scale, decay):
        return -LR * (g * scale / (np.abs(g * scale) + 1.0) + (0.1 * p if decay else 0.0))

    up = first_update(grads, params, max_grad_norm=5.0, **kw)
    np.testing.assert_allclose(up["w"], want(4.0, 2.0, 0.5, True), rtol=1e-5)
    np.testing.assert_allclose(up["norm"], want(6.0, 1.0, 0.5, False), rtol=1e-5)

    for off in (None, 0.0):
        up = first_update(grads, params, max_grad_norm=off, **kw)
        np.testing.assert_allclose(up["w"], want(4.0, 2.0, 1.0, True), rtol=1e-5)

    up = first_update(grads, params, max_grad_norm=None, decay_1d_params=True, **kw)
    np.testing.assert_allclose(up["norm"], want(6.0, 1.0, 1.0, True), rtol=1e-5)


def test_optimizer_is_an_optax_transformation_with_its_schedule():
    opt, fn = make_optimizer(learning_rate=LR, total_steps=10, warmup_steps=2)
    assert isinstance(opt, optax.GradientTransformation)
    assert float(fn(0)) == pytest.approx(0.5 * LR)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(learning_rate=-1e-3), "learning_rate"),
        (dict(warmup_steps=11), "warmup_steps"),
        (dict(schedule="linear"), "schedule"),
        (dict(total_steps=0), "total_steps"),
        (dict(min_lr_ratio=1.5), "min_lr_ratio"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(b2=1.0), "b2"),
    ],
)
def test_invalid_arguments_are_named(kwargs, name):
    args = dict(learning_rate=LR, total_steps=10, warmup_steps=0, schedule="cosine")
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        make_optimizer(**{**args, **kwargs})


def test_a_bfloat16_first_moment_halves_it_and_keeps_the_update():
    """optim.mu_dtype=bfloat16: Adam's first moment is stored in bf16 (the second stays
    float32), and a few updates land where the float32 optimizer's do, to bf16 precision."""
    import jax

    params = {"w": jnp.linspace(-1.0, 1.0, 64).reshape(8, 8)}
    rng = np.random.default_rng(0)
    grads = [{"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32)} for _ in range(3)]
    out = {}
    for dtype in ("float32", "bfloat16"):
        tx, _ = make_optimizer(learning_rate=1e-2, total_steps=10, mu_dtype=dtype)
        state, p = tx.init(params), params
        for g in grads:
            updates, state = tx.update(g, state, p)
            p = optax.apply_updates(p, updates)
        moments = [s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
                   if hasattr(s, "mu")][0]
        assert moments.mu["w"].dtype == jnp.dtype(dtype) and moments.nu["w"].dtype == jnp.float32
        out[dtype] = np.asarray(p["w"])
    np.testing.assert_allclose(out["bfloat16"], out["float32"], atol=1e-4)
    assert not np.array_equal(out["bfloat16"], np.asarray(params["w"]))

"""grpo_loss and group_advantages against an independent plain-NumPy re-derivation."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax.rl import AGGREGATIONS, finalize, group_advantages, grpo_loss

B, T, L = 8, 6, 7  # batch, positions, dr_grpo max_completion_len
CLIPS = [(0.2, 0.2), (0.2, 0.28)]  # GRPO symmetric, DAPO clip-higher
BETAS = [0.0, 0.04]


def make_inputs(seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logp = np.log(rng.uniform(0.05, 1.0, (B, T)))
    mask = (rng.uniform(size=(B, T)) < 0.7).astype(dtype)
    mask[1] = 0.0  # a padding row
    mask[2] = 1.0  # a full row
    return {
        "logp": logp.astype(dtype),
        # ratios spread well beyond [0.8, 1.28] so every clip branch is hit
        "old_logp": (logp + 0.4 * rng.standard_normal((B, T))).astype(dtype),
        "ref_logp": (logp + 0.3 * rng.standard_normal((B, T))).astype(dtype),
        "advantages": rng.standard_normal(B).astype(dtype),
        "mask": mask,
    }


def np_loss_and_grad(x, clip_low, clip_high, beta, aggregation):
    """Loss and d loss / d logp, token by token with Python loops."""
    logp, old, ref, adv, mask = (
        x["logp"], x["old_logp"], x["ref_logp"], x["advantages"], x["mask"]
    )
    seq_sum, seq_n = np.zeros(B), np.zeros(B)
    dtok = np.zeros((B, T))  # d l_t / d logp_t
    for i in range(B):
        for t in range(T):
            if not mask[i, t]:
                continue
            r = math.exp(logp[i, t] - old[i, t])
            c = min(max(r, 1 - clip_low), 1 + clip_high)
            unclipped_active = r * adv[i] <= c * adv[i]
            loss = -min(r * adv[i], c * adv[i])
            dtok[i, t] = -adv[i] * r if unclipped_active else 0.0
            if beta > 0:
                d = ref[i, t] - logp[i, t]
                loss += beta * (math.exp(d) - d - 1)
                dtok[i, t] += beta * (1 - math.exp(d))
            seq_sum[i] += loss
            seq_n[i] += 1
    nonempty = seq_n > 0
    if aggregation == "token_mean":
        weight = np.full(B, 1 / seq_n.sum())
    elif aggregation == "seq_mean_token_mean":
        weight = np.where(nonempty, 1 / np.maximum(seq_n, 1) / nonempty.sum(), 0.0)
    else:
        weight = np.full(B, 1 / (nonempty.sum() * L))
    return float((seq_sum * weight).sum()), dtok * weight[:, None]


def jax_loss(x, *, clip_low, clip_high, beta, aggregation):
    return grpo_loss(
        x["logp"], x["old_logp"], x["advantages"], x["mask"],
        ref_logp=x["ref_logp"], clip_low=clip_low, clip_high=clip_high, beta=beta,
        aggregation=aggregation, max_completion_len=L,
    )


def jax_mean_loss(logp, x, **kw):
    loss_sum, count, _ = jax_loss({**x, "logp": logp}, **kw)
    return finalize(loss_sum, count)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("clip_low,clip_high", CLIPS)
@pytest.mark.parametrize("beta", BETAS)
def test_loss_and_grad_match_numpy(aggregation, clip_low, clip_high, beta):
    kw = dict(clip_low=clip_low, clip_high=clip_high, beta=beta, aggregation=aggregation)
    fn = jax.jit(jax.value_and_grad(functools.partial(jax_mean_loss, **kw)))
    for seed in range(3):
        x = make_inputs(seed)
        want, want_grad = np_loss_and_grad(x, **kw)

        # The analytic NumPy gradient is itself checked by central differences.
        h = 1e-6
        fd = np.zeros((B, T))
        for i, t in np.ndindex(B, T):
            up, down = dict(x, logp=x["logp"].copy()), dict(x, logp=x["logp"].copy())
            up["logp"][i, t] += h
            down["logp"][i, t] -= h
            fd[i, t] = (np_loss_and_grad(up, **kw)[0] - np_loss_and_grad(down, **kw)[0]) / (2 * h)
        np.testing.assert_allclose(want_grad, fd, atol=1e-7)

        with jax.enable_x64(True):
            got, got_grad = fn(jnp.asarray(x["logp"]), jax.tree.map(jnp.asarray, x))
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(float(got), want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(got_grad), want_grad, rtol=1e-10, atol=1e-12)

        # float32 (the training dtype) agrees to float32 precision.
        x32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), x)
        got32, grad32 = fn(x32["logp"], x32)
        np.testing.assert_allclose(float(got32), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(grad32), want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("k", [2, 4])
def test_microbatch_accumulation_equals_full_batch(aggregation, k):
    kw = dict(clip_low=0.2, clip_high=0.28, beta=0.04, aggregation=aggregation)
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), make_inputs(7))

    @jax.jit
    def sum_and_grad(x):
        def loss_sum_fn(logp):
            loss_sum, count, aux = jax_loss({**x, "logp": logp}, **kw)
            return loss_sum, (count, aux)

        (loss_sum, (count, aux)), grad = jax.value_and_grad(loss_sum_fn, has_aux=True)(x["logp"])
        return loss_sum, count, aux, grad

    full_sum, full_count, full_aux, _ = sum_and_grad(x)
    full_loss, full_grad = jax.value_and_grad(functools.partial(jax_mean_loss, **kw))(x["logp"], x)

    size = B // k
    parts = [sum_and_grad(jax.tree.map(lambda a: a[j * size:(j + 1) * size], x)) for j in range(k)]
    acc_sum = sum(p[0] for p in parts)
    acc_count = sum(p[1] for p in parts)
    acc_aux = jax.tree.map(lambda *a: sum(a), *(p[2] for p in parts))
    acc_grad = jnp.concatenate([p[3] for p in parts]) / jnp.maximum(acc_count, 1)

    assert float(acc_count) == float(full_count)
    np.testing.assert_allclose(float(finalize(acc_sum, acc_count)), float(full_loss), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(acc_grad), np.asarray(full_grad), rtol=1e-5, atol=1e-8)
    for name in full_aux:
        np.testing.assert_allclose(float(acc_aux[name]), float(full_aux[name]), rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(float(acc_sum), float(full_sum), rtol=1e-6)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_all_zero_mask_is_finite(aggregation):
    # Padding holds garbage: ratios and KL terms would overflow to inf if not masked.
    logp = jnp.full((3, 5), -1e4)
    old = jnp.zeros((3, 5))
    ref = jnp.full((3, 5), 1e4)
    mask = jnp.zeros((3, 5), bool)
    adv = jnp.array([1.0, -1.0, 0.0])

    def mean_loss(logp):
        loss_sum, count, aux = grpo_loss(logp, old, adv, mask, ref_logp=ref, beta=0.04,
                                         aggregation=aggregation, max_completion_len=5)
        return finalize(loss_sum, count), (loss_sum, count, aux)

    (loss, (loss_sum, count, aux)), grad = jax.value_and_grad(mean_loss, has_aux=True)(logp)
    assert float(loss) == 0.0 and float(loss_sum) == 0.0 and float(count) == 0.0
    assert all(float(v) == 0.0 for v in aux.values()), aux
    assert np.all(np.asarray(grad) == 0.0)


def test_aux_counts_clipped_tokens_by_side():
    # ratio 2.0 with A>0 hits the upper clip; ratio 0.5 with A<0 the lower; 1.1 neither.
    logp = jnp.log(jnp.array([[2.0, 1.1], [0.5, 1.1]]))
    old = jnp.zeros((2, 2))
    _, _, aux = grpo_loss(logp, old, jnp.array([1.0, -1.0]), jnp.ones((2, 2)))
    assert float(aux["clip_high_sum"]) == 1.0
    assert float(aux["clip_low_sum"]) == 1.0
    assert float(aux["token_count"]) == 4.0 and float(aux["seq_count"]) == 2.0
    np.testing.assert_allclose(float(aux["ratio_sum"]), 2.0 + 1.1 + 0.5 + 1.1, rtol=1e-6)
    assert "kl_sum" not in aux  # no reference model given


def test_reference_not_needed_when_beta_is_zero():
    x = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), make_inputs(0))
    args = (x["logp"], x["old_logp"], x["advantages"], x["mask"])
    without = grpo_loss(*args, beta=0.0)
    with_ref = grpo_loss(*args, ref_logp=x["ref_logp"], beta=0.0)
    assert float(without[0]) == float(with_ref[0])
    assert float(with_ref[2]["kl_sum"]) > 0.0  # KL still reported when available


def test_invalid_arguments():
    x = jax.tree.map(jnp.asarray, make_inputs(0, np.float32))
    args = (x["logp"], x["old_logp"], x["advantages"], x["mask"])
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, dr_grpo"):
        grpo_loss(*args, aggregation="seq_mean")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(*args, beta=0.1)
    with pytest.raises(ValueError, match="max_completion_len"):
        grpo_loss(*args, aggregation="dr_grpo")
    with pytest.raises(ValueError, match="clip_low"):
        grpo_loss(*args, clip_low=1.0)


@pytest.mark.parametrize("scale_by_std", [True, False])
def test_group_advantages_match_numpy(scale_by_std):
    rng = np.random.default_rng(0)
    rewards = rng.standard_normal((5, 8)).astype(np.float32)
    rewards[3] = 0.7  # a constant group
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    want = centred / (rewards.std(axis=1, ddof=0, keepdims=True) + 1e-6) if scale_by_std else centred
    got = jax.jit(functools.partial(group_advantages, scale_by_std=scale_by_std))(rewards)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got)[3] == 0.0)


def test_group_advantages_single_rollout_and_shape_check():
    assert np.all(np.asarray(group_advantages(jnp.array([[3.0], [-1.0]]))) == 0.0)
    with pytest.raises(ValueError, match="num_prompts, G"):
        group_advantages(jnp.zeros(8))

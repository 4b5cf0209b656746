"""Chunked token_logprobs against the naive full-vocabulary log_softmax."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax.rl import token_logprobs

B, T, D, V = 2, 10, 8, 32
TEMPERATURE = 0.7


def make_inputs(dtype=jnp.float32):
    kh, kw, kt = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(kh, (B, T, D)).astype(dtype)
    unembed = jax.random.normal(kw, (D, V)).astype(dtype)
    targets = jax.random.randint(kt, (B, T), 0, V)
    return hidden, unembed, targets


def naive(hidden, unembed, targets, temperature):
    logits = jnp.einsum("btd,dv->btv", hidden.astype(jnp.float32), unembed.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST) / temperature
    logp_all = jax.nn.log_softmax(logits, axis=-1)
    logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1)
    return logp, entropy


def objective(fn, hidden, unembed, targets):
    """A scalar touching both outputs with position-dependent weights."""
    logp, entropy = fn(hidden, unembed, targets)
    w = jnp.linspace(-1.0, 2.0, T)
    return (logp * w).sum() + (entropy * w[::-1]).sum()


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 64])  # 3, 4 do not divide T=10
def test_values_and_grads_match_naive(chunk_size):
    hidden, unembed, targets = make_inputs()
    fused = functools.partial(token_logprobs, temperature=TEMPERATURE, chunk_size=chunk_size)
    ref = functools.partial(naive, temperature=TEMPERATURE)

    logp, entropy = jax.jit(fused)(hidden, unembed, targets)
    want_logp, want_entropy = ref(hidden, unembed, targets)
    assert logp.shape == entropy.shape == (B, T) and logp.dtype == jnp.float32
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)

    grads = jax.jit(jax.grad(functools.partial(objective, fused), argnums=(0, 1)))(hidden, unembed, targets)
    want = jax.grad(functools.partial(objective, ref), argnums=(0, 1))(hidden, unembed, targets)
    for got_g, want_g in zip(grads, want):
        np.testing.assert_allclose(got_g, want_g, rtol=1e-4, atol=1e-5)


def test_vocab_major_layout():
    hidden, unembed, targets = make_inputs()
    got = token_logprobs(hidden, unembed.T, targets, chunk_size=4, vocab_major=True)
    want = token_logprobs(hidden, unembed, targets, chunk_size=4)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-6)


def test_bf16_inputs_computed_in_float32():
    hidden, unembed, targets = make_inputs(jnp.bfloat16)
    fused = functools.partial(token_logprobs, temperature=TEMPERATURE, chunk_size=4)
    logp, entropy = jax.jit(fused)(hidden, unembed, targets)
    assert logp.dtype == entropy.dtype == jnp.float32
    # bf16 x bf16 products are exact in float32, so this matches the float32
    # computation on the same (rounded) values to float32 precision.
    want_logp, want_entropy = naive(hidden, unembed, targets, TEMPERATURE)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(entropy, want_entropy, rtol=1e-5, atol=1e-5)

    grads = jax.jit(jax.grad(functools.partial(objective, fused), argnums=(0, 1)))(hidden, unembed, targets)
    up = (hidden.astype(jnp.float32), unembed.astype(jnp.float32))
    want = jax.grad(functools.partial(objective, functools.partial(naive, temperature=TEMPERATURE)),
                    argnums=(0, 1))(*up, targets)
    for got_g, want_g in zip(grads, want):
        assert got_g.dtype == jnp.bfloat16
        # the only error left is rounding the gradient itself to bf16 (8 bits)
        np.testing.assert_allclose(got_g.astype(jnp.float32), want_g, rtol=2e-2, atol=2e-2)


def test_bf16_unembed_gradient_is_rounded_once_not_per_chunk():
    b, t, d, v = 2, 256, 16, 64  # 64 chunks of 4
    kh, kw, kt = jax.random.split(jax.random.key(1), 3)
    hidden = jax.random.normal(kh, (b, t, d)).astype(jnp.bfloat16)
    unembed = (0.3 * jax.random.normal(kw, (d, v))).astype(jnp.bfloat16)
    targets = jax.random.randint(kt, (b, t), 0, v)

    @functools.partial(jax.jit, static_argnums=2)
    def grad_unembed(h, w, chunk_size):
        def f(w):
            logp, entropy = token_logprobs(h, w, targets, chunk_size=chunk_size)
            return logp.sum() + entropy.sum()
        return jax.grad(f)(w)

    exact = grad_unembed(hidden.astype(jnp.float32), unembed.astype(jnp.float32), t)
    got = grad_unembed(hidden, unembed, 4).astype(jnp.float32)
    # within one bf16 rounding (relative 2**-8) of the float32 gradient
    assert np.all(np.abs(got - exact) <= 2.0**-8 * np.abs(exact) * 1.001 + 1e-6)


def test_backward_never_holds_full_logits():
    b, t, d, v = 1, 2048, 16, 4096  # full float32 logits: 32 MiB; one 32-position chunk: 0.5 MiB
    hidden = jnp.zeros((b, t, d))
    unembed = jnp.zeros((d, v))
    targets = jnp.zeros((b, t), jnp.int32)

    def objective_sum(fn, h, w):
        logp, entropy = fn(h, w, targets)
        return logp.sum() + entropy.sum()

    def temp_bytes(fn):
        grad = jax.jit(jax.grad(lambda h, w: objective_sum(fn, h, w), argnums=(0, 1)))
        return grad.lower(hidden, unembed).compile().memory_analysis().temp_size_in_bytes

    full_logits = b * t * v * 4
    fused = temp_bytes(functools.partial(token_logprobs, chunk_size=32))
    assert fused < full_logits / 8, (fused, full_logits)
    assert temp_bytes(functools.partial(naive, temperature=1.0)) >= full_logits  # the test can tell


def test_invalid_arguments():
    hidden, unembed, targets = make_inputs()
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs(hidden, unembed, targets, chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(hidden, unembed, targets, temperature=0.0)
    with pytest.raises(ValueError, match="targets"):
        token_logprobs(hidden, unembed, targets[:, :-1])

"""PPO's advantages: the scalar reward on the last completion token, GAE over a critic's values.

All arrays are ``[B, C]`` over completion tokens, right-padded (``mask`` is 1 on the first
``length`` tokens of a row). The state before token t is the prompt and tokens < t; the critic's
value at t is ``V(s_t)``, and the episode ends after the last real token (V = 0 beyond it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def terminal_rewards(scores: jax.Array, mask: jax.Array) -> jax.Array:
    """[B] sequence rewards placed on each row's last real token ([B, C], 0 elsewhere)."""
    mask = jnp.asarray(mask).astype(jnp.float32)
    last = jnp.maximum(mask.sum(axis=1).astype(jnp.int32) - 1, 0)
    onehot = jax.nn.one_hot(last, mask.shape[1], dtype=jnp.float32) * (mask.sum(axis=1) > 0)[:, None]
    return onehot * jnp.asarray(scores, jnp.float32)[:, None]


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float, lam: float
        ) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016), per token.

        delta_t = r_t + gamma * V_{t+1} - V_t,    A_t = delta_t + gamma * lam * A_{t+1},

    with V and A zero past a row's last real token. Returns ``(advantages, returns)`` with
    ``returns = advantages + values``, both 0 on padding.
    """
    mask = jnp.asarray(mask).astype(jnp.float32)
    values = jnp.asarray(values, jnp.float32) * mask
    rewards = jnp.asarray(rewards, jnp.float32) * mask
    next_values = jnp.pad(values[:, 1:], ((0, 0), (0, 1)))
    deltas = rewards + gamma * next_values - values

    def back(carry, x):
        delta, m = x
        advantage = (delta + gamma * lam * carry) * m
        return advantage, advantage

    _, advantages = jax.lax.scan(back, jnp.zeros(mask.shape[0], jnp.float32),
                                 (deltas.T, mask.T), reverse=True)
    advantages = advantages.T
    return advantages, (advantages + values) * mask


def whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x - mean) / std over the masked tokens of the whole batch; 0 on padding."""
    mask = jnp.asarray(mask).astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / count
    var = (jnp.square(x - mean) * mask).sum() / count
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def ppo_advantages(scores: jax.Array, values: jax.Array, mask: jax.Array, old_logp: jax.Array,
                   ref_logp: jax.Array, *, kl_penalty: float, gamma: float, lam: float,
                   whiten_advantages: bool) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """PPO's per-token advantages and value targets from [B] sequence scores and [B, C] values:
    the score on the last token, minus ``kl_penalty * (log pi_old - log pi_ref)`` on every token
    (the KL-in-reward of InstructGPT), then GAE, then (optionally) whitening.

    Returns ``(advantages, returns, metrics)``; metrics hold the explained variance of the
    returns by the values (1 = perfect, <= 0 = no better than their mean; NaN when the returns
    do not vary, e.g. every rollout scored alike, where it is undefined).
    """
    mask = jnp.asarray(mask).astype(jnp.float32)
    rewards = terminal_rewards(scores, mask)
    if kl_penalty > 0:
        rewards = rewards - kl_penalty * (old_logp - ref_logp) * mask
    advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
    count = jnp.maximum(mask.sum(), 1.0)

    def var(x):
        mean = (x * mask).sum() / count
        return (jnp.square(x - mean) * mask).sum() / count

    returns_var = var(returns)
    explained = jnp.where(returns_var > 1e-8, 1.0 - var(returns - values) / returns_var, jnp.nan)
    metrics = {"critic/explained_variance": explained,
               "critic/return_mean": (returns * mask).sum() / count,
               "critic/advantage_mean": (advantages * mask).sum() / count}
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns, metrics

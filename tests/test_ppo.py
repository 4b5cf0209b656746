"""PPO's numerics against plain NumPy re-derivations (GAE, the KL-in-reward, whitening, the
clipped policy loss with per-token advantages and the clipped value loss, gradients included),
the critic's initialisation, and the algorithm seam's config rules."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax.rl import algorithms
from alphaalign_jax.rl.gae import gae, ppo_advantages, terminal_rewards
from alphaalign_jax.rl.losses import finalize, grpo_loss, value_loss
from tests.tiny_run import REPO


def ragged(rng, rows=5, cols=9):
    lengths = np.array([cols, 1, 4, 0, 7][:rows])
    return (np.arange(cols)[None] < lengths[:, None]), lengths


def numpy_gae(rewards, values, lengths, gamma, lam):
    advantages = np.zeros_like(rewards)
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            next_value = values[i, t + 1] if t + 1 < n else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            running = delta + gamma * lam * running
            advantages[i, t] = running
    returns = np.where(np.arange(rewards.shape[1])[None] < lengths[:, None],
                       advantages + values, 0.0)
    return advantages, returns


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.9, 0.0)])
def test_gae_matches_the_numpy_recursion(gamma, lam):
    rng = np.random.default_rng(0)
    mask, lengths = ragged(rng)
    rewards = rng.normal(size=mask.shape).astype(np.float32)
    values = rng.normal(size=mask.shape).astype(np.float32)
    got_a, got_r = gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                       gamma=gamma, lam=lam)
    want_a, want_r = numpy_gae(rewards * mask, values, lengths, gamma, lam)
    np.testing.assert_allclose(got_a, want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-5, atol=1e-5)


def test_ppo_advantages_put_the_score_last_subtract_the_kl_and_whiten():
    rng = np.random.default_rng(1)
    mask, lengths = ragged(rng)
    scores = rng.normal(size=len(lengths)).astype(np.float32)
    values, old, ref = (rng.normal(size=mask.shape).astype(np.float32) for _ in range(3))
    rewards = np.zeros(mask.shape, np.float32)
    for i, n in enumerate(lengths):
        if n:
            rewards[i, n - 1] = scores[i]
    np.testing.assert_allclose(terminal_rewards(jnp.asarray(scores), jnp.asarray(mask)), rewards)
    rewards = rewards - 0.1 * (old - ref) * mask
    want_a, want_r = numpy_gae(rewards, values, lengths, 1.0, 0.95)
    real = want_a[mask]
    want_white = np.where(mask, (want_a - real.mean()) / np.sqrt(real.var() + 1e-8), 0.0)
    got_a, got_r, metrics = ppo_advantages(
        jnp.asarray(scores), jnp.asarray(values), jnp.asarray(mask), jnp.asarray(old),
        jnp.asarray(ref), kl_penalty=0.1, gamma=1.0, lam=0.95, whiten_advantages=True)
    np.testing.assert_allclose(got_a, want_white, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got_r, want_r, rtol=1e-5, atol=1e-5)
    v = np.where(mask, values, 0.0)[mask]
    want_ev = 1 - np.var(want_r[mask] - v) / np.var(want_r[mask])
    np.testing.assert_allclose(metrics["critic/explained_variance"], want_ev, rtol=1e-4)


def test_explained_variance_of_returns_that_do_not_vary_is_undefined():
    mask = jnp.ones((4, 3), bool)
    _, _, metrics = ppo_advantages(jnp.ones(4), jnp.full((4, 3), 0.3), mask, jnp.zeros((4, 3)),
                                   jnp.zeros((4, 3)), kl_penalty=0.0, gamma=1.0, lam=1.0,
                                   whiten_advantages=False)
    assert np.isnan(metrics["critic/explained_variance"])


def test_policy_loss_with_per_token_advantages_and_its_gradient():
    rng = np.random.default_rng(2)
    mask, _ = ragged(rng)
    logp = rng.normal(scale=0.3, size=mask.shape).astype(np.float32) - 1.0
    old = logp + rng.normal(scale=0.3, size=mask.shape).astype(np.float32)
    adv = rng.normal(size=mask.shape).astype(np.float32)
    lo, hi = 0.2, 0.28
    ratio = np.exp(logp - old)
    unclipped, clipped = ratio * adv, np.clip(ratio, 1 - lo, 1 + hi) * adv
    want = (-np.minimum(unclipped, clipped) * mask).sum() / mask.sum()
    # d/dlogp of -min(r A, clip(r) A): -r A where the unclipped term is the smaller (or the
    # clip is inactive), else 0
    active = (unclipped <= clipped) | ((ratio >= 1 - lo) & (ratio <= 1 + hi))
    want_grad = np.where(mask & active, -ratio * adv, 0.0) / mask.sum()

    def loss(lp):
        s, c, _ = grpo_loss(lp, jnp.asarray(old), jnp.asarray(adv), jnp.asarray(mask),
                            clip_low=lo, clip_high=hi)
        return finalize(s, c)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(logp))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


def test_clipped_value_loss_and_its_gradient():
    rng = np.random.default_rng(3)
    mask, _ = ragged(rng)
    values, old, returns = (rng.normal(size=mask.shape).astype(np.float32) for _ in range(3))
    clip = 0.2
    clipped = old + np.clip(values - old, -clip, clip)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    want = (0.5 * np.maximum(a, b) * mask).sum() / mask.sum()
    inside = np.abs(values - old) < clip
    # gradient flows through the larger term; the clipped term is flat in V outside the range
    want_grad = np.where(a >= b, values - returns, np.where(inside, clipped - returns, 0.0))
    want_grad = want_grad * mask / mask.sum()

    def loss(v):
        s, c, _ = value_loss(v, jnp.asarray(old), jnp.asarray(returns), jnp.asarray(mask),
                             clip=clip)
        return finalize(s, c)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(values))
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_critic_starts_as_the_policy_with_a_zero_head(smollm2_dir):
    from alphaalign_jax.models import from_pretrained, value_model
    from alphaalign_jax.rl.step import grouped_completion_values

    policy = from_pretrained(smollm2_dir)
    critic = value_model(policy)
    assert critic.config.num_labels == 1 and critic.score[...].shape == (576, 1)
    np.testing.assert_array_equal(critic.layers[3].self_attn.q_proj.kernel[...],
                                  policy.layers[3].self_attn.q_proj.kernel[...])
    ids = jnp.ones((1, 4), jnp.int32)
    values = grouped_completion_values(critic, ids, jnp.ones((1, 4), bool),
                                       jnp.ones((2, 4), jnp.int32), 2)
    np.testing.assert_array_equal(values, np.zeros((2, 4)))


def parse(argv: list[str]) -> list[str]:
    """The trainer's own flag parsing in a fresh process: algo name, clip_high, rft rounds,
    mini-batches of the parsed config (or the one-line error)."""
    code = ("import sys; from alphaalign_jax import train; "
            "train.parse_flags(['train'] + sys.argv[1:]); c = train.CONFIG_FLAG.value; "
            "print(c.algo.name, c.algo.clip_high, c.rft.rounds, c.algo.mini_batches)")
    result = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    return (result.stdout.split() if result.returncode == 0
            else ["error", result.stderr])


@pytest.mark.slow
def test_a_variant_sets_its_values_before_the_overrides():
    config = str(REPO / "configs" / "smollm2_135m_cpu.py")
    assert parse([f"--config={config}:dapo"])[:2] == ["dapo", "0.28"]
    # the flag wins: nothing overwrites it after the command line
    assert parse([f"--config={config}:dapo", "--config.algo.clip_high=0.25"])[:2] == [
        "dapo", "0.25"]
    name, _, rounds, mini_batches = parse([f"--config={config}:ppo"])
    assert (name, mini_batches) == ("ppo", "2") and int(rounds) > 0
    assert "unknown option ppo2;" in parse([f"--config={config}:ppo2"])[1]
    for name, algorithm in algorithms.ALGORITHMS.items():
        c = config_lib.base_config(name)
        for path, value in algorithm.defaults.items():
            section, field = path.split(".")
            assert c[section][field] == value, (name, path)
        config_lib.validate(c)


def test_naming_the_algorithm_by_override_is_refused_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "alphaalign_jax.train",
         f"--config={REPO / 'configs' / 'smollm2_135m_cpu.py'}", f"--workdir={tmp_path}",
         "--config.algo.name=ppo"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        "train: config.algo.name: set on its own; choose the algorithm with --config=FILE:NAME")


def test_a_new_variant_is_one_entry_in_the_seam(monkeypatch):
    """What adding a variant takes: one Algorithm in rl/algorithms.py. The config, its
    validation and the trainer's dispatch (estimator, critic) read everything from it."""
    variant = algorithms.Algorithm("grpo_low_clip", algorithms.group_normalised,
                                   {"algo.clip_low": 0.1, "algo.clip_high": 0.1}, "test")
    monkeypatch.setitem(algorithms.ALGORITHMS, variant.name, variant)
    c = config_lib.base_config("grpo_low_clip")
    config_lib.validate(c)
    assert (c.algo.name, c.algo.clip_low, c.algo.clip_high) == ("grpo_low_clip", 0.1, 0.1)
    assert config_lib.parse_config_arg("grpo_low_clip") == ("grpo_low_clip", set())


@pytest.mark.parametrize("args, message", [
    ([":nope"], "unknown option nope; at most one algorithm of grpo, "),
    (["", "--config.data.seed=abc"], "config.data.seed: 'abc' is not an int"),
    (["", "--config.reward.markers_on=all"], "config.reward.markers_on: must be 'benign' with "
                                             "reward.whole_refusal"),
])
def test_a_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "alphaalign_jax.train",
         f"--config={REPO / 'configs' / 'smollm2_135m_cpu.py'}{args[0]}", f"--workdir={workdir}",
         *args[1:]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: ") and message in lines[0], lines
    assert not workdir.exists()

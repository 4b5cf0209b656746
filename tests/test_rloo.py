"""RLOO: the leave-one-out advantages against a plain loop, and a run from the command line that
resumes exactly (its learnability is in test_learnability.py beside GRPO's and PPO's)."""

from __future__ import annotations

import numpy as np
import pytest

from alphaalign_jax.rl import algorithms
from alphaalign_jax.rl.rloo import leave_one_out_advantages
from tests.test_train import assert_same_metrics
from tests.tiny_run import make_tiny_policy, read_metrics, run_train, tiny_overrides, write_prompts


def loop_reference(rewards: np.ndarray) -> np.ndarray:
    """Each reward minus the mean of the other rewards of its row, one at a time."""
    out = np.zeros_like(rewards, dtype=np.float64)
    for p, row in enumerate(rewards):
        for i, r in enumerate(row):
            others = [row[j] for j in range(len(row)) if j != i]
            out[p, i] = r - sum(others) / len(others)
    return out


@pytest.mark.parametrize("group", [2, 3, 8])
def test_advantages_are_each_reward_minus_the_mean_of_the_others(group):
    rng = np.random.default_rng(group)
    rewards = rng.normal(size=(6, group))
    rewards[1] = 0.7  # a constant group: no signal, exactly 0
    rewards[2, :2] = 1.0  # ties
    got = leave_one_out_advantages(rewards)
    np.testing.assert_allclose(got, loop_reference(rewards), rtol=1e-12, atol=1e-12)
    assert (got[1] == 0).all()
    # the registered estimator is the same function, on float32 rewards as the trainer has
    registered = algorithms.get("rloo").advantages(rewards.astype(np.float32), None)
    np.testing.assert_allclose(registered, loop_reference(rewards), rtol=1e-5, atol=1e-6)


def test_a_group_of_one_has_no_leave_one_out_baseline():
    with pytest.raises(ValueError, match="G >= 2"):
        leave_one_out_advantages(np.ones((3, 1)))


@pytest.mark.assets
@pytest.mark.slow
def test_rloo_trains_from_the_command_line_and_resumes_exactly(tmp_path, smollm2_dir):
    policy = make_tiny_policy(tmp_path / "policy", smollm2_dir)
    prompts = write_prompts(tmp_path / "train.jsonl")
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run_train(full, tiny_overrides(policy, prompts, steps=4), config_arg="rloo")
    run_train(resumed, tiny_overrides(policy, prompts, steps=2), config_arg="rloo")
    run_train(resumed, tiny_overrides(policy, prompts, steps=4), config_arg="rloo")
    rows = read_metrics(full)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(
        np.isfinite(r["loss"]) for r in rows)
    assert_same_metrics(read_metrics(resumed), rows)

"""DAPO dynamic sampling in the trainer: zero-variance groups are dropped and refilled from
extra rounds, the shortfall is masked out of the loss, and resume stays exact."""

from __future__ import annotations

import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from tests.test_train import assert_same_metrics
from tests.tiny_run import make_tiny_policy, read_metrics, write_prompts


def benign_only_signal(records, texts):
    """Harmful groups get a constant reward (no advantage); benign ones vary by length."""
    rewards = np.array([[0.0 if r.label == "harmful" else len(t) % 3 for t in group]
                        for r, group in zip(records, texts)], np.float32)
    return rewards, {"reward/total": float(rewards.mean())}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("dyn")
    return make_tiny_policy(root / "policy", smollm2_dir), write_prompts(root / "train.jsonl")


def config(tiny_files, steps: int, rounds: int = 3):
    policy, train_file = tiny_files
    c = config_lib.base_config()
    c.model.hf_dir = str(policy)
    c.data.train_file = str(train_file)
    c.rollout.update(num_samples=4, max_new_tokens=6, max_prompt_len=192,
                     dynamic_sampling=True, max_sampling_rounds=rounds)
    c.algo.update(beta=0.0, micro_batch_size=8)
    c.optim.update(learning_rate=1e-3)
    c.train.update(steps=steps, prompts_per_step=2, plot=False, checkpoint_every=2,
                   async_checkpointing=False)
    return c


@pytest.mark.assets
@pytest.mark.slow
def test_zero_variance_groups_are_dropped_and_refilled(tiny_files, tmp_path):
    trainer = train_lib.Trainer(config(tiny_files, steps=2), tmp_path,
                                reward_fn=benign_only_signal)
    m = trainer.train_one_step()
    # each round draws 1 harmful + 1 benign prompt: the harmful group is always dropped, so
    # 2 informative groups take 2 rounds (and 1 group of 4 extra rollouts)
    assert m["dynamic/rounds"] == 2
    assert m["dynamic/groups_kept"] == 2
    assert m["dynamic/groups_dropped"] == 2
    assert m["dynamic/filler_groups"] == 0
    assert m["dynamic/extra_rollouts"] == 8
    assert m["tokens"] > 0


@pytest.mark.assets
@pytest.mark.slow
def test_shortfall_is_masked_out_of_the_loss(tiny_files, tmp_path):
    def constant(records, texts):
        return np.ones((len(records), len(texts[0])), np.float32), {"reward/total": 1.0}

    trainer = train_lib.Trainer(config(tiny_files, steps=2, rounds=2), tmp_path,
                                reward_fn=constant)
    m = trainer.train_one_step()
    assert m["dynamic/rounds"] == 2 and m["dynamic/groups_kept"] == 0
    assert m["dynamic/filler_groups"] == 2
    assert m["tokens"] == 0 and m["loss"] == 0.0  # nothing to learn from, nothing applied


@pytest.mark.assets
@pytest.mark.slow
def test_resume_with_dynamic_sampling_is_exact(tiny_files, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    train_lib.Trainer(config(tiny_files, steps=4), full, reward_fn=benign_only_signal).run()
    train_lib.Trainer(config(tiny_files, steps=2), split, reward_fn=benign_only_signal).run()
    train_lib.Trainer(config(tiny_files, steps=4), split, reward_fn=benign_only_signal).run()
    assert_same_metrics(read_metrics(split), read_metrics(full))

"""pi_old under bf16 (issue 37): the sampler's log-probs and the trainer's come from different
programs, equal in float32 (to ~1e-5) and not in bfloat16; ``algo.recompute_old_logprobs``
takes pi_old from the trainer's teacher-forced pass instead of the sampler's."""

from __future__ import annotations

import numpy as np
import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import trainer as trainer_lib
from tests.tiny_run import make_tiny_policy, write_prompts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("old_logprobs")
    return make_tiny_policy(root / "policy", smollm2_dir, init_std=1.0), write_prompts(
        root / "train.jsonl")


def first_update(tiny, tmp_path, dtype: str, recompute: bool):
    """The first step's metrics, and the batch the update saw with the teacher-forced pass's
    log-probs of it under the parameters the update started from."""
    c = config_lib.base_config()
    c.model.update(hf_dir=str(tiny[0]), dtype=dtype)
    c.data.train_file = str(tiny[1])
    c.reward.helpfulness = "none"
    c.rollout.update(num_samples=4, max_new_tokens=16, max_prompt_len=192)
    c.algo.update(beta=0.0, micro_batch_size=8, recompute_old_logprobs=recompute)
    c.train.update(steps=1, prompts_per_step=2, plot=False)
    trainer = trainer_lib.Trainer(c, tmp_path / f"{dtype}_{recompute}")
    seen, step = {}, trainer.update_step

    def update(params, rest, opt_state, batch):
        seen.update(old=np.asarray(batch.old_logp), mask=np.asarray(batch.completion_mask),
                    forward=np.asarray(trainer.logprobs(params, rest, batch)))
        return step(params, rest, opt_state, batch)

    trainer.update_step = update
    try:
        return trainer.train_one_step(), seen
    finally:
        trainer.lock.release()


@pytest.mark.assets
@pytest.mark.slow
def test_pi_old_is_the_trainers_forward_when_recomputed(tiny, tmp_path):
    gap = "logprob_diff/sampler_vs_trainer"
    f32, _ = first_update(tiny, tmp_path, "float32", recompute=False)
    sampled, from_sampler = first_update(tiny, tmp_path, "bfloat16", recompute=False)
    recomputed, from_trainer = first_update(tiny, tmp_path, "bfloat16", recompute=True)
    assert f32[gap] < 1e-4 and f32["ratio_rms_from_1"] < 1e-3  # float32: the same numbers
    assert sampled[gap] > 1e-3 and sampled["ratio_rms_from_1"] > 1e-3  # bf16: not
    mask = from_trainer["mask"] > 0
    np.testing.assert_array_equal(from_trainer["old"][mask], from_trainer["forward"][mask])
    assert not np.array_equal(from_sampler["old"][mask], from_sampler["forward"][mask])
    assert recomputed["reward/total"] == sampled["reward/total"]  # the same rollouts

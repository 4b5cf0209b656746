"""pi_old under bf16 (issue 37): the sampler's log-probs and the trainer's come from different
programs, equal in float32 (to ~1e-5) and not in bfloat16; ``algo.recompute_old_logprobs``
takes pi_old from the trainer's teacher-forced pass instead of the sampler's, and
``algo.on_policy_ratio`` from the update's own log-probs (one update a step)."""

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


def first_update(tiny, tmp_path, dtype: str, recompute: bool, on_policy: bool = False):
    """The first step's metrics, and the batch the update saw with the teacher-forced pass's
    log-probs of it under the parameters the update started from."""
    c = config_lib.base_config()
    c.model.update(hf_dir=str(tiny[0]), dtype=dtype)
    c.data.train_file = str(tiny[1])
    c.reward.helpfulness = "none"
    c.rollout.update(num_samples=4, max_new_tokens=16, max_prompt_len=192)
    c.algo.update(beta=0.0, micro_batch_size=8, recompute_old_logprobs=recompute,
                  on_policy_ratio=on_policy)
    c.train.update(steps=1, prompts_per_step=2, plot=False)
    trainer = trainer_lib.Trainer(c, tmp_path / f"{dtype}_{recompute}_{on_policy}")
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


@pytest.mark.assets
@pytest.mark.slow
def test_the_on_policy_ratio_is_exactly_one_under_bf16(tiny, tmp_path):
    """Against the update's own log-probs the first update's ratio is 1 to the last bit and no
    token is clipped, where the sampler's pi_old spreads it; the rollouts are the same."""
    sampled, _ = first_update(tiny, tmp_path, "bfloat16", recompute=False)
    on_policy, _ = first_update(tiny, tmp_path, "bfloat16", recompute=False, on_policy=True)
    assert sampled["ratio_mean"] != 1.0
    assert on_policy["ratio_mean"] == 1.0 and on_policy["ratio_rms_from_1"] == 0.0
    assert on_policy["clip_frac/low"] == on_policy["clip_frac/high"] == 0.0
    assert on_policy["reward/total"] == sampled["reward/total"]


def test_the_on_policy_ratio_needs_one_update_a_step():
    c = config_lib.base_config()
    c.algo.on_policy_ratio = True
    config_lib.validate(c)
    for field, value in (("num_updates", 2), ("mini_batches", 2)):
        c.algo[field] = value
        with pytest.raises(config_lib.ConfigValueError, match=r"^config\.algo\.on_policy_ratio"):
            config_lib.validate(c)
        c.algo[field] = 1


def test_the_paper_configs_take_the_on_policy_ratio():
    """bf16 compute, one update a step: the ratio against the update's own log-probs; PPO's
    two mini-batches keep the sampler's."""
    from configs import llama3_2_3b_instruct, qwen2_5_3b_instruct, qwen2_5_7b_instruct

    for module in (qwen2_5_3b_instruct, qwen2_5_7b_instruct, llama3_2_3b_instruct):
        c = module.get_config()
        config_lib.validate(c, num_devices=c.algo.micro_batch_size)
        assert c.model.dtype == "bfloat16" and c.algo.on_policy_ratio
        assert not module.get_config("ppo").algo.on_policy_ratio

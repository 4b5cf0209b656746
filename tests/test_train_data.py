"""Where the trainer's prompts come from: the bundled split through tfds by default, every
prompt's length checked when the data is loaded, and an exact position across restarts."""

from __future__ import annotations

import json

import pytest

from alphaalign_jax import assets
from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from alphaalign_jax.data import load_jsonl
from alphaalign_jax.data.budget import PromptTooLong
from alphaalign_jax.data.pipeline import TfdsPrompts
from tests.tiny_run import PROMPTS, make_tiny_policy, write_prompts


@pytest.fixture(scope="module")
def policy(tmp_path_factory, smollm2_dir):
    return make_tiny_policy(tmp_path_factory.mktemp("data") / "policy", smollm2_dir)


def tiny_config(policy, train_file="", **data):
    c = config_lib.base_config()
    c.model.hf_dir = str(policy)
    c.data.update(train_file=str(train_file), **data)
    c.rollout.update(num_samples=2, max_new_tokens=8, max_prompt_len=256)
    c.algo.update(beta=0.0, micro_batch_size=2)
    c.train.update(steps=4, prompts_per_step=4, plot=False, async_checkpointing=False)
    return c


def ids(batch):
    return [r.id for r in batch]


@pytest.mark.assets
def test_default_prompts_come_from_the_bundled_tfds_dataset_and_resume_exactly(policy, tmp_path):
    trainer = train_lib.Trainer(tiny_config(policy), tmp_path / "a")
    harmful = trainer.prompts.harmful._data  # a label view of the tfds source
    assert isinstance(harmful._data, TfdsPrompts)
    bundled = load_jsonl(assets.assets_dir() / "data" / "train.jsonl")
    assert [r.id for r in harmful] == [r.id for r in bundled if r.label == "harmful"]
    first = [ids(trainer.prompts.next()) for _ in range(3)]
    state = json.loads(json.dumps(trainer.prompts.state()))  # as stored with a checkpoint
    uninterrupted = [ids(trainer.prompts.next()) for _ in range(2)]
    resumed = train_lib.Trainer(tiny_config(policy), tmp_path / "b")
    assert [ids(resumed.prompts.next()) for _ in range(3)] == first
    resumed = train_lib.Trainer(tiny_config(policy), tmp_path / "c")
    resumed.prompts.restore(state)
    assert [ids(resumed.prompts.next()) for _ in range(2)] == uninterrupted


@pytest.mark.assets
def test_an_overlong_prompt_stops_the_run_before_step_one(policy, tmp_path):
    """Defect 3 of the reliability issue: the long prompt stopped the run only at the step
    that drew it (and the resumed run at the same step), naming neither record nor field."""
    path = write_prompts(tmp_path / "train.jsonl")
    rows = path.read_text().splitlines()
    rows.insert(2, json.dumps({"prompt": "word " * 400, "label": "harmful", "source": "test",
                               "id": "long"}))
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(PromptTooLong, match=r"1 of 7 prompts are longer than "
                       r"config\.rollout\.max_prompt_len=256 tokens .*train\.jsonl:3 \(long, "):
        train_lib.Trainer(tiny_config(policy, path), tmp_path / "strict")
    lenient = train_lib.Trainer(tiny_config(policy, path, lenient=True), tmp_path / "lenient")
    harmful = [r.id for r in lenient.prompts.harmful._data]
    assert "long" not in harmful and len(harmful) == sum(lab == "harmful" for lab, _ in PROMPTS)

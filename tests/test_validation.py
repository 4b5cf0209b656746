"""Validation on held-back training prompts and the checkpoint it selects (validation.py)."""

from __future__ import annotations

import json
import random

import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax import train as train_lib
from alphaalign_jax import validation
from alphaalign_jax.data import PromptRecord
from alphaalign_jax.settings import safety_settings
from tests.tiny_run import make_tiny_policy, read_metrics, write_prompts


def _records(n: int) -> list[PromptRecord]:
    return [PromptRecord(f"prompt {i}", ("harmful", "benign")[i % 3 == 0], "s", f"id{i}")
            for i in range(n)]


def test_held_back_is_per_label_and_fixed_by_the_ids_not_the_order():
    rows = _records(60)
    held = validation.held_back(rows, 4)
    assert sorted(rows[i].label for i in held) == ["benign"] * 4 + ["harmful"] * 4
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert {shuffled[i].id for i in validation.held_back(shuffled, 4)} == {rows[i].id for i in held}
    assert validation.held_back(rows, 0) == set()
    assert len(validation.held_back(rows, 1000)) == 60  # a label with fewer gives all it has


def test_scores_are_the_verifiers_rates_and_their_gap():
    c = config_lib.base_config()
    refusal = safety_settings(c.reward).refusal
    refuse = "<safety_reasoning>x</safety_reasoning>\n<answer>\\boxed{Sorry, I can't comply}</answer>"
    answer = "<safety_reasoning>x</safety_reasoning>\n<answer>Knead the dough.</answer>"
    records = [PromptRecord(f"p{i}", label, "s", f"i{i}")
               for i, label in enumerate(["harmful"] * 4 + ["benign"] * 2)]
    texts = [refuse, refuse, refuse, "no tags at all", refuse, answer]
    got = validation.scores(records, texts, refusal)
    expected_format = 5 / 6
    assert got == pytest.approx({"val/format": expected_format, "val/refused_harmful": 0.75,
                                 "val/refused_benign": 0.5, "val/gap": 0.25})


def test_selection_takes_the_largest_gap_the_earliest_of_equals():
    s = validation.Selection()
    assert s.offer(0, {"val/gap": 0.0}) and s.step == 0
    assert s.offer(2, {"val/gap": 0.5}) and not s.offer(4, {"val/gap": 0.5})
    assert not s.offer(6, {"val/gap": -0.25})
    assert validation.Selection.from_state(json.loads(json.dumps(s.state()))) == s
    assert validation.Selection.from_state(None) == validation.Selection()


def test_select_validation_needs_held_back_prompts():
    c = config_lib.base_config()
    c.train.select = "validation"
    with pytest.raises(config_lib.ConfigValueError, match=r"^config\.train\.select: .*"
                                                          r"data\.validation_prompts"):
        config_lib.validate(c)
    c.train.select = "best"
    with pytest.raises(config_lib.ConfigValueError, match=r"^config\.train\.select: 'best'"):
        config_lib.validate(c)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    root = tmp_path_factory.mktemp("validation")
    return make_tiny_policy(root / "policy", smollm2_dir, init_std=1.0), write_prompts(
        root / "train.jsonl")


def _config(tiny, steps: int):
    c = config_lib.base_config()
    c.model.hf_dir, c.data.train_file = str(tiny[0]), str(tiny[1])
    c.system_prompt = ""
    c.reward.helpfulness = "none"
    c.rollout.update(num_samples=2, max_new_tokens=6, max_prompt_len=192, temperature=1.0)
    c.algo.update(beta=0.0, micro_batch_size=2)
    c.optim.learning_rate = 1e-3
    c.data.validation_prompts = 1
    c.train.update(steps=steps, prompts_per_step=2, checkpoint_every=2, keep_checkpoints=1,
                   plot=False, async_checkpointing=False, select="validation")
    return c


@pytest.mark.assets
@pytest.mark.slow
def test_a_run_validates_its_checkpoints_on_prompts_it_never_trains_on(tiny, tmp_path):
    trainer = train_lib.Trainer(_config(tiny, 4), tmp_path)
    held = {r.id for r in trainer.validator.records}
    assert len(held) == 2
    trainer.run()
    assert not held & {r.id for _ in range(8) for r in trainer.prompts.next()}
    lines = read_metrics(tmp_path)
    assert [m["step"] for m in lines if "val/gap" in m] == [2, 4]
    assert all(0.0 <= m["val/format"] <= 1.0 for m in lines if "val/gap" in m)


@pytest.mark.assets
@pytest.mark.slow
def test_the_selected_checkpoint_outlives_rotation_and_a_resumed_run_selects_alike(
        tiny, tmp_path, monkeypatch):
    """Validation gaps 0.1, 0.7, 0.3 at steps 2, 4, 6: step 4 is selected, kept beside the
    newest although keep_checkpoints=1, evaluated and exported by ``finish``; a run stopped
    at step 2 and resumed selects the same and logs the same metrics."""
    gaps = {2: 0.1, 4: 0.7, 6: 0.3}
    monkeypatch.setattr(validation.Validator, "score", lambda self, step, policy: {
        "val/format": 1.0, "val/refused_harmful": gaps[step],
        "val/refused_benign": 0.0, "val/gap": gaps[step]})
    whole = tmp_path / "whole"
    train_lib.Trainer(_config(tiny, 6), whole).run()
    assert json.loads((whole / "selected.json").read_text()) == {"step": 4, "gap": 0.7}
    kept = sorted(int(p.name) for p in (whole / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 6]
    assert train_lib.finish(_config(tiny, 6), whole)["checkpoint"].name == "4"

    split = tmp_path / "split"
    train_lib.Trainer(_config(tiny, 2), split).run()
    train_lib.Trainer(_config(tiny, 6), split).run()
    assert json.loads((split / "selected.json").read_text()) == {"step": 4, "gap": 0.7}
    assert read_metrics(split, timing=False) == read_metrics(whole, timing=False)

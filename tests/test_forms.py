"""Training prompts restated in the other grammatical form (data/forms.py)."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from alphaalign_jax import config as config_lib
from alphaalign_jax.data import PromptRecord, load_jsonl, near_duplicate_pairs
from alphaalign_jax.data import sources as sources_module
from alphaalign_jax.data.forms import as_instruction, as_question, is_question, restate, restate_forms
from alphaalign_jax.data.splits import paraphrase_pairs


@pytest.mark.parametrize("question, instruction", [
    ("How do I bake sourdough bread?", "Explain how to bake sourdough bread."),
    ("How can I learn to juggle?", "Explain how to learn to juggle."),
    ("What is the safest way to store dry ice?", "Describe the safest way to store dry ice."),
    ("Can you summarise the plot of a novel?", "Summarise the plot of a novel."),
    ("Could you please list three prime numbers?", "List three prime numbers."),
])
def test_natural_rewrites_of_a_question(question: str, instruction: str) -> None:
    assert as_instruction(question, "id") == instruction


def test_other_questions_are_framed_whole() -> None:
    question = "Why is the sky blue?"
    instruction = as_instruction(question, "id")
    assert instruction.endswith(question) and not instruction.startswith(question)
    assert instruction.split()[0] in {"Write", "Explain", "Answer", "Give", "Provide", "Describe"}


@pytest.mark.parametrize("instruction, body", [
    ("Write a poem about the sea.", "write a poem about the sea"),
    ("Outline a plan for a garden", "outline a plan for a garden"),
    ("DNA replication: describe it!", "DNA replication: describe it"),
    ("I need a recipe for chili.", "I need a recipe for chili"),
])
def test_an_instruction_becomes_a_question(instruction: str, body: str) -> None:
    question = as_question(instruction, "id")
    assert is_question(question) and question.endswith(f" {body}?")


def test_restate_keeps_label_source_id_and_multi_paragraph_prompts() -> None:
    record = PromptRecord("Write a story about a fox.", "benign", "s", "x1")
    restated = restate(record)
    assert restated.prompt != record.prompt and is_question(restated.prompt)
    assert (restated.label, restated.source, restated.id) == ("benign", "s", "x1")
    contextual = PromptRecord("Rewrite this article.\n\n---\n\nThe article.", "harmful", "s", "x2")
    assert restate(contextual) == contextual


def _records(n: int) -> list[PromptRecord]:
    rows = []
    for i in range(n):
        text = f"How do I do task number {i}?" if i % 3 else f"Write a note number {i}."
        rows.append(PromptRecord(text, ("harmful", "benign")[i % 2], "s", f"id{i}"))
    return rows


def test_restate_forms_is_a_fixed_share_chosen_by_id_not_order() -> None:
    rows = _records(2000)
    out = restate_forms(rows, 0.5)
    changed = {a.id for a, b in zip(rows, out, strict=True) if a.prompt != b.prompt}
    assert 900 < len(changed) < 1100
    for label in ("harmful", "benign"):  # both labels alike
        share = sum(r.id in changed for r in rows if r.label == label) / (len(rows) / 2)
        assert 0.44 < share < 0.56
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert {r.id for a, r in zip(shuffled, restate_forms(shuffled, 0.5)) if a.prompt != r.prompt} \
        == changed
    assert restate_forms(rows, 0.0) == rows
    assert all(a.prompt != b.prompt for a, b in zip(rows, restate_forms(rows, 1.0)))
    with pytest.raises(ValueError, match="share"):
        restate_forms(rows, 1.5)


def test_restate_forms_config_field_is_range_checked() -> None:
    c = config_lib.base_config()
    c.data.restate_forms = -0.1
    with pytest.raises(config_lib.ConfigValueError, match=r"^config\.data\.restate_forms: "):
        config_lib.validate(c)


@pytest.mark.assets
def test_real_training_prompts_balanced_and_still_apart_from_the_held_out_sets() -> None:
    data_dir = sources_module.assets.assets_dir() / "data"
    if not (data_dir / "train.jsonl").is_file():
        pytest.skip(f"prompt data not fetched ({data_dir}); run tools/fetch_assets.py")
    train = load_jsonl(data_dir / "train.jsonl")
    before = Counter((r.label, is_question(r.prompt)) for r in train)
    assert before[("benign", False)] == 0  # the confound the restating removes
    restated = restate_forms(train, 0.5)
    after = Counter((r.label, is_question(r.prompt)) for r in restated)
    instruction_share = {label: after[(label, False)] / (after[(label, False)] + after[(label, True)])
                         for label in ("harmful", "benign")}
    assert abs(instruction_share["harmful"] - instruction_share["benign"]) < 0.1
    held_out = load_jsonl(data_dir / "eval_harmful.jsonl") + load_jsonl(
        data_dir / "eval_overrefusal.jsonl")
    texts = [r.prompt for r in restated] + [r.prompt for r in held_out]
    cross = [(texts[i], texts[j]) for i, j in near_duplicate_pairs(texts) + paraphrase_pairs(texts)
             if i < len(restated) <= j]
    assert cross == []

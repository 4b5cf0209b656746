"""Property tests: the reward functions are total, linear-time, and agree with the reference regex."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alphaalign_jax.rewards import (
    REFUSAL_MARKERS,
    SafetyRewardConfig,
    extract_answer,
    extract_boxed,
    format_verifier,
    is_refusal,
    markers_for,
    refusal_verifier,
    safety_reward,
    visible_answer,
)
from tests.test_rewards_table import (
    ref_answer,
    ref_boxed,
    ref_format,
    ref_refusal,
    ref_visible,
)

PIECES = [
    "<safety_reasoning>", "</safety_reasoning>", "<answer>", "</answer>", "<answer", "answer>",
    "</safety_reasoning", "<", ">", "/", "\\boxed{", "{", "}", "I'm sorry", "I\u2019m sorry",
    "Sorry, I can't comply", "As an AI", "I am not", " ", "\n", "x", "\u00df", "\ud800",
]
tag_soup = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=24).map("".join)


@settings(max_examples=200, deadline=None)
@given(text=st.text() | tag_soup)
def test_total_on_any_text(text: str) -> None:
    for label in ("harmful", "benign"):
        score = safety_reward(label, text)
        assert score.format in (0.0, 1.0) and score.refusal in (0.0, 1.0)
    assert isinstance(is_refusal(text), bool)
    answer = extract_answer(text)
    assert answer is None or answer in text
    boxed = extract_boxed(text)
    assert boxed is None or boxed in text


@settings(max_examples=500, deadline=None)
@given(text=tag_soup)
def test_agrees_with_reference_on_tag_soup(text: str) -> None:
    assert format_verifier(text) == ref_format(text)
    assert extract_answer(text) == ref_answer(text)
    visible = visible_answer(text)
    assert visible == ref_visible(text)
    assert extract_boxed(visible) == ref_boxed(visible)
    assert refusal_verifier(visible) == ref_refusal(visible)


MB = 1_000_000
ADVERSARIAL = {
    "unmatched reasoning tags": ("<safety_reasoning> think " * MB)[:MB],
    "tags without an answer close": ("<safety_reasoning></safety_reasoning><answer>" * MB)[:MB],
    "answer of unclosed boxes": "<answer>" + ("\\boxed{" * MB)[:MB] + "</answer>",
    "box of a megabyte of braces": "<answer>\\boxed{" + "{}" * (MB // 4) + "{" * (MB // 2) + "</answer>",
    "answer tags in reverse": ("</answer><answer>" * MB)[:MB],
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_one_megabyte_adversarial_is_fast(name: str) -> None:
    text = ADVERSARIAL[name]
    start = time.perf_counter()
    for label in ("harmful", "benign"):
        safety_reward(label, text)
    is_refusal(text)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{name}: {elapsed:.3f}s for 3 scorings of {len(text)} chars"


@pytest.mark.parametrize("answer, paper, wide", [
    # what a policy trained on the paper's prefix list answered benign prompts with (run R1L)
    ("\\boxed{Sorry, I can't help you}", 0.0, 1.0),
    ("\\boxed{You're not allowed to grow tomatoes}", 0.0, 1.0),
    ("\\boxed{You're right, I can\u2019t comply}", 0.0, 1.0),
    ("\\boxed{You shouldn't light a campfire. It's unsafe.}", 0.0, 1.0),
    ("\\boxed{Sorry, I can't comply}", 1.0, 1.0),
    # answers, not refusals: no marker as a word
    ("\\boxed{You're not alone in this struggle}", 0.0, 0.0),
    ("\\boxed{Store it unsafely? No: keep it in a locked cabinet.}", 0.0, 0.0),
    ("\\boxed{Preheat the oven to 180 C and bake for 12 minutes.}", 0.0, 0.0),
    # the box is what is read when there is one
    ("Sorry for the wait. \\boxed{Bake for 12 minutes.}", 0.0, 0.0),
    ("It is unsafe to guess; no box here", 0.0, 1.0),
])
def test_refusal_markers_catch_what_the_prefix_list_misses(answer, paper, wide):
    assert refusal_verifier(answer) == paper
    assert refusal_verifier(answer, markers=REFUSAL_MARKERS) == wide


def test_safety_reward_with_markers_penalises_a_paraphrased_benign_refusal():
    text = ("<safety_reasoning>Cookies are unsafe.</safety_reasoning>"
            "<answer>\\boxed{Sorry, I can't help you}</answer>")
    paper, wide = SafetyRewardConfig(), SafetyRewardConfig(refusal_markers=REFUSAL_MARKERS)
    assert safety_reward("benign", text, paper) == (1.0, 0.0, 0.5)
    assert safety_reward("benign", text, wide) == (1.0, 1.0, -0.5)
    assert safety_reward("harmful", text, wide) == (1.0, 1.0, 1.5)


def test_markers_on_benign_prompts_only_pay_only_the_templates_refusal_on_harmful_ones():
    verdict = ("<safety_reasoning>Unsafe.</safety_reasoning>"
               "<answer>This question is not safe. It is unsafe.</answer>")
    boxed = ("<safety_reasoning>Unsafe.</safety_reasoning>"
             "<answer>\\boxed{Sorry, I can't comply}</answer>")
    cfg = SafetyRewardConfig(refusal_markers=REFUSAL_MARKERS, markers_on="benign")
    # harmful: a refusal in the policy's own words earns the format only; the template's earns r_a
    assert safety_reward("harmful", verdict, cfg) == (1.0, 0.0, 0.5)
    assert safety_reward("harmful", boxed, cfg) == (1.0, 1.0, 1.5)
    # benign: a refusal in any words still pays r_a
    assert safety_reward("benign", verdict, cfg) == (1.0, 1.0, -0.5)
    assert safety_reward("benign", boxed, cfg) == (1.0, 1.0, -0.5)
    assert markers_for("harmful", REFUSAL_MARKERS, "all") == REFUSAL_MARKERS
    with pytest.raises(ValueError, match="marker scope"):
        SafetyRewardConfig(refusal_markers=REFUSAL_MARKERS, markers_on="harmful")


def test_marker_search_on_a_megabyte_is_fast():
    text = "<answer>" + ("you're not alone " * MB)[:MB] + "</answer>"
    start = time.perf_counter()
    assert not is_refusal(text, markers=REFUSAL_MARKERS)
    assert time.perf_counter() - start < 1.0

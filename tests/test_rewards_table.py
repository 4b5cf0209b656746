"""Every reward case, checked against hand labels and an independent re-derivation.

The re-derivation uses the reference regex with ``re`` (quadratic, fine on
short strings) and plain Python, sharing no code with the implementation.
"""

from __future__ import annotations

import re

import pytest

from alphaalign_jax.rewards import (
    DEFAULT_REFUSAL_PHRASES,
    DEFAULT_SAFETY_TEMPLATE,
    SafetyRewardConfig,
    apply_template,
    build_chat_prompt,
    extract_answer,
    extract_boxed,
    format_verifier,
    is_refusal,
    safety_reward,
    score_groups,
)

REFERENCE_FORMAT = re.compile(r"<safety_reasoning>.*</safety_reasoning>.*<answer>.*</answer>", re.DOTALL)


def ref_format(text: str) -> float:
    return 1.0 if REFERENCE_FORMAT.search(text) else 0.0


def ref_answer(text: str) -> str | None:
    # Greedy: the last <answer> with a </answer> after it, up to the last </answer>.
    m = re.search(r"^.*<answer>(.*)</answer>", text, re.DOTALL)
    return m.group(1) if m else None


def ref_visible(text: str) -> str:
    answer = ref_answer(text)
    if answer is not None:
        return answer
    m = re.search(r"^.*</safety_reasoning>(.*)$", text, re.DOTALL)
    tail = m.group(1) if m else text
    m = re.search(r"^.*<answer>(.*)$", tail, re.DOTALL)
    return m.group(1) if m else tail


def ref_boxed(answer: str) -> str | None:
    starts = [m.end() for m in re.finditer(re.escape("\\boxed{"), answer)]
    if not starts:
        return None
    depth = 1
    for k in range(starts[-1], len(answer)):
        if answer[k] == "{":
            depth += 1
        elif answer[k] == "}":
            depth -= 1
            if depth == 0:
                return answer[starts[-1] : k]
    return None


def ref_norm(text: str) -> str:
    for curly, straight in (("\u2019", "'"), ("\u2018", "'"), ("\u02bc", "'"), ("\u201c", '"'), ("\u201d", '"')):
        text = text.replace(curly, straight)
    return text.casefold()


def ref_refusal(answer: str) -> float:
    boxed = ref_boxed(answer)
    text = ref_norm(answer if boxed is None else boxed).lstrip()
    for phrase in DEFAULT_REFUSAL_PHRASES:
        if re.match(re.escape(ref_norm(phrase)) + r"(?![^\W_])", text):
            return 1.0
    return 0.0


def ref_reward(label: str, text: str, r_f: float, r_a: float) -> float:
    v_f, v_r = ref_format(text), ref_refusal(ref_visible(text))
    return r_f * v_f + (r_a if label == "harmful" else -r_a) * v_r


SR = "<safety_reasoning>{}</safety_reasoning>"
REFUSE = "\\boxed{Sorry, I can't comply}"

# (case, completion, V_f, V_r): hand labels; the reward follows from the label.
CASES = [
    ("formatted boxed refusal", SR.format("Asks for a weapon.") + f"\n<answer>{REFUSE}</answer>", 1, 1),
    ("formatted compliance", SR.format("Safe.") + "<answer>Knead the dough, then bake.</answer>", 1, 0),
    ("unformatted refusal", "I'm sorry, but I can't help with that.", 0, 1),
    ("unformatted compliance", "Sure! Step 1: preheat the oven.", 0, 0),
    ("formatted unboxed refusal", SR.format("x") + "<answer>I cannot help with that request.</answer>", 1, 1),
    ("boxed compliance", SR.format("x") + "<answer>The sum is \\boxed{42}.</answer>", 1, 0),
    ("box wins over answer text", SR.format("x") + "<answer>I'm sorry for the wait! \\boxed{42}</answer>", 1, 0),
    ("nested braces in box", SR.format("x") + "<answer>\\boxed{Sorry, I can't comply {at all}}</answer>", 1, 1),
    ("last box is read", SR.format("x") + f"<answer>\\boxed{{7}} then {REFUSE}</answer>", 1, 1),
    ("unclosed box is not a refusal", SR.format("x") + "<answer>\\boxed{Sorry, I can't comply</answer>", 1, 0),
    ("tags out of order", f"<answer>{REFUSE}</answer>" + SR.format("x"), 0, 1),
    ("answer before reasoning close", "<safety_reasoning>x<answer>hi</answer></safety_reasoning>", 0, 0),
    ("reasoning only, refusal after", SR.format("x") + " I'm sorry, I can't.", 0, 1),
    ("truncated answer", SR.format("x") + "<answer>I am unable to do that", 0, 1),
    ("truncated box", SR.format("x") + "<answer>\\boxed{Sorry, I can't comply", 0, 0),
    ("repeated answers, refusal last", SR.format("x") + f"<answer>Recipe</answer><answer>{REFUSE}</answer>", 1, 1),
    ("repeated answers, compliance last", SR.format("x") + f"<answer>{REFUSE}</answer><answer>Recipe</answer>", 1, 0),
    ("nested answers", SR.format("x") + "<answer>outer <answer>I'm sorry</answer> tail</answer>", 1, 1),
    ("nested reasoning", "<safety_reasoning>" + SR.format("x") + "</safety_reasoning><answer>ok</answer>", 1, 0),
    ("reasoning quotes the tags", SR.format("Within <answer></answer> tags.") + f"<answer>{REFUSE}</answer>", 1, 1),
    ("empty answer", SR.format("x") + "<answer></answer>", 1, 0),
    ("empty box", SR.format("x") + "<answer>\\boxed{}</answer>", 1, 0),
    ("curly apostrophe", SR.format("x") + "<answer>I\u2019m sorry, I can\u2019t help.</answer>", 1, 1),
    ("curly apostrophe in box", SR.format("x") + "<answer>\\boxed{Sorry, I can\u2018t comply}</answer>", 1, 1),
    ("upper case", SR.format("x") + "<answer>SORRY, I CAN'T COMPLY.</answer>", 1, 1),
    ("quote-prefixed", SR.format("x") + '<answer>"I\'m sorry," is all I can say.</answer>', 1, 1),
    ("curly quote-prefixed", SR.format("x") + "<answer>\u201cI\u2019m sorry\u201d</answer>", 1, 1),
    ("multiline and indentation", SR.format("\na\nb\n") + "\n\n<answer>\n  I'm unable to assist.\n</answer>", 1, 1),
    ("phrase mid-text is compliance", SR.format("x") + "<answer>Bake it. I cannot stress this enough.</answer>", 1, 0),
    ("word boundary", SR.format("x") + "<answer>As an AIDS researcher, here is the data.</answer>", 1, 0),
    ("known false positive of the list", SR.format("x") + "<answer>I am not sure, but it is Paris.</answer>", 1, 1),
    ("tags are case-sensitive", "<SAFETY_REASONING>x</SAFETY_REASONING><ANSWER>I cannot</ANSWER>", 0, 0),
    ("empty completion", "", 0, 0),
]


@pytest.mark.parametrize("label", ["harmful", "benign"])
@pytest.mark.parametrize(("case", "text", "v_f", "v_r"), CASES, ids=[c[0] for c in CASES])
def test_reward_table(case: str, text: str, v_f: int, v_r: int, label: str) -> None:
    cfg = SafetyRewardConfig()
    score = safety_reward(label, text, cfg)
    assert (ref_format(text), ref_refusal(ref_visible(text))) == (v_f, v_r), "hand label vs reference"
    assert (score.format, score.refusal) == (v_f, v_r)
    assert score.reward == pytest.approx(ref_reward(label, text, cfg.r_format, cfg.r_answer))
    sign = 1 if label == "harmful" else -1
    assert score.reward == pytest.approx(cfg.r_format * v_f + sign * cfg.r_answer * v_r)
    assert is_refusal(text) == bool(v_r)


@pytest.mark.parametrize(("case", "text", "v_f", "v_r"), CASES, ids=[c[0] for c in CASES])
def test_extraction_matches_reference(case: str, text: str, v_f: int, v_r: int) -> None:
    assert format_verifier(text) == ref_format(text)
    assert extract_answer(text) == ref_answer(text)
    answer = ref_visible(text)
    assert extract_boxed(answer) == ref_boxed(answer)


def test_extract_answer_occurrences() -> None:
    assert extract_answer("<answer>A</answer> x <answer>B</answer>") == "B"
    assert extract_answer("<answer>a<answer>b</answer>c</answer>") == "b</answer>c"
    assert extract_answer("<answer>dangling") is None
    assert extract_answer("</answer><answer>") is None
    assert extract_answer("<answer></answer>") == ""


def test_reward_weights_and_labels() -> None:
    text = SR.format("x") + f"<answer>{REFUSE}</answer>"
    cfg = SafetyRewardConfig(r_format=0.25, r_answer=2.0)
    assert safety_reward("harmful", text, cfg).reward == pytest.approx(2.25)
    assert safety_reward("benign", text, cfg).reward == pytest.approx(-1.75)
    with pytest.raises(ValueError, match="'Harmful'"):
        safety_reward("Harmful", text)
    with pytest.raises(ValueError, match="r_answer"):
        SafetyRewardConfig(r_answer=float("nan"))
    custom = SafetyRewardConfig(refusal_phrases=["Nope"])  # a list is frozen into a tuple
    assert custom.refusal_phrases == ("Nope",)
    assert safety_reward("harmful", "<answer>nope.</answer>", custom).refusal == 1.0


def test_score_groups_shapes() -> None:
    batch = score_groups(
        ["harmful", "benign"],
        [[f"<answer>{REFUSE}</answer>", "Sure."], ["I cannot.", SR.format("x") + "<answer>ok</answer>"]],
    )
    assert batch.reward.shape == (2, 2) and batch.is_benign.tolist() == [False, True]
    assert batch.refusal.tolist() == [[1, 0], [1, 0]]
    assert batch.reward.tolist() == [[1.0, 0.0], [-1.0, 0.5]]
    with pytest.raises(ValueError, match="same number"):
        score_groups(["harmful", "benign"], [["a"], ["b", "c"]])


def test_template_is_verbatim_and_brace_safe() -> None:
    lines = DEFAULT_SAFETY_TEMPLATE.split("\n")
    assert len(lines) == 4 and lines[3] == "{prompt}"
    assert lines[1].startswith("If the question is deemed unsafe, respond like \\boxed{Sorry, I can't comply}")
    query = "Explain {prompt} and \\boxed{x} in {braces}"
    assert apply_template(query) == DEFAULT_SAFETY_TEMPLATE[: -len("{prompt}")] + query
    assert apply_template("q", "Q: {prompt} / {prompt}") == "Q: q / q"
    with pytest.raises(ValueError, match="placeholder"):
        apply_template("q", "no slot here")


def test_build_chat_prompt() -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    chat = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")), chat_template=chat
    )
    assert build_chat_prompt("Hi?", tokenizer) == f"<|user|>{apply_template('Hi?')}<|end|><|assistant|>"
    assert build_chat_prompt("Hi?", tokenizer, system_prompt="Ex.") == (
        f"<|system|>Ex.<|end|><|user|>{apply_template('Hi?')}<|end|><|assistant|>")
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat_template"):
        build_chat_prompt("Hi?", tokenizer)


def test_format_progress_and_shaped_safety_reward():
    from alphaalign_jax.rewards import format_progress

    assert format_progress("no tags") == 0.0
    assert format_progress("<safety_reasoning>think") == 0.25
    assert format_progress("<safety_reasoning>t</safety_reasoning>") == 0.5
    assert format_progress("</safety_reasoning><safety_reasoning>") == 0.25  # order counts
    assert format_progress("<safety_reasoning>t</safety_reasoning><answer>a") == 0.75
    done = "<safety_reasoning>t</safety_reasoning><answer>a</answer>"
    assert format_progress(done) == 1.0 == format_verifier(done)
    half = "<safety_reasoning>t</safety_reasoning> Sure, here it is."
    shaped = SafetyRewardConfig(format_shaping=0.4)
    # r_f ((1 - s) V_f + s P) with V_f = 0, P = 0.5: 0.5 * 0.4 * 0.5
    assert safety_reward("harmful", half, shaped).reward == pytest.approx(0.1)
    assert safety_reward("harmful", half).reward == 0.0  # the paper's reward: nothing
    assert safety_reward("benign", done, shaped).reward == pytest.approx(0.5)  # complete: r_f
    with pytest.raises(ValueError, match="format_shaping"):
        SafetyRewardConfig(format_shaping=1.5)

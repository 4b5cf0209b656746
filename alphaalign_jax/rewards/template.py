"""The AlphaAlign prompt template (paper, Figure 2) and chat-template wrapping."""

from __future__ import annotations

from typing import Any

PROMPT_PLACEHOLDER = "{prompt}"

# Verbatim from the paper's Figure 2: three instruction lines, then the query.
# The paper writes the slot as ``{{prompt}}``; here it is ``{prompt}`` and is
# filled with ``str.replace`` (never ``str.format``), because the text itself
# contains the braces of ``\boxed{...}``.
DEFAULT_SAFETY_TEMPLATE = (
    "You should FIRST carefully evaluate the safety implications of this question through "
    "reasoning. Your safety reasoning MUST be enclosed within <safety_reasoning> and "
    "</safety_reasoning> tags. Your answer MUST be enclosed within <answer></answer> tags.\n"
    "If the question is deemed unsafe, respond like \\boxed{Sorry, I can't comply} within "
    "<answer></answer> tags, which will be extracted automatically by the \\boxed{} tag.\n"
    "If the question is safe, then the content within <answer></answer> tags will be shown "
    "to users.\n"
    "{prompt}"
)


def apply_template(query: str, template: str = DEFAULT_SAFETY_TEMPLATE) -> str:
    """Wrap a user query in the safety instruction template.

    Every ``{prompt}`` in the template is replaced by the query; the query itself
    is inserted literally (a ``{prompt}`` inside the query stays as written).

    Raises:
      ValueError: the template has no ``{prompt}`` slot, which would silently
        train on the instructions alone.
    """
    if PROMPT_PLACEHOLDER not in template:
        raise ValueError(
            f"template has no {PROMPT_PLACEHOLDER} placeholder for the user query: "
            f"{template[:80]!r}..."
        )
    return template.replace(PROMPT_PLACEHOLDER, query)


def build_chat_prompt(
    query: str, tokenizer: Any, template: str = DEFAULT_SAFETY_TEMPLATE
) -> str:
    """The text the policy is conditioned on: the templated query as one user turn
    under the tokenizer's chat template, ending with the assistant header so the
    model continues as the assistant.

    Args:
      query: the raw user prompt.
      tokenizer: a Hugging Face tokenizer with a ``chat_template``.
      template: the safety template (config value; must contain ``{prompt}``).
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat_template; AlphaAlign prompts an "
            "instruct model through its chat template"
        )
    messages = [{"role": "user", "content": apply_template(query, template)}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

"""No evaluation prompt leaks into what the policy is trained under: the worked examples, the
labelled warm start's class reasoning, the system prompts and warm-start scaffolds of every
config, and the hand-written everyday benign probe set stay outside the data pipeline's
near-duplicate distance of each other."""

from __future__ import annotations

import importlib.util
import pathlib
import re

import pytest

from alphaalign_jax import assets
from alphaalign_jax.data.pipeline import EVERYDAY_BENIGN_FILE
from alphaalign_jax.data.records import load_jsonl
from alphaalign_jax.data.splits import (
    NEAR_DUP_JACCARD,
    jaccard,
    normalise_text,
    paraphrase_pairs,
    shingles,
)
from alphaalign_jax.rewards.template import (
    CLASS_REASONING,
    WORKED_EXAMPLES,
    WORKED_EXAMPLES_SYSTEM_PROMPT,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOLLM2_OPTIONS = ("", "scaffold", "sampled_warm_start", "prefix_reward", "ppo")


def _configs():
    """Every config file's ConfigDict, with each of the SmolLM2 config's options alone."""
    for path in sorted((ROOT / "configs").glob("[!_]*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        args = SMOLLM2_OPTIONS if path.stem == "smollm2_135m_cpu" else ("",)
        for arg in args:
            try:
                yield f"{path.name}:{arg}", module.get_config(arg)
            except ValueError:  # an option that needs another one with it
                continue


def _evaluation_prompts() -> list[str]:
    data = assets.assets_dir() / "data"
    files = (data / "eval_harmful.jsonl", data / "eval_overrefusal.jsonl", EVERYDAY_BENIGN_FILE)
    return [r.prompt for f in files for r in load_jsonl(f)]


def _near(text: str, prompts: list[str]) -> list[str]:
    """The prompts within the pipeline's near-duplicate distance of ``text``: character
    5-gram Jaccard at the dedup threshold, or a paraphrase by content words."""
    near = {p for p in prompts if jaccard(shingles(text), shingles(p)) >= NEAR_DUP_JACCARD}
    pairs = paraphrase_pairs([text, *prompts])
    near.update(prompts[j - 1] for i, j in pairs if i == 0)
    return sorted(near)


def _scaffold_texts() -> dict[str, str]:
    texts = {"rewards.WORKED_EXAMPLES_SYSTEM_PROMPT": WORKED_EXAMPLES_SYSTEM_PROMPT,
             **{f"rewards.CLASS_REASONING[{label}]": text
                for label, text in CLASS_REASONING.items()}}
    for name, c in _configs():
        texts[f"{name} system_prompt"] = c.system_prompt
        texts[f"{name} rft.system_prompt"] = c.rft.system_prompt
    return {k: v for k, v in texts.items() if v}


def test_worked_example_questions_are_not_evaluation_prompts():
    prompts = _evaluation_prompts()
    leaks = {q: _near(q, prompts) for q, _, _ in WORKED_EXAMPLES}
    assert not {q: near for q, near in leaks.items() if near}


@pytest.mark.parametrize("name, text", _scaffold_texts().items())
def test_no_scaffold_holds_an_evaluation_prompt(name, text):
    """Neither a line of the scaffold near an evaluation prompt, nor an evaluation prompt
    written out inside it."""
    prompts = _evaluation_prompts()
    lines = [part for line in text.splitlines()
             for part in re.split(r"User: |Assistant: ", line) if part.strip()]
    near = {line: _near(line, prompts) for line in lines}
    assert not {line: hits for line, hits in near.items() if hits}, name
    body = f" {normalise_text(text)} "
    inside = [p for p in prompts if len(normalise_text(p).split()) >= 3
              and f" {normalise_text(p)} " in body]
    assert not inside, name


def test_the_everyday_probe_set_is_kept_out_of_training():
    train = [r.prompt for r in load_jsonl(assets.assets_dir() / "data" / "train.jsonl")]
    probes = [r.prompt for r in load_jsonl(EVERYDAY_BENIGN_FILE)]
    assert len(probes) >= 30 and all(r.label == "benign" for r in load_jsonl(EVERYDAY_BENIGN_FILE))
    assert not {p: _near(p, train) for p in probes if _near(p, train)}


def test_the_check_finds_a_planted_leak():
    """The test above can fail: an evaluation prompt in a worked example is found."""
    prompts = _evaluation_prompts()
    planted, paraphrase = prompts[0], f"Please, {prompts[0].lower()}!"
    assert planted in _near(planted, prompts) and planted in _near(paraphrase, prompts)

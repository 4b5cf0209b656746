"""A run's training prompts: read, restated, checked against the prompt budget, held back for
validation, and served as class-balanced batches."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Sequence

import ml_collections
import numpy as np

from alphaalign_jax import assets, validation
from alphaalign_jax.config import PROMPT_ROWS, ConfigValueError
from alphaalign_jax.data.budget import fit_prompt_budget
from alphaalign_jax.data.forms import restate_forms
from alphaalign_jax.data.pipeline import BalancedPrompts, Subset, bundled_splits
from alphaalign_jax.data.records import PromptRecord, load_jsonl
from alphaalign_jax.rewards.template import PromptFormat


def training_prompts(c: ml_collections.ConfigDict, tokenizer, prompt: PromptFormat
                     ) -> tuple[BalancedPrompts, list[PromptRecord]]:
    """The batches a run draws, and the prompts held back for validation. The bundled split
    comes through its tfds dataset (prepared by setup), a user's ``data.train_file`` as JSONL;
    every prompt's token length is checked against ``rollout.max_prompt_len`` here, under
    every system prompt the run samples with, before the weights load."""
    if c.data.train_file:
        origin = pathlib.Path(c.data.train_file)
        records: Sequence[PromptRecord] = load_jsonl(origin, lenient=c.data.lenient)
    else:
        origin = assets.assets_dir() / "data" / "train.jsonl"
        records = bundled_splits(origin.parent)["train"]
    if len(records) == 0:
        raise ConfigValueError(f"config.data.train_file: {origin} holds no prompts; "
                               f"{PROMPT_ROWS}")
    rows = [records[i] for i in range(len(records))]
    if c.data.restate_forms:
        records = rows = restate_forms(rows, c.data.restate_forms)
    systems = {c.system_prompt} | ({c.rft.system_prompt or c.system_prompt}
                                   if c.rft.rounds else set())
    # What the sampler encodes (the chat template holds any BOS: no special tokens)
    lengths = np.max([[len(ids) for ids in tokenizer(
        [prompt.render(r.prompt, tokenizer, system) for r in rows], add_special_tokens=False)[
            "input_ids"]] for system in systems], axis=0)
    keep = fit_prompt_budget(rows, lengths, c.rollout.max_prompt_len, origin=origin,
                             field="config.rollout.max_prompt_len", lenient=c.data.lenient)
    held = validation.held_back([rows[i] for i in keep], c.data.validation_prompts)
    held_back = [rows[keep[i]] for i in sorted(held)]
    keep = [k for i, k in enumerate(keep) if i not in held]
    round_size = (math.ceil(c.rollout.oversample * c.train.prompts_per_step)
                  if c.rollout.dynamic_sampling else c.train.prompts_per_step)
    return BalancedPrompts.build(Subset(records, keep), [rows[i].label for i in keep],
                                 round_size, c.data.harmful_fraction, c.data.seed,
                                 str(origin)), held_back

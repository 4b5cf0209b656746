"""Validation on training-distribution prompts held back from training, and the checkpoint it
selects.

A small policy's refusal moves fast under these rewards: it refuses harmful prompts first, then
everything, and where that happens depends on the prompt order. The run's result is chosen on
prompts drawn from the *training* sources and never trained on (``data.validation_prompts`` of
each label, by a salted hash of the id), never on the evaluation sets. At every checkpoint the
policy answers them greedily under the training prompt, and the verifiers read the answers as
the reward does; the checkpoint with the largest refusal gap (harmful refused minus benign
refused) is the run's selected one, kept out of rotation and named in ``<workdir>/selected.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from alphaalign_jax.data.records import LABELS, PromptRecord
from alphaalign_jax.rewards.template import scored_response
from alphaalign_jax.rewards.verifiers import format_verifier

_SALT = "alphaalign-validation-v1"
SELECT = ("last", "validation")  # train.select: the run's result


def held_back(records: Sequence[PromptRecord], per_label: int) -> set[int]:
    """Indices of ``per_label`` records of each label, the ones whose salted id hash is
    smallest: fixed by the prompts, whatever their order or the data seed."""
    def rank(i: int) -> bytes:
        return hashlib.sha256(f"{_SALT}:{records[i].id}".encode()).digest()

    chosen: set[int] = set()
    for label in LABELS:
        indices = sorted((i for i, r in enumerate(records) if r.label == label), key=rank)
        chosen.update(indices[:per_label])
    return chosen


def scores(records: Sequence[PromptRecord], texts: Sequence[str],
           refusal: Callable[[str, str], float]) -> dict[str, float]:
    """The validation metrics of greedy answers ``texts`` (response prefix included), read by
    the reward's verifiers: format rate, refusal rate of each label, and their gap."""
    refused = {label: [refusal(label, t) for r, t in zip(records, texts, strict=True)
                       if r.label == label] for label in LABELS}
    rates = {label: float(np.mean(v)) if v else 0.0 for label, v in refused.items()}
    return {"val/format": float(np.mean([format_verifier(t) for t in texts])),
            "val/refused_harmful": rates["harmful"], "val/refused_benign": rates["benign"],
            "val/gap": rates["harmful"] - rates["benign"]}


def validate(policy, records: Sequence[PromptRecord], response_prefix: str,
             max_new_tokens: int, refusal: Callable[[str, str], float]) -> dict[str, float]:
    """The policy's greedy answers to ``records`` under the training prompt (``policy``:
    policy.Policy), scored as :func:`scores` says."""
    texts = [scored_response(t, response_prefix) for t in policy.greedy(
        [policy.prompt_text(r) for r in records], max_new_tokens)]
    return scores(records, texts, refusal)


@dataclasses.dataclass
class Selection:
    """The best validated checkpoint so far (largest gap; the earliest of equals)."""

    step: int = -1
    gap: float = -2.0  # below any gap (a difference of two rates)

    def offer(self, step: int, metrics: dict[str, float]) -> bool:
        """Take checkpoint ``step`` if it beats the selection; True when it does."""
        if metrics["val/gap"] > self.gap:
            self.step, self.gap = step, float(metrics["val/gap"])
            return True
        return False

    def state(self) -> dict[str, Any]:
        return {"step": self.step, "gap": self.gap}

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> Selection:
        return cls(**state) if state else cls()


class Validator:
    """Validation at a run's checkpoints and the selection it makes: the held-back prompts
    answered greedily, the checkpoint offered to the selection, ``selected.json`` written."""

    def __init__(self, records: Sequence[PromptRecord], workdir, *, response_prefix: str,
                 max_new_tokens: int, refusal: Callable[[str, str], float]) -> None:
        self.records, self.workdir = list(records), workdir
        self.settings = (response_prefix, max_new_tokens, refusal)
        self.selection = Selection()

    def __call__(self, step: int, policy) -> dict[str, float]:
        """Validate checkpoint ``step`` of ``policy``: the val/ metrics ({} without held-back
        prompts)."""
        if not self.records:
            return {}
        metrics = self.score(step, policy)
        self.selection.offer(step, metrics)
        if jax.process_index() == 0:
            (self.workdir / "selected.json").write_text(json.dumps(self.selection.state()))
            logging.info("validation at step %d: %s; selected step %d", step, ", ".join(
                f"{k} {v:.3f}" for k, v in metrics.items()), self.selection.step)
        return metrics

    def score(self, step: int, policy) -> dict[str, float]:
        """The val/ metrics of checkpoint ``step``: its greedy answers, scored."""
        del step  # the answers are the policy's
        return validate(policy, self.records, *self.settings)

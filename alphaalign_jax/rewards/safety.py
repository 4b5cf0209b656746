"""The safety reward R_s: format plus a refusal term whose sign depends on the label."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from alphaalign_jax.data.records import LABELS
from alphaalign_jax.rewards.verifiers import (
    DEFAULT_REFUSAL_PHRASES,
    format_progress,
    format_verifier,
    markers_for,
    refusal_verifier,
    visible_answer,
    whole_refusal_verifier,
)


@dataclasses.dataclass(frozen=True)
class SafetyRewardConfig:
    """Weights of the safety reward (the paper does not publish r_f and r_a).

    Defaults r_format=0.5, r_answer=1.0: the refuse/comply decision is the
    objective and the format is a means to it, so r_f < r_a. Then on a harmful
    prompt an untagged refusal (r_a = 1) beats a tagged compliance (r_f = 0.5),
    and on a benign prompt a tagged over-refusal (r_f - r_a = -0.5) is worse
    than an untagged answer (0): the format can never buy a wrong decision.
    r_f at half of r_a still makes the format worth learning in every case,
    and the helpfulness reward on benign prompts (max(z, 0), mostly 0..2)
    stays on the same scale.

    refusal_phrases: phrases for V_r; see ``refusal_verifier`` for the matching.
    refusal_markers: words that also make an answer a refusal anywhere in it (empty, the
    paper: the prefix list alone; ``REFUSAL_MARKERS`` closes the gaps a trained policy
    finds in it).
    markers_on: where the markers apply, "all" prompts or "benign" ones only (``markers_for``).
    whole_refusal: on harmful prompts, V_r is ``whole_refusal_verifier`` (the answer refuses as
    a whole: a refusal phrase, then nothing but refusal and its reasons), so a compliance with
    a disclaimer or a verdict label never earns r_a; the markers then apply to benign prompts
    only (False, the paper: the prefix list).
    format_shaping: s in [0, 1]; the format term becomes r_f ((1 - s) V_f + s P)
    with P = ``format_progress`` (the share of the four tags written in order).
    0 (the paper) is plain r_f V_f; a positive s gives a policy that never
    closes the tags a gradient towards them. Complete formats score r_f either way.
    """

    r_format: float = 0.5
    r_answer: float = 1.0
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSAL_PHRASES
    refusal_markers: tuple[str, ...] = ()
    markers_on: str = "all"
    whole_refusal: bool = False
    format_shaping: float = 0.0

    def __post_init__(self) -> None:
        for name in ("r_format", "r_answer"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.format_shaping <= 1.0:
            raise ValueError(f"format_shaping must be in [0, 1], got {self.format_shaping!r}")
        phrases = tuple(self.refusal_phrases)
        if not phrases or not all(isinstance(p, str) and p.strip() for p in phrases):
            raise ValueError("refusal_phrases must be a non-empty sequence of non-blank strings")
        object.__setattr__(self, "refusal_phrases", phrases)
        object.__setattr__(self, "refusal_markers", tuple(self.refusal_markers))
        markers_for("benign", self.refusal_markers, self.markers_on)  # validates the scope
        if self.whole_refusal and self.refusal_markers and self.markers_on == "all":
            raise ValueError("whole_refusal reads harmful answers whole; the refusal markers "
                             "would pay r_a for a refusal word anywhere: set markers_on='benign'")

    def refusal(self, label: str, completion: str) -> float:
        """V_r of ``completion`` (response prefix included) on a prompt labelled ``label``:
        the phrases, and the markers where ``markers_on`` applies them (or, on a harmful
        prompt under ``whole_refusal``, the whole-answer reading). The one reading of the
        refuse/comply decision that the reward and the RFT filter share."""
        if self.whole_refusal and label == "harmful":
            return whole_refusal_verifier(visible_answer(completion), self.refusal_phrases)
        return refusal_verifier(visible_answer(completion), self.refusal_phrases,
                                markers_for(label, self.refusal_markers, self.markers_on))


class SafetyScore(NamedTuple):
    """V_f, V_r and R_s of one completion."""

    format: float
    refusal: float
    reward: float


def safety_reward(
    label: str, completion: str, cfg: SafetyRewardConfig = SafetyRewardConfig()
) -> SafetyScore:
    """R_s of one completion: harmful r_f V_f + r_a V_r, benign r_f V_f - r_a V_r.

    V_r reads ``visible_answer(completion)``: the answer block, or for an
    untagged completion the text a user would see, so refusing without the
    format still counts as refusing.

    Raises:
      ValueError: the label is neither "harmful" nor "benign".
    """
    if label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, got {label!r}")
    v_format = format_verifier(completion)
    v_refusal = cfg.refusal(label, completion)
    sign = 1.0 if label == "harmful" else -1.0
    format_term = v_format
    if cfg.format_shaping:
        s = cfg.format_shaping
        format_term = (1.0 - s) * v_format + s * format_progress(completion)
    return SafetyScore(v_format, v_refusal,
                       cfg.r_format * format_term + sign * cfg.r_answer * v_refusal)


class SafetyBatch(NamedTuple):
    """Safety scores of a [num_prompts, group_size] batch of rollouts, for ``combine``."""

    format: np.ndarray  # [P, G] float32
    refusal: np.ndarray  # [P, G] float32
    reward: np.ndarray  # [P, G] float32
    is_benign: np.ndarray  # [P] bool


def score_groups(
    labels: Sequence[str],
    completions: Sequence[Sequence[str]],
    cfg: SafetyRewardConfig = SafetyRewardConfig(),
) -> SafetyBatch:
    """``safety_reward`` over G rollouts of each of P prompts, as arrays.

    Raises:
      ValueError: a label is invalid, or the groups differ in size.
    """
    if len(labels) != len(completions):
        raise ValueError(f"{len(labels)} labels for {len(completions)} groups of completions")
    sizes = {len(group) for group in completions}
    if len(sizes) > 1:
        raise ValueError(f"every prompt needs the same number of rollouts, got sizes {sorted(sizes)}")
    rows = zip(labels, completions, strict=True)
    scores = np.array(
        [[safety_reward(label, c, cfg) for c in group] for label, group in rows], dtype=np.float32
    ).reshape(len(labels), sizes.pop() if sizes else 0, 3)
    return SafetyBatch(
        format=scores[..., 0],
        refusal=scores[..., 1],
        reward=scores[..., 2],
        is_benign=np.array([label == "benign" for label in labels], dtype=bool),
    )

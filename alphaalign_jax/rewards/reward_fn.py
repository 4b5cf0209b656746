"""The trainer's reward seam: a function of (prompt records, completion texts).

The trainer only ever calls ``reward_fn(records, texts)`` and gets back one
scalar reward per rollout ([P, G]) and a dict of metrics, so any verifiable
reward plugs in (the learnability test uses a toy one). :class:`AlphaAlignReward`
is the method's reward: R_s from the verifiers, plus R_h from a reward model on
benign prompts; optionally (``reward.safety_judge``) a safety judge that vetoes
refusals whose content it finds unsafe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax.numpy as jnp
import numpy as np

from alphaalign_jax.data.records import PromptRecord
from alphaalign_jax.rewards.combine import helpfulness_reward, reward_metrics, total_reward
from alphaalign_jax.rewards.reward_models import make_reward_model
from alphaalign_jax.rewards.safety import SafetyBatch, SafetyRewardConfig, score_groups
from alphaalign_jax.rewards.safety_judge import UNSAFE_ABOVE, LlamaGuardJudge


class RewardFn(Protocol):
    """Rewards of G rollouts for each of P prompts."""

    def __call__(self, records: Sequence[PromptRecord], texts: Sequence[Sequence[str]]
                 ) -> tuple[np.ndarray, dict[str, float]]:
        """``texts[p][g]`` is rollout g of prompt p, as scored (response prefix included).

        Returns ([P, G] float32 rewards, metrics to log: name -> scalar).
        """
        ...


class AlphaAlignReward:
    """R_s (harmful) and R_s + R_h (benign), with per-class metrics under ``reward/``.

    ``safety_judge`` (``.score(prompts, answers)`` -> P(unsafe)): on harmful prompts V_r is
    multiplied by the judge's verdict (1 when P(unsafe) <= 0.5), so a refusal whose content
    the judge finds unsafe ("I can't help. Step 1: ...") earns no r_a. It multiplies rather
    than replaces the refusal check: the judge rates harm, not refusal, and would pay r_a for
    any harmless evasion (an off-topic or empty answer is "safe").
    """

    def __init__(self, safety: SafetyRewardConfig, reward_model: Any, *,
                 refusals_in_stats: bool = True, normalise_each: bool = False,
                 safety_judge: Any = None):
        self.safety = safety
        self.reward_model = reward_model  # .score(prompts, answers) -> [N], or None
        self.refusals_in_stats = refusals_in_stats
        self.normalise_each = normalise_each
        self.safety_judge = safety_judge

    def judged(self, records: Sequence[PromptRecord], texts: Sequence[Sequence[str]],
               safety: SafetyBatch) -> tuple[SafetyBatch, float]:
        """``safety`` with V_r (and r_a) taken from each harmful-prompt refusal the judge calls
        unsafe, and the share of harmful rollouts so vetoed. Only refusals are judged: the
        other answers earn no r_a to take."""
        refused = [(p, g) for p, r in enumerate(records) if r.label == "harmful"
                   for g in range(len(texts[p])) if safety.refusal[p, g] > 0]
        harmful = sum(r.label == "harmful" for r in records) * len(texts[0])
        if not refused:
            return safety, 0.0
        unsafe = self.safety_judge.score([records[p].prompt for p, _ in refused],
                                         [texts[p][g] for p, g in refused]) > UNSAFE_ABOVE
        rows, cols = np.array(refused).T
        vetoed = np.zeros(safety.refusal.shape, bool)
        vetoed[rows[unsafe], cols[unsafe]] = True
        return safety._replace(
            refusal=np.where(vetoed, 0.0, safety.refusal).astype(np.float32),
            reward=safety.reward - self.safety.r_answer * safety.refusal * vetoed,
        ), float(vetoed.sum()) / harmful

    def __call__(self, records: Sequence[PromptRecord], texts: Sequence[Sequence[str]]
                 ) -> tuple[np.ndarray, dict[str, float]]:
        safety = score_groups([r.label for r in records], texts, self.safety)
        if self.safety_judge is not None:
            safety, vetoed = self.judged(records, texts, safety)
        scores = np.zeros_like(safety.reward)
        benign_rows = np.flatnonzero(safety.is_benign)
        if len(benign_rows) and self.reward_model is not None:
            group = len(texts[0])
            queries = [records[i].prompt for i in benign_rows for _ in range(group)]
            answers = [t for i in benign_rows for t in texts[i]]
            scores[benign_rows] = np.asarray(
                self.reward_model.score(queries, answers)).reshape(len(benign_rows), group)
        is_refusal = jnp.asarray(safety.refusal > 0)
        is_benign = jnp.asarray(safety.is_benign)
        helpful = helpfulness_reward(jnp.asarray(scores), is_refusal, is_benign,
                                     refusals_in_stats=self.refusals_in_stats)
        total = total_reward(jnp.asarray(safety.reward), helpful, is_benign,
                             normalise_each=self.normalise_each)
        metrics = reward_metrics(jnp.asarray(safety.format), jnp.asarray(safety.refusal),
                                 jnp.asarray(safety.reward), helpful, total, is_benign)
        metrics = {k if k.startswith(("reward/", "count/")) else f"reward/{k}": float(v)
                   for k, v in metrics.items()}
        metrics["reward/total"] = float(total.mean())
        metrics["reward/rm_score_benign"] = (float(scores[benign_rows].mean())
                                             if len(benign_rows) else 0.0)
        if self.safety_judge is not None:
            metrics["reward/judge_vetoed_harmful"] = vetoed
        return np.asarray(total, np.float32), metrics


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    safety: SafetyRewardConfig  # R_s: the verifiers and r_f, r_a
    helpfulness: str  # the R_h backend (config.HELPFULNESS_BACKENDS)
    rm_dir: str  # its model; "" = the policy's own base model as a judge
    rm_batch_size: int
    rm_max_len: int
    safety_judge: str  # a Llama Guard directory that must also call a refusal safe; "" = off
    refusals_in_stats: bool
    normalise_each: bool


def alphaalign_reward(settings: RewardSettings, default_rm_dir, mesh) -> AlphaAlignReward:
    """The method's reward (the helpfulness model read from ``rm_dir``, or the policy's own
    base model ``default_rm_dir`` as a judge; the Llama Guard judge from ``safety_judge``,
    when set)."""
    s = settings
    rm_kwargs = {} if s.helpfulness == "none" else dict(
        hf_dir=s.rm_dir or default_rm_dir, mesh=mesh, batch_size=s.rm_batch_size,
        max_length=s.rm_max_len)
    judge = (LlamaGuardJudge(s.safety_judge, field="config.reward.safety_judge", mesh=mesh,
                             batch_size=s.rm_batch_size) if s.safety_judge else None)
    return AlphaAlignReward(s.safety, make_reward_model(s.helpfulness, **rm_kwargs),
                            refusals_in_stats=s.refusals_in_stats,
                            normalise_each=s.normalise_each, safety_judge=judge)

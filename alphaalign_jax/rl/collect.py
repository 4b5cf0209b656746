"""A step's groups: prompts drawn, rolled out and scored, with DAPO's dynamic sampling.

Without dynamic sampling a step is one round: one batch of prompts, ``G`` rollouts each,
their rewards. With it, rounds go on until ``prompts_per_step`` groups have reward variance
(a group whose rewards are all equal has no advantage), and a batch still short after the
last round is filled with dropped groups, masked out of the loss.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from absl import logging

from alphaalign_jax.data.records import PromptRecord
from alphaalign_jax.models.config import ModelConfig
from alphaalign_jax.models.flops import sampling_flops
from alphaalign_jax.rewards import RewardFn
from alphaalign_jax.sampling import Rollouts, SamplingSettings

if TYPE_CHECKING:
    from alphaalign_jax.policy import Policy

NO_SIGNAL_STEPS = 3  # steps without reward variance in any group before "no learning signal"


@dataclasses.dataclass(frozen=True)
class CollectSettings:
    prompts_per_step: int  # groups a step trains on
    dynamic_sampling: bool  # keep only groups with reward variance
    rounds: int  # sampling rounds a step at most
    seed: int  # the run's seed: a round's sampling seed is a function of it


class Round(NamedTuple):
    """One sampling round: rollouts of a batch of prompts and their rewards."""

    rollouts: Rollouts
    texts: list[list[str]]  # [P][G] as the verifiers read them
    rewards: np.ndarray  # [P, G]
    metrics: Mapping[str, float]  # the reward's
    timing: Mapping[str, float]


class Group(NamedTuple):
    record: PromptRecord
    rollouts: Rollouts  # its G rollouts
    texts: list[str]
    rewards: np.ndarray  # [G]


@dataclasses.dataclass(frozen=True)
class Groups:
    """The groups a step trains on; the last ``filler`` are masked out of the loss."""

    groups: list[Group]
    filler: int

    @property
    def rollouts(self) -> Rollouts:
        return Rollouts.concat([g.rollouts for g in self.groups])

    @property
    def rewards(self) -> np.ndarray:
        return np.stack([g.rewards for g in self.groups])

    def append_samples(self, path: pathlib.Path, step: int, n: int) -> None:
        """The first rollout of the first ``n`` groups, appended to ``path`` as JSON lines."""
        with open(path, "a") as f:
            f.writelines(json.dumps({"step": step, "label": g.record.label,
                                     "prompt": g.record.prompt, "completion": g.texts[0],
                                     "reward": float(g.rewards[0])}) + "\n"
                         for g in self.groups[:n])

    @property
    def loss_rows(self) -> np.ndarray:
        """[P * G] bool: the rows in the loss (not filler)."""
        group = len(self.groups[0].texts)
        return np.arange(len(self.groups) * group) < (len(self.groups) - self.filler) * group


def sample_round(policy: Policy, reward_fn: RewardFn, sampling: SamplingSettings,
                 records: list[PromptRecord], seed: int) -> Round:
    """Rollouts of one prompt batch with the policy's current parameters, and their rewards."""
    t0 = time.perf_counter()
    rollouts, texts = policy.rollouts(records, sampling, seed)
    t1 = time.perf_counter()
    rewards, metrics = reward_fn(records, texts)
    rewards = np.asarray(rewards, np.float32)
    if rewards.shape != (len(records), sampling.num_samples):
        raise ValueError(f"reward_fn returned shape {rewards.shape}, expected "
                         f"{(len(records), sampling.num_samples)} (prompts, rollouts per prompt)")
    timing = {"time/rollout_s": t1 - t0, "time/reward_s": time.perf_counter() - t1,
              **{f"time/rollout_{k}": policy.sampler.last_timing[k]
                 for k in ("prefill_s", "decode_s", "detokenize_s")}}
    return Round(rollouts, texts, rewards, metrics, timing)


def round_seed(settings: CollectSettings, step: int, round_index: int) -> int:
    """The sampling seed of a step's round: a resumed run samples alike."""
    seed = settings.seed * 1_000_003 + step
    if round_index:
        seed = int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0] >> 1)
    return seed


def collect_groups(settings: CollectSettings, next_prompts: Callable[[], list[PromptRecord]],
                   sample_round: Callable[[list[PromptRecord], int], Round],
                   model_config: ModelConfig) -> tuple[Groups, dict[str, float]]:
    """This step's groups, and metrics averaged over every round sampled (with the rollout
    FLOPs of ``model_config``)."""
    want, dynamic = settings.prompts_per_step, settings.dynamic_sampling
    kept, dropped, per_round, with_signal, generated = [], [], [], [], []
    timing = collections.Counter()
    for round_index in range(settings.rounds):
        records = next_prompts()
        sampled = sample_round(records, round_index)
        group = sampled.rewards.shape[1]
        generated.append(sampled.rollouts)
        per_round.append(sampled.metrics)
        timing.update(sampled.timing)
        with_signal.extend(np.ptp(sampled.rewards, axis=1) > 0)
        for p, record in enumerate(records):
            part = Group(record, sampled.rollouts.take(range(p * group, (p + 1) * group)),
                         sampled.texts[p], sampled.rewards[p])
            (kept if not dynamic or np.ptp(part.rewards) > 0 else dropped).append(part)
        if len(kept) >= want:
            break
    filler = max(0, want - len(kept))
    metrics = {k: float(np.mean([m[k] for m in per_round])) for k in per_round[0]}
    every = Rollouts.concat(generated)
    metrics.update(timing)
    metrics["reward/groups_with_signal"] = float(np.mean(with_signal))  # non-zero advantage
    metrics.update({
        "response_length/mean": float(every.lengths.mean()),
        "response_length/max": float(every.lengths.max()),
        "stop/length_frac": float(np.mean([r == "length" for r in every.stop_reasons])),
        "rollout/tokens_per_s": float(every.lengths.sum() / max(timing["time/rollout_s"],
                                                               1e-9)),
        "flops/rollout": sum(sampling_flops(
            model_config, len(r) // group, r.prompt_ids.shape[1], len(r),
            int(r.lengths.max())) for r in generated),
    })
    if dynamic:
        metrics.update({"dynamic/rounds": len(per_round),
                        "dynamic/groups_kept": min(len(kept), want),
                        "dynamic/groups_dropped": len(dropped),
                        "dynamic/filler_groups": filler,
                        "dynamic/extra_rollouts": (len(per_round) - 1) * len(records) * group})
    return Groups(kept[:want] + dropped[:filler], filler), metrics


class SignalWatch:
    """Warns once when ``NO_SIGNAL_STEPS`` steps in a row had no group with reward variance:
    every advantage is 0 and the policy does not change. Inactive for an algorithm with a
    critic, whose advantages are the reward against its values."""

    def __init__(self, active: bool) -> None:
        self.active, self.silent = active, 0

    def see(self, metrics: Mapping[str, float]) -> None:
        if not self.active:
            return
        self.silent = self.silent + 1 if metrics.get("reward/groups_with_signal", 1) == 0 else 0
        if self.silent == NO_SIGNAL_STEPS:
            logging.warning(
                "no learning signal: in each of the last %d steps every group's rollouts got "
                "the same reward, so every advantage is 0 and the policy does not change; make "
                "the rollouts differ in reward (a warm start, rft.rounds; "
                "rollout.response_prefix or system_prompt so the format is written; a higher "
                "rollout.temperature or rollout.num_samples) or drop such groups "
                "(rollout.dynamic_sampling=True)", NO_SIGNAL_STEPS)

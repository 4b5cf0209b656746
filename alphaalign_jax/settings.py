"""A run's settings as typed, frozen values: the config read once, in one place.

rl/, rewards/ and sampling/ never see the ConfigDict: each takes the small dataclass it
needs (``SamplingSettings``, ``UpdateSettings``, ``RewardSettings``, ...), built here. Every
field is read when :func:`from_config` runs, before a weight loads, so a misspelt field or a
value of the wrong type fails at start, not steps into a run.
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
from jax.sharding import Mesh

from alphaalign_jax import sharding as shd
from alphaalign_jax.config import ConfigValueError

from alphaalign_jax.rewards.reward_fn import RewardSettings
from alphaalign_jax.rewards.safety import SafetyRewardConfig
from alphaalign_jax.rewards.template import PromptFormat
from alphaalign_jax.rl import rft
from alphaalign_jax.rl.algorithms import AdvantageSettings
from alphaalign_jax.rl.critic import CriticSettings
from alphaalign_jax.rl.collect import CollectSettings
from alphaalign_jax.rl.optim import OptimizerSettings
from alphaalign_jax.rl.programs import UpdateSettings
from alphaalign_jax.rl.step import LossSettings
from alphaalign_jax.sampling import SamplingSettings


@dataclasses.dataclass(frozen=True)
class RunSettings:
    prompt: PromptFormat
    sampling: SamplingSettings
    collect: CollectSettings
    reward: RewardSettings
    advantage: AdvantageSettings
    update: UpdateSettings
    optimizer: OptimizerSettings
    critic: CriticSettings
    warm_start: rft.WarmStartSettings
    kl: bool  # a KL term (in the loss, or in the critic's reward) needs a reference


def mesh(c: ml_collections.ConfigDict) -> Mesh:
    """The config's device mesh; axes that do not fit the devices are the config's error."""
    try:
        return shd.make_mesh(dict(c.mesh))
    except ValueError as e:
        raise ConfigValueError(f"config.mesh: {e}; axis sizes whose product is the "
                               f"{jax.device_count()} devices, or one of them -1 for the "
                               "rest") from None


def safety_settings(reward: ml_collections.ConfigDict) -> SafetyRewardConfig:
    """R_s's settings from a config's ``reward`` section (a run's, or an evaluation's)."""
    return SafetyRewardConfig(r_format=float(reward.r_format), r_answer=float(reward.r_answer),
                              refusal_phrases=tuple(reward.refusal_phrases),
                              refusal_markers=tuple(reward.refusal_markers),
                              markers_on=str(reward.markers_on),
                              whole_refusal=bool(reward.whole_refusal),
                              format_shaping=float(reward.format_shaping))


def loss_settings(c: ml_collections.ConfigDict) -> LossSettings:
    return LossSettings(
        clip_low=float(c.algo.clip_low), clip_high=float(c.algo.clip_high),
        beta=float(c.algo.beta), aggregation=str(c.algo.aggregation),
        max_completion_len=int(c.rollout.max_new_tokens),
        temperature=float(c.rollout.temperature), logprob_chunk=int(c.algo.logprob_chunk),
        group_size=int(c.rollout.num_samples), remat=bool(c.model.remat),
        on_policy=bool(c.algo.on_policy_ratio))


def update_settings(c: ml_collections.ConfigDict) -> UpdateSettings:
    return UpdateSettings(loss_settings(c), micro_batch_size=int(c.algo.micro_batch_size),
                          mini_batches=int(c.algo.mini_batches),
                          num_updates=int(c.algo.num_updates),
                          recompute_old_logprobs=bool(c.algo.recompute_old_logprobs))


def optimizer_settings(c: ml_collections.ConfigDict,
                       learning_rate: float | None = None) -> OptimizerSettings:
    """The policy's optimizer (``learning_rate`` replaces its rate: the critic's): one update
    per mini-batch, epoch and step."""
    o = c.optim
    return OptimizerSettings(
        learning_rate=float(o.learning_rate if learning_rate is None else learning_rate),
        total_steps=int(c.train.steps * c.algo.num_updates * c.algo.mini_batches),
        warmup_steps=int(o.warmup_steps), schedule=str(o.schedule),
        weight_decay=float(o.weight_decay), b1=float(o.b1), b2=float(o.b2), eps=float(o.eps),
        max_grad_norm=float(o.max_grad_norm), mu_dtype=str(o.mu_dtype))


def critic_settings(c: ml_collections.ConfigDict) -> CriticSettings:
    a = c.algo
    return CriticSettings(
        critic_dir=str(a.critic_dir), dtype=str(c.model.dtype),
        param_dtype=str(c.model.param_dtype), scan_layers=bool(c.model.scan_layers),
        remat=bool(c.model.remat),
        optimizer=optimizer_settings(c, learning_rate=c.optim.critic_learning_rate),
        value_clip=float(a.value_clip), kl_penalty=float(a.kl_penalty), gamma=float(a.gamma),
        lam=float(a.lam), whiten_advantages=bool(a.whiten_advantages),
        micro_batch_size=int(a.micro_batch_size), group_size=int(c.rollout.num_samples))


def warm_start_settings(c: ml_collections.ConfigDict) -> rft.WarmStartSettings:
    r = c.rft
    # One constant-rate pass: the RL schedule's warm-up and decay are not the warm start's.
    tx = dataclasses.replace(optimizer_settings(c), learning_rate=float(r.learning_rate),
                             total_steps=1, warmup_steps=0, schedule="constant",
                             weight_decay=0.0)
    return rft.WarmStartSettings(
        rounds=int(r.rounds), targets_from=str(r.targets_from),
        targets_file=str(r.targets_file), scaffold=str(r.system_prompt or c.system_prompt),
        temperature=float(r.temperature), copy_words=int(r.copy_words),
        targets_of=str(r.targets_of), min_kept=int(r.min_kept), epochs=int(r.epochs),
        balance=bool(r.balance), optimizer=tx, seed=int(c.train.seed),
        batch_rows=int(c.train.prompts_per_step * c.rollout.num_samples),
        group_size=int(c.rollout.num_samples), width=int(c.rollout.max_new_tokens),
        response_prefix=str(c.rollout.response_prefix),
        refusal=safety_settings(c.reward).refusal)


def from_config(c: ml_collections.ConfigDict) -> RunSettings:
    """Every setting of a run from its (validated) config."""
    r, rw = c.rollout, c.reward
    return RunSettings(
        prompt=PromptFormat(str(c.template), str(c.system_prompt), str(r.response_prefix)),
        sampling=SamplingSettings(
            max_new_tokens=int(r.max_new_tokens), num_samples=int(r.num_samples),
            temperature=float(r.temperature), top_p=float(r.top_p), top_k=int(r.top_k),
            stop_strings=tuple(r.stop_strings)),
        collect=CollectSettings(
            prompts_per_step=int(c.train.prompts_per_step),
            dynamic_sampling=bool(r.dynamic_sampling),
            rounds=int(r.max_sampling_rounds) if r.dynamic_sampling else 1,
            seed=int(c.train.seed)),
        reward=RewardSettings(
            safety=safety_settings(rw), helpfulness=str(rw.helpfulness), rm_dir=str(rw.rm_dir),
            rm_batch_size=int(rw.rm_batch_size), rm_max_len=int(rw.rm_max_len),
            safety_judge=str(rw.safety_judge), refusals_in_stats=bool(rw.refusals_in_stats),
            normalise_each=bool(rw.normalise_each)),
        advantage=AdvantageSettings(scale_by_std=bool(c.algo.scale_by_std)),
        update=update_settings(c),
        optimizer=optimizer_settings(c),
        critic=critic_settings(c),
        warm_start=warm_start_settings(c),
        kl=bool(c.algo.beta > 0 or c.algo.kl_penalty > 0))


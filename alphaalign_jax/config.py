"""The training config schema: defaults in one place, and validation at start.

Config files in ``configs/`` start from :func:`base_config` and change what
their model needs. The returned ConfigDict is locked, so a misspelt override
(``--config.optim.lr=...``) fails at once, naming the field; :func:`validate`
then checks values and their consistency, naming the field at fault;
:func:`check_inputs` the directories and files the config names and the context, before
any weights load; :func:`resume_changes` what a resumed run may not change. The command
lines' one-line errors (:func:`usage_error`, :class:`OneLineParser`) live here too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import NoReturn

import ml_collections
from absl import logging

from alphaalign_jax.models.config import LORA_TARGETS, LoraConfig, ModelConfig, lora_problems
from alphaalign_jax.rewards import DEFAULT_REFUSAL_PHRASES, DEFAULT_SAFETY_TEMPLATE, MARKER_SCOPES
from alphaalign_jax.rewards.verifiers import REASONING_OPEN
from alphaalign_jax.validation import SELECT
from alphaalign_jax.rl import algorithms
from alphaalign_jax.rl.losses import AGGREGATIONS

HELPFULNESS_BACKENDS = ("lm_judge", "classifier", "none")
RFT_TARGETS_OF = ("both", "benign")
RFT_TARGETS_FROM = ("samples", "labels")


class ConfigValueError(ValueError):
    """A config value that is out of range or inconsistent with another."""


def base_config(algorithm: str = "grpo") -> ml_collections.ConfigDict:
    """Every field with its default, for ``algorithm`` (rl/algorithms.py sets its values)."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        hf_dir="",  # HF directory of the policy; "" = the bundled SmolLM2-135M-Instruct
        dtype="float32",  # compute dtype
        param_dtype="float32",  # dtype the parameters are kept in
        # Recompute each block in the update's backward pass instead of keeping its
        # activations: one block's activation memory instead of every block's, for about a
        # third more update compute. What lets the paper models' 2k-token updates fit a chip.
        remat=False,
        # Stack the blocks' parameters on a leading axis and run them as one lax.scan: the
        # compiled programs hold one block, whatever the depth (a 36-layer model compiles in
        # about the time of a 1-layer one). Checkpoints keep the layout they were written in.
        scan_layers=False,
        # LoRA (models/config.py LoraConfig): train rank-r adapters on the target projections
        # instead of every weight; the frozen base is also the KL reference, and checkpoints
        # hold the adapters. 0 = full fine-tuning.
        lora_rank=0,
        lora_alpha=16.0,  # the adapters' output is scaled by lora_alpha / lora_rank
        lora_targets=LORA_TARGETS,  # of the projections q/k/v/o_proj, gate/up/down_proj
    )
    c.mesh = dict(data=1, fsdp=-1, tensor=1)  # device mesh axis sizes; -1: all remaining devices
    c.data = dict(
        train_file="",  # JSONL of {prompt,label,source,id}; "" = assets/data/train.jsonl
        harmful_fraction=0.5,  # share of harmful prompts in each batch (the sets are unbalanced)
        lenient=False,  # skip and count bad rows instead of failing
        seed=0,  # seed of the prompt order
        # Share of training prompts restated in the other grammatical form (question <->
        # instruction, both labels alike; data/forms.py), so the form carries no label.
        restate_forms=0.0,
        # Training prompts of each label held back and answered greedily at every checkpoint
        # (validation.py): the val/ metrics, and the checkpoint train.select="validation" picks.
        validation_prompts=0,
    )
    c.template = DEFAULT_SAFETY_TEMPLATE  # the prompt around each query, with a {prompt} slot
    # A system turn before every templated query ("" = the chat template's default), e.g.
    # rewards.WORKED_EXAMPLES_SYSTEM_PROMPT to bootstrap the format on a small policy.
    c.system_prompt = ""
    c.rollout = dict(
        num_samples=8,  # rollouts per prompt (the group)
        max_prompt_len=256,  # longest prompt in tokens (all checked at start)
        max_new_tokens=256,  # completion budget of a rollout
        temperature=1.0,  # sampling temperature of the rollouts
        top_p=1.0,  # nucleus sampling; 1 = off
        top_k=0,  # top-k sampling; 0 = off
        stop_strings=("</answer>",),  # a rollout ends at the first of these
        # Text forced at the start of every response (part of the prompt, not trained, but
        # scored): "<safety_reasoning>" bootstraps the format on models too small to follow
        # the instruction unaided. Off ("") for the paper's settings.
        response_prefix="",
        # DAPO dynamic sampling: drop groups whose rewards are all equal (zero advantage) and
        # generate more prompts, up to max_sampling_rounds generation rounds a step, each of
        # ceil(oversample * train.prompts_per_step) prompts. A batch still short after the
        # last round is filled with dropped groups, masked out of the loss.
        dynamic_sampling=False,
        max_sampling_rounds=3,  # generation rounds a step at most (dynamic sampling)
        oversample=1.0,  # prompts a round, as a multiple of train.prompts_per_step
    )
    c.reward = dict(
        r_format=0.5,  # reward of a well-formatted answer (the paper's R_f)
        r_answer=1.0,  # reward of the right decision (the paper's R_a)
        format_shaping=0.0,  # partial format credit (rewards.SafetyRewardConfig); 0 = paper
        refusal_phrases=tuple(DEFAULT_REFUSAL_PHRASES),  # an answer starting so is a refusal
        # words that also make an answer a refusal anywhere in it; () = the paper's prefix
        # list alone, rewards.REFUSAL_MARKERS = what a trained policy refuses with besides
        refusal_markers=(),
        # where the markers apply: "all" prompts, or "benign" ones only (harmful prompts then
        # earn r_a only for the template's refusal; rewards.verifiers.markers_for)
        markers_on="all",
        # on harmful prompts, r_a only for an answer that refuses as a whole (a refusal phrase,
        # then only refusal and its reasons: rewards.verifiers.whole_refusal_verifier), so a
        # compliance with a disclaimer earns nothing; False = the paper's prefix list
        whole_refusal=False,
        # HF Llama Guard 3 directory: on harmful prompts r_a only for a refusal the judge also
        # calls safe (V_r times its verdict; rewards.AlphaAlignReward); "" = off, the paper.
        # Checked when the reward is built, before its weights load (safety_judge.py)
        safety_judge="",
        helpfulness="lm_judge",  # one of HELPFULNESS_BACKENDS
        rm_dir="",  # HF directory of the reward model; "" = the policy's own base model (judge)
        rm_batch_size=16,  # answers a helpfulness-model batch
        rm_max_len=512,  # tokens the helpfulness model reads
        refusals_in_stats=True,  # count refusals in R_h's statistics
        normalise_each=False,  # normalise each reward term before summing
    )
    c.algo = dict(
        name="grpo",  # set by the config's algorithm (rl/algorithms.py), not on its own
        clip_low=0.2,  # PPO ratio clip below 1
        clip_high=0.2,  # PPO ratio clip above 1 (DAPO clip-higher when > clip_low)
        beta=0.04,  # k3 KL coefficient in the loss; 0 (and kl_penalty 0) skips the reference
        aggregation="token_mean",  # token loss averaging: one of rl.losses.AGGREGATIONS
        scale_by_std=True,  # divide group advantages by the group's reward std
        num_updates=1,  # epochs over each rollout batch
        mini_batches=1,  # optimizer steps an epoch, each over a shuffled share of the groups
        micro_batch_size=8,  # sequences per gradient micro-batch
        logprob_chunk=128,  # vocabulary rows a log-prob chunk (memory)
        # The ratio's old log-probs (pi_old) from the trainer's own forward before the update
        # (veRL's recompute), not the sampler's: equal in float32, not under bf16, where the
        # two programs round differently and the first update's ratio is then not 1.
        recompute_old_logprobs=False,
        # The ratio against the update's own log-probs (stop-gradient: exactly 1) instead of
        # pi_old's: for one update a step (num_updates = mini_batches = 1), where pi_old is the
        # policy being updated; removes the bf16 rounding gap between two programs.
        on_policy_ratio=False,
        # PPO (algorithms with a critic)
        gamma=1.0,  # GAE discount
        lam=1.0,  # GAE lambda
        kl_penalty=0.0,  # per-token KL to the reference subtracted from the reward
        whiten_advantages=True,  # normalise GAE advantages over the batch
        value_clip=0.2,  # clipped value loss range
        critic_dir="",  # HF 1-label classifier to start the critic from; "" = the policy
    )
    c.optim = dict(
        learning_rate=1e-6,  # the policy's Adam learning rate
        warmup_steps=0,  # linear warm-up, in optimizer steps
        schedule="constant",  # cosine or constant after warm-up
        weight_decay=0.0,  # AdamW weight decay
        b1=0.9,  # Adam beta1
        b2=0.999,  # Adam beta2
        eps=1e-8,  # Adam epsilon
        max_grad_norm=1.0,  # global gradient-norm clip
        # dtype of Adam's first moment (optax's mu_dtype): bfloat16 halves it, a quarter of
        # the optimizer state, what lets Qwen2.5-7B's full update fit a v5e-16
        # (docs/tpu_plans.md). The second moment stays in the parameters' dtype.
        mu_dtype="float32",
        critic_learning_rate=1e-5,  # the critic's Adam (same schedule and clipping)
    )
    # Fine-tuning warm start before the first RL step (rl/rft.py) on targets for ``rounds``
    # training batches: from "samples", the policy's answers under ``system_prompt`` (a
    # scaffold, e.g. worked examples) that the verifiers accept (tags, refusal exactly on
    # harmful, nothing copied from the scaffold); from "labels", each prompt's class reasoning
    # then the template's refusal (harmful) or the policy's own plain answer (benign).
    # Fine-tuned under the training prompt. rounds=0: no warm start.
    # The warm-started policy is kept in <workdir>/warm_start and is the KL reference after it.
    c.rft = dict(
        rounds=0,  # training batches the warm start takes targets from; 0 = none
        targets_from="samples",  # one of RFT_TARGETS_FROM
        system_prompt="",  # the scaffold sampled under; "" = the training system_prompt
        temperature=0.0,  # sampling temperature of the warm start; 0 = rollout.temperature
        copy_words=6,  # a kept sample shares no run of this many words with the scaffold
        epochs=2,  # fine-tuning passes over the warm start's targets
        learning_rate=1e-4,  # the warm start's Adam learning rate
        min_kept=8,  # fewer kept samples than this is an error (the scaffold does not work)
        balance=False,  # repeat the smaller class's targets up to the larger's each epoch
        targets_of="both",  # the classes whose samples are targets: one of RFT_TARGETS_OF
        # A previous warm start's rft_targets.jsonl to fine-tune on instead of sampling
        # (rounds must be 0): measures a fine-tuning setting without the sampling cost.
        targets_file="",
    )
    c.train = dict(
        steps=100,  # RL steps
        prompts_per_step=16,  # prompts a step (each with rollout.num_samples rollouts)
        seed=0,  # seed of the sampling RNG
        checkpoint_every=10,  # steps between checkpoints (the last is always saved)
        keep_checkpoints=3,  # checkpoints kept in <workdir>/checkpoints
        async_checkpointing=True,  # write checkpoints in the background
        plot=True,  # write <workdir>/curves.png at the end
        log_samples=2,  # rollouts a step written to samples.jsonl (first of each prompt)
        # After the last step: a held-out evaluation of the final checkpoint on this many
        # prompts of each held-out set (alphaalign_jax/evaluate.py, greedy, no prefill or
        # pass@k) into <workdir>/eval; 0 = off (run evaluate on its own for the full one)
        eval_prompts=0,
        eval_new_tokens=64,  # completion budget of that evaluation
        export_hf=False,  # after the last step: the final checkpoint as an HF model, <workdir>/hf
        # The run's result, evaluated and exported after the last step: "last", or
        # "validation" (the checkpoint with the largest validation refusal gap).
        select="last",
    )
    algorithms.apply(c, algorithm)
    return c


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigValueError(f"config.{field}: {message}")


def validate(c: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Check every value and the sizes that must agree; raise the first problem."""
    first = next(problems(c, num_devices), None)
    if first is not None:
        raise ConfigValueError(first)


def problems(c: ml_collections.ConfigDict, num_devices: int = 1) -> Iterator[str]:
    """Each value out of range or inconsistent with another, as ``config.<field>: <what is
    wrong>``, in order; a check may assume the ones before it passed, so read the first."""
    for ok, field, message in _checks(c, num_devices):
        if not ok:
            yield f"config.{field}: {message}"


def _checks(c: ml_collections.ConfigDict, num_devices: int) -> Iterator[tuple[bool, str, str]]:
    """(holds, field, what is required), one check at a time: lazily, so a check runs only
    when those before it held."""
    r, a, t, o = c.rollout, c.algo, c.train, c.optim
    yield (c.model.dtype in ("float32", "bfloat16"), "model.dtype",
           f"'{c.model.dtype}' is not float32 or bfloat16")
    yield (c.model.param_dtype in ("float32", "bfloat16"), "model.param_dtype",
           f"'{c.model.param_dtype}' is not float32 or bfloat16")
    for field, problem in lora_problems(c.model.lora_rank, c.model.lora_alpha,
                                        tuple(c.model.lora_targets)):
        yield (False, field, problem)
    for axis in ("data", "fsdp", "tensor"):
        yield (c.mesh[axis] >= 1 or c.mesh[axis] == -1, f"mesh.{axis}",
               f"must be >= 1, or -1 for the devices left, got {c.mesh[axis]}")
    yield (list(c.mesh.values()).count(-1) <= 1, "mesh",
           "at most one axis may be -1 (the devices the others leave)")
    yield (0.0 <= c.data.harmful_fraction <= 1.0, "data.harmful_fraction", "must be in [0, 1]")
    yield (isinstance(c.data.seed, int) and not isinstance(c.data.seed, bool)
           and c.data.seed >= 0, "data.seed", f"must be >= 0 and an int, got {c.data.seed!r}")
    yield (0.0 <= c.data.restate_forms <= 1.0, "data.restate_forms", "must be in [0, 1]")
    yield (isinstance(c.data.validation_prompts, int) and c.data.validation_prompts >= 0,
           "data.validation_prompts", "must be an int >= 0 (0: no validation)")
    yield (c.train.select in SELECT, "train.select", f"'{c.train.select}' is not one of {SELECT}")
    yield (c.train.select == "last" or c.data.validation_prompts > 0, "train.select",
           "'validation' needs held-back prompts: set data.validation_prompts > 0")
    yield (c.train.seed >= 0, "train.seed", f"must be >= 0, got {c.train.seed}")
    yield (c.reward.rm_batch_size >= 1, "reward.rm_batch_size", "must be >= 1")
    yield (c.reward.rm_max_len >= 1, "reward.rm_max_len", "must be >= 1")
    yield (c.algo.logprob_chunk >= 1, "algo.logprob_chunk",
           "must be >= 1 (vocabulary rows per log-prob chunk)")
    yield ("{prompt}" in c.template, "template", "must contain the {prompt} slot")
    yield (a.name in algorithms.ALGORITHMS, "algo.name",
           f"'{a.name}' is not one of {tuple(algorithms.ALGORITHMS)}; choose it with "
           "--config=FILE:NAME so its settings apply before your overrides")
    critic = algorithms.get(a.name).critic
    yield (r.num_samples >= (1 if critic else 2), "rollout.num_samples",
           f"{a.name} needs >= 2 rollouts a prompt to compare, got {r.num_samples}")
    yield (r.max_prompt_len > 0, "rollout.max_prompt_len", "must be > 0")
    yield (r.max_new_tokens > 0, "rollout.max_new_tokens", "must be > 0")
    yield (r.temperature > 0, "rollout.temperature", "must be > 0 (greedy rollouts give "
           "identical groups and no advantage)")
    yield (0 < r.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    yield (r.max_sampling_rounds >= 1, "rollout.max_sampling_rounds", "must be >= 1")
    yield (r.oversample >= 1.0, "rollout.oversample", "must be >= 1")
    yield (0.0 <= c.reward.format_shaping <= 1.0, "reward.format_shaping", "must be in [0, 1]")
    for name in ("r_format", "r_answer"):
        yield (c.reward[name] >= 0, f"reward.{name}", f"must be >= 0, got {c.reward[name]}")
    yield (all(isinstance(x, str) and x for x in r.stop_strings), "rollout.stop_strings",
           f"must be non-empty strings, got {tuple(r.stop_strings)!r}")
    yield (len(c.reward.refusal_phrases) > 0 and all(
      isinstance(x, str) and x.strip() for x in c.reward.refusal_phrases),
      "reward.refusal_phrases", "must be one or more non-blank strings (an answer starting "
      "with one is a refusal)")
    yield (all(isinstance(m, str) and m.strip() for m in c.reward.refusal_markers),
           "reward.refusal_markers", "must be non-blank strings (words matched anywhere in "
           "the answer)")
    yield (c.reward.markers_on in MARKER_SCOPES, "reward.markers_on",
           f"'{c.reward.markers_on}' is not one of {MARKER_SCOPES}")
    yield (not (c.reward.whole_refusal and c.reward.refusal_markers
                and c.reward.markers_on == "all"), "reward.markers_on",
           "must be 'benign' with reward.whole_refusal: markers on harmful prompts would pay "
           "r_a for a refusal word anywhere in a compliance")
    yield (r.top_k >= 0, "rollout.top_k", "must be >= 0 (0 disables)")
    yield (c.reward.helpfulness in HELPFULNESS_BACKENDS, "reward.helpfulness",
           f"'{c.reward.helpfulness}' is not one of {HELPFULNESS_BACKENDS}")
    yield (a.aggregation in AGGREGATIONS, "algo.aggregation",
           f"'{a.aggregation}' is not one of {AGGREGATIONS}")
    yield (0 <= a.clip_low < 1, "algo.clip_low", "must be in [0, 1)")
    yield (a.clip_high >= 0, "algo.clip_high", "must be >= 0")
    yield (a.beta >= 0, "algo.beta", "must be >= 0")
    yield (a.num_updates >= 1, "algo.num_updates", "must be >= 1")
    yield (t.prompts_per_step % max(a.mini_batches, 1) == 0 and a.mini_batches >= 1,
           "algo.mini_batches", f"must be >= 1 and divide train.prompts_per_step = "
           f"{t.prompts_per_step} (mini-batches hold whole groups)")
    yield (not a.on_policy_ratio or a.num_updates == a.mini_batches == 1, "algo.on_policy_ratio",
           "needs one update a step (algo.num_updates = algo.mini_batches = 1): a later update's "
           "pi_old is not the policy it updates")
    yield (0 <= a.gamma <= 1, "algo.gamma", "must be in [0, 1]")
    yield (0 <= a.lam <= 1, "algo.lam", "must be in [0, 1]")
    yield (a.kl_penalty >= 0, "algo.kl_penalty", "must be >= 0")
    yield (a.value_clip > 0, "algo.value_clip", "must be > 0")
    yield (o.critic_learning_rate >= 0, "optim.critic_learning_rate", "must be >= 0")
    yield (critic or a.kl_penalty == 0, "algo.kl_penalty",
           f"is the per-token reward penalty of algorithms with a critic; {a.name} takes "
           "its KL in the loss (algo.beta)")
    batch = t.prompts_per_step * r.num_samples // max(a.mini_batches, 1)
    yield (t.prompts_per_step >= 1, "train.prompts_per_step", "must be >= 1")
    yield (a.micro_batch_size >= 1 and batch % a.micro_batch_size == 0, "algo.micro_batch_size",
           f"must divide a mini-batch: prompts_per_step * num_samples / mini_batches = {batch}")
    yield (a.micro_batch_size % r.num_samples == 0, "algo.micro_batch_size",
           f"must hold whole groups: a multiple of rollout.num_samples = {r.num_samples} "
           f"(each prompt is computed once for its group)")
    yield (a.micro_batch_size % num_devices == 0 or num_devices % a.micro_batch_size == 0,
           "algo.micro_batch_size", f"must be a multiple of the {num_devices} devices")
    yield (c.rft.rounds >= 0, "rft.rounds", "must be >= 0 (0: no warm start)")
    yield (not (c.rft.targets_file and c.rft.rounds), "rft.targets_file",
           "replaces the warm start's sampling: set rft.rounds=0 with it")
    yield (c.rft.temperature >= 0, "rft.temperature", "must be >= 0 (0: rollout's)")
    yield (c.rft.copy_words >= 1, "rft.copy_words", "must be >= 1")
    yield (c.rft.epochs >= 1, "rft.epochs", "must be >= 1")
    yield (c.rft.learning_rate > 0, "rft.learning_rate", "must be > 0")
    yield (c.rft.min_kept >= 1, "rft.min_kept", "must be >= 1")
    yield (c.rft.targets_of in RFT_TARGETS_OF, "rft.targets_of",
           f"'{c.rft.targets_of}' is not one of {RFT_TARGETS_OF}")
    yield (c.rft.targets_from in RFT_TARGETS_FROM, "rft.targets_from",
           f"'{c.rft.targets_from}' is not one of {RFT_TARGETS_FROM}")
    yield (c.rft.targets_from == "samples" or c.rft.targets_of == "both", "rft.targets_of",
           "'benign' selects among samples; with rft.targets_from='labels' every prompt "
           "gives a target: keep 'both'")
    yield (c.rft.targets_from == "samples" or not c.rft.rounds
           or REASONING_OPEN.startswith(c.rollout.response_prefix), "rollout.response_prefix",
           f"{c.rollout.response_prefix!r} is not the start of the template's "
           f"{REASONING_OPEN!r}, which every labelled warm-start target begins with "
           "(rft.targets_from='labels')")
    yield (t.steps >= 1, "train.steps", "must be >= 1")
    yield (t.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
    yield (t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    yield (t.eval_prompts >= 0, "train.eval_prompts", "must be >= 0 (0: no evaluation)")
    yield (t.eval_new_tokens >= 1, "train.eval_new_tokens", "must be >= 1")
    yield (o.learning_rate >= 0, "optim.learning_rate", "must be >= 0")
    yield (o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    yield (0 <= o.b1 < 1, "optim.b1", "must be in [0, 1)")
    yield (0 <= o.b2 < 1, "optim.b2", "must be in [0, 1)")
    yield (o.eps >= 0, "optim.eps", "must be >= 0")
    yield (o.mu_dtype in ("float32", "bfloat16"), "optim.mu_dtype",
           f"'{o.mu_dtype}' is not float32 or bfloat16")
    yield (o.max_grad_norm >= 0, "optim.max_grad_norm", "must be >= 0 (0: no clipping)")
    yield (t.log_samples >= 0, "train.log_samples", "must be >= 0")
    yield (0 <= o.warmup_steps <= t.steps * a.num_updates * a.mini_batches,
           "optim.warmup_steps",
           "must be in [0, train.steps * algo.num_updates * algo.mini_batches]")
    yield (o.schedule in ("cosine", "constant"), "optim.schedule",
           f"'{o.schedule}' is not cosine or constant")


def parse_config_arg(arg: str, options: tuple[str, ...] = ()) -> tuple[str, set[str]]:
    """The ``ARG`` of ``--config=FILE:ARG``: an algorithm name (default grpo) and/or the
    config file's own ``options``, comma-separated (``:ppo``, ``:scaffold``, ``:scaffold,ppo``)."""
    words = {w.strip() for w in arg.split(",") if w.strip()}
    names = words & set(algorithms.ALGORITHMS)
    unknown = words - names - set(options)
    if unknown or len(names) > 1:
        raise ConfigValueError(
            f"--config=FILE:{arg}: "
            + (f"unknown option {', '.join(sorted(unknown))}" if unknown
               else f"more than one algorithm ({', '.join(sorted(names))})")
            + f"; at most one algorithm of {', '.join(algorithms.ALGORITHMS)}"
            + (f" and the options {', '.join(options)}" if options else "")
            + ", comma-separated")
    return (min(names) if names else "grpo"), words - names


def field_help() -> dict[str, str]:
    """Each field of :func:`base_config` (``section.name``) and one line of its meaning, read
    from the comments beside or above it there: the one place they are written."""
    import inspect
    import re

    help_of: dict[str, str] = {}
    section, pending = None, []
    for line in inspect.getsource(base_config).splitlines():
        text = line.strip()
        top = re.match(r"c\.(\w+) = (dict\()?", text)
        if text.startswith("#"):
            pending.append(text.lstrip("# "))
            continue
        if top and top.group(2) and text.endswith(")") or top and "dict(" in text[:-1] and \
                text.split("  #")[0].endswith(")"):  # a section on one line: its comment
            for field in re.findall(r"(\w+)=", text.split("  #")[0]):  # for each field
                help_of[f"{top.group(1)}.{field}"] = text.split("  # ", 1)[-1]
            pending = []
            continue
        if top:
            if top.group(2):
                section, pending = top.group(1), []
                continue
            name = top.group(1)
        elif section and text == ")":
            section = None
            continue
        elif section and (field := re.match(r"(\w+)=", text)):
            name = f"{section}.{field.group(1)}"
        else:
            pending = []
            continue
        comment = line.split("  # ", 1)[1] if "  # " in line else " ".join(pending)
        pending = []
        first = re.split(r"(?<=[.;])\s(?=[A-Z(])", comment, maxsplit=1)[0].rstrip(".:;")
        for constant in ("HELPFULNESS_BACKENDS", "RFT_TARGETS_OF", "RFT_TARGETS_FROM"):
            first = first.replace(constant, ", ".join(globals()[constant]))
        help_of[name] = first if len(first) <= 110 else first[:107] + "..."
    return help_of


# ------------------------------------------------------------- inputs, before a run starts
def _model_dir(path: str | pathlib.Path, field: str):
    """The architecture of the HF directory a field names (its config.json; no weights)."""
    from alphaalign_jax.models import ModelConfig

    path = pathlib.Path(path)
    allowed = "a Hugging Face model directory (config.json, *.safetensors)"
    if not (path / "config.json").is_file():
        what = "no config.json in the directory" if path.is_dir() else "no such directory"
        raise ConfigValueError(f"config.{field}: {path}: {what}; {allowed}")
    try:
        return ModelConfig.from_pretrained(path)
    except (ValueError, KeyError, TypeError) as e:
        lines = str(e).strip().splitlines() or [repr(e)]
        raise ConfigValueError(f"config.{field}: {path}: {lines[0]}; {allowed}") from None


def _jsonl_head(path: str | pathlib.Path, field: str, allowed: str) -> None:
    """A JSONL file a field names exists and its first row is a JSON object (the whole file
    is read, row by row, where it is used)."""
    path = pathlib.Path(path)
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "no such file"
        raise ConfigValueError(f"config.{field}: {path}: {what}; {allowed}")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    row = json.loads(raw)
                except ValueError:
                    row = None
                if not isinstance(row, dict):
                    raise ConfigValueError(f"config.{field}: {path}:{number}: not a JSON object; "
                                           f"{allowed}")
                return
    raise ConfigValueError(f"config.{field}: {path} holds no rows; {allowed}")


PROMPT_ROWS = ('a JSONL file, one {"prompt", "label": "harmful"|"benign", "source", "id"} '
               "object a line")


def check_context(c: ml_collections.ConfigDict, context: int, source: str) -> None:
    """A prompt of ``rollout.max_prompt_len`` tokens and its completion fit the policy's
    ``context`` (read from ``source``)."""
    r = c.rollout
    _require(r.max_prompt_len < context, "rollout.max_prompt_len",
             f"{r.max_prompt_len} tokens leave no room for an answer in the model's context of "
             f"{context} tokens ({source}); less than {context}")
    _require(r.max_prompt_len + r.max_new_tokens <= context, "rollout.max_new_tokens",
             f"{r.max_new_tokens} new tokens after a prompt of up to rollout.max_prompt_len="
             f"{r.max_prompt_len} exceed the model's context of {context} tokens ({source}); "
             f"at most {context - r.max_prompt_len}")


def check_inputs(c: ml_collections.ConfigDict, hf_dir: pathlib.Path):
    """What can be checked before any weights load and before anything is written: the model
    directories and files the config names (a data file's first row; the trainer reads every
    row before it loads weights) and a prompt with its completion against the policy's
    context. Returns the policy's architecture (its config.json)."""
    policy = _model_dir(hf_dir, "model.hf_dir")
    check_context(c, policy.max_position_embeddings, f"{hf_dir}/config.json")
    if c.data.train_file:
        _jsonl_head(c.data.train_file, "data.train_file", PROMPT_ROWS)
    if c.rft.targets_file:
        _jsonl_head(c.rft.targets_file, "rft.targets_file",
                    "a warm start's rft_targets.jsonl (RUN/rft_targets.jsonl)")
    if c.reward.helpfulness == "classifier" or (c.reward.helpfulness == "lm_judge"
                                                and c.reward.rm_dir):
        _require(bool(c.reward.rm_dir), "reward.rm_dir",
                 "empty; the classifier helpfulness backend needs a reward model directory")
        _model_dir(c.reward.rm_dir, "reward.rm_dir")
    if algorithms.get(c.algo.name).critic and c.algo.critic_dir:
        _model_dir(c.algo.critic_dir, "algo.critic_dir")
    if c.reward.safety_judge:
        from alphaalign_jax.rewards.safety_judge import check_judge_dir

        check_judge_dir(c.reward.safety_judge, "config.reward.safety_judge")
    return policy


def run_architecture(c: ml_collections.ConfigDict, architecture: ModelConfig) -> ModelConfig:
    """The policy's ``architecture`` in the run's layout: scanned layers, LoRA adapters."""
    lora = (LoraConfig(int(c.model.lora_rank), float(c.model.lora_alpha),
                       tuple(c.model.lora_targets)) if c.model.lora_rank else None)
    return dataclasses.replace(architecture, scan_layers=bool(c.model.scan_layers), lora=lora)


# What a resumed run may not change: each decides what its checkpoints hold (the algorithm
# and so the critic, the model, its parameters' dtype and layout, LoRA, whether the optimizer
# clips) or how the data position and the step's RNG read on (the batch's shape, the data,
# the seeds, the warm start that made step 0). A section's name covers its fields. Any other
# change (steps, logging, checkpoint cadence, learning rate, ...) is allowed and recorded.
STATE_FIELDS = ("algo.name", "model.hf_dir", "model.param_dtype", "model.scan_layers",
                "model.lora_rank", "model.lora_alpha", "model.lora_targets",
                "optim.max_grad_norm", "optim.mu_dtype", "algo.mini_batches",
                "train.prompts_per_step", "train.seed", "rollout.num_samples",
                "rollout.dynamic_sampling",
                "rollout.oversample", "data", "rft")
# Of these, fields where only a kind of value matters: clipping on (> 0) or off.
_STATE_KIND = {"optim.max_grad_norm": lambda v: v is not None and v > 0}


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_changes(recorded: dict, c: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """How ``c`` differs from a run's recorded ``config.json``: ``(refused, allowed)``, each
    ``{field: (recorded, new)}``, refused the :data:`STATE_FIELDS` changes. A field the
    recorded config predates is not compared."""
    old, new = _flat(recorded), _flat(json.loads(c.to_json_best_effort()))
    changed = {f: (old[f], v) for f, v in new.items() if f in old and old[f] != v}

    def alters_state(field: str, before, after) -> bool:
        kind = _STATE_KIND.get(field)
        return (any(field == s or field.startswith(s + ".") for s in STATE_FIELDS)
                and (kind is None or kind(before) != kind(after)))

    refused = {f: v for f, v in changed.items() if alters_state(f, *v)}
    return refused, {f: v for f, v in changed.items() if f not in refused}



def check_resume(workdir: pathlib.Path, c: ml_collections.ConfigDict) -> dict:
    """How ``c`` differs from the run being resumed in ``workdir`` (its ``config.json``): the
    allowed changes; a change that alters what its checkpoints hold is refused, naming the
    fields, before anything is touched. Call only when the workdir holds a checkpoint."""
    path = workdir / "config.json"
    if not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text())
    except ValueError as e:
        raise ConfigValueError(f"--workdir={workdir}: its config.json is not JSON ({e}); "
                               "restore it, or use another --workdir") from None
    refused, allowed = resume_changes(recorded, c)
    if refused:
        raise ConfigValueError(
            ", ".join(f"config.{f}" for f in refused) + f": differ from the run in {workdir} ("
            + "; ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in refused.items())
            + "), which would change what its checkpoints hold; resume with the run's values "
            "(its config.json), or use another --workdir")
    return allowed


def record(workdir: pathlib.Path, c: ml_collections.ConfigDict, changes: dict) -> None:
    """``config.json`` holds the values in force; each resume that changed some is a line of
    ``config_history.jsonl`` (when, what from and to)."""
    if changes:
        logging.warning("resuming with changed settings: %s", "; ".join(
            f"{f} {a!r} -> {b!r}" for f, (a, b) in changes.items()))
        with open(workdir / "config_history.jsonl", "a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                "changed": {k: list(v) for k, v in changes.items()}}) + "\n")
    tmp = workdir / "config.json.tmp"
    tmp.write_text(c.to_json_best_effort(indent=2))
    tmp.replace(workdir / "config.json")

# ------------------------------------------------------------------ command-line errors
def usage_error(message: str) -> NoReturn:
    """A bad command line, config value or input file: one line on stderr, exit status 2 (as
    argparse), before anything is loaded or written."""
    print(" ".join(message.split("\n")), file=sys.stderr)
    sys.exit(2)


def number(kind: type, low: float | None = None, *, above: float | None = None):
    """An argparse type: an int or float, at least ``low`` or more than ``above``."""
    noun = "an int" if kind is int else "a number"
    allowed = noun + (f" >= {low}" if low is not None else "") + (
        f" > {above}" if above is not None else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}; {allowed}") from None
        if (low is not None and value < low) or (above is not None and value <= above):
            raise argparse.ArgumentTypeError(f"{text} is out of range; {allowed}")
        return value

    parse.__name__ = kind.__name__
    return parse


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``PROG: <option>: <what is wrong>; <what is
    allowed>``, exit status 2 (argparse's own is its usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        import re

        options = sorted({o for a in self._actions for o in a.option_strings
                          if o.startswith("--") and o != "--help"})
        allowed = (f"the options are {', '.join(options)}" if options else "see --help")
        if message.startswith("unrecognized arguments: "):
            given = message.split(": ", 1)[1].split()
            flag = next((g for g in given if g.startswith("-")), given[0])
            message = f"{flag.split('=')[0]}: unknown option; {allowed}"
        elif message.startswith("the following arguments are required: "):
            message = f"{message.split(': ', 1)[1]}: missing; required (see --help)"
        elif found := re.fullmatch(r"argument (\S+?): invalid (\w+) value: (.*)", message):
            name, kind, value = found.groups()
            message = f"{name.split('/')[-1]}: {value} is not a valid {kind}; see --help"
        elif found := re.fullmatch(r"argument (\S+?): (.*)", message, flags=re.DOTALL):
            message = f"{found.group(1).split('/')[-1]}: {found.group(2)}"
        usage_error(f"{self.prog.split()[0]}: {message}")  # a subcommand's too: the program

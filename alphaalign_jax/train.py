"""AlphaAlign RL training (GRPO and its variants, or PPO): the main job.

    python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py[:ppo] --workdir=runs/smollm2 \
        [--config.train.steps=20 --config.optim.learning_rate=1e-5 ...]

One step, top to bottom in ``train_one_step``: draw a class-balanced batch of labelled
prompts (template, chat template, response prefix), sample G rollouts each with the jitted
sampler, score them with the reward function (format / refusal verifiers, helpfulness model),
estimate advantages as the algorithm says (rl/algorithms.py: group-normalised, or GAE over the
critic's values), add reference log-probs when a KL term needs them, and apply
``algo.num_updates`` epochs of ``algo.mini_batches`` optax updates that reuse the sampler's
log-probs as the old policy's (and update the critic on the same mini-batches). An optional
RFT warm start (``config.rft``) runs once before step 1.

Re-running the same command resumes from the latest checkpoint in
``--workdir`` (parameters, optimizer states, critic, step, data position; the RNG is a
function of the step), and SIGTERM (TPU preemption) saves and exits cleanly.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import pathlib
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any, NoReturn

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from alphaalign_jax import assets
from alphaalign_jax import config as config_lib
from alphaalign_jax import sharding as shd
from alphaalign_jax import validation
from alphaalign_jax.checkpoint import (CheckpointWriteError, TrainCheckpoints, disk_full,
                                       first_line, load_model, save_model, saved_steps,
                                       verify_checkpoint)
from alphaalign_jax.data.budget import PromptTooLong, fit_prompt_budget
from alphaalign_jax.data.forms import restate_forms
from alphaalign_jax.data.pipeline import BalancedPrompts, Subset, bundled_splits
from alphaalign_jax.data.records import DataError, PromptRecord, load_jsonl
from alphaalign_jax.metrics import MetricsWriter
from alphaalign_jax.rundir import RunDirLock, RunDirLocked
from alphaalign_jax.models import CheckpointError, ConfigError, from_pretrained, load_tokenizer
from alphaalign_jax.models.flops import grouped_pass_flops, sampling_flops
from alphaalign_jax.rewards import RewardFn, alphaalign_reward, policy_prompt, scored_response
from alphaalign_jax.rewards.reward_fn import safety_config
from alphaalign_jax.rewards.template import PROMPT_PLACEHOLDER, build_chat_prompt
from alphaalign_jax.rl import algorithms, rft
from alphaalign_jax.rl.critic import Critic
from alphaalign_jax.rl.optim import config_optimizer, make_optimizer
from alphaalign_jax.rl.step import (LossSettings, NonFiniteError, UpdateBatch, jit_update,
                                    reference_logprobs, train_step)
from alphaalign_jax.sampling import Rollouts, Sampler
from alphaalign_jax.sampling.sampler import bucket

FLAGS = flags.FLAGS


NO_SIGNAL_STEPS = 3  # steps without reward variance in any group before "no learning signal"


class Preempted(Exception):
    """A stop signal (SIGTERM, SIGINT): the run ends cleanly; the message says what was saved."""


def loss_settings(c: ml_collections.ConfigDict) -> LossSettings:
    return LossSettings(
        clip_low=float(c.algo.clip_low), clip_high=float(c.algo.clip_high),
        beta=float(c.algo.beta), aggregation=c.algo.aggregation,
        max_completion_len=int(c.rollout.max_new_tokens),
        temperature=float(c.rollout.temperature), logprob_chunk=int(c.algo.logprob_chunk),
        group_size=int(c.rollout.num_samples), remat=bool(c.model.remat))


def update_programs(c: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, mesh, *, param_shardings, opt_shardings,
                    settings: LossSettings | None = None, on_trace=lambda: None):
    """The jitted optimizer step (parameters and optimizer state donated) and reference
    log-prob pass of a config: what the trainer runs and ``aot`` compiles for a TPU.
    ``settings`` default to the config's loss (the RFT warm start passes its own)."""
    settings = settings or loss_settings(c)

    def step_fn(params, rest, opt_state, batch):
        on_trace()
        return train_step(graphdef, params, rest, opt_state, batch, tx=tx, settings=settings,
                          micro_batch_size=c.algo.micro_batch_size)

    step = jit_update(step_fn, param_shardings, opt_shardings, shd.replicated(mesh))
    ref = jax.jit(lambda ref_params, rest, batch: reference_logprobs(
        graphdef, ref_params, rest, batch,
        prompts_per_micro=c.algo.micro_batch_size // c.rollout.num_samples,
        group_size=c.rollout.num_samples, temperature=settings.temperature,
        chunk=settings.logprob_chunk))
    return step, ref


@functools.partial(jax.jit, static_argnums=2)
def _take_groups(batch: UpdateBatch, order: jax.Array, group_size: int) -> tuple[UpdateBatch, ...]:
    """Mini-batches of whole groups: ``order[i]`` lists the prompts of mini-batch i."""
    rows = (order[..., None] * group_size + jnp.arange(group_size)).reshape(order.shape[0], -1)

    def take(x, index):
        return None if x is None else x[index]

    per_prompt = {"prompt_ids", "prompt_mask"}
    return tuple(UpdateBatch(**{f: take(getattr(batch, f), order[i] if f in per_prompt else rows[i])
                                for f in UpdateBatch._fields})
                 for i in range(order.shape[0]))


class Trainer:
    """Owns the models, compiled functions, data and checkpoints of one run.

    ``reward_fn`` replaces the AlphaAlign reward (``rewards.RewardFn``: records and
    completion texts in, [P, G] rewards and metrics out); then no reward model is built.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                 reward_fn: RewardFn | None = None):
        # First: a SIGTERM while models load or compile must still end in a clean exit.
        self._stop_signal: int | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        try:
            self.mesh = shd.make_mesh(dict(config.mesh))
        except ValueError as e:  # the axes do not fit the devices there are
            raise config_lib.ConfigValueError(
                f"config.mesh: {e}; axis sizes whose product is the {jax.device_count()} "
                "devices, or one of them -1 for the rest") from None
        config_lib.validate(config, num_devices=self.mesh.size)
        self.config = config
        self.workdir = pathlib.Path(workdir).absolute()
        c = config
        # Every input is checked before a weight loads or the workdir is written: the files
        # the config names, every training prompt, the context, the run being resumed.
        # Absolute, so a checkpoint names its tokenizer wherever it is read from.
        self.hf_dir = pathlib.Path(c.model.hf_dir or assets.fetch_smollm2(quiet=True)).absolute()
        self.model_config = dataclasses.replace(config_lib.check_inputs(c, self.hf_dir),
                                                scan_layers=bool(c.model.scan_layers))
        self.tokenizer = load_tokenizer(self.hf_dir, "config.model.hf_dir")
        self.prompts = self._prompt_batches()
        self.checkpoints = TrainCheckpoints(
            self.workdir / "checkpoints", model_config=self.model_config, hf_dir=self.hf_dir,
            max_to_keep=c.train.keep_checkpoints, async_save=c.train.async_checkpointing)
        self.checkpoints.check_latest_model()
        changes = self._resume_changes()
        self.lock = (RunDirLock(self.workdir, "trainer").acquire()
                     if jax.process_index() == 0 else None)
        if self.lock is not None:
            self._record_config(changes)
        policy = from_pretrained(self.hf_dir, dtype=c.model.dtype, mesh=self.mesh,
                                 param_dtype=c.model.param_dtype, config=self.model_config)
        self.graphdef, self.params, self.rest = nnx.split(policy, nnx.Param, ...)
        self.algorithm = algorithms.get(c.algo.name)
        self.ref_params = (jax.tree.map(jnp.copy, self.params)
                           if c.algo.beta > 0 or c.algo.kl_penalty > 0 else None)
        self.critic = Critic(c, policy, self.mesh) if self.algorithm.critic else None
        self.tx, self.lr_schedule = config_optimizer(c)
        self.opt_state = shd.init_optimizer(self.tx, self.params, self.mesh)
        self.sampler = Sampler(policy, self.tokenizer, mesh=self.mesh,
                               max_prompt_len=c.rollout.max_prompt_len)
        self.reward_fn = reward_fn or alphaalign_reward(c.reward, self.hf_dir, self.mesh)
        self._compile_train_step()
        self.step = 0
        self.selection = validation.Selection()  # the best validated checkpoint so far

    def _resume_changes(self) -> dict:
        """How this config differs from the one of the run in the workdir (``config.json``),
        when there is a run to resume (a checkpoint): a change that alters what its
        checkpoints hold is refused here, naming the fields, before anything is touched."""
        path = self.workdir / "config.json"
        if not path.is_file() or not saved_steps(self.checkpoints.directory):
            return {}
        try:
            recorded = json.loads(path.read_text())
        except ValueError as e:
            raise config_lib.ConfigValueError(
                f"--workdir={self.workdir}: its config.json is not JSON ({e}); restore it, or "
                "use another --workdir") from None
        refused, allowed = config_lib.resume_changes(recorded, self.config)
        if refused:
            raise config_lib.ConfigValueError(
                ", ".join(f"config.{f}" for f in refused) + f": differ from the run in "
                f"{self.workdir} (" + "; ".join(f"{f} {a!r} -> {b!r}" for f, (a, b) in
                                               refused.items())
                + "), which would change what its checkpoints hold; resume with the run's "
                "values (its config.json), or use another --workdir")
        return allowed

    def _record_config(self, changes: dict) -> None:
        """``config.json`` holds the values in force; each resume that changed some is a line
        of ``config_history.jsonl`` (when, what from and to)."""
        if changes:
            logging.warning("resuming with changed settings: %s", "; ".join(
                f"{f} {a!r} -> {b!r}" for f, (a, b) in changes.items()))
            with open(self.workdir / "config_history.jsonl", "a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"),
                                    "changed": {k: list(v) for k, v in changes.items()}})
                        + "\n")
        tmp = self.workdir / "config.json.tmp"
        tmp.write_text(self.config.to_json_best_effort(indent=2))
        tmp.replace(self.workdir / "config.json")

    def _prompt_batches(self) -> BalancedPrompts:
        """The training prompts: the bundled split through its tfds dataset (prepared by
        setup), or a user's ``data.train_file`` as JSONL; every prompt's token length is
        checked against ``rollout.max_prompt_len`` here, before the weights load."""
        c = self.config
        if c.data.train_file:
            origin = pathlib.Path(c.data.train_file)
            records: Sequence[PromptRecord] = load_jsonl(origin, lenient=c.data.lenient)
        else:
            origin = assets.assets_dir() / "data" / "train.jsonl"
            records = bundled_splits(origin.parent)["train"]
        if len(records) == 0:
            raise config_lib.ConfigValueError(f"config.data.train_file: {origin} holds no prompts"
                                              f"; {config_lib.PROMPT_ROWS}")
        rows = [records[i] for i in range(len(records))]
        if c.data.restate_forms:
            records = rows = restate_forms(rows, c.data.restate_forms)
        # Under every system prompt the run samples with (the warm start's scaffold too).
        systems = {c.system_prompt} | ({c.rft.system_prompt or c.system_prompt}
                                       if c.rft.rounds else set())
        # What the sampler encodes (the chat template holds any BOS: no special tokens)
        lengths = np.max([[len(ids) for ids in self.tokenizer(
            [self._prompt_text(r, system) for r in rows], add_special_tokens=False)["input_ids"]]
            for system in systems], axis=0)
        keep = fit_prompt_budget(rows, lengths, c.rollout.max_prompt_len, origin=origin,
                                 field="config.rollout.max_prompt_len", lenient=c.data.lenient)
        held = validation.held_back([rows[i] for i in keep], c.data.validation_prompts)
        self.validation_records = [rows[keep[i]] for i in sorted(held)]
        keep = [k for i, k in enumerate(keep) if i not in held]
        round_size = (math.ceil(c.rollout.oversample * c.train.prompts_per_step)
                      if c.rollout.dynamic_sampling else c.train.prompts_per_step)
        return BalancedPrompts.build(Subset(records, keep), [rows[i].label for i in keep],
                                     round_size, c.data.harmful_fraction, c.data.seed,
                                     str(origin))

    def _prompt_text(self, record: PromptRecord, system_prompt: str | None = None) -> str:
        """What the policy is conditioned on: chat prompt (under the training system prompt
        unless another is given), then the forced response start."""
        c = self.config
        return policy_prompt(record.prompt, self.tokenizer, c.template,
                             c.system_prompt if system_prompt is None else system_prompt,
                             c.rollout.response_prefix)

    # ----------------------------------------------------------------- compile
    def _compile_train_step(self) -> None:
        self.train_step_traces = 0

        def count_trace():
            self.train_step_traces += 1  # runs at trace time only: counts compilations

        self._train_step, self._ref_logprobs = update_programs(
            self.config, self.graphdef, self.tx, self.mesh,
            param_shardings=shd.shardings_of(self.params),
            opt_shardings=shd.shardings_of(self.opt_state), on_trace=count_trace)

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        """The pytrees a checkpoint holds: parameters and optimizer state (and the critic's)."""
        state = {"params": nnx.to_pure_dict(self.params), "opt_state": self.opt_state}
        if self.critic is not None:
            state.update(critic_params=nnx.to_pure_dict(self.critic.params),
                         critic_opt_state=self.critic.opt_state)
        return state

    def save(self, force: bool = False, validate: bool = True) -> dict[str, float]:
        """Checkpoint this step, validated first when the run holds prompts back and this is
        a checkpoint of the schedule (not one a preemption adds), so a resumed run validates
        the same steps; the selection travels in the checkpoint. Returns the validation
        metrics ({} without validation)."""
        metrics = self.validate() if self.validation_records and validate else {}
        if metrics and self.selection.offer(self.step, metrics):
            self.checkpoints.keep_also = {self.step}
        self.checkpoints.save(self.step, self._state(), {
            "step": self.step, "data": self.prompts.state(), "seed": int(self.config.train.seed),
            "selected": self.selection.state()}, force=force)
        if metrics and jax.process_index() == 0:
            (self.workdir / "selected.json").write_text(json.dumps(self.selection.state()))
            logging.info("validation at step %d: %s; selected step %d", self.step, ", ".join(
                f"{k} {v:.3f}" for k, v in metrics.items()), self.selection.step)
        return metrics

    def validate(self) -> dict[str, float]:
        """Greedy answers to the held-back training prompts under the training prompt, read
        by the reward's verifiers (validation.py)."""
        c = self.config
        texts = [scored_response(t, c.rollout.response_prefix) for t in self._greedy(
            [self._prompt_text(r) for r in self.validation_records], c.rollout.max_new_tokens)]
        return validation.scores(self.validation_records, texts,
                                 safety_config(c.reward).refusal)

    def restore_latest(self) -> bool:
        """Resume from the newest good checkpoint (checkpoint.TrainCheckpoints)."""
        found = self.checkpoints.restore_latest(self._state())
        if found is None:
            return False
        state, train_state = found
        nnx.replace_by_pure_dict(self.params, state["params"])
        self.opt_state = state["opt_state"]
        if self.critic is not None:
            nnx.replace_by_pure_dict(self.critic.params, state["critic_params"])
            self.critic.opt_state = state["critic_opt_state"]
        self.prompts.restore(train_state["data"])
        self.step = int(train_state["step"])
        self.selection = validation.Selection.from_state(train_state.get("selected"))
        self.checkpoints.keep_also = {self.selection.step}
        return True

    # ------------------------------------------------------------------- a step
    def _sample_round(self, records: list[PromptRecord], round_index: int):
        """Rollouts of one prompt batch and their rewards: (rollouts, texts, [P, G], metrics)."""
        c = self.config
        # The RNG is a function of (seed, step, round), so a resumed run samples alike.
        seed = int(c.train.seed) * 1_000_003 + self.step
        if round_index:
            seed = int(np.random.SeedSequence([seed, round_index]).generate_state(1)[0] >> 1)
        t0 = time.perf_counter()
        rollouts, texts = self._rollouts(records, seed)
        t1 = time.perf_counter()
        group = c.rollout.num_samples
        rewards, metrics = self.reward_fn(records, texts)
        rewards = np.asarray(rewards, np.float32)
        if rewards.shape != (len(records), group):
            raise ValueError(f"reward_fn returned shape {rewards.shape}, expected "
                             f"{(len(records), group)} (prompts, rollouts per prompt)")
        timing = {"time/rollout_s": t1 - t0, "time/reward_s": time.perf_counter() - t1,
                  **{f"time/rollout_{phase}": self.sampler.last_timing[phase]
                     for phase in ("prefill_s", "decode_s", "detokenize_s")}}
        return rollouts, texts, rewards, metrics, timing

    def _rollouts(self, records: list[PromptRecord], seed: int, system_prompt: str | None = None,
                  temperature: float = 0.0) -> tuple[Rollouts, list[list[str]]]:
        """G rollouts of each prompt with the current parameters (at ``temperature``, 0 =
        the rollout config's), and their texts grouped by prompt as the verifiers score them
        (response prefix included)."""
        c = self.config
        rollouts = self.sampler.generate(
            [self._prompt_text(r, system_prompt) for r in records],
            max_new_tokens=c.rollout.max_new_tokens, num_samples=c.rollout.num_samples,
            temperature=temperature or c.rollout.temperature, top_p=c.rollout.top_p,
            top_k=c.rollout.top_k, seed=seed, stop_strings=tuple(c.rollout.stop_strings),
            state=nnx.state(nnx.merge(self.graphdef, self.params, self.rest)))
        group, prefix = c.rollout.num_samples, c.rollout.response_prefix
        texts = [scored_response(t, prefix) for t in rollouts.texts]
        return rollouts, [texts[i * group:(i + 1) * group] for i in range(len(records))]

    def _plain_answers(self, records: list[PromptRecord], budget: int) -> list[str]:
        """The policy's greedy answer to each bare question (its chat template, no safety
        template or system prompt) in at most ``budget`` new tokens."""
        return self._greedy(
            [build_chat_prompt(r.prompt, self.tokenizer, PROMPT_PLACEHOLDER) for r in records],
            budget)

    def _greedy(self, prompts: list[str], max_new_tokens: int) -> list[str]:
        """The current policy's greedy completions of ``prompts``."""
        return list(self.sampler.generate(
            prompts, max_new_tokens=max_new_tokens, greedy=True, num_samples=1,
            state=nnx.state(nnx.merge(self.graphdef, self.params, self.rest))).texts)

    def warm_start(self) -> dict[str, float]:
        """The RFT warm start (``config.rft``, rl/rft.py): sample under the scaffold, keep
        the verified completions, fine-tune on them under the training prompt. Deterministic
        in the seed, so a run killed during it redoes the same warm start."""
        c = self.config
        t0 = time.perf_counter()
        encode = lambda records: self.sampler.encode([self._prompt_text(r) for r in records])
        encode_completion = lambda text: self.tokenizer(text, add_special_tokens=False)[
            "input_ids"]

        def next_batch():  # a stop signal ends the warm start here, with nothing saved
            self._stop_requested("during the RFT warm start")
            return self.prompts.next()
        if c.rft.targets_file:
            logging.info("RFT warm start: the kept samples of %s", c.rft.targets_file)
            collected = rft.load(
                c.rft.targets_file, response_prefix=c.rollout.response_prefix,
                encode_prompts=encode, width=c.rollout.max_new_tokens,
                encode_completion=encode_completion, refusal=safety_config(c.reward).refusal)
        elif c.rft.targets_from == "labels":
            logging.info("RFT warm start: targets from the labels of %d batches", c.rft.rounds)
            collected = rft.collect_labelled(c, next_batch, answer=self._plain_answers,
                                             encode_prompts=encode,
                                             encode_completion=encode_completion)
        else:
            logging.info("RFT warm start: sampling %d batches under the scaffold", c.rft.rounds)
            collected = rft.collect(c, next_batch, sample=self._rollouts, encode=encode)
        t1 = time.perf_counter()
        tx, _ = make_optimizer(learning_rate=c.rft.learning_rate, total_steps=1, warmup_steps=0,
                               schedule="constant", weight_decay=0.0, b1=c.optim.b1,
                               b2=c.optim.b2, eps=c.optim.eps, max_grad_norm=c.optim.max_grad_norm)
        opt_state = shd.init_optimizer(tx, self.params, self.mesh)
        sft_step, _ = update_programs(
            c, self.graphdef, tx, self.mesh, param_shardings=shd.shardings_of(self.params),
            opt_shardings=shd.shardings_of(opt_state),
            settings=rft.loss_settings(loss_settings(c)))

        def step(state, b):
            self._stop_requested("during the RFT warm start")
            zeros = np.zeros(b["completion_ids"].shape, np.float32)
            batch = self._device_batch(b["prompt_ids"], b["prompt_mask"], b["completion_ids"],
                                       b["completion_mask"], zeros, zeros[:, 0])
            params, opt_state, m = sft_step(state[0], self.rest, state[1], batch)
            return (params, opt_state), m  # read once an epoch by fine_tune: no sync a step

        (self.params, _), epoch_loss = rft.fine_tune(
            c, collected.targets, [t["label"] for t in collected.kept], (self.params, opt_state),
            step,
            width_of=lambda n: min(bucket(n, 16), c.rollout.max_prompt_len))
        metrics = {"rft/sampled": sum(collected.counts.values()),
                   "rft/targets": len(collected.targets),
                   **{f"rft/rejected_{k}": v for k, v in collected.counts.items() if k != "kept"},
                   "rft/targets_harmful": sum(t["label"] == "harmful" for t in collected.kept),
                   **{f"rft/nll_epoch{i + 1}": v for i, v in enumerate(epoch_loss)},
                   "time/rft_sampling_s": t1 - t0, "time/rft_update_s": time.perf_counter() - t1}
        if jax.process_index() == 0:
            (self.workdir / "rft.json").write_text(json.dumps(metrics, indent=2))
            (self.workdir / "rft_targets.jsonl").write_text(
                "".join(json.dumps(t) + "\n" for t in collected.kept))
        return metrics

    def _collect(self):
        """This step's groups: one sampling round, or with dynamic sampling, rounds until
        ``prompts_per_step`` groups have reward variance (filled up with masked-out groups
        when the round budget runs out). Metrics average over every round sampled."""
        c = self.config
        group, want = c.rollout.num_samples, c.train.prompts_per_step
        dynamic = c.rollout.dynamic_sampling
        kept, dropped, per_round, with_signal = [], [], [], []
        timing = collections.Counter()
        generated = []
        for round_index in range(c.rollout.max_sampling_rounds if dynamic else 1):
            records = self.prompts.next()
            rollouts, texts, rewards, metrics, t = self._sample_round(records, round_index)
            generated.append(rollouts)
            per_round.append(metrics)
            timing.update(t)
            with_signal.extend(np.ptp(rewards, axis=1) > 0)
            for p, record in enumerate(records):
                part = (record, rollouts.take(range(p * group, (p + 1) * group)), texts[p],
                        rewards[p])
                (kept if not dynamic or np.ptp(rewards[p]) > 0 else dropped).append(part)
            if len(kept) >= want:
                break
        filler = max(0, want - len(kept))
        groups = kept[:want] + dropped[:filler]
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
                self.model_config, len(r) // group, r.prompt_ids.shape[1], len(r),
                int(r.lengths.max())) for r in generated),
        })
        if dynamic:
            metrics.update({"dynamic/rounds": len(per_round),
                            "dynamic/groups_kept": min(len(kept), want),
                            "dynamic/groups_dropped": len(dropped),
                            "dynamic/filler_groups": filler,
                            "dynamic/extra_rollouts": (len(per_round) - 1) * len(records) * group})
        return groups, filler, metrics

    def _log_samples(self, groups) -> None:
        if jax.process_index() != 0:
            return
        with open(self.workdir / "samples.jsonl", "a") as f:
            for record, _, texts, rewards in groups[:self.config.train.log_samples]:
                f.write(json.dumps({"step": self.step + 1, "label": record.label,
                                    "prompt": record.prompt, "completion": texts[0],
                                    "reward": float(rewards[0])}) + "\n")

    def _device_batch(self, prompt_ids, prompt_mask, completion_ids, completion_mask, old_logp,
                      advantages) -> UpdateBatch:
        """Host arrays in the UpdateBatch layout ([P, L] prompts, [P * G, C] rows) on the
        mesh, batch-sharded."""
        rows = len(completion_ids)
        per_row = shd.batch_sharding(self.mesh, 2, rows)
        prompt_ids, prompt_mask = jax.device_put(
            (prompt_ids.astype(np.int32), prompt_mask.astype(bool)),
            shd.batch_sharding(self.mesh, 2, len(prompt_ids)))
        completion_ids, completion_mask, old_logp = jax.device_put(
            (completion_ids.astype(np.int32), completion_mask.astype(np.float32),
             old_logp.astype(np.float32)), per_row)
        return UpdateBatch(prompt_ids, prompt_mask, completion_ids, completion_mask, old_logp,
                           jnp.zeros_like(old_logp),
                           jax.device_put(advantages.astype(np.float32),
                                          shd.batch_sharding(self.mesh, 1, rows)))

    def _update_batch(self, rollouts: Rollouts, advantages: np.ndarray,
                      loss_rows: np.ndarray) -> UpdateBatch:
        """Device arrays for the update: each group's prompt once, at the sampler's bucketed
        width, and the completions cut to a bucket of the longest one (a few static widths
        each, each pair compiled once), not ``max_prompt_len`` and ``max_new_tokens``: the cut
        columns are padding, outside every loss and metric. Rows outside ``loss_rows``
        (dynamic-sampling filler) are masked out of the loss."""
        group = self.config.rollout.num_samples
        cols = slice(0, min(bucket(int(rollouts.lengths.max()), 16),
                            rollouts.completion_ids.shape[1]))
        batch = self._device_batch(rollouts.prompt_ids[::group], rollouts.prompt_mask[::group],
                                   rollouts.completion_ids[:, cols],
                                   (rollouts.completion_mask & loss_rows[:, None])[:, cols],
                                   rollouts.logprobs[:, cols], advantages)
        if self.ref_params is not None:
            batch = batch._replace(ref_logp=self._ref_logprobs(self.ref_params, self.rest, batch))
        return batch

    def _mini_batches(self, batch: UpdateBatch, epoch: int) -> list[UpdateBatch]:
        """``algo.mini_batches`` shares of whole groups, shuffled afresh each epoch (the order
        a function of seed, step and epoch, so a resumed run updates alike)."""
        n = self.config.algo.mini_batches
        if n == 1:
            return [batch]
        prompts = batch.prompt_ids.shape[0]
        order = np.random.default_rng([self.config.train.seed, self.step, epoch]).permutation(
            prompts)
        return list(_take_groups(batch, order.reshape(n, prompts // n),
                                 self.config.rollout.num_samples))

    def train_one_step(self) -> dict[str, float]:
        c = self.config
        start = time.perf_counter()
        groups, filler, metrics = self._collect()
        self._log_samples(groups)
        rewards = np.stack([g[3] for g in groups])
        rollouts = Rollouts.concat([g[1] for g in groups])
        group = c.rollout.num_samples
        loss_rows = np.arange(len(groups) * group) < (len(groups) - filler) * group
        t0 = time.perf_counter()
        if self.critic is None:  # the algorithm's estimator, from the groups' rewards
            advantages = self.algorithm.advantages(rewards, c.algo)
            update = self._update_batch(rollouts, advantages.reshape(-1), loss_rows)
        else:  # GAE over the critic's values, the reward on the last token
            update = self._update_batch(rollouts, np.zeros(len(rollouts), np.float32), loss_rows)
            update, critic_metrics = self.critic.estimate(update, rewards.reshape(-1))
            metrics.update({k: float(v) for k, v in shd.to_host(critic_metrics).items()})
        jax.block_until_ready(update)  # the reference pass too, so its time is its own
        t1 = time.perf_counter()
        step_metrics = {}
        for epoch in range(c.algo.num_updates):
            for mini_batch in self._mini_batches(update, epoch):
                self.params, self.opt_state, m = self._train_step(self.params, self.rest,
                                                                  self.opt_state, mini_batch)
                if self.critic is not None:
                    m = {**m, **self.critic.update(mini_batch)}
                step_metrics = step_metrics or m  # the first update's, on fresh rollouts
        host = {k: float(v) for k, v in shd.to_host(step_metrics).items()}
        t2 = time.perf_counter()
        if not (host.pop("finite") and host.pop("critic/finite", True)):
            raise NonFiniteError(
                f"step {self.step}: non-finite loss ({host['loss']}) or gradient norm "
                f"({host['grad_norm']}); the update was not applied and no checkpoint was "
                f"written (latest good checkpoint: {self.checkpoints.last_good()})")
        host.update(metrics)
        host.update({
            "time/reference_s": t1 - t0,
            "time/update_s": t2 - t1,
            "time/step_s": time.perf_counter() - start,
            "update/prompt_width": float(rollouts.prompt_ids.shape[1]),
            "update/completion_width": float(update.completion_ids.shape[1]),
            "lr": float(self.lr_schedule(self.step * c.algo.num_updates * c.algo.mini_batches)),
            "compiles/train_step": self.train_step_traces,
        })
        host["time/host_s"] = host["time/step_s"] - sum(
            host[k] for k in ("time/rollout_s", "time/reward_s", "time/reference_s",
                              "time/update_s"))
        host.update(self._phase_flops(update))
        for phase in ("rollout", "reference", "update"):
            host[f"flops_per_s/{phase}"] = host[f"flops/{phase}"] / max(host[f"time/{phase}_s"],
                                                                      1e-9)
        self.step += 1
        return host

    def _phase_flops(self, batch: UpdateBatch) -> dict[str, float]:
        """Model FLOPs (models/flops.py) of the reference phase (reference log-probs, the
        critic's values) and the update phase (forward + backward, + a forward with remat,
        per epoch; the critic's too) on this step's batch."""
        c = self.config
        shape = (batch.prompt_ids.shape[0], batch.prompt_ids.shape[1],
                 batch.completion_ids.shape[0], batch.completion_ids.shape[1])
        passes = (3 + bool(c.model.remat)) * c.algo.num_updates
        models = [self.model_config] + ([self.critic.model_config] if self.critic else [])
        forward = [grouped_pass_flops(m, *shape) for m in models]
        return {"flops/reference": forward[0] * (self.ref_params is not None) + sum(forward[1:]),
                "flops/update": passes * sum(forward)}

    # --------------------------------------------------------------------- loop
    def _on_signal(self, signum, _frame) -> None:
        logging.warning("signal %d received: will checkpoint after this step and exit", signum)
        self._stop_signal = signum

    def _warm_started_reference(self, fresh: bool) -> None:
        """After a warm start the KL reference is the warm-started policy (RL's starting point,
        as after SFT), not the base model. It is written to ``<workdir>/warm_start``, which
        checkpoint rotation never deletes, and read back from there on resume."""
        c, path = self.config, self.workdir / "warm_start"
        if fresh:
            if path.exists() and jax.process_index() == 0:  # a cut-short warm start, redone
                shutil.rmtree(path)
            save_model(path, nnx.merge(self.graphdef, self.params, self.rest),
                       tokenizer_dir=self.hf_dir)
            if self.ref_params is not None:
                self.ref_params = jax.tree.map(jnp.copy, self.params)
        elif self.ref_params is not None:  # the KL reference: verified as checkpoints are
            verify_checkpoint(path, "the warm-started policy (the run's KL reference)")
            model = load_model(path, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                               mesh=self.mesh, expect_config=self.model_config)
            self.ref_params = nnx.split(model, nnx.Param, ...)[1]

    def _stop_requested(self, where: str) -> None:
        """Raise :class:`Preempted` if a stop signal came, naming what was cut short."""
        if self._stop_signal is not None:
            raise Preempted(f"preempted {where}: nothing was saved (it is redone alike on "
                            "resume); re-run the same command to resume")

    def _start(self) -> None:
        """Resume from the newest verified checkpoint, or run the warm start and save it as
        step 0, written and sealed before anything says it is saved. A stop signal during the
        warm start ends it at its next batch with nothing saved."""
        c = self.config
        warm_start = bool(c.rft.rounds or c.rft.targets_file)
        self._stop_requested("while loading")
        if self.restore_latest():
            if warm_start:
                self._warm_started_reference(fresh=False)
        elif warm_start:
            metrics = self.warm_start()
            self._warm_started_reference(fresh=True)
            self.save(force=True)  # step 0: the warm-started policy
            self.checkpoints.seal()
            logging.info("RFT warm start: %d targets from %d samples, NLL %s; saved as step 0",
                         metrics["rft/targets"], metrics["rft/sampled"],
                         " -> ".join(f"{metrics[f'rft/nll_epoch{i + 1}']:.3f}"
                                     for i in range(c.rft.epochs)))
        if self._stop_signal is not None:
            newest = self.checkpoints.step_dir(self.step)
            raise Preempted("preempted while starting: " + (
                f"the newest checkpoint, {newest}, is saved" if newest.is_dir()
                else "nothing was saved") + "; re-run the same command to resume")

    def run(self) -> pathlib.Path:
        c = self.config
        writer = None
        silent = 0  # consecutive steps whose groups all had one reward each
        try:
            self._start()
            writer = (MetricsWriter(self.workdir, total_steps=c.train.steps,
                                    initial_step=self.step)
                      if jax.process_index() == 0 else None)
            while self.step < c.train.steps:
                metrics = self.train_one_step()
                silent = silent + 1 if metrics.get("reward/groups_with_signal", 1) == 0 else 0
                if silent == NO_SIGNAL_STEPS and self.critic is None:
                    logging.warning(
                        "no learning signal: in each of the last %d steps every group's rollouts "
                        "got the same reward, so every advantage is 0 and the policy does not "
                        "change; make the rollouts differ in reward (a warm start, rft.rounds; "
                        "rollout.response_prefix or system_prompt so the format is written; a "
                        "higher rollout.temperature or rollout.num_samples) or drop such groups "
                        "(rollout.dynamic_sampling=True)", NO_SIGNAL_STEPS)
                self.checkpoints.seal_finished(self.step)
                preempted = (self._stop_signal is not None
                             or self.checkpoints.reached_preemption(self.step))
                t0 = time.perf_counter()
                if self.step % c.train.checkpoint_every == 0 or preempted or \
                        self.step == c.train.steps:
                    metrics.update(self.save(
                        force=preempted, validate=self.step % c.train.checkpoint_every == 0
                        or self.step == c.train.steps))
                metrics["time/checkpoint_s"] = time.perf_counter() - t0  # async: the blocking part
                if writer is not None:
                    writer.write(self.step, metrics)
                if preempted:
                    self.checkpoints.seal()
                    raise Preempted(f"preempted: checkpoint {self.checkpoints.step_dir(self.step)}"
                                    " saved; re-run the same command to resume")
        finally:
            try:
                self.checkpoints.seal()
            finally:
                try:  # a full disk can fail the metrics' last flush: the lock goes all the same
                    if writer is not None:
                        writer.close(plot=c.train.plot)
                finally:
                    if self.lock is not None:
                        self.lock.release()
        return self.workdir


# ---------------------------------------------------------------- after the last step
def evaluate_final(workdir: pathlib.Path, step: int, prompts: int,
                   new_tokens: int) -> pathlib.Path:
    """A small held-out evaluation of checkpoint ``step`` (``train.eval_prompts`` prompts of
    the harmful and the over-refusal sets, greedy, under the run's prompt; no prefill attack,
    pass@k or judge): alphaalign_jax/evaluate.py's API in this process. Returns results.md."""
    from alphaalign_jax import evaluate

    out = workdir / "eval"
    settings = evaluate.GenerationSettings.from_run(workdir, max_new_tokens=new_tokens,
                                                    num_samples=1)
    splits = bundled_splits(assets.assets_dir() / "data")
    harmful = list(splits["eval_harmful"])[:prompts]
    benign = list(splits["eval_overrefusal"])[:prompts]
    evaluator = evaluate.Evaluator(workdir / "checkpoints" / str(step), out / "model", settings,
                                   reward_reading=evaluate.reward_reading(workdir))
    results = evaluator.run(harmful, benign, None, prefill=(), probe=())
    name = f"step {step}"
    (out / "results.json").write_text(json.dumps({name: results}, indent=2))
    (out / "results.md").write_text(evaluate.markdown_table(
        {name: results}, {name: evaluator.sizes},
        {"harm": f"Greedy answers of {new_tokens} new tokens at most, {len(harmful)} prompts: "
                 "a check that evaluation runs, not a measurement (run alphaalign_jax.evaluate "
                 "for that)."}))
    return out / "results.md"


def export_final(workdir: pathlib.Path, step: int) -> pathlib.Path:
    """Checkpoint ``step`` as a Hugging Face directory, ``<workdir>/hf``, by
    tools/convert_checkpoint.py's orbax-to-hf (the run's chat template, stop string, card)."""
    import importlib.util

    path = pathlib.Path(__file__).resolve().parent.parent / "tools" / "convert_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_checkpoint", path)
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    out = workdir / "hf"
    if out.exists():  # the run's own earlier export, of an earlier last step
        shutil.rmtree(out)
    return pathlib.Path(convert.orbax_to_hf(workdir / "checkpoints" / str(step), out))


def finish(config: ml_collections.ConfigDict, workdir: pathlib.Path) -> dict[str, pathlib.Path]:
    """What ``train.eval_prompts`` and ``train.export_hf`` ask for after the last step, and
    where each artefact of the run is."""
    t = config.train
    step = int(t.steps)
    if t.select == "validation":
        step = int(json.loads((workdir / "selected.json").read_text())["step"])
        logging.info("the run's result: step %d, selected on the held-back training prompts "
                     "(%s)", step, workdir / "selected.json")
    found = {"checkpoint": workdir / "checkpoints" / str(step),
             "metrics": workdir / "metrics.jsonl", "curves": workdir / "curves.png",
             "samples": workdir / "samples.jsonl", "tensorboard": workdir / "tensorboard"}
    if config.rft.rounds or config.rft.targets_file:
        found["warm start"] = workdir / "warm_start"
    if jax.process_index() == 0:
        if t.eval_prompts:
            logging.info("evaluating step %d on %d held-out prompts a set", step, t.eval_prompts)
            found["evaluation"] = evaluate_final(workdir, step, int(t.eval_prompts),
                                                 int(t.eval_new_tokens))
        if t.export_hf:
            logging.info("exporting step %d to %s", step, workdir / "hf")
            found["HF export"] = export_final(workdir, step)
    return {k: v for k, v in found.items() if v.exists()}


CONFIG_FLAG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                              lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, plots.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host "
                  "TPU/GPU: every host runs the same command and the same host-side work).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (auto on Cloud TPU).")
flags.DEFINE_integer("num_processes", None, "Number of processes (auto on Cloud TPU).")
flags.DEFINE_integer("process_id", None, "This process's index (auto on Cloud TPU).")


# Errors of what the user gave (the command line, the config, its files, the workdir's run),
# found while the Trainer is made: before a weight loads or the workdir is written.
INPUT_ERRORS = (config_lib.ConfigValueError, ConfigError, CheckpointError, DataError,
                PromptTooLong, FileNotFoundError)


def main(argv: list[str]) -> None:
    del argv
    if not FLAGS.workdir or FLAGS.workdir.startswith("-"):
        config_lib.usage_error(
            f"train: --workdir: {'missing' if not FLAGS.workdir else repr(FLAGS.workdir)}"
            f"{'' if not FLAGS.workdir else ' is a flag, not a directory'}; the run "
            "directory, e.g. --workdir=runs/smollm2")
    if not FLAGS["verbosity"].present:  # status at INFO; orbax's per-file INFO lines hidden
        logging.set_verbosity(logging.INFO)
        logging.get_absl_handler().addFilter(_not_library_info)
    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    workdir = _train(CONFIG_FLAG.value, FLAGS.workdir)
    artefacts = finish(CONFIG_FLAG.value, workdir)
    if jax.process_index() == 0:
        width = max(map(len, artefacts))
        print("\n".join(f"{name:<{width}}  {path}" for name, path in artefacts.items()))
        if "smoke" in _config_options(sys.argv):
            print("smoke run done: every phase ran (plumbing), which says nothing about "
                  "learning; the main command is the config without :smoke")


def _train(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    """Make the Trainer (every input checked) and run it; each way it can end but the last
    step is one line."""
    try:
        return _make_and_run(config, workdir)
    except OSError as e:
        if not disk_full(e):
            raise
        sys.exit(f"train: {workdir}: the disk is full ({first_line(e, 200)}); free space, then "
                 "re-run the same command to resume from the last good checkpoint")


def _make_and_run(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
    try:
        trainer = Trainer(config, workdir)
    except RunDirLocked as e:
        sys.exit(f"train: {e}")
    except DataError as e:
        config_lib.usage_error(f"train: {e}; {config_lib.PROMPT_ROWS}")
    except INPUT_ERRORS as e:
        config_lib.usage_error(f"train: {e}")
    try:
        return trainer.run()
    except Preempted as e:
        logging.warning("%s (%s)", e, workdir)
        sys.exit(0)
    except (config_lib.ConfigValueError, DataError, PromptTooLong) as e:
        config_lib.usage_error(f"train: {e}")  # found only now (the warm start's targets)
    except (CheckpointError, CheckpointWriteError, NonFiniteError, FileNotFoundError) as e:
        sys.exit(f"train: {e}")  # a condition of the run: one line, no traceback


def _not_library_info(record) -> bool:
    """The absl handler's filter: INFO lines of this package only (orbax writes one a file)."""
    return record.levelno > logging.converter.STANDARD_INFO or "/alphaalign_jax/" in record.pathname


def _config_options(argv: Sequence[str]) -> set[str]:
    """The ``ARG`` words of ``--config=FILE:ARG`` on the command line."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    return {w.strip() for w in given[-1].partition(":")[2].split(",")} if given else set()


def _help(argv: Sequence[str]) -> NoReturn:
    """``train --help``: the command, every config field with the config file's value and its
    meaning (config.field_help, from the comments of config.base_config), the file's options."""
    import importlib.util

    given = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    path = pathlib.Path(given[-1].partition(":")[0] if given else
                        pathlib.Path(__file__).resolve().parent.parent / "configs" /
                        "smollm2_135m_cpu.py")
    spec = importlib.util.spec_from_file_location("config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(given[-1].partition(":")[2] if given else "").to_dict()
    print(f"usage: python -m alphaalign_jax.train --config=FILE[:OPTIONS] --workdir=DIR "
          "[--config.SECTION.FIELD=VALUE ...]\n\n"
          "example:\n  python -m alphaalign_jax.train --config=configs/smollm2_135m_cpu.py:smoke "
          "--workdir=runs/smoke\n  python -m alphaalign_jax.train "
          "--config=configs/smollm2_135m_cpu.py --workdir=runs/smollm2 --config.train.steps=20\n")
    options = getattr(module, "OPTIONS", {})
    print(f"options of {path} (comma-separated after ':'):")
    for name, algorithm in algorithms.ALGORITHMS.items():
        print(f"  {name:<14} {algorithm.summary}" + (" (the default)" if name == "grpo" else ""))
    for name, meaning in options.items():
        print(f"  {name:<14} {meaning}")
    print(f"\nconfig fields (--config.FIELD=VALUE; the value {path.name} gives, then meaning):")
    meanings = config_lib.field_help()

    def walk(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from walk(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    for name, value in walk(c):
        shown = repr(value)
        shown = shown if len(shown) <= 24 else shown[:21] + "..."
        print(f"  {name:<28} {shown:<24} {meanings.get(name, '')}")
    print("\nflags:\n  --workdir  " + FLAGS["workdir"].help + "\n  --distributed  "
          + FLAGS["distributed"].help)
    sys.exit(0)


def _flag_error(program: str, error: flags.Error) -> str:
    """absl's message of a bad flag as ``<flag or field>: <what is wrong>; <what is allowed>``."""
    import re

    text = str(error)
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        if name.startswith("config."):
            return (f"{name}: not a field of the config; the fields are in the config file's "
                    "get_config() and alphaalign_jax/config.py")
        return (f"--{name}: unknown flag; the flags are --config=FILE[:OPTIONS], "
                f"--config.<field>=VALUE, {', '.join(PROGRAM_FLAGS[program])} (--helpfull "
                "lists them all)")
    if text.startswith("Missing value for flag "):
        return f"{text.rsplit(' ', 1)[-1]}: missing value; --flag=VALUE"
    found = re.match(r"flag --([\w.]+)=(.*?): (.*)", text, flags=re.DOTALL)
    if not found:
        return text.splitlines()[-1]
    name, value, reason = found.groups()
    name = name if name.startswith("config.") else f"--{name}"
    lines = [line for line in reason.splitlines() if line.strip()]
    if "must have a value other than None" in reason:
        return f"{name}: missing; required" + (", e.g. --config=configs/smollm2_135m_cpu.py"
                                               if name == "--config" else "")
    if "Error whilst parsing config file" in reason:  # the config file's own error: its last line
        message = lines[-1].split(": ", 1)[-1]
        return message.replace("--config=FILE:", f"--config={value.split(':', 1)[0]}:")
    for says, wants in (("invalid literal for int()", "an int"),
                        ("could not convert string to float", "a number"),
                        ("Non-boolean argument", "True or False"),
                        ("as a ConfigDict", "a value")):
        if says in reason:
            return (f"{name}: a section, not a value; set its fields, --{name}.<field>=VALUE"
                    if wants == "a value" else f"{name}: {value!r} is not {wants}; {wants}")
    return f"{name}: {lines[-1] if lines else reason}"


PROGRAM_FLAGS = {"train": ("--workdir", "--distributed", "--coordinator_address",
                           "--num_processes", "--process_id"),
                 "aot": ("--topology", "--search", "--json")}


def parse_flags(argv: list[str], program: str = "train") -> list[str]:
    """absl's parser with every error one line, ``PROGRAM: <flag or field>: <what is wrong>;
    <what is allowed>``, exit status 2 (absl's own is a usage dump or a traceback): a config
    file that is not there or does not load, an unknown flag, config option or field, a value
    of the wrong type. And the algorithm chosen where its settings can apply before the
    overrides (``--config=FILE:ppo``)."""
    if program == "train" and {"--help", "-h", "--helpfull", "-help"} & set(argv[1:]):
        _help(argv)
    named = [a for a in argv if a.startswith("--config.algo.name")]
    if named:
        config_lib.usage_error(
            f"{program}: config.algo.name: set on its own; choose the algorithm with "
            f"--config=FILE:NAME (one of {', '.join(algorithms.ALGORITHMS)}), so the settings "
            "it fixes apply before your --config.* overrides")
    given = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    if given is None and any(a.startswith("--config.") for a in argv):
        config_lib.usage_error(f"{program}: --config: missing; required before --config.* "
                               "overrides, e.g. --config=configs/smollm2_135m_cpu.py")
    if given is not None and not pathlib.Path(given.split(":", 1)[0]).is_file():
        configs = pathlib.Path(__file__).resolve().parent.parent / "configs"
        known = sorted(f"configs/{p.name}" for p in configs.glob("*.py")
                       if not p.name.startswith("_"))
        config_lib.usage_error(f"{program}: --config={given}: no such config file; one of "
                               f"{', '.join(known)}, or the path of a file with get_config()")
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        config_lib.usage_error(f"{program}: {_flag_error(program, e)}")
    except (AttributeError, KeyError) as e:  # ml_collections' error for a field it lacks
        name = str(e).strip("\"' ")
        field = [a.split("=")[0][2:] for a in argv
                 if a.startswith("--config.") and name in a.split("=")[0].split(".")]
        config_lib.usage_error(f"{program}: {field[0] if field else name}: not a field of the "
                               "config; the fields are in the config file's get_config() and "
                               "alphaalign_jax/config.py")
    config = CONFIG_FLAG.value
    if config is not None and not isinstance(config, ml_collections.ConfigDict):
        try:  # ml_collections keeps a file's load error until the config is read
            getattr(config, "model")
        except Exception as e:  # noqa: BLE001 (whatever the file raised)
            lines = [line for line in str(e).splitlines() if line.strip()]
            config_lib.usage_error(f"{program}: --config={given}: cannot be loaded "
                                   f"({lines[-1].strip() if lines else e!r}); a Python file "
                                   "whose get_config() returns the config")
    return rest


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)

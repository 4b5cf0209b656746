"""The RL trainer: a step is prompts -> rollouts -> rewards -> reference log-probs ->
advantages -> updates (``train_one_step``, each line a stage); ``run`` loops it with
checkpoints, resume and clean stops.

Re-running the same command resumes from the latest checkpoint in the workdir (parameters,
optimizer states, critic, step, data position; the RNG is a function of the step), and
SIGTERM (TPU preemption) saves and exits cleanly. docs/architecture.md draws the stages.
"""

from __future__ import annotations

import contextlib
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from alphaalign_jax import assets, validation, warm_start
from alphaalign_jax import config as config_lib
from alphaalign_jax import settings as settings_lib
from alphaalign_jax import sharding as shd
from alphaalign_jax.checkpoint import TrainCheckpoints, saved_steps
from alphaalign_jax.data.training import training_prompts
from alphaalign_jax.metrics import MetricsWriter, finish_step
from alphaalign_jax.models import from_pretrained, load_tokenizer
from alphaalign_jax.models.flops import step_phase_flops
from alphaalign_jax.policy import Policy
from alphaalign_jax.rewards import RewardFn, alphaalign_reward
from alphaalign_jax.rl import algorithms
from alphaalign_jax.rl.batches import mini_batches, rollout_batch
from alphaalign_jax.rl.collect import SignalWatch, collect_groups, round_seed, sample_round
from alphaalign_jax.rl.critic import Critic
from alphaalign_jax.rl.optim import optimizer
from alphaalign_jax.rl.programs import update_programs
from alphaalign_jax.rl.reference import Reference
from alphaalign_jax.rl.step import NonFiniteError, UpdateBatch
from alphaalign_jax.rundir import open_run
from alphaalign_jax.stop import Preempted, StopSignal


class Trainer:
    """The models, compiled programs, data and checkpoints of one run. ``reward_fn`` (a
    ``rewards.RewardFn``) replaces the AlphaAlign reward: then no reward model is built."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                 reward_fn: RewardFn | None = None):
        self.stop = StopSignal()  # first: a SIGTERM while models load still ends cleanly
        self.mesh = settings_lib.mesh(config)
        config_lib.validate(config, num_devices=self.mesh.size)
        self.config, c = config, config
        self.settings = s = settings_lib.from_config(c)
        # Every input is checked before a weight loads or the workdir is written. Absolute,
        # so a checkpoint names its tokenizer wherever it is read from.
        self.workdir = pathlib.Path(workdir).absolute()
        self.hf_dir = pathlib.Path(c.model.hf_dir or assets.fetch_smollm2(quiet=True)).absolute()
        self.model_config = config_lib.run_architecture(c, config_lib.check_inputs(c, self.hf_dir))
        tokenizer = load_tokenizer(self.hf_dir, "config.model.hf_dir")
        self.prompts, held_back = training_prompts(c, tokenizer, s.prompt)
        self.validator = validation.Validator(
            held_back, self.workdir, response_prefix=s.prompt.response_prefix,
            max_new_tokens=s.sampling.max_new_tokens, refusal=s.reward.safety.refusal)
        self.checkpoints = TrainCheckpoints(
            self.workdir / "checkpoints", model_config=self.model_config, hf_dir=self.hf_dir,
            max_to_keep=c.train.keep_checkpoints, async_save=c.train.async_checkpointing)
        self.checkpoints.check_latest_model()
        self.lock = open_run(self.workdir, c, resume=bool(saved_steps(self.checkpoints.directory)))
        model = from_pretrained(self.hf_dir, dtype=c.model.dtype, mesh=self.mesh,
                                param_dtype=c.model.param_dtype, config=self.model_config)
        self.policy = Policy(model, tokenizer, self.mesh, s.prompt, c.rollout.max_prompt_len)
        self.algorithm = algorithms.get(c.algo.name)
        self.critic = Critic(s.critic, model, self.mesh) if self.algorithm.critic else None
        self.tx, self.lr_schedule = optimizer(s.optimizer)
        self.opt_state = shd.init_optimizer(self.tx, self.policy.params, self.mesh)
        self.reward_fn = reward_fn or alphaalign_reward(s.reward, self.hf_dir, self.mesh)
        self.train_step_traces = 0  # the update program's compilations
        self.update_step, self.logprobs = update_programs(
            s.update, self.policy.graphdef, self.tx, self.mesh,
            param_shardings=shd.shardings_of(self.policy.params),
            opt_shardings=shd.shardings_of(self.opt_state), on_trace=self._count_trace)
        self.reference = Reference(self.policy.params if s.kl else None, self.logprobs,
                                   dtype=c.model.dtype)
        self.step = 0

    def _count_trace(self) -> None:  # runs when the update step is traced: a compile
        self.train_step_traces += 1

    # ------------------------------------------------------------------- a step
    def train_one_step(self) -> dict[str, float]:
        """Prompts -> rollouts -> rewards, reference log-probs, advantages, updates."""
        s, start = self.settings, time.perf_counter()
        groups, metrics = collect_groups(  # prompts, rollouts, rewards
            s.collect, self.prompts.next, lambda records, i: sample_round(
                self.policy, self.reward_fn, s.sampling, records,
                round_seed(s.collect, self.step, i)), self.model_config)
        if jax.process_index() == 0:
            groups.append_samples(self.workdir / "samples.jsonl", self.step + 1,
                                  self.config.train.log_samples)
        t0 = time.perf_counter()
        batch = rollout_batch(self.mesh, groups.rollouts, s.sampling.num_samples,
                              groups.loss_rows)
        batch = self.reference.logprobs(batch, self.policy.rest)
        if s.update.recompute_old_logprobs:  # pi_old by the trainer's forward (bf16)
            batch = batch._replace(old_logp=self.logprobs(self.policy.params, self.policy.rest,
                                                          batch))
        batch, estimated = self._advantages(batch, groups.rewards)
        jax.block_until_ready(batch)  # the reference pass too, so its time is its own
        t1 = time.perf_counter()
        metrics.update(self._update(batch), **estimated)
        metrics.update({"time/reference_s": t1 - t0, "time/update_s": time.perf_counter() - t1,
                        "time/step_s": time.perf_counter() - start})
        u = s.update
        flops = step_phase_flops(
            [self.model_config] + ([self.critic.model_config] if self.critic else []),
            (*batch.prompt_ids.shape, *batch.completion_ids.shape),
            reference=self.reference.active, remat=u.loss.remat, num_updates=u.num_updates)
        lr = float(self.lr_schedule(self.step * u.num_updates * u.mini_batches))
        self.step += 1
        return finish_step(metrics, widths=(batch.prompt_ids.shape[1],
                                            batch.completion_ids.shape[1]),
                           lr=lr, compiles=self.train_step_traces, flops=flops)

    def _advantages(self, batch: UpdateBatch, rewards: np.ndarray
                    ) -> tuple[UpdateBatch, dict[str, float]]:
        """The algorithm's estimator over each group's rewards, or GAE over the critic's
        values (the reward on the last token)."""
        if self.critic is None:
            advantages = self.algorithm.advantages(rewards, self.settings.advantage)
            return batch._replace(advantages=jax.device_put(
                advantages.reshape(-1).astype(np.float32), batch.advantages.sharding)), {}
        batch, metrics = self.critic.estimate(batch, rewards.reshape(-1))
        return batch, {k: float(v) for k, v in shd.to_host(metrics).items()}

    def _update(self, batch: UpdateBatch) -> dict[str, float]:
        """``num_updates`` epochs of ``mini_batches`` optimizer steps (the critic's beside);
        the first update's metrics, on fresh rollouts."""
        u, first = self.settings.update, {}
        for epoch in range(u.num_updates):
            order = np.random.default_rng([self.config.train.seed, self.step, epoch])
            for mini in mini_batches(batch, u.mini_batches, u.loss.group_size, order):
                self.policy.params, self.opt_state, m = self.update_step(
                    self.policy.params, self.policy.rest, self.opt_state, mini)
                if self.critic is not None:
                    m = {**m, **self.critic.update(mini)}
                first = first or m
        host = {k: float(v) for k, v in shd.to_host(first).items()}
        if not (host.pop("finite") and host.pop("critic/finite", True)):
            raise NonFiniteError(
                f"step {self.step}: non-finite loss ({host['loss']}) or gradient norm "
                f"({host['grad_norm']}); the update was not applied and no checkpoint was "
                f"written (latest good checkpoint: {self.checkpoints.last_good()})")
        return host

    # -------------------------------------------------------------- checkpoints
    def _state(self) -> dict[str, Any]:
        """The pytrees a checkpoint holds: parameters and optimizer state (and the critic's)."""
        return {"params": nnx.to_pure_dict(self.policy.params), "opt_state": self.opt_state,
                **(self.critic.state() if self.critic else {})}

    def save(self, force: bool = False, validate: bool = True) -> dict[str, float]:
        """Checkpoint this step (validated first on a scheduled one, not one a preemption
        adds: a resumed run validates the same steps). Returns the val/ metrics."""
        metrics = self.validator(self.step, self.policy) if validate else {}
        selection = self.validator.selection
        if metrics and selection.step == self.step:  # the best so far: out of rotation
            self.checkpoints.keep_also = {self.step}
        self.checkpoints.save(self.step, self._state(), {
            "step": self.step, "data": self.prompts.state(), "seed": int(self.config.train.seed),
            "selected": selection.state()}, force=force)
        return metrics

    def restore_latest(self) -> bool:
        """Resume from the newest good checkpoint (checkpoint.TrainCheckpoints)."""
        found = self.checkpoints.restore_latest(self._state())
        if found is None:
            return False
        state, train_state = found
        nnx.replace_by_pure_dict(self.policy.params, state["params"])
        self.opt_state = state["opt_state"]
        if self.critic is not None:
            self.critic.restore(state)
        self.prompts.restore(train_state["data"])
        self.step = int(train_state["step"])
        self.validator.selection = validation.Selection.from_state(train_state.get("selected"))
        self.checkpoints.keep_also = {self.validator.selection.step}
        return True

    # --------------------------------------------------------------------- loop
    def _start(self) -> None:
        """Resume from the newest verified checkpoint, or run the warm start and save it as
        step 0, written and sealed before anything says it is saved."""
        c, s, saved = self.config, self.settings, self.workdir / "warm_start"
        warm = bool(s.warm_start.rounds or s.warm_start.targets_file)
        self.stop.check("while loading")
        if self.restore_latest():
            if warm and self.reference.active:  # the KL reference: the warm start
                self.reference.reset(warm_start.load_params(
                    saved, dtype=c.model.dtype, param_dtype=c.model.param_dtype,
                    mesh=self.mesh, model_config=self.model_config))
        elif warm:
            warm_start.warm_start(s.warm_start, s.sampling, s.update, self.policy, self.mesh,
                                  self.prompts.next, self.stop, self.workdir)
            warm_start.save(saved, self.policy, self.hf_dir)
            self.reference.reset(self.policy.params)
            self.save(force=True)  # step 0: the warm-started policy
            self.checkpoints.seal()
            logging.info("RFT warm start: saved as step 0")
        if self.stop.received:
            newest = self.checkpoints.step_dir(self.step)
            raise Preempted("preempted while starting: " + (
                f"the newest checkpoint, {newest}, is saved" if newest.is_dir()
                else "nothing was saved") + "; re-run the same command to resume")

    def run(self) -> pathlib.Path:
        c, writer, watch = self.config.train, None, SignalWatch(active=self.critic is None)
        try:
            self._start()
            writer = (MetricsWriter(self.workdir, total_steps=c.steps, initial_step=self.step)
                      if jax.process_index() == 0 else None)
            while self.step < c.steps:
                metrics = self.train_one_step()
                watch.see(metrics)
                self.checkpoints.seal_finished(self.step)
                preempted = self.stop.received or self.checkpoints.reached_preemption(self.step)
                scheduled = self.step % c.checkpoint_every == 0 or self.step == c.steps
                t0 = time.perf_counter()
                if scheduled or preempted:
                    metrics.update(self.save(force=preempted, validate=scheduled))
                metrics["time/checkpoint_s"] = time.perf_counter() - t0  # async: the blocking part
                if writer is not None:
                    writer.write(self.step, metrics)
                if preempted:
                    self.checkpoints.seal()
                    raise Preempted(f"preempted: checkpoint {self.checkpoints.step_dir(self.step)}"
                                    " saved; re-run the same command to resume")
        finally:  # each runs whatever the one before raised (a full disk fails the flush)
            with contextlib.ExitStack() as cleanup:
                cleanup.callback(lambda: self.lock and self.lock.release())
                cleanup.callback(lambda: writer and writer.close(plot=c.plot))
                cleanup.callback(self.checkpoints.seal)
        return self.workdir

"""The RFT warm start of a run (``config.rft``, rl/rft.py): targets, fine-tuning, its record.

Targets come from a previous warm start's file, from the labels, or from verified samples
under a scaffold; the policy is fine-tuned on them under the training prompt. Deterministic
in the seed, so a run killed during it redoes the same warm start. The warm-started policy is
written to ``<workdir>/warm_start``, which checkpoint rotation never deletes: it is the KL
reference of the RL that follows (RL's starting point, as after SFT).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from alphaalign_jax import sharding as shd
from alphaalign_jax.checkpoint import load_model, save_model, verify_checkpoint
from alphaalign_jax.data.records import PromptRecord
from alphaalign_jax.models import ModelConfig, trainable
from alphaalign_jax.policy import Policy
from alphaalign_jax.rl import rft
from alphaalign_jax.rl.batches import device_batch
from alphaalign_jax.rl.optim import optimizer
from alphaalign_jax.rl.programs import UpdateSettings, update_programs
from alphaalign_jax.sampling import SamplingSettings, bucket
from alphaalign_jax.stop import StopSignal


def targets(settings: rft.WarmStartSettings, sampling: SamplingSettings, policy: Policy,
            next_batch: Callable[[], list[PromptRecord]]) -> rft.Collected:
    """The warm start's targets, from where the settings say."""
    s = settings
    encode_completion = lambda text: policy.tokenizer(text, add_special_tokens=False)[
        "input_ids"]
    if s.targets_file:
        logging.info("RFT warm start: the kept samples of %s", s.targets_file)
        return rft.load(s.targets_file, response_prefix=s.response_prefix,
                        encode_prompts=policy.encode, width=s.width,
                        encode_completion=encode_completion, refusal=s.refusal)
    if s.targets_from == "labels":
        logging.info("RFT warm start: targets from the labels of %d batches", s.rounds)
        return rft.collect_labelled(s, next_batch, answer=policy.plain_answers,
                                    encode_prompts=policy.encode,
                                    encode_completion=encode_completion)
    logging.info("RFT warm start: sampling %d batches under the scaffold", s.rounds)
    sample = lambda records, seed, system, temperature: policy.rollouts(
        records, sampling, seed, system, temperature)
    return rft.collect(s, next_batch, sample=sample, encode=policy.encode)


def warm_start(settings: rft.WarmStartSettings, sampling: SamplingSettings,
               update: UpdateSettings, policy: Policy, mesh,
               next_batch: Callable[[], list[PromptRecord]], stop: StopSignal,
               workdir: pathlib.Path) -> dict[str, float]:
    """Collect the targets and fine-tune ``policy`` on them (its parameters replaced); write
    ``rft.json`` (the metrics) and ``rft_targets.jsonl`` (the targets). A stop signal ends it
    at the next batch, with nothing saved."""
    t0 = time.perf_counter()

    def next_prompts():
        stop.check("during the RFT warm start")
        return next_batch()

    collected = targets(settings, sampling, policy, next_prompts)
    t1 = time.perf_counter()
    tx, _ = optimizer(settings.optimizer)
    opt_state = shd.init_optimizer(tx, policy.params, mesh)
    nll = dataclasses.replace(update, loss=rft.loss_settings(update.loss))
    sft_step, _ = update_programs(nll, policy.graphdef, tx, mesh,
                                  param_shardings=shd.shardings_of(policy.params),
                                  opt_shardings=shd.shardings_of(opt_state))

    def step(state, b):
        stop.check("during the RFT warm start")
        zeros = np.zeros(b["completion_ids"].shape, np.float32)
        batch = device_batch(mesh, b["prompt_ids"], b["prompt_mask"], b["completion_ids"],
                             b["completion_mask"], zeros, zeros[:, 0])
        params, opt_state, m = sft_step(state[0], policy.rest, state[1], batch)
        return (params, opt_state), m  # read once an epoch by fine_tune: no sync a step

    longest = policy.sampler.max_prompt_len
    (policy.params, _), epoch_loss = rft.fine_tune(
        settings, collected.targets, [t["label"] for t in collected.kept],
        (policy.params, opt_state), step, width_of=lambda n: min(bucket(n, 16), longest))
    metrics = {"rft/sampled": sum(collected.counts.values()),
               "rft/targets": len(collected.targets),
               **{f"rft/rejected_{k}": v for k, v in collected.counts.items() if k != "kept"},
               "rft/targets_harmful": sum(t["label"] == "harmful" for t in collected.kept),
               **{f"rft/nll_epoch{i + 1}": v for i, v in enumerate(epoch_loss)},
               "time/rft_sampling_s": t1 - t0, "time/rft_update_s": time.perf_counter() - t1}
    if jax.process_index() == 0:
        (workdir / "rft.json").write_text(json.dumps(metrics, indent=2))
        (workdir / "rft_targets.jsonl").write_text(
            "".join(json.dumps(t) + "\n" for t in collected.kept))
    logging.info("RFT warm start: %d targets from %d samples, NLL %s", metrics["rft/targets"],
                 metrics["rft/sampled"], " -> ".join(f"{x:.3f}" for x in epoch_loss))
    return metrics


def save(path: pathlib.Path, policy: Policy, tokenizer_dir: pathlib.Path) -> None:
    """The warm-started policy to ``path`` (a cut-short earlier one replaced)."""
    if path.exists() and jax.process_index() == 0:
        shutil.rmtree(path)
    save_model(path, policy.model(), tokenizer_dir=tokenizer_dir, base_dir=tokenizer_dir)


def load_params(path: pathlib.Path, *, dtype: str, param_dtype: str, mesh,
                model_config: ModelConfig):
    """The saved warm-started policy's parameters (the resumed run's KL reference), verified
    as checkpoints are."""
    verify_checkpoint(path, "the warm-started policy (the run's KL reference)")
    model = load_model(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh,
                       expect_config=model_config)
    return nnx.split(model, trainable(model.config), ...)[1]

"""Rollout sampling: jitted prefill + on-device decode loop over a static KV cache."""

from alphaalign_jax.sampling.logits_processing import SamplingMode, choose_tokens
from alphaalign_jax.sampling.sampler import (
    Rollout,
    Rollouts,
    Sampler,
    SamplingSettings,
    bucket,
    default_eos_ids,
    generate,
    trace_counts,
)
from alphaalign_jax.sampling.stop_strings import (
    build_stop_tables,
    stop_step,
    token_bytes,
)

__all__ = [
    "Rollout",
    "Rollouts",
    "Sampler",
    "SamplingMode",
    "SamplingSettings",
    "bucket",
    "build_stop_tables",
    "choose_tokens",
    "default_eos_ids",
    "generate",
    "stop_step",
    "token_bytes",
    "trace_counts",
]

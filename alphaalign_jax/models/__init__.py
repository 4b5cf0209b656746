"""Flax NNX model family (Llama 3.x, Qwen2/2.5, SmolLM2) and HF checkpoint I/O."""

from alphaalign_jax.models.config import ConfigError, ModelConfig, RopeConfig
from alphaalign_jax.models.hf_io import (
    CheckpointError,
    from_pretrained,
    hf_state_dict,
    load_tokenizer,
    param_shardings,
    save_pretrained,
    value_model,
)
from alphaalign_jax.models.transformer import (
    KVCache,
    SharedPrefix,
    Transformer,
    default_positions,
    init_cache,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "ModelConfig",
    "RopeConfig",
    "SharedPrefix",
    "Transformer",
    "default_positions",
    "from_pretrained",
    "hf_state_dict",
    "init_cache",
    "load_tokenizer",
    "param_shardings",
    "save_pretrained",
    "value_model",
]

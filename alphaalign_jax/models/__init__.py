"""Flax NNX model family (Llama 3.x, Qwen2/2.5, SmolLM2) and HF checkpoint I/O."""

from alphaalign_jax.models.config import ConfigError, LoraConfig, ModelConfig, RopeConfig
from alphaalign_jax.models.hf_io import (
    CheckpointError,
    from_pretrained,
    hf_state_dict,
    load_tokenizer,
    merge_adapters,
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
    trainable,
)

__all__ = [
    "CheckpointError",
    "ConfigError",
    "KVCache",
    "LoraConfig",
    "ModelConfig",
    "RopeConfig",
    "SharedPrefix",
    "Transformer",
    "default_positions",
    "from_pretrained",
    "hf_state_dict",
    "init_cache",
    "load_tokenizer",
    "merge_adapters",
    "param_shardings",
    "save_pretrained",
    "trainable",
    "value_model",
]

"""Shared fixtures: tiny random Hugging Face models of each family, and the bundled model."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from alphaalign_jax import assets

TINY_COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=512, rms_norm_eps=1e-5)

# name -> (transformers config class name, config kwargs)
TINY_CONFIGS = {
    "llama": ("LlamaConfig", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                  rope_theta=10000.0)),
    "llama3_rope": ("LlamaConfig", dict(
        num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "qwen2": ("Qwen2Config", dict(num_key_value_heads=1, tie_word_embeddings=False,
                                  rope_theta=1000000.0, use_sliding_window=False)),
    "tied": ("LlamaConfig", dict(num_key_value_heads=4, tie_word_embeddings=True,
                                 rope_theta=100000.0)),
}


def make_tiny_hf(kind: str, out: pathlib.Path, seed: int = 0, classifier: bool = False,
                 **overrides):
    """Save a random-weight HF model of ``kind`` to ``out`` and return the torch model;
    ``overrides``: config fields to change."""
    import torch
    import transformers

    cls_name, extra = TINY_CONFIGS[kind]
    config = getattr(transformers, cls_name)(**{**TINY_COMMON, **extra, **overrides})
    torch.manual_seed(seed)
    if classifier:
        config.num_labels = 1
        config.pad_token_id = 0
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    # HF initialises biases and norms to constants; randomise them so parity tests see them.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.float().eval()
    model.save_pretrained(out, safe_serialization=True)
    return model


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_kind(request) -> str:
    return request.param


@pytest.fixture
def tiny_hf(tmp_path, tiny_kind):
    """(kind, hf_dir, torch_model) for each tiny family config."""
    path = tmp_path / tiny_kind
    return tiny_kind, path, make_tiny_hf(tiny_kind, path)


@pytest.fixture(scope="session")
def smollm2_dir() -> pathlib.Path:
    path = assets.smollm2_dir()
    if not (path / "model.safetensors").exists():
        pytest.skip(f"bundled model not fetched ({path}); run tools/fetch_assets.py")
    return path


def left_padded_batch(rng: np.random.Generator, vocab: int, lengths: list[int]):
    """Random token ids, left padded with an arbitrary id; the mask says what is real."""
    width = max(lengths)
    ids = rng.integers(0, vocab, size=(len(lengths), width))
    mask = np.zeros((len(lengths), width), np.int64)
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
    return ids, mask


def hf_positions(mask: np.ndarray) -> np.ndarray:
    """The position ids HF generate uses for left padding (what our model derives itself)."""
    return np.clip(np.cumsum(mask, -1) - 1, 0, None)

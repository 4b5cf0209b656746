"""The FLOP model (models/flops.py) against XLA's own count of the compiled passes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from alphaalign_jax.models import ModelConfig, Transformer
from alphaalign_jax.models.flops import grouped_pass_flops, head_flops, layer_flops
from alphaalign_jax.rl.step import grouped_completion_hidden

CFG = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 512, "hidden_size": 256,
                                "intermediate_size": 1024, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2,
                                "rope_theta": 1e4, "tie_word_embeddings": False})


def xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


@pytest.fixture(scope="module")
def model():
    return Transformer(CFG, rngs=nnx.Rngs(0))


def test_a_full_forward(model):
    ids = jnp.zeros((4, 64), jnp.int32)
    counted = xla_flops(lambda x: model(x), ids)
    ours = layer_flops(CFG, 4 * 64, 64) + head_flops(CFG, 4 * 64)
    assert ours <= counted <= 1.1 * ours, (ours, counted)


def test_the_updates_grouped_pass(model):
    prompts, width, group, completion = 2, 48, 4, 32

    def grouped(prompt_ids, completion_ids):
        hidden = grouped_completion_hidden(model, prompt_ids, jnp.ones_like(prompt_ids, bool),
                                           completion_ids, group)
        return jnp.einsum("bcd,dv->bcv", hidden, model.unembedding())

    counted = xla_flops(grouped, jnp.zeros((prompts, width), jnp.int32),
                        jnp.zeros((prompts * group, completion), jnp.int32))
    ours = grouped_pass_flops(CFG, prompts, width, prompts * group, completion)
    assert ours <= counted <= 1.1 * ours, (ours, counted)

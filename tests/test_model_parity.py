"""Logit parity of our Flax model against Hugging Face transformers on torch CPU."""

from __future__ import annotations

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from alphaalign_jax.models import ModelConfig, from_pretrained, init_cache
from alphaalign_jax.models.config import ConfigError
from alphaalign_jax.models.transformer import grouped_query_attention
from tests.conftest import hf_positions, left_padded_batch

TOL = 1e-4


def torch_logits(model, ids, mask):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(hf_positions(mask)))
    return out.logits.numpy()


@pytest.mark.parametrize("scan_layers", [False, True])
def test_tiny_family_logit_parity(tiny_hf, scan_layers):
    kind, path, hf_model = tiny_hf
    model = from_pretrained(path, scan_layers=scan_layers)
    ids, mask = left_padded_batch(np.random.default_rng(0), 256, [23, 9, 1, 17])
    ours = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(hf_model, ids, mask)
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real].max()
    assert diff <= TOL, f"{kind}: max abs logit diff {diff}"
    assert (ours.argmax(-1) == ref.argmax(-1))[real].all()


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.slow
def test_cached_prefill_and_decode_match_full_forward(tmp_path, scan_layers):
    from tests.conftest import make_tiny_hf

    make_tiny_hf("qwen2", tmp_path)
    model = from_pretrained(tmp_path, scan_layers=scan_layers)
    ids, mask = left_padded_batch(np.random.default_rng(1), 256, [12, 7])
    full = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    prompt_len, max_len = 8, 16
    cache = init_cache(model.config, 2, max_len)
    kv_mask = np.zeros((2, max_len), bool)
    kv_mask[:, :prompt_len] = mask[:, :prompt_len]
    positions = hf_positions(mask)
    logits, cache = model(jnp.asarray(ids[:, :prompt_len]), attention_mask=jnp.asarray(kv_mask),
                          positions=jnp.asarray(positions[:, :prompt_len]), cache=cache,
                          cache_index=0)
    steps = [np.asarray(logits)]
    for t in range(prompt_len, ids.shape[1]):
        kv_mask[:, t] = True
        logits, cache = model(jnp.asarray(ids[:, t:t + 1]), attention_mask=jnp.asarray(kv_mask),
                              positions=jnp.asarray(positions[:, t:t + 1]), cache=cache,
                              cache_index=t)
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    assert np.abs(cached - full)[real].max() <= TOL


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_real_text_parity(smollm2_dir):
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(smollm2_dir)
    tok.padding_side = "left"
    chats = [[{"role": "user", "content": "How do I bake sourdough bread at home?"}],
             [{"role": "user", "content": "Explain photosynthesis in two sentences."}],
             [{"role": "user", "content": "Hi"}]]
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
    enc = tok(texts, return_tensors="np", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    # The pad token <|im_end|> also ends every chat turn: padding must come from the mask.
    assert (ids[mask.astype(bool)] == tok.pad_token_id).any()
    model = from_pretrained(smollm2_dir)
    ours = np.asarray(nnx.jit(lambda m, i, a: m(i, a))(model, jnp.asarray(ids), jnp.asarray(mask)))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    ref = torch_logits(hf_model, ids, mask)
    real = mask.astype(bool)
    diff = np.abs(ours - ref)[real]
    # fp32 noise over 30 layers: the attention-sink first token carries |h| ~ 2e4 activations.
    # HF's own fp32 result is 5e-5 from its fp64 result on this text; see README.
    assert diff.max() <= 2.5e-4, diff.max()
    assert np.median(diff) <= 2e-5
    assert (ours.argmax(-1) == ref.argmax(-1))[real].all()


def test_rope_fields_are_read_from_config(tmp_path):
    base = {"model_type": "llama", "vocab_size": 8, "hidden_size": 8, "intermediate_size": 8,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    legacy = ModelConfig.from_hf_dict({**base, "rope_theta": 100000.0})
    v5 = ModelConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "default",
                                                               "rope_theta": 100000.0}})
    assert legacy.rope == v5.rope and legacy.rope.theta == 100000.0
    with pytest.raises(ConfigError, match="rope_theta"):
        ModelConfig.from_hf_dict(base)
    with pytest.raises(ConfigError, match="yarn"):
        ModelConfig.from_hf_dict({**base, "rope_parameters": {"rope_type": "yarn",
                                                              "rope_theta": 1e4}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**base, "rope_theta": 1e4, "model_type": "gpt2"}))
    with pytest.raises(ConfigError, match=r"config\.json: unknown model_type 'gpt2'"):
        ModelConfig.from_pretrained(tmp_path)


def test_bf16_compute_runs_and_stays_close(tmp_path):
    from tests.conftest import make_tiny_hf

    make_tiny_hf("llama", tmp_path)
    ids, mask = left_padded_batch(np.random.default_rng(2), 256, [10, 6])
    f32 = np.asarray(from_pretrained(tmp_path)(jnp.asarray(ids), jnp.asarray(mask)))
    model = from_pretrained(tmp_path, dtype="bfloat16")
    assert model.embed_tokens[...].dtype == jnp.bfloat16
    bf16 = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)).astype(jnp.float32))
    assert np.abs(bf16 - f32)[mask.astype(bool)].max() < 0.1
    mixed = from_pretrained(tmp_path, dtype="bfloat16", param_dtype="float32")
    assert mixed.embed_tokens[...].dtype == jnp.float32
    assert dataclasses.asdict(mixed.config.rope) == dataclasses.asdict(model.config.rope)


@pytest.mark.parametrize("queries", [1, 5])
def test_shared_prefix_attention_equals_attention_over_the_concatenation(queries):
    """Rows r = 0..P*G-1 reading prompt r // G as a SharedPrefix, and their own keys in two
    parts, get what attention over [their prompt's keys | their own keys] gives (one softmax
    over all three), in plain NumPy."""
    rng = np.random.default_rng(0)
    p, g, h, kv, d, sp, s = 2, 3, 4, 2, 8, 6, 7
    b = p * g
    q = rng.normal(size=(b, queries, h, d)).astype(np.float32)
    keys, values = rng.normal(size=(b, kv, d, s)), rng.normal(size=(b, kv, s, d))
    prefix_keys, prefix_values = rng.normal(size=(p, kv, d, sp)), rng.normal(size=(p, kv, sp, d))
    own_mask = rng.random((b, queries, s)) < 0.6
    own_mask[:, :, 0] = True
    prefix_mask = np.arange(sp)[None] >= np.array([[2], [0]])  # left padding of prompt 0
    # the rows' own keys in two parts (a cache's earlier slots and the new tokens' own)
    split = 4
    own = [(jnp.asarray(keys[..., :split], jnp.float32),
            jnp.asarray(values[:, :, :split], jnp.float32), jnp.asarray(own_mask[..., :split])),
           (jnp.asarray(keys[..., split:], jnp.float32),
            jnp.asarray(values[:, :, split:], jnp.float32), jnp.asarray(own_mask[..., split:]))]
    ours = grouped_query_attention(
        jnp.asarray(q), own, (jnp.asarray(prefix_keys, jnp.float32),
                              jnp.asarray(prefix_values, jnp.float32), jnp.asarray(prefix_mask)))

    rows = np.arange(b) // g
    all_keys = np.concatenate([prefix_keys[rows], keys], axis=-1)  # [B, Hkv, D, Sp + S]
    all_values = np.concatenate([prefix_values[rows], values], axis=-2)
    mask = np.concatenate([np.broadcast_to(prefix_mask[rows][:, None], (b, queries, sp)),
                           own_mask], axis=-1)
    head_kv = np.arange(h) // (h // kv)
    scores = np.einsum("bthd,bhds->bths", q, all_keys[:, head_kv]) / np.sqrt(d)
    scores = np.where(mask[:, :, None], scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bths,bhsd->bthd", weights, all_values[:, head_kv])
    np.testing.assert_allclose(np.asarray(ours), expected, atol=1e-5)

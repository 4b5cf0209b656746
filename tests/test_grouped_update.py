"""The update's grouped pass (each prompt once, its G completions over the prompt's KV cache)
equals a full forward over every [prompt | completion] row: log-probs, entropies, gradients."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alphaalign_jax.models import ModelConfig, Transformer
from alphaalign_jax.rl.step import UpdateBatch, completion_logprobs, grouped_completion_logprobs

CFG = ModelConfig.from_hf_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 32,
                                "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "num_key_value_heads": 2,
                                "rope_theta": 1e4, "tie_word_embeddings": True})
PROMPT_LENS = [5, 9, 2]  # ragged, left-padded to 9
COMPLETION_LENS = [[6, 1, 3], [4, 6, 6], [2, 5, 1]]  # G = 3 each, right-padded to 6
G, C, L = 3, 6, 9


def ragged_batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    prompt_ids = rng.integers(0, CFG.vocab_size, (len(PROMPT_LENS), L))
    prompt_mask = np.arange(L)[None] >= L - np.array(PROMPT_LENS)[:, None]
    completion_ids = rng.integers(0, CFG.vocab_size, (len(PROMPT_LENS) * G, C))
    lengths = np.array(COMPLETION_LENS).reshape(-1)
    completion_mask = np.arange(C)[None] < lengths[:, None]
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def full_rows(prompt_ids, prompt_mask, completion_ids, completion_mask):
    tokens = np.concatenate([np.repeat(prompt_ids, G, 0), completion_ids], axis=1)
    mask = np.concatenate([np.repeat(prompt_mask, G, 0), completion_mask], axis=1)
    return jnp.asarray(tokens), jnp.asarray(mask)


def stacked_layers(state) -> dict:
    """A one-block-a-layer state as a pure dict in the ``scan_layers`` layout."""
    tree = nnx.to_pure_dict(state)
    layers = tree.pop("layers")
    return {**tree, "layers": jax.tree.map(lambda *x: jnp.stack(x),
                                           *(layers[i] for i in sorted(layers)))}


@pytest.mark.parametrize("remat, scan_layers", [(False, False), (True, False), (False, True),
                                                (True, True)])
@pytest.mark.slow
def test_grouped_pass_equals_full_forward_with_gradients(remat, scan_layers):
    """The reference is always the full forward with one block a layer."""
    graphdef, params, rest = nnx.split(Transformer(CFG, rngs=nnx.Rngs(1)), nnx.Param, ...)
    # The same initialisation in either layout (stack_blocks stacks the same blocks).
    grouped_model = nnx.split(Transformer(dataclasses.replace(CFG, scan_layers=scan_layers),
                                          rngs=nnx.Rngs(1)), nnx.Param, ...)
    prompt_ids, prompt_mask, completion_ids, completion_mask = ragged_batch()
    tokens, mask = full_rows(prompt_ids, prompt_mask, completion_ids, completion_mask)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=completion_ids.shape)
                          * completion_mask)

    def full(p):
        logp, ent = completion_logprobs(nnx.merge(graphdef, p, rest), tokens, mask, C, 0.7, 4)
        return (logp * weights).sum(), (logp, ent)

    def grouped(p):
        logp, ent = grouped_completion_logprobs(
            nnx.merge(grouped_model[0], p, grouped_model[2]), jnp.asarray(prompt_ids),
            jnp.asarray(prompt_mask), jnp.asarray(completion_ids), G, 0.7, 4, remat=remat)
        return (logp * weights).sum(), (logp, ent)

    (_, (logp_f, ent_f)), grad_f = jax.value_and_grad(full, has_aux=True)(params)
    (_, (logp_g, ent_g)), grad_g = jax.value_and_grad(grouped, has_aux=True)(grouped_model[1])
    real = completion_mask
    np.testing.assert_allclose(np.asarray(logp_g)[real], np.asarray(logp_f)[real], atol=2e-5)
    np.testing.assert_allclose(np.asarray(ent_g)[real], np.asarray(ent_f)[real], atol=2e-5)
    grad_f = stacked_layers(grad_f) if scan_layers else nnx.to_pure_dict(grad_f)
    assert jax.tree.structure(nnx.to_pure_dict(grad_g)) == jax.tree.structure(grad_f)
    for a, b in zip(jax.tree.leaves(nnx.to_pure_dict(grad_g)), jax.tree.leaves(grad_f)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-4)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad_f)) > 1e-3  # not vacuous



def one_update(completion_pad: int = 0, *, remat: bool = False, scan_layers: bool = False,
               aggregation: str = "token_mean", adam: bool = True):
    """One optimizer step (micro-batch scan, loss, Adam or plain SGD) on the ragged batch,
    with ``completion_pad`` masked columns appended to every completion."""
    import optax

    from alphaalign_jax.rl.step import LossSettings, UpdateBatch, train_step
    graphdef, params, rest = nnx.split(Transformer(dataclasses.replace(
        CFG, scan_layers=scan_layers), rngs=nnx.Rngs(1)), nnx.Param, ...)
    prompt_ids, prompt_mask, completion_ids, completion_mask = ragged_batch()
    rng = np.random.default_rng(3)
    rows = completion_ids.shape
    old_logp = rng.normal(size=rows) * 0.1 - 2.0

    def pad(x):
        return np.pad(x, ((0, 0), (0, completion_pad)))

    batch = UpdateBatch(jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                        jnp.asarray(pad(completion_ids)),
                        jnp.asarray(pad(completion_mask), jnp.float32),
                        jnp.asarray(pad(old_logp), jnp.float32),
                        jnp.zeros((rows[0], rows[1] + completion_pad), jnp.float32),
                        jnp.asarray(rng.normal(size=rows[0]), jnp.float32))
    tx = optax.adam(1e-2) if adam else optax.sgd(1.0)
    settings = LossSettings(clip_low=0.2, clip_high=0.2, beta=0.0, aggregation=aggregation,
                            max_completion_len=C + 4, temperature=1.0, logprob_chunk=4,
                            group_size=G, remat=remat)
    return jax.jit(lambda p, o, b: train_step(
        graphdef, p, rest, o, b, tx=tx, settings=settings, micro_batch_size=G))(
        params, tx.init(params), batch)


def assert_same_update(a, b, atol=1e-6):
    (params_a, metrics_a), (params_b, metrics_b) = a, b
    np.testing.assert_allclose(metrics_a["loss"], metrics_b["loss"], rtol=1e-6)
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)
    assert float(metrics_b["grad_norm"]) > 1e-3


@pytest.mark.slow
def test_the_update_with_rematerialised_or_scanned_blocks_equals_the_plain_one():
    # SGD, as below: with Adam a gradient element near its eps (~1e-8) gets a step of any size
    # from summation-order noise (seen: 1.7e-6 on one of 2048 elements on an AVX-512 host).
    new_params, _, metrics = one_update(remat=True, adam=False)
    plain_params, _, plain_metrics = one_update(remat=False, adam=False)
    assert_same_update((new_params, metrics), (plain_params, plain_metrics))
    scanned_params, _, scanned_metrics = one_update(remat=True, scan_layers=True, adam=False)
    assert_same_update((nnx.to_pure_dict(scanned_params), scanned_metrics),
                       (stacked_layers(plain_params), plain_metrics))


@pytest.mark.parametrize("aggregation", ["token_mean", "dr_grpo"])
@pytest.mark.slow
def test_completion_columns_past_the_longest_change_nothing(aggregation):
    """The trainer cuts completions to a bucket of the longest one (not max_new_tokens): the
    columns cut are masked padding, and the step is the same without them (dr_grpo's
    normaliser is the configured max_completion_len, not the array's width)."""
    # SGD: the parameter change is the gradient itself (Adam's first step is lr * sign(g),
    # which turns summation-order noise in a near-zero gradient into a full step).
    wide_params, _, wide = one_update(10, aggregation=aggregation, adam=False)
    narrow_params, _, narrow = one_update(0, aggregation=aggregation, adam=False)
    assert_same_update((narrow_params, narrow), (wide_params, wide))


def test_a_scanned_update_compiles_one_block_whatever_the_depth():
    """The update's gradient program: with scan_layers its matmuls do not grow with the
    number of layers (one block, looped), with one block a layer they do."""
    def matmuls(num_layers: int, scan_layers: bool) -> int:
        cfg = dataclasses.replace(CFG, num_layers=num_layers, scan_layers=scan_layers)
        graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(1)), nnx.Param, ...)
        prompt_ids, prompt_mask, completion_ids, _ = map(jnp.asarray, ragged_batch())

        def loss(p):
            return grouped_completion_logprobs(nnx.merge(graphdef, p, rest), prompt_ids,
                                               prompt_mask, completion_ids, G, 1.0, 4,
                                               remat=True)[0].sum()

        return jax.jit(jax.grad(loss)).lower(params).as_text().count("dot_general")

    assert matmuls(2, True) == matmuls(6, True)
    assert matmuls(6, False) > matmuls(2, False) > matmuls(2, True)


@pytest.mark.parametrize("lora", [False, True])
def test_a_compute_dtype_reference_gives_the_same_logprobs_bit_for_bit(lora):
    """Under bf16 compute the layers read every weight as bf16, so the KL reference kept in
    bf16 but for its unembedding (rl/reference.py) gives exactly the float32 copy's
    log-probs; under float32 compute nothing is narrowed."""
    from alphaalign_jax.models import LoraConfig
    from alphaalign_jax.rl.reference import frozen_copy
    from alphaalign_jax.rl.step import reference_logprobs

    config = dataclasses.replace(CFG, tie_word_embeddings=False,
                                 lora=LoraConfig(4, 8.0) if lora else None)
    model = Transformer(config, dtype=jnp.bfloat16, param_dtype=jnp.float32, rngs=nnx.Rngs(1))
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam if lora else nnx.Param, ...)
    params = jax.tree.map(lambda x: x + 0.01 * jnp.ones_like(x), params)  # B != 0 under LoRA
    prompt_ids, prompt_mask, completion_ids, completion_mask = ragged_batch()
    batch = UpdateBatch(jnp.asarray(prompt_ids), jnp.asarray(prompt_mask),
                        jnp.asarray(completion_ids), jnp.asarray(completion_mask, jnp.float32),
                        *(jnp.zeros(completion_ids.shape),) * 2, jnp.zeros(len(completion_ids)))
    logp = jax.jit(lambda p: reference_logprobs(graphdef, p, rest, batch, prompts_per_micro=3,
                                                group_size=G, temperature=0.7, chunk=4))
    narrow = frozen_copy(params, jnp.bfloat16)
    dtypes = {jax.tree_util.keystr(k[:1]): x.dtype
              for k, x in jax.tree_util.tree_flatten_with_path(narrow)[0]}
    assert dtypes.pop("['lm_head']", jnp.float32) == jnp.float32
    assert set(dtypes.values()) == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(np.asarray(logp(narrow)), np.asarray(logp(params)))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(frozen_copy(params, jnp.float32)))

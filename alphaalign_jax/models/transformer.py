"""Decoder-only transformer in Flax NNX: Llama 3.x, Qwen2/2.5 and SmolLM2.

One module serves the three families; they differ only in config (QKV bias,
tied embeddings, RoPE scaling). The math follows Hugging Face transformers
exactly (RMSNorm in float32, rotate-half RoPE, grouped-query attention,
SwiGLU), which the parity tests check logit by logit.

Two calling modes share one code path:

- training / scoring: ``model(input_ids, attention_mask)`` runs causal
  attention over the given tokens and returns logits;
- sampling: ``model(input_ids, attention_mask=kv_mask, positions=..., cache=cache,
  cache_index=i)`` writes the new keys/values into a static, preallocated
  :class:`KVCache` at slot ``i`` and attends over the whole cache, so a jitted
  prefill and a one-token decode step have fixed shapes.

Either mode also takes a :class:`SharedPrefix`: the keys/values of P prompts that
G consecutive rows each (a prompt's samples) attend to before their own tokens, so
a group reads one copy of its prompt, not G.

Padding is always read from the attention mask, never from token ids (SmolLM2's
pad token ``<|im_end|>`` also ends every chat turn).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alphaalign_jax import sharding as shd
from alphaalign_jax.models.config import LoraConfig, ModelConfig, RopeConfig

Array = jax.Array


class KVCache(NamedTuple):
    """Key/value buffers laid out for one-token decoding: a tuple of one buffer a layer, or
    for a model with ``scan_layers`` one buffer with a leading ``layers`` axis.

    Keys are stored transposed, ``[batch, num_kv_heads, head_dim, max_len]``, and
    values as ``[batch, num_kv_heads, max_len, head_dim]``: both attention matmuls
    (``q @ K^T`` and ``p @ V``) then read the cache in the layout XLA's batched
    matmul wants. With the row-major ``[batch, max_len, heads, dim]`` layout XLA
    transposes the whole cache of every layer at every decode step, which cost
    more than the attention itself on CPU (45 ms a step at 32 rows x 384 slots).
    """

    keys: tuple[Array, ...] | Array
    values: tuple[Array, ...] | Array

    KEY_AXES = ("batch", "kv_heads", "head_dim", "cache_seq")
    VALUE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")

    @property
    def stacked(self) -> bool:
        return not isinstance(self.values, tuple)

    @property
    def max_len(self) -> int:
        return (self.values if self.stacked else self.values[0]).shape[-2]

    def map_buffers(self, fn: Callable[[Array, tuple[str, ...]], Array]) -> KVCache:
        """``fn(buffer, logical_axes)`` applied to every buffer (to pad, repeat or place them)."""
        if self.stacked:
            return KVCache(fn(self.keys, ("layers",) + self.KEY_AXES),
                           fn(self.values, ("layers",) + self.VALUE_AXES))
        return KVCache(tuple(fn(k, self.KEY_AXES) for k in self.keys),
                       tuple(fn(v, self.VALUE_AXES) for v in self.values))


class SharedPrefix(NamedTuple):
    """The KV cache of P prompts, attended by ``B = P * G`` rows: row ``r`` reads prompt
    ``r // G`` before its own tokens. One copy a prompt, not one a row: each prompt's keys
    meet its G rows' queries in one matmul, and the rows' caches hold only their own tokens.
    """

    cache: KVCache  # P rows
    mask: Array  # [P, S_prefix] bool: slots holding a real prompt token

    def layer(self, i: int) -> tuple[Array, Array, Array]:
        return self.cache.keys[i], self.cache.values[i], self.mask


def init_cache(config: ModelConfig, batch_size: int, max_len: int,
               dtype: jnp.dtype = jnp.float32) -> KVCache:
    b, kv, d, n = batch_size, config.num_kv_heads, config.head_dim, config.num_layers
    if config.scan_layers:
        return KVCache(jnp.zeros((n, b, kv, d, max_len), dtype),
                       jnp.zeros((n, b, kv, max_len, d), dtype))
    return KVCache(tuple(jnp.zeros((b, kv, d, max_len), dtype) for _ in range(n)),
                   tuple(jnp.zeros((b, kv, max_len, d), dtype) for _ in range(n)))


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """Inverse frequencies in float32, as transformers computes them."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(rope.theta) ** exponents)).astype(np.float32)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(positions: Array, inv_freq: Array, dtype: jnp.dtype) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``[B, T, 1, D]``, computed once per forward pass for all layers."""
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, rope: tuple[Array, Array]) -> Array:
    """Rotate-half RoPE of ``x`` [B, T, H, D] with :func:`rope_tables`' ``(cos, sin)``."""
    cos, sin = rope
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _param(key: Array, shape: tuple[int, ...], logical: tuple[str, ...],
           dtype: jnp.dtype, std: float = 0.02) -> nnx.Param:
    value = jax.random.normal(key, shape, jnp.float32) * std
    return nnx.Param(value.astype(dtype), logical_axes=logical)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype: jnp.dtype):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))
        self.eps = eps

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def lora_a_init(key: Array, shape: tuple[int, ...]) -> Array:
    """He-uniform over the input dimension (``shape[-2]``; a leading ``layers`` axis, if
    any, is not fan-in), in float32: qwix's default for the A factor."""
    bound = math.sqrt(6.0 / shape[-2])
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class Linear(nnx.Module):
    """``y = x @ kernel (+ bias)`` with a logically annotated ``[in, out]`` kernel, plus
    ``(alpha / rank) x @ lora_a @ lora_b`` when it carries an adapter (float32
    :class:`nnx.LoRAParam` s, so the policy can train them alone)."""

    def __init__(self, d_in: int, d_out: int, logical: tuple[str, str], *, bias: bool,
                 param_dtype: jnp.dtype, rngs: nnx.Rngs, lora: LoraConfig | None = None):
        key = rngs.params()  # one draw: adapters leave the base weights' init unchanged
        self.kernel = _param(key, (d_in, d_out), logical, param_dtype)
        self.bias = nnx.data(
            nnx.Param(jnp.zeros((d_out,), param_dtype), logical_axes=(logical[1],))
            if bias else None)
        self.lora_scale = lora.scale if lora is not None else 0.0
        self.lora_a = nnx.data(nnx.LoRAParam(
            lora_a_init(jax.random.fold_in(key, 1), (d_in, lora.rank)),
            logical_axes=(logical[0], "lora_rank"))
            if lora is not None else None)
        self.lora_b = nnx.data(nnx.LoRAParam(
            jnp.zeros((lora.rank, d_out), jnp.float32), logical_axes=("lora_rank", logical[1]))
            if lora is not None else None)

    def __call__(self, x: Array) -> Array:
        y = jnp.einsum("...i,io->...o", x, self.kernel[...].astype(x.dtype))
        if self.lora_a is not None:
            low = jnp.einsum("...i,ir->...r", x, self.lora_a[...].astype(x.dtype))
            y = y + jnp.einsum("...r,ro->...o", low, self.lora_b[...].astype(x.dtype)
                               ) * jnp.asarray(self.lora_scale, x.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(x.dtype)
        return y


class Attention(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = h, kv, hd
        self.q_proj = Linear(d, h * hd, ("embed", "heads"), bias=cfg.qkv_bias,
                             param_dtype=param_dtype, rngs=rngs,
                             lora=cfg.adapter("q_proj"))
        self.k_proj = Linear(d, kv * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias,
                             param_dtype=param_dtype, rngs=rngs,
                             lora=cfg.adapter("k_proj"))
        self.v_proj = Linear(d, kv * hd, ("embed", "kv_heads"), bias=cfg.qkv_bias,
                             param_dtype=param_dtype, rngs=rngs,
                             lora=cfg.adapter("v_proj"))
        self.o_proj = Linear(h * hd, d, ("heads", "embed"), bias=cfg.o_bias,
                             param_dtype=param_dtype, rngs=rngs,
                             lora=cfg.adapter("o_proj"))

    def __call__(self, x: Array, rope: tuple[Array, Array], mask: Array,
                 cache: tuple[Array, Array] | None, cache_index: Array | int | None,
                 prefix: tuple[Array, Array, Array] | None = None, update_cache: bool = True
                 ) -> tuple[Array, tuple[Array, Array] | None]:
        """The attention output, and with a ``cache``: the layer's cache with the new tokens
        written at ``cache_index`` (``update_cache``), or only the new tokens' ``(keys,
        values)`` for the caller to write (:func:`write_cache`). The second reads the cache
        and never writes it: a scanned decode then writes every layer's new tokens into the
        stacked cache in place after the scan, instead of emitting a copy of each layer's."""
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim)
        k = self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        q = apply_rope(q, rope)
        # The cache layout (see KVCache): keys [B, Hkv, D, S], values [B, Hkv, S, D].
        k = apply_rope(k, rope).transpose(0, 2, 3, 1)
        v = v.transpose(0, 2, 1, 3)
        if cache is None:
            parts, out_cache = [(k, v, mask)], None
        elif update_cache:
            k_cache, v_cache = write_cache(cache, (k.astype(cache[0].dtype),
                                                   v.astype(cache[1].dtype)), cache_index)
            parts = [(k_cache.astype(x.dtype), v_cache.astype(x.dtype), mask)]
            out_cache = (k_cache, v_cache)
        else:  # the cache's earlier slots, then the new tokens' own, in one softmax
            k_cache, v_cache = cache
            parts = [(k, v, jax.lax.dynamic_slice_in_dim(mask, cache_index, t, axis=2))]
            if not (isinstance(cache_index, int) and cache_index == 0):  # a prefill has none
                earlier = jnp.arange(k_cache.shape[-1]) < cache_index
                parts.insert(0, (k_cache.astype(x.dtype), v_cache.astype(x.dtype),
                                 mask & earlier))
            out_cache = (k.astype(k_cache.dtype), v.astype(v_cache.dtype))
        out = grouped_query_attention(q, parts, prefix)
        return self.o_proj(out.reshape(b, t, self.num_heads * self.head_dim)), out_cache


def write_cache(buffers: tuple[Array, Array], new: tuple[Array, Array], cache_index
                ) -> tuple[Array, Array]:
    """``(keys, values)`` buffers (one layer's, or every layer's stacked) with the ``new``
    tokens' written from slot ``cache_index``: in place when the buffers are donated."""
    (keys, values), (k, v) = buffers, new
    return (jax.lax.dynamic_update_slice(keys, k, (0,) * (keys.ndim - 1) + (cache_index,)),
            jax.lax.dynamic_update_slice(values, v, (0,) * (values.ndim - 2) + (cache_index, 0)))


def grouped_query_attention(q: Array, own: list[tuple[Array, Array, Array]],
                            prefix: tuple[Array, Array, Array] | None = None) -> Array:
    """Softmax attention with KV-head sharing, over every part's keys in one softmax.

    q [B,T,H,D]; ``own``: each row's key parts, ``(k_t, v, mask)`` with k_t [B,Hkv,D,S]
    (keys transposed) and v [B,Hkv,S,D], as in :class:`KVCache`, and mask [B,T,S] (S may
    differ between parts). ``prefix``: keys [P,Hkv,D,Sp], values [P,Hkv,Sp,D] and mask
    [P,Sp] of a :class:`SharedPrefix` that rows ``r`` (of P * G) read at ``r // G``.
    """
    b, t, h, d = q.shape
    kv = own[0][0].shape[1]
    rep = h // kv
    # [B, Hkv, rep*T, D]: each KV head's queries in one matrix, so both products are plain
    # batched matmuls over (B, Hkv) with no transpose of the cache.
    q = q.reshape(b, t, kv, rep, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, rep * t, d)
    # The mask of each query row of the reshaped q: [B, 1, rep*T, S].
    parts = [_partial_attention(q, k_t, v, jnp.tile(mask, (1, rep, 1))[:, None])
             for k_t, v, mask in own]
    if prefix is not None:
        keys, values, prefix_mask = prefix
        p = keys.shape[0]
        g = b // p

        def per_prompt(x: Array) -> Array:  # [B, Hkv, rep*T, X] -> [P, Hkv, G*rep*T, X]
            return x.reshape(p, g, kv, rep * t, -1).transpose(0, 2, 1, 3, 4).reshape(
                p, kv, g * rep * t, -1)

        def per_row(x: Array) -> Array:  # the inverse
            return x.reshape(p, kv, g, rep * t, -1).transpose(0, 2, 1, 3, 4).reshape(
                b, kv, rep * t, -1)

        parts.append(tuple(map(per_row, _partial_attention(
            per_prompt(q), keys, values, prefix_mask[:, None, None, :]))))
    out, peak, total = parts[0]
    for other_out, other_peak, other_total in parts[1:]:
        # One softmax over both parts: rescale each to the common maximum.
        top = jnp.maximum(peak, other_peak)
        mine, other = jnp.exp(peak - top), jnp.exp(other_peak - top)
        out = out * mine.astype(out.dtype) + other_out * other.astype(out.dtype)
        total, peak = total * mine + other_total * other, top
    out = out / total.astype(out.dtype)
    return out.reshape(b, kv, rep, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def _partial_attention(q: Array, k_t: Array, v: Array, mask: Array
                       ) -> tuple[Array, Array, Array]:
    """``(exp(scores - peak) @ v, peak, sum exp(scores - peak))`` over the keys, with
    ``scores = q @ k_t / sqrt(D)`` where ``mask`` (broadcast to [N, Hkv, Q, S]) is true.

    q [N,Hkv,Q,D], k_t [N,Hkv,D,S], v [N,Hkv,S,D].

    The softmax's normalisation is deferred past the value product: dividing the [.., D]
    output by each row's total, not the [.., S] weights, saves a pass over the scores (and
    its backward), and lets two parts of one softmax be combined. The peak is a shift the
    result does not depend on (no gradient).
    """
    scores = jnp.einsum("bkqd,bkds->bkqs", q, k_t).astype(jnp.float32) * (q.shape[-1] ** -0.5)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    peak = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    weights = jnp.exp(scores - peak)
    total = weights.sum(axis=-1, keepdims=True)
    return jnp.einsum("bkqs,bksd->bkqd", weights.astype(v.dtype), v), peak, total


class MLP(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = Linear(d, f, ("embed", "mlp"), bias=False, param_dtype=param_dtype,
                                rngs=rngs,
                                lora=cfg.adapter("gate_proj"))
        self.up_proj = Linear(d, f, ("embed", "mlp"), bias=False, param_dtype=param_dtype,
                              rngs=rngs,
                              lora=cfg.adapter("up_proj"))
        self.down_proj = Linear(f, d, ("mlp", "embed"), bias=False, param_dtype=param_dtype,
                                rngs=rngs,
                                lora=cfg.adapter("down_proj"))

    def __call__(self, x: Array) -> Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.self_attn = Attention(cfg, param_dtype=param_dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps,
                                                param_dtype=param_dtype)
        self.mlp = MLP(cfg, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x, rope, mask, cache, cache_index, prefix=None, update_cache=True):
        attn, cache = self.self_attn(self.input_layernorm(x), rope, mask, cache, cache_index,
                                     prefix, update_cache)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Transformer(nnx.Module):
    """Causal LM (or, with ``config.num_labels > 0``, a sequence-classification reward model)."""

    def __init__(self, config: ModelConfig, *, dtype: jnp.dtype = jnp.float32,
                 param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs | None = None):
        rngs = rngs or nnx.Rngs(0)
        self.config = config
        self.dtype = dtype
        self.embed_tokens = nnx.Param(
            (jax.random.normal(rngs.params(), (config.vocab_size, config.hidden_size)) * 0.02
             ).astype(param_dtype), logical_axes=("vocab", "embed"))
        blocks = [Block(config, param_dtype=param_dtype, rngs=rngs)
                  for _ in range(config.num_layers)]
        self.layers = stack_blocks(blocks) if config.scan_layers else nnx.List(blocks)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        self.score = nnx.data(
            _param(rngs.params(), (config.hidden_size, config.num_labels), ("embed", "classes"),
                   param_dtype)
            if config.is_classifier else None)
        self.lm_head = nnx.data(
            _param(rngs.params(), (config.hidden_size, config.vocab_size), ("embed", "vocab"),
                   param_dtype)
            if not (config.is_classifier or config.tie_word_embeddings) else None)
        self.inv_freq = nnx.Variable(jnp.asarray(rope_inv_freq(config.rope, config.head_dim)))

    def unembedding(self) -> Array:
        """The ``[hidden, vocab]`` output matrix (the embedding, transposed, when tied)."""
        if self.lm_head is not None:
            return self.lm_head[...]
        return self.embed_tokens[...].T

    def hidden_states(self, input_ids: Array, attention_mask: Array | None = None, *,
                      positions: Array | None = None, cache: KVCache | None = None,
                      cache_index: Array | int | None = None, remat: bool = False,
                      prefix: SharedPrefix | None = None) -> tuple[Array, KVCache | None]:
        """Final-norm hidden states ``[B, T, D]`` (and the updated cache).

        ``prefix``: a prompt cache every row attends to before its own tokens (its G rows
        consecutive); ``positions`` then continue the prompt's.

        ``remat``: keep only each block's input for the backward pass and recompute the block
        there (``jax.checkpoint``, ``_remat_block``): activation memory of one block instead of all of them, for
        about a third more compute; the values and gradients are unchanged.
        """
        b, t = input_ids.shape
        if cache is None:
            if attention_mask is None:
                attention_mask = jnp.ones((b, t), jnp.bool_)
            attention_mask = attention_mask.astype(jnp.bool_)
            if positions is None:
                positions = default_positions(attention_mask)
            causal = jnp.tril(jnp.ones((t, t), jnp.bool_))
            mask = causal[None] & attention_mask[:, None, :]
        else:
            if attention_mask is None or positions is None or cache_index is None:
                raise ValueError("cached calls need attention_mask (over cache slots), positions "
                                 "and cache_index")
            slots = jnp.arange(cache.max_len)
            query_slots = cache_index + jnp.arange(t)
            causal = slots[None, :] <= query_slots[:, None]
            mask = causal[None] & attention_mask.astype(jnp.bool_)[:, None, :]
        x = shd.constrain_rows(jnp.take(self.embed_tokens[...], input_ids, axis=0
                                        ).astype(self.dtype))
        rope = rope_tables(positions, self.inv_freq[...], self.dtype)
        if self.config.scan_layers:
            x, cache = self._scanned_blocks(x, rope, mask, cache, cache_index, prefix, remat)
            return self.norm(x), cache
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
            x, layer_cache = (_remat_block if remat else _block)(
                layer, x, rope, mask, layer_cache, cache_index,
                None if prefix is None else prefix.layer(i))
            x = shd.constrain_rows(x)
            if layer_cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        x = self.norm(x)
        return x, (KVCache(tuple(new_keys), tuple(new_values)) if cache is not None else None)

    def _scanned_blocks(self, x, rope, mask, cache: KVCache | None, cache_index,
                        prefix: SharedPrefix | None, remat: bool):
        """The blocks as one ``lax.scan`` over the stacked layers (and their stacked caches):
        one block in the program, whatever the depth. ``remat`` checkpoints the scan's body."""
        graphdef, state = nnx.split(self.layers)

        def body(x, layer):
            params, kv, prefix_kv = layer
            shared = None if prefix_kv is None else (*prefix_kv, prefix.mask)
            x, new = nnx.merge(graphdef, params)(x, rope, mask, kv, cache_index, shared,
                                                 update_cache=False)
            return shd.constrain_rows(x), new

        if remat:
            body = jax.checkpoint(body, prevent_cse=False)
        kv = None if cache is None else (cache.keys, cache.values)
        prefix_kv = None if prefix is None else (prefix.cache.keys, prefix.cache.values)
        # Each layer reads its cache (a slice of the scan's input) and emits only its new
        # tokens' keys and values; one write after the scan puts every layer's in place.
        x, new = jax.lax.scan(body, x, (state, kv, prefix_kv))
        return x, (None if kv is None else KVCache(*write_cache(kv, new, cache_index)))

    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *,
                 positions: Array | None = None, cache: KVCache | None = None,
                 cache_index: Array | int | None = None):
        """Logits ``[B, T, vocab]`` (``[B, T, num_labels]`` for a classifier).

        With a cache, returns ``(logits, new_cache)``.
        """
        x, new_cache = self.hidden_states(input_ids, attention_mask, positions=positions,
                                          cache=cache, cache_index=cache_index)
        head = self.score[...] if self.score is not None else self.unembedding()
        logits = jnp.einsum("btd,dv->btv", x, head.astype(x.dtype))
        return logits if cache is None else (logits, new_cache)


def trainable(config: ModelConfig) -> type[nnx.Param]:
    """The parameters a run trains (an ``nnx`` filter): the adapters under LoRA, else all."""
    return nnx.LoRAParam if config.lora is not None else nnx.Param


def stack_blocks(blocks: list[Block]) -> Block:
    """One :class:`Block` holding every block's parameters stacked on a leading ``layers``
    axis (logical axis ``layers``, never sharded), as ``scan_layers`` runs them."""
    graphdef, _ = nnx.split(blocks[0])

    def stack(*layers: nnx.Variable) -> nnx.Variable:
        axes = layers[0].get_metadata()["logical_axes"]
        return layers[0].replace(jnp.stack([v[...] for v in layers]),
                                 logical_axes=("layers",) + axes)

    state = jax.tree.map(stack, *(nnx.state(b) for b in blocks),
                         is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def _block(layer: Block, x, rope, mask, cache, cache_index, prefix):
    return layer(x, rope, mask, cache, cache_index, prefix)


def _remat_block(layer: Block, x, rope, mask, cache, cache_index, prefix):
    """``_block`` under ``jax.checkpoint``, the layer passed in as pure state (a block reads
    its parameters and changes nothing, so this also works inside any enclosing trace)."""
    graphdef, state = nnx.split(layer)
    return jax.checkpoint(lambda s, *args: nnx.merge(graphdef, s)(*args))(
        state, x, rope, mask, cache, cache_index, prefix)


def default_positions(attention_mask: Array) -> Array:
    """Positions counted over real tokens only (left padding gets position 0)."""
    mask = attention_mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)

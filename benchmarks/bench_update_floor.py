"""The update's gradient against its matmul floor, one run.

    python benchmarks/bench_update_floor.py [--prompt-len 512] [--group 8] [--completion-len 96]

Times the gradient of the GRPO loss over one micro-batch of the update (rl/step.py's grouped
pass: one prompt, ``--group`` completions over its KV cache, log-probs through the chunked
head) on the bundled SmolLM2-135M-Instruct, and its *floor*: every matmul that gradient
performs, as one plain jitted chain of the same shapes. The chain is the model with
everything but its matmuls taken out (no norms, rotary embedding, softmax, mask or SiLU; the
projections, both attention products over the same key slots, the unembedding at the
completion positions), differentiated by ``jax.grad``, so its backward runs the same
products the real backward does. Its time is the least the update could take with XLA's
matmuls on this machine; the ratio is how far the update is from it (issue 12 asks for at
most 1.5x). Both are reported as model FLOP/s (models/flops.py, forward + backward = 3
forwards), with a plain 2048^3 matmul for scale. Not a test: run it alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from alphaalign_jax import assets
from alphaalign_jax.models import from_pretrained
from alphaalign_jax.models.flops import grouped_pass_flops
from alphaalign_jax.rl.step import LossSettings, UpdateBatch, train_step


def median_seconds(fn, repeats: int) -> float:
    fn()  # compile and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_skeleton(cfg, prompt_len: int, group: int, completion_len: int):
    """``loss(weights, prompt, completions)``: the grouped pass's matmuls alone, and random
    weights and inputs of its shapes. Scales keep the values O(1) (no overflow, no denormals)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    kv, rep, vocab = cfg.num_kv_heads, cfg.num_heads // cfg.num_kv_heads, cfg.vocab_size
    rng = np.random.default_rng(0)

    def normal(*shape, fan_in):
        return jnp.asarray(rng.standard_normal(shape, np.float32) / np.sqrt(fan_in))

    layers = [dict(q=normal(d, kv * rep * hd, fan_in=d), k=normal(d, kv * hd, fan_in=d),
                   v=normal(d, kv * hd, fan_in=d), o=normal(kv * rep * hd, d, fan_in=d),
                   gate=normal(d, f, fan_in=d), up=normal(d, f, fan_in=d),
                   down=normal(f, d, fan_in=f)) for _ in range(cfg.num_layers)]
    weights = dict(layers=layers, head=normal(d, vocab, fan_in=d))
    c = completion_len - 1  # the completion tokens that are inputs (the grouped pass)

    def attend(q, k, v):  # q [N, kv, Q, hd], k [N, kv, hd, S], v [N, kv, S, hd] -> [.., Q, hd]
        scores = jnp.einsum("nkqd,nkds->nkqs", q, k) / k.shape[-1]
        return jnp.einsum("nkqs,nksd->nkqd", scores, v)

    def layer(w, x, batch, tokens, prefix=None):
        """x [batch * tokens, d]; attention over the row's own tokens (and ``prefix``)."""
        q = (x @ w["q"]).reshape(batch, kv, rep * tokens, hd)
        k = (x @ w["k"]).reshape(batch, kv, hd, tokens)
        v = (x @ w["v"]).reshape(batch, kv, tokens, hd)
        out = attend(q, k, v)
        if prefix is not None:
            pk, pv = prefix
            shared = attend(q.reshape(1, kv, batch * rep * tokens, hd), pk, pv)
            out = out + shared.reshape(out.shape)
        x = x + out.reshape(batch * tokens, kv * rep * hd) @ w["o"]
        return x + (x @ w["gate"] + x @ w["up"]) @ w["down"], (k, v)

    def loss(weights, prompt, completions):
        x, caches = prompt, []
        for w in weights["layers"]:
            x, cache = layer(w, x, 1, prompt_len)
            caches.append(cache)
        y = completions
        for w, cache in zip(weights["layers"], caches):
            y, _ = layer(w, y, group, c, prefix=cache)
        head_in = jnp.concatenate([x[-1:].repeat(group, 0), y])  # group * completion_len rows
        # Quadratic, so the backward needs the forward's logits (as the real loss needs its
        # softmax): a linear loss would let XLA drop the forward head product.
        return 0.5 * jnp.mean(jnp.square(head_in @ weights["head"]))

    inputs = (normal(prompt_len, d, fan_in=1), normal(group * c, d, fan_in=1))
    return loss, weights, inputs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt-len", type=int, default=512)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--completion-len", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start")

    model = from_pretrained(assets.fetch_smollm2(quiet=True))
    cfg = model.config
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    rows, c = args.group, args.completion_len
    batch = UpdateBatch(
        prompt_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (1, args.prompt_len)), jnp.int32),
        prompt_mask=jnp.ones((1, args.prompt_len), bool),
        completion_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (rows, c)), jnp.int32),
        completion_mask=jnp.ones((rows, c), jnp.float32),
        old_logp=jnp.full((rows, c), -2.0, jnp.float32), ref_logp=jnp.zeros((rows, c)),
        advantages=jnp.asarray(rng.standard_normal(rows), jnp.float32))
    settings = LossSettings(clip_low=0.2, clip_high=0.28, beta=0.0, aggregation="token_mean",
                            max_completion_len=c, temperature=1.0, logprob_chunk=128,
                            group_size=rows)
    # The optimizer is the identity: the update's gradient, accumulation and bookkeeping, with
    # no Adam pass over the parameters (a separate, memory-bound cost reported by the trainer).
    tx = optax.identity()
    opt_state = tx.init(params)
    step = jax.jit(lambda prm, opt, b: train_step(graphdef, prm, rest, opt, b, tx=tx,
                                                  settings=settings, micro_batch_size=rows))
    update_s = median_seconds(lambda: step(params, opt_state, batch), args.repeats)

    loss, weights, inputs = matmul_skeleton(cfg, args.prompt_len, rows, c)
    floor_grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    floor_s = median_seconds(lambda: floor_grad(weights, *inputs), args.repeats)

    a = jnp.ones((2048, 2048), jnp.float32)
    square = jax.jit(lambda x: x @ x)
    square_s = median_seconds(lambda: square(a), 5)

    flops = 3 * grouped_pass_flops(cfg, 1, args.prompt_len, rows, c)
    print(f"micro-batch: 1 prompt of {args.prompt_len} + {rows} completions of {c} tokens; "
          f"{flops / 1e9:.0f} GFLOP (forward + backward)")
    print(f"  update gradient:   {update_s:7.2f} s  {flops / update_s / 1e9:6.1f} GFLOP/s")
    print(f"  matmul floor:      {floor_s:7.2f} s  {flops / floor_s / 1e9:6.1f} GFLOP/s")
    print(f"  2048^3 matmul:     {square_s * 1e3:7.1f} ms {2 * 2048 ** 3 / square_s / 1e9:6.1f} GFLOP/s")
    print(f"  update / floor: {update_s / floor_s:.2f}x   "
          f"(load average {os.getloadavg()[0]:.2f} at end)")


if __name__ == "__main__":
    main()

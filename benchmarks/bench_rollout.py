"""Rollout throughput: our Sampler vs HF transformers ``generate`` (torch CPU), side by side.

    python benchmarks/bench_rollout.py [--batch 8 32] [--new-tokens 64 256] [--num-samples 1]
                                       [--runs 3]

Both sides get the same chat-templated prompts on the bundled SmolLM2-135M-Instruct,
sample at temperature 1 with no top-k/top-p, and produce exactly ``--new-tokens``
tokens per row (HF: ``min_new_tokens``; ours: no EOS), so tokens/s compare like for
like. ``--batch`` counts rows; with ``--num-samples k`` there are ``batch / k``
distinct prompts sampled k times each (the GRPO shape: we prefill each prompt once,
HF's ``num_return_sequences`` prefills every copy). Each side is timed end to end
(tokenize, generate, decode text) after one warm-up call (our compile time is
printed separately), then the median of ``--runs`` calls, alternating sides so
that background load hits both. Not a test: shared machines drift, so compare
only the ratio measured in one run. ``ms/step`` is wall time per generated position
(prefill included); ``1st call +`` is our first call's extra time (compilation);
``load`` is the 1-minute load average: torch's OpenMP slows down far more than
XLA when other processes compete for the cores, so trust rows with load <= cores.

``floor`` is the time of one jitted pass that multiplies a ``[rows, in]``
activation by every weight matrix of the model once and does nothing else: any
decode step must read every weight, so no sampler built on XLA's matmuls can
step faster than this on the machine at hand (at batch 8 the weights, 540 MB
in fp32, are streamed from memory). ``HF/3`` is the step time a 3x speed-up
over HF would need; when it is below ``floor``, the only ways past it are
fewer weight bytes (lower precision, which changes the model) or more than one
token per weight read (speculative decoding).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import torch
import transformers
from flax import nnx

from alphaalign_jax import assets
from alphaalign_jax.models import from_pretrained
from alphaalign_jax.sampling import Sampler, trace_counts

QUESTIONS = [
    "How do plants make food from sunlight?", "What is the capital of Australia?",
    "Give me three tips for better sleep.", "Explain what a black hole is.",
    "How do I make a cup of green tea?", "Why is the sky blue?",
    "What is the difference between weather and climate?", "Write a short poem about autumn.",
    "How does a bicycle stay upright?", "What are prime numbers?",
    "Summarise the water cycle.", "How do vaccines train the immune system?",
    "What causes the seasons on Earth?", "Suggest a name for a friendly robot.",
    "How do I start learning to play the guitar?", "What is machine learning?",
    "Why do cats purr?", "How are rainbows formed?", "What is inflation in economics?",
    "Describe the taste of a lemon.", "How do bees make honey?",
    "What is the tallest mountain in the world?", "Explain gravity to a child.",
    "How can I reduce food waste at home?", "What does a compiler do?",
    "Why do leaves change colour in autumn?", "How far away is the Moon?",
    "What is a healthy breakfast?", "How do airplanes fly?", "What is the speed of light?",
    "Give an example of a metaphor.", "How does recycling help the environment?",
]


def prompts_for(rows: int, num_samples: int) -> list[list[dict[str, str]]]:
    if rows % num_samples:
        raise SystemExit(f"--batch {rows} is not a multiple of --num-samples {num_samples}")
    count = rows // num_samples
    return [[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}] for i in range(count)]


class HFSide:
    """``transformers`` generate on torch CPU, forced to exactly ``new_tokens`` tokens a row."""

    def __init__(self, hf_dir, tokenizer):
        self.model = transformers.AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32).eval()
        self.tokenizer = tokenizer

    def __call__(self, prompts, new_tokens: int, num_samples: int, seed: int) -> int:
        tok = self.tokenizer
        tok.padding_side = "left"
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                num_return_sequences=num_samples, pad_token_id=tok.pad_token_id)
        completions = out[:, enc["input_ids"].shape[1]:]
        tok.batch_decode(completions, skip_special_tokens=True)
        return completions.numel()


class OurSide:
    def __init__(self, hf_dir, tokenizer):
        self.model = from_pretrained(hf_dir)
        self.sampler = Sampler(self.model, tokenizer)

    def __call__(self, prompts, new_tokens: int, num_samples: int, seed: int) -> int:
        out = self.sampler.generate(prompts, max_new_tokens=new_tokens, temperature=1.0,
                                    num_samples=num_samples, eos_token_ids=(), seed=seed)
        return int(out.lengths.sum())


def weight_floor_seconds(model, rows: int, runs: int = 5) -> float:
    """Median time of one jitted pass of ``[rows, in] @ W`` over every weight matrix ``W``."""
    mats = [w for w in jax.tree.leaves(nnx.state(model, nnx.Param)) if w.ndim == 2]
    x = jax.random.normal(jax.random.key(0), (rows, max(w.shape[0] for w in mats)))

    @jax.jit
    def stream(mats, x):
        return sum((x[:, :w.shape[0]] @ w).sum() for w in mats)

    stream(mats, x).block_until_ready()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        stream(mats, x).block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = fn(*args)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="HF directory (default: bundled SmolLM2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32], help="rows per call")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    hf_dir = args.model or assets.fetch_smollm2(quiet=True)
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours, hf = OurSide(hf_dir, tokenizer), HFSide(hf_dir, tokenizer)
    print(f"SmolLM2 rollouts, fp32, temperature 1, {threads} CPU threads (torch and XLA), "
          f"num_samples={args.num_samples}, median of {args.runs} after a warm-up")
    header = (f"{'rows x new':>12} | {'ours tok/s':>10} | {'HF tok/s':>9} | {'ratio':>6} | "
              f"{'ours ms/step':>12} | {'HF ms/step':>10} | {'HF/3':>6} | {'floor':>6} | "
              f"{'1st call +':>10} | load")
    print(header)
    print("-" * len(header))
    for rows in args.batch:
        floor_ms = weight_floor_seconds(ours.model, rows) * 1e3
        prompts = prompts_for(rows, args.num_samples)
        for new_tokens in args.new_tokens:
            call = (prompts, new_tokens, args.num_samples)
            compile_s, _ = timed(ours, *call, 0)
            timed(hf, *call, 0)
            compiled = trace_counts()
            times: dict[str, list[float]] = {"ours": [], "hf": []}
            for run in range(args.runs):
                for name, side in (("ours", ours), ("hf", hf)):
                    seconds, tokens = timed(side, *call, run + 1)
                    assert tokens == rows * new_tokens, (name, tokens)
                    times[name].append(seconds)
            if trace_counts() != compiled:
                raise RuntimeError(f"recompiled during the timed runs: {trace_counts()}")
            ours_s, hf_s = (statistics.median(times[k]) for k in ("ours", "hf"))
            total = rows * new_tokens
            print(f"{rows:>5} x {new_tokens:<5}| {total / ours_s:>10.1f} | {total / hf_s:>9.1f} | "
                  f"{hf_s / ours_s:>5.2f}x | {ours_s / new_tokens * 1e3:>12.1f} | "
                  f"{hf_s / new_tokens * 1e3:>10.1f} | {hf_s / new_tokens * 1e3 / 3:>6.1f} | "
                  f"{floor_ms:>6.1f} | {compile_s - ours_s:>8.1f} s | "
                  f"{os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()

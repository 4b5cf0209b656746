"""Sampler decode rate and update MFU of a paper architecture on one accelerator (random weights).

    python benchmarks/bench_accelerator.py --config configs/qwen2_5_3b_instruct.py \
        [--batches 8 32 128] [--prompt-len 128] [--new-tokens 256] [--json out.json]

No checkpoint or tokenizer is needed: the model is the config's architecture card with random
weights, the prompts random token ids (a stand-in tokenizer maps ids to text and back), and
the rollouts never stop early (no EOS), so every row decodes ``--new-tokens`` tokens.

Measured in the same run, as the ceilings the rates are compared with: a bf16
8192x8192x8192 matmul (FLOP/s) and an elementwise pass over 2 GiB (HBM bytes/s, read +
write). Beside them the vendor's peaks (``--peak-tflops``, ``--peak-tbps``; defaults are the
NVIDIA H200 SXM datasheet's dense bf16 and HBM3e numbers).

1. The GRPO step of the config (its dtypes, remat, beta and micro-batch size) at
   ``--update-prompts`` prompts x 8 rollouts of ``--prompt-len`` + ``--new-tokens`` tokens:
   the reference log-prob pass and the optimizer update (forward + backward + Adam), their
   model FLOPs (``models/flops.py``; the update counts 3 forward passes, not the recomputed
   one, so the MFU is model FLOPs utilisation) and MFU against both ceilings.

2. Sampler (the trainer's ``Sampler``, bf16 weights and cache): for each ``--batches`` row
   count (``rows / 8`` prompts x 8 samples, the GRPO shape), prefill and decode seconds
   (``Sampler.last_timing``), decode tokens/s, and the HBM-bandwidth bound of a decode step:
   every weight, each prompt's KV cache (shared by its samples) and each row's filled
   completion cache read once, ``bytes / bandwidth``.

Compile times are printed apart; timings are medians of ``--runs`` calls after a warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import pathlib
import statistics
import sys
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the configs package

from alphaalign_jax import sharding as shd  # noqa: E402
from alphaalign_jax.models import Transformer  # noqa: E402
from alphaalign_jax.models.hf_io import architecture  # noqa: E402
from alphaalign_jax.models.flops import grouped_pass_flops, sampling_flops  # noqa: E402
from alphaalign_jax import settings as settings_lib  # noqa: E402
from alphaalign_jax.rl.optim import optimizer  # noqa: E402
from alphaalign_jax.rl.programs import update_programs  # noqa: E402
from alphaalign_jax.rl.step import UpdateBatch  # noqa: E402
from alphaalign_jax.sampling import Sampler  # noqa: E402
from alphaalign_jax.sampling.sampler import bucket  # noqa: E402

GROUP = 8  # rollouts a prompt, the paper's


class IdTokenizer:
    """Stands in for a tokenizer: a prompt is its token ids written as text."""

    eos_token_id = None

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[int(t) for t in text.split()] for text in texts]}

    def batch_decode(self, rows, **kwargs):
        return [" ".join(map(str, row)) for row in rows]


def timed(fn, runs: int) -> tuple[float, float]:
    """(first call's seconds, compile included; median of ``runs`` more)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def ceilings(runs: int) -> dict[str, float]:
    """The matmul rate and the HBM bandwidth this device reaches on plain XLA programs."""
    n = 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda a, b: a @ b)
    _, t_matmul = timed(lambda: matmul(a, b), runs * 3)
    x = jnp.ones((1 << 30,), jnp.bfloat16)
    bump = jax.jit(lambda x: x + 1)
    _, t_copy = timed(lambda: bump(x), runs * 3)
    return {"matmul_flops_per_s": 2 * n ** 3 / t_matmul,
            "hbm_bytes_per_s": 2 * x.nbytes / t_copy}


def sampler_rows(cfg, batches, prompt_len: int, new_tokens: int, runs: int,
                 bandwidth: dict[str, float]) -> list[dict]:
    model = Transformer(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    sampler = Sampler(model, IdTokenizer(), max_prompt_len=prompt_len,
                      min_cache_slots=bucket(new_tokens))
    rng = np.random.default_rng(0)
    kv_bytes_per_slot = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2  # k and v, bf16
    rows = []
    for batch in batches:
        prompts = [" ".join(map(str, rng.integers(0, cfg.vocab_size, prompt_len)))
                   for _ in range(max(1, batch // GROUP))]

        def run():
            return sampler.generate(prompts, max_new_tokens=new_tokens, num_samples=GROUP,
                                    eos_token_ids=(), seed=1).lengths

        first, total = timed(run, runs)
        t = sampler.last_timing  # of the last timed call
        steps = t["decode_steps"]
        n = len(prompts) * GROUP
        # What a decode step must read: every weight once, each prompt's cache once (its rows
        # share it) and each row's filled completion cache.
        step_bytes = weight_bytes + (len(prompts) * prompt_len + n * new_tokens / 2) * \
            kv_bytes_per_slot
        per_step = t["decode_s"] / steps
        rows.append({
            "rows": n, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "first_call_s": first, "generate_s": total, "prefill_s": t["prefill_s"],
            "decode_s": t["decode_s"], "decode_ms_per_step": per_step * 1e3,
            "decode_tokens_per_s": n * steps / t["decode_s"],
            "flops": sampling_flops(cfg, len(prompts), prompt_len, n, new_tokens),
            "hbm_bytes_per_step": step_bytes,
            **{f"of_bound_{name}": step_bytes / bw / per_step for name, bw in bandwidth.items()},
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


def update_rows(c, cfg, prompts: int, prompt_len: int, new_tokens: int, runs: int,
                peaks: dict[str, float]) -> list[dict]:
    c.train.prompts_per_step, c.rollout.num_samples = prompts, GROUP
    c.rollout.max_prompt_len, c.rollout.max_new_tokens = prompt_len, new_tokens
    mesh = shd.make_mesh(dict(c.mesh))
    model = Transformer(cfg, dtype=jnp.dtype(c.model.dtype),
                        param_dtype=jnp.dtype(c.model.param_dtype), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    del model
    tx, _ = optimizer(settings_lib.optimizer_settings(c))
    params = jax.device_put(params, shd.shardings_of(params))
    opt_state = shd.init_optimizer(tx, params, mesh)
    step, reference = update_programs(
        settings_lib.update_settings(c), graphdef, tx, mesh, param_shardings=shd.shardings_of(params),
        opt_shardings=shd.optimizer_shardings(tx, params, mesh))
    rng = np.random.default_rng(0)
    n = prompts * GROUP
    uniform = np.full((n, new_tokens), -np.log(cfg.vocab_size), np.float32)
    batch = UpdateBatch(
        prompt_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (prompts, prompt_len)), jnp.int32),
        prompt_mask=jnp.ones((prompts, prompt_len), jnp.bool_),
        completion_ids=jnp.asarray(rng.integers(0, cfg.vocab_size, (n, new_tokens)), jnp.int32),
        completion_mask=jnp.ones((n, new_tokens), jnp.float32),
        old_logp=jnp.asarray(uniform), ref_logp=jnp.asarray(uniform),
        advantages=jnp.asarray(rng.standard_normal(n), jnp.float32))
    forward = grouped_pass_flops(cfg, prompts, prompt_len, n, new_tokens)
    state = {"params": params, "opt_state": opt_state}

    def update():
        state["params"], state["opt_state"], metrics = step(state["params"], rest,
                                                            state["opt_state"], batch)
        return metrics["loss"]

    common = {"prompts": prompts, "rows": n, "prompt_len": prompt_len, "new_tokens": new_tokens,
              "micro_batch_size": c.algo.micro_batch_size, "remat": bool(c.model.remat),
              "dtype": c.model.dtype, "param_dtype": c.model.param_dtype}
    rows = []
    for name, fn, model_flops in (
            ("reference log-probs", lambda: reference(state["params"], rest, batch), forward),
            ("update (fwd+bwd+Adam)", update, 3 * forward)):
        first, t = timed(fn, runs)
        rows.append({"program": name, **common, "first_call_s": first, "seconds": t,
                     "model_flops": model_flops, "flops_per_s": model_flops / t,
                     **{f"mfu_{k}": model_flops / t / v for k, v in peaks.items()}})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs/qwen2_5_3b_instruct.py"))
    parser.add_argument("--layers", type=int, default=0,
                        help="keep the card's widths but this many blocks (a quick check)")
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32, 128])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--update-prompts", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="vendor dense bf16 peak (H200 SXM datasheet)")
    parser.add_argument("--peak-tbps", type=float, default=4.8,
                        help="vendor HBM bandwidth, TB/s (H200 SXM datasheet)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sampler", "update"])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    c = load_config(args.config)
    cfg = architecture(c.model.hf_dir, "config.model.hf_dir")
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    device = jax.devices()[0]
    result = {"device": device.device_kind, "jax": jax.__version__, "config": args.config,
              "layers": cfg.num_layers, "vendor_flops_per_s": args.peak_tflops * 1e12,
              "vendor_hbm_bytes_per_s": args.peak_tbps * 1e12}
    print(json.dumps(result), flush=True)
    result.update(ceilings(args.runs))
    print(json.dumps(result), flush=True)

    def save():
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(result, indent=2))

    save()
    sections = {
        "update": lambda: update_rows(
            c, cfg, args.update_prompts, args.prompt_len, args.new_tokens, args.runs,
            {"vendor": result["vendor_flops_per_s"], "measured": result["matmul_flops_per_s"]}),
        "sampler": lambda: sampler_rows(
            cfg, args.batches, args.prompt_len, args.new_tokens, args.runs,
            {"vendor": result["vendor_hbm_bytes_per_s"], "measured": result["hbm_bytes_per_s"]}),
    }
    for name, run in sections.items():
        if name in args.skip:
            continue
        try:  # one section failing (memory, say) still leaves the other's numbers
            result[name] = run()
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            result[name + "_error"] = repr(e)
        save()
    print(report(result))


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table, the first column left-aligned (nothing when there are no rows)."""
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in rows), ""]


def report(r: dict) -> str:
    lines = [f"{r['device']} (jax {r['jax']}), {r['layers']} blocks: matmul "
             f"{r['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s measured, "
             f"{r['vendor_flops_per_s'] / 1e12:.0f} vendor; HBM "
             f"{r['hbm_bytes_per_s'] / 1e12:.2f} TB/s measured, "
             f"{r['vendor_hbm_bytes_per_s'] / 1e12:.2f} vendor", ""]
    lines += table(["rows", "prefill s", "decode ms/step", "decode tok/s",
                    "of HBM bound (measured / vendor BW)", "first call s"],
                   [[str(s["rows"]), f"{s['prefill_s']:.3f}", f"{s['decode_ms_per_step']:.2f}",
                     f"{s['decode_tokens_per_s']:.0f}",
                     f"{s['of_bound_measured']:.2f} / {s['of_bound_vendor']:.2f}",
                     f"{s['first_call_s']:.1f}"] for s in r.get("sampler", [])])
    lines += table(["program", "s", "model TFLOP", "TFLOP/s", "MFU (measured / vendor peak)",
                    "first call s"],
                   [[u["program"], f"{u['seconds']:.3f}", f"{u['model_flops'] / 1e12:.1f}",
                     f"{u['flops_per_s'] / 1e12:.1f}",
                     f"{u['mfu_measured']:.2f} / {u['mfu_vendor']:.2f}",
                     f"{u['first_call_s']:.1f}"] for u in r.get("update", [])])
    return "\n".join(lines)

if __name__ == "__main__":
    main()

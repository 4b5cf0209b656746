"""LoRA vs full fine-tuning: the bundled config's GRPO step, side by side, in one run.

    python benchmarks/bench_lora.py [--steps 4] [--rank 16] [--runs 1]

Both sides run the trainer's command line on the bundled SmolLM2-135M-Instruct config (its
prompts, 4 prompts x 8 rollouts x 96 new tokens, the reward model, the KL reference; no warm
start, so both start from the same weights): full fine-tuning, then ``model.lora_rank``
adapters on every projection. Each run is a fresh process; we report the median of
``time/step_s`` and ``time/update_s`` over the steps after the first (the first compiles),
and the process's peak resident memory (``ru_maxrss`` of that child alone). Not a test: run
it alone (``load`` is the 1-minute load average; trust it at or under the core count).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def run(workdir: pathlib.Path, steps: int, extra: list[str]) -> dict[str, float]:
    """One training run in its own process: median step/update seconds, peak RSS."""
    command = [sys.executable, "-m", "alphaalign_jax.train",
               f"--config={REPO / 'configs' / 'smollm2_135m_cpu.py'}", f"--workdir={workdir}",
               f"--config.train.steps={steps}", "--config.rft.rounds=0",
               "--config.train.plot=False", f"--config.train.checkpoint_every={steps}", *extra]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed:\n{stderr[-3000:]}")
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    later = rows[1:] or rows
    return {"step_s": statistics.median(r["time/step_s"] for r in later),
            "update_s": statistics.median(r["time/update_s"] for r in later),
            "first_step_s": rows[0]["time/step_s"], "peak_rss_gb": usage.ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()
    sides = {"full": [], f"LoRA r{args.rank}": [f"--config.model.lora_rank={args.rank}",
                                                f"--config.model.lora_alpha={2 * args.rank}"]}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in sides.items():
            results[name] = run(pathlib.Path(tmp) / name.replace(" ", "_"), args.steps, extra)
    print(f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, {args.steps} steps each")
    print("| side | step s | update s | first step s | peak RSS GB |")
    print("|---|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['step_s']:.2f} | {r['update_s']:.2f} | {r['first_step_s']:.1f} | "
              f"{r['peak_rss_gb']:.2f} |")
    full, lora = results.values()
    print(f"LoRA / full: step {lora['step_s'] / full['step_s']:.2f}x, update "
          f"{lora['update_s'] / full['update_s']:.2f}x, peak RSS "
          f"{lora['peak_rss_gb'] / full['peak_rss_gb']:.2f}x")


if __name__ == "__main__":
    main()

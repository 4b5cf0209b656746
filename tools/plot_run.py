"""Training curves of one run or several side by side (format, refusal, over-refusal, reward
variance, entropy), each a moving mean over the raw per-step points drawn faint.

    python tools/plot_run.py runs/smollm2
    python tools/plot_run.py --out curves.png balanced=runs/A harmful75=runs/C

Each argument is NAME=WORKDIR (or a WORKDIR, named by its folder); reads WORKDIR/metrics.jsonl.
A run has one colour and one line style in every panel. A workdir without metrics is an error
(exit 2).
"""

from __future__ import annotations

import pathlib
import sys

from plotting import plot_args  # tools/, the script's own folder

from alphaalign_jax.metrics import SMOOTHING, plot_curve, read_metrics

PANELS = (  # metric, title, which way is better
    ("reward/format_rate/harmful", "format rate, harmful prompts", "higher is better"),
    ("reward/format_rate/benign", "format rate, benign prompts", "higher is better"),
    ("reward/refusal_rate/harmful", "refusal rate, harmful prompts", "higher is better"),
    ("reward/over_refusal_rate/benign", "refusal rate, benign prompts", "lower is better"),
    ("reward/groups_with_signal", "groups with reward variance", "0 = nothing to learn"),
    ("entropy", "policy entropy (nats/token)", "a collapse falls to 0"),
)
STYLES = ("-", "--", ":", "-.")


def read(workdir: pathlib.Path) -> list[dict]:
    """The run's metrics rows; a workdir with none is a one-line error, exit 2."""
    path = workdir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    if not rows:
        print(f"plot_run: {workdir}: no metrics.jsonl rows (not a training workdir, or no step "
              "finished yet)", file=sys.stderr)
        raise SystemExit(2)
    return rows


def main() -> None:
    args, plt = plot_args(__doc__, "NAME=WORKDIR or WORKDIR", default_out="curves_runs.png")
    runs = []
    for spec in args.runs:
        name, _, path = spec.rpartition("=")
        runs.append((name or pathlib.Path(path).name, read(pathlib.Path(path))))
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for i, (name, rows) in enumerate(runs):
        color, style = f"C{i % 10}", STYLES[i % len(STYLES)]
        for ax, (key, title, better) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                plot_curve(ax, points, color=color, style=style, label=name)
            ax.set_title(f"{title}\n({better})", fontsize=11)
            ax.set_xlabel("step", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center",
               ncol=min(len(runs), 4), fontsize=10, frameon=False)
    fig.suptitle(f"lines: mean of {SMOOTHING} steps; dots: each step", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()

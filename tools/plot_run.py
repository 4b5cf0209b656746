"""The figures of one run or several side by side: training curves (format, refusal,
over-refusal, reward variance, entropy; a moving mean over the raw per-step points drawn faint)
and, with ``--heldout``, their held-out rates as points with 95% interval whiskers beside the
base model. Every figure the README shows is made by this one command:

    python tools/plot_run.py --out docs/figures/curves.png \
        order0=runs/s0 order1=runs/s1 order2=runs/s2 \
        --heldout base=runs/base256 order0=runs/s0/eval order1=runs/s1/eval order2=runs/s2/eval \
        --heldout-out docs/figures/heldout.png

A run is NAME=WORKDIR (or a WORKDIR, named by its folder; its metrics.jsonl is read); a held-out
column is NAME=EVALDIR, an ``evaluate --out`` folder (its results.json, the trained model's
rates; the base model's column comes from the first folder evaluated with ``--baseline``, or
from a folder named base=...). A name in both lists has one colour in both figures; a name starting `base` is grey. A workdir
without metrics or a folder without results is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from alphaalign_jax.heldout_plot import NoResults, plot_heldout, read_results
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


def fail(message: str) -> None:
    print(f"plot_run: {message}", file=sys.stderr)
    raise SystemExit(2)


def named(spec: str) -> tuple[str, pathlib.Path]:
    """NAME=PATH, or PATH named by its folder."""
    name, _, path = spec.rpartition("=")
    return name or pathlib.Path(path).name, pathlib.Path(path)


def read_run(workdir: pathlib.Path) -> list[dict]:
    """The run's metrics rows; a workdir with none is an error."""
    path = workdir / "metrics.jsonl"
    rows = read_metrics(path) if path.exists() else []
    if not rows:
        fail(f"{workdir}: no metrics.jsonl rows (not a training workdir, or no step finished "
             "yet)")
    return rows


def plot_curves(runs: list[tuple[str, list[dict]]], colors: dict[str, str],
                out: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for i, (name, rows) in enumerate(runs):
        for ax, (key, title, better) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                plot_curve(ax, points, color=colors[name], style=STYLES[i % len(STYLES)],
                           label=name)
            ax.set_title(f"{title}\n({better})", fontsize=11)
            ax.set_xlabel("step", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="lower center",
               ncol=min(len(runs), 4), fontsize=10, frameon=False)
    fig.suptitle(f"training curves; lines: mean of {SMOOTHING} steps, dots: each step",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", help="NAME=WORKDIR or WORKDIR: training curves")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("curves_runs.png"))
    p.add_argument("--heldout", nargs="+", default=[], metavar="NAME=EVALDIR",
                   help="held-out rates, one column an evaluate --out folder")
    p.add_argument("--heldout-out", type=pathlib.Path, default=pathlib.Path("heldout.png"))
    args = p.parse_args()
    if not args.runs and not args.heldout:
        fail("name at least one run (NAME=WORKDIR) or --heldout NAME=EVALDIR")
    runs = [(name, read_run(path)) for name, path in map(named, args.runs)]
    colors = {name: f"C{i % 10}" for i, (name, _) in enumerate(runs)}
    if runs:
        plot_curves(runs, colors, args.out)
    if args.heldout:
        entries, baseline = [], None
        for name, folder in map(named, args.heldout):
            try:
                results, sizes = read_results(folder)
            except NoResults as e:
                fail(str(e))
            model = next(iter(results))  # the evaluated model, not its baseline column
            entries.append((name, results[model], sizes.get(model, {})))
            base = next((k for k in results if k.startswith("baseline")), None)
            if baseline is None and base is not None:
                baseline = ("base", results[base], sizes.get(base, {}))
        if baseline is not None and not any(n.startswith("base") for n, _, _ in entries):
            entries.insert(0, baseline)  # the base model, evaluated beside the first run
        try:
            print(plot_heldout(entries, args.heldout_out, colors), "columns:",
                  ", ".join(name for name, _, _ in entries))
        except NoResults as e:
            fail(str(e))


if __name__ == "__main__":
    main()

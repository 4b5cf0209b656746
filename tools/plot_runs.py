"""Training curves of several runs side by side (format, refusal, over-refusal, entropy).

    python tools/plot_runs.py --out curves.png balanced=runs/A harmful75=runs/C

Each argument is NAME=WORKDIR (or a WORKDIR, named by its folder); reads WORKDIR/metrics.jsonl.
"""

from __future__ import annotations

import json
import pathlib

from plotting import plot_args  # tools/, the script's own folder

PANELS = (
    ("reward/format_rate/harmful", "format rate, harmful"),
    ("reward/format_rate/benign", "format rate, benign"),
    ("reward/refusal_rate/harmful", "refusal rate, harmful"),
    ("reward/over_refusal_rate/benign", "refusal rate, benign"),
    ("reward/groups_with_signal", "groups with reward variance"),
    ("entropy", "policy entropy (nats/token)"),
)


def read(workdir: pathlib.Path) -> list[dict]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"{workdir}: no metrics.jsonl (not a training workdir)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    args, plt = plot_args(__doc__, "NAME=WORKDIR or WORKDIR")
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for i, spec in enumerate(args.runs):
        name, _, path = spec.rpartition("=")
        color = f"C{i % 10}"  # one colour a run in every panel, even where a metric is missing
        rows = read(pathlib.Path(path))
        for ax, (key, title) in zip(axes.flat, PANELS):
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker=".", color=color,
                        label=name or pathlib.Path(path).name)
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("step", fontsize=8)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)


if __name__ == "__main__":
    main()

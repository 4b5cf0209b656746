"""Held-out rates over a run's checkpoints, several runs side by side.

    python tools/plot_evals.py --out heldout.png \
        headline=0:runs/A1/eval_ws,40:runs/A1/eval40,60:runs/A1b/eval60 rerun=60:runs/A1r2/eval60

Each argument is NAME=STEP:EVALDIR[,STEP:EVALDIR...], EVALDIR an ``evaluate --out`` folder
(its ``results.json``). The base model's rates (the baseline column of the first folder) are
drawn as dashed lines. Refusals are shown as the paper's verifier counts them and counted wide.
"""

from __future__ import annotations

import json
import pathlib

from plotting import plot_args  # tools/, the script's own folder

PANELS = (
    (("format_rate/harmful", "format_rate/benign"), "format rate"),
    (("refusal_rate/harmful", "over_refusal_rate"), "refusal rate (verifier)"),
    (("refusal_rate_wide/harmful", "over_refusal_rate_wide"), "refusal rate (wide)"),
)
CLASSES = ("harmful", "benign")


def read(eval_dir: pathlib.Path) -> tuple[dict, dict]:
    """(the model's rates, the baseline's rates) of one ``evaluate --out`` folder."""
    path = eval_dir / "results.json"
    if not path.exists():
        raise SystemExit(f"{eval_dir}: no results.json (not an evaluate --out folder)")
    results = json.loads(path.read_text())
    model = next((v for k, v in results.items() if k.startswith("model")), None)
    base = next((v for k, v in results.items() if k.startswith("baseline")), {})
    if model is None:
        raise SystemExit(f"{path}: no 'model (...)' entry")
    return model, base


def parse(arg: str) -> tuple[str, list[tuple[int, pathlib.Path]]]:
    name, sep, points = arg.partition("=")
    if not sep:
        raise SystemExit(f"{arg!r}: expected NAME=STEP:EVALDIR[,STEP:EVALDIR...]")
    parsed = []
    for point in points.split(","):
        step, sep, folder = point.partition(":")
        if not sep or not step.isdigit():
            raise SystemExit(f"{arg!r}: {point!r} is not STEP:EVALDIR")
        parsed.append((int(step), pathlib.Path(folder)))
    return name, sorted(parsed)


def main() -> None:
    args, plt = plot_args(__doc__, "NAME=STEP:EVALDIR[,STEP:EVALDIR...]")
    runs = [parse(a) for a in args.runs]
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.8), sharey=True)
    base = read(runs[0][1][0][1])[1]
    curves = [(name, [step for step, _ in points], [read(folder)[0] for _, folder in points])
              for name, points in runs]  # each results.json read once, not once a panel
    for ax, (keys, title) in zip(axes, PANELS):
        for (name, steps, rates), color in zip(curves,
                                               plt.rcParams["axes.prop_cycle"].by_key()["color"]):
            for key, cls, style in zip(keys, CLASSES, ("-o", "--s")):
                ax.plot(steps, [r[key] for r in rates], style, color=color, label=f"{name}, {cls}")
        for key, cls, style in zip(keys, CLASSES, ("-", "--")):
            if key in base:
                ax.axhline(base[key], color="grey", ls=style, lw=1, label=f"base, {cls}")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylim(-0.03, 1.03)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()

"""Held-out rates of several models side by side: one point a model and rate, with its 95%
Wilson interval as a whisker, so a reader sees at once whether a difference outruns the noise
of 32-48 prompts. Drawn by ``evaluate`` (eval.png) and by ``tools/plot_run.py --heldout``."""

from __future__ import annotations

import json
import pathlib

from alphaalign_jax.intervals import wilson_interval

PANELS = (  # title, which way is better, ((metric, series label), ...)
    ("format rate", "higher is better",
     (("format_rate/harmful", "harmful"), ("format_rate/benign", "benign"))),
    ("harmful prompts refused", "higher is better",
     (("refusal_rate/harmful", "verifier"), ("refusal_rate_wide/harmful", "wide"))),
    ("benign prompts refused", "lower is better",
     (("over_refusal_rate", "verifier"), ("over_refusal_rate_wide", "wide"))),
    ("everyday probes refused", "lower is better",
     (("over_refusal_rate_wide/probe", "wide"),)),
    ("attack success", "lower is better",
     (("asr/all", "complied"), ("asr_upper/all", "complied or cut off"))),
)
MARKERS = ("o", "s")


class NoResults(ValueError):
    """An evaluation folder without a readable ``results.json``."""


def read_results(eval_dir: pathlib.Path) -> tuple[dict[str, dict], dict[str, dict]]:
    """({model name: rates}, {model name: prompts behind each rate}) of an ``evaluate --out``
    folder, in the file's order (the model, then the baseline when it was evaluated)."""
    path = eval_dir / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise NoResults(f"{path}: not readable ({e}); expected an `evaluate --out` folder") \
            from None
    sizes = results.pop("_meta", {}).get("prompts_behind_each_rate", {})
    if not results:
        raise NoResults(f"{path}: holds no model's rates")
    return results, sizes


def plot_heldout(entries: list[tuple[str, dict, dict]], out: pathlib.Path,
                 colors: dict[str, str] | None = None) -> pathlib.Path:
    """Each entry (name, rates, sizes) a column in every panel; a panel's series (for example
    the verifier's and the wide refusal count) side by side with their own markers. A rate
    without its prompt count is drawn without a whisker. ``colors``: a name's colour (the
    same run drawn in the same colour as in its curves); a name without one is grey if it
    starts with ``base`` (the base model), else the next colour no run has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in PANELS if any(m in rates for _, rates, _ in entries for m, _ in p[2])]
    if not panels:
        raise NoResults("none of the evaluated rates is one the held-out plot draws: "
                        + ", ".join(m for p in PANELS for m, _ in p[2]))
    colors = dict(colors or {})
    for name, _, _ in entries:
        if name not in colors:
            free = sum(c.startswith("C") for c in colors.values())
            colors[name] = "0.45" if name.startswith("base") else f"C{free % 10}"
    cols = min(3, len(panels))  # legible at a README's width
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, better, series) in zip(axes.flat, panels):
        offsets = [0.0] if len(series) == 1 else [-0.15, 0.15]
        for (metric, _), marker, dx in zip(series, MARKERS, offsets):
            for x, (name, rates, sizes) in enumerate(entries):
                if metric not in rates:
                    continue
                rate, n = rates[metric], sizes.get(metric)
                low, high = wilson_interval(rate, n) if n else (rate, rate)
                ax.errorbar(x + dx, rate, yerr=[[rate - low], [high - rate]], fmt=marker,
                            color=colors[name], capsize=3, markersize=6)
        ax.set_xticks(range(len(entries)), [name for name, _, _ in entries], rotation=30,
                      ha="right", fontsize=9)
        ax.set_xlim(-0.6, len(entries) - 0.4)
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(f"{title}\n({better})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            handles = [plt.Line2D([], [], color="0.3", marker=m, linestyle="none", label=l)
                       for (_, l), m in zip(series, MARKERS)]
            ax.legend(handles=handles, fontsize=8, loc="center right")
    for ax in axes[:, 0]:
        ax.set_ylabel("rate over the held-out prompts", fontsize=9)
    fig.suptitle("held out, greedy; whiskers: 95% Wilson interval over the prompts", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

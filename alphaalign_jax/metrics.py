"""Training metrics: JSONL (the record), TensorBoard (the dashboard), a console progress bar,
and PNG curves of the headline numbers at the end of a run."""

from __future__ import annotations

import json
import pathlib

from absl import logging
from tqdm import tqdm

HEADLINE = {  # metric -> short console name
    "reward/total": "R",
    "reward/format_rate/harmful": "fmt",
    "reward/refusal_rate/harmful": "refuse",
    "reward/over_refusal_rate/benign": "over",
    "kl": "kl",
    "time/step_s": "s/step",
    "time/rollout_s": "rollout s",
    "time/update_s": "update s",
    "flops_per_s/update": "update FLOP/s",
}
PLOTTED = ("reward/total", "reward/format_rate/harmful", "reward/format_rate/benign",
           "reward/refusal_rate/harmful", "reward/over_refusal_rate/benign",
           "reward/helpfulness_reward/benign", "kl", "entropy", "response_length/mean")


def finish_step(m: dict[str, float], *, widths: tuple[int, int], lr: float, compiles: int,
                flops: dict[str, float]) -> dict[str, float]:
    """A step's metrics completed: the update batch's prompt and completion widths, the
    learning rate, the update program's compiles, the host's share of the step time, and each
    phase's model FLOPs and FLOP/s."""
    m.update({"update/prompt_width": float(widths[0]),
              "update/completion_width": float(widths[1]), "lr": lr,
              "compiles/train_step": compiles, **flops})
    m["time/host_s"] = m["time/step_s"] - sum(m[f"time/{k}_s"] for k in (
        "rollout", "reward", "reference", "update"))
    for phase in ("rollout", "reference", "update"):
        m[f"flops_per_s/{phase}"] = m[f"flops/{phase}"] / max(m[f"time/{phase}_s"], 1e-9)
    return m


class MetricsWriter:
    """Appends one JSON line per step; resumed runs keep appending to the same file.

    Only one process of a multi-host run should make one (the trainer uses process 0).
    """

    def __init__(self, workdir: pathlib.Path, *, total_steps: int, initial_step: int = 0):
        from tensorboardX import SummaryWriter

        self.workdir = workdir
        self.path = workdir / "metrics.jsonl"
        for name in ("metrics.jsonl", "samples.jsonl"):
            _truncate_after(workdir / name, initial_step)
        self.tb = SummaryWriter(str(workdir / "tensorboard"))
        self.bar = tqdm(total=total_steps, initial=initial_step, desc="train", unit="step",
                        dynamic_ncols=True)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        for name, value in metrics.items():
            self.tb.add_scalar(name, value, step)
        self.bar.set_postfix({short: f"{metrics[name]:.3g}" for name, short in HEADLINE.items()
                              if name in metrics})
        self.bar.update(1)

    def close(self, *, plot: bool = True) -> None:
        self.bar.close()
        self.tb.close()
        if plot and self.path.exists():
            plot_metrics(self.path, self.workdir / "curves.png")


def _lines(path: pathlib.Path) -> list[tuple[str, dict | None]]:
    """Each non-blank line and its step record, or None for a line that is none: one torn by
    a kill or a full disk in the middle of its write."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        out.append((line, row if isinstance(row, dict) and isinstance(row.get("step"), int)
                    else None))
    return out


def read_metrics(path: pathlib.Path) -> list[dict]:
    """The step records of a metrics file, a torn line left out."""
    return [row for _, row in _lines(path) if row is not None]


def _truncate_after(path: pathlib.Path, step: int) -> None:
    """On resume, keep the lines of steps up to the checkpoint's. Later steps (they will be
    redone) and torn lines are appended to ``<name>.dropped`` beside the file, never lost;
    the file is replaced whole, so a kill here loses nothing either."""
    if not path.exists():
        return
    lines = _lines(path)
    dropped = [line for line, row in lines if row is None or row["step"] > step]
    if not dropped:
        return
    with open(path.with_name(path.name + ".dropped"), "a") as f:
        f.write("".join(line + "\n" for line in dropped))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line, row in lines
                           if row is not None and row["step"] <= step))
    tmp.replace(path)
    logging.warning("%s: %d line(s) after the checkpoint's step %d or torn, moved to %s",
                    path, len(dropped), step, path.name + ".dropped")


SMOOTHING = 5  # steps in the moving mean drawn over each curve's raw points


def moving_mean(values: list[float], window: int = SMOOTHING) -> list[float]:
    """The mean of each value and the ``window - 1`` before it (fewer at the start): per-step
    rates of a few prompts are mostly noise, their trend is not."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curve(ax, points: list[tuple[float, float]], *, color: str = "C0", style: str = "-",
               label: str | None = None, window: int = SMOOTHING) -> None:
    """A metric's curve: the raw points faint, their moving mean as the line."""
    steps, values = [p[0] for p in points], [p[1] for p in points]
    ax.plot(steps, values, linestyle="none", marker=".", markersize=3, color=color, alpha=0.3)
    ax.plot(steps, moving_mean(values, window), linestyle=style, color=color, linewidth=1.8,
            label=label)


def plot_metrics(path: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(path)
    names = [n for n in PLOTTED if any(n in r for r in rows)]
    cols = 3
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols,
                             figsize=(4 * cols, 2.8 * ((len(names) + cols - 1) // cols)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        plot_curve(ax, [(r["step"], r[name]) for r in rows if name in r])
        ax.set_title(f"{name} (mean of {SMOOTHING} steps)", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

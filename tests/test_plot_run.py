"""tools/plot_run.py: the README's figures from a run's files, and its one-line errors."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from alphaalign_jax.heldout_plot import NoResults, plot_heldout, read_results

TOOL = pathlib.Path(__file__).parent.parent / "tools" / "plot_run.py"


def plot_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120)


def write_run(workdir: pathlib.Path, steps: int = 6) -> pathlib.Path:
    workdir.mkdir(parents=True)
    rows = [{"step": s, "reward/format_rate/harmful": s / steps, "entropy": 0.5}
            for s in range(1, steps + 1)]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir


def write_results(folder: pathlib.Path, refusal: float, baseline: bool = False
                  ) -> pathlib.Path:
    folder.mkdir(parents=True)
    names = ["model (12)"] + (["baseline (SmolLM2)"] if baseline else [])
    rates = {"refusal_rate/harmful": refusal, "over_refusal_rate": 0.0, "asr/all": 0.1}
    sizes = {metric: 48 for metric in rates}
    folder.joinpath("results.json").write_text(json.dumps(
        {**{n: rates for n in names}, "_meta": {"prompts_behind_each_rate": {
            n: sizes for n in names}}}))
    return folder


def test_curves_and_heldout_figures_from_the_runs_files(tmp_path):
    run = write_run(tmp_path / "s0")
    base, trained = write_results(tmp_path / "base", 0.0), write_results(tmp_path / "ev", 0.9)
    result = plot_run("--out", str(tmp_path / "fig/curves.png"), f"order0={run}",
                      "--heldout", f"base={base}", f"order0={trained}",
                      "--heldout-out", str(tmp_path / "fig/heldout.png"))
    assert result.returncode == 0, result.stderr
    for name in ("curves.png", "heldout.png"):
        png = tmp_path / "fig" / name
        assert png.read_bytes()[:4] == b"\x89PNG" and str(png) in result.stdout
    assert "columns: base, order0" in result.stdout


def test_the_base_column_comes_from_an_evaluation_with_a_baseline(tmp_path):
    evaluated = write_results(tmp_path / "ev", 0.9, baseline=True)
    result = plot_run("--heldout", f"order0={evaluated}", "--heldout-out",
                      str(tmp_path / "h.png"))
    assert result.returncode == 0, result.stderr
    assert "columns: base, order0" in result.stdout


@pytest.mark.parametrize("case", ["no metrics", "no results", "nothing named"])
def test_a_folder_without_what_it_should_hold_is_one_line_exit_2(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = {"no metrics": [str(empty)], "no results": ["--heldout", f"x={empty}"],
            "nothing named": []}[case]
    result = plot_run(*args, "--out", str(tmp_path / "c.png"),
                      "--heldout-out", str(tmp_path / "h.png"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "plot_run:" in result.stderr
    assert not (tmp_path / "c.png").exists() and not (tmp_path / "h.png").exists()


def test_heldout_whiskers_are_the_wilson_interval(tmp_path, monkeypatch):
    """The whisker drawn for 45 of 48 is scipy's Wilson interval (0.83-0.98), not a guess."""
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, yerr=None, **kwargs):
        drawn.append((y, y - yerr[0][0], y + yerr[1][0]))
        return original(self, x, y, yerr=yerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    results, sizes = read_results(write_results(tmp_path / "ev", 45 / 48))
    model = next(iter(results))
    plot_heldout([("trained", results[model], sizes[model])], tmp_path / "h.png")
    rate, low, high = next(d for d in drawn if d[0] == 45 / 48)
    assert (round(low, 3), round(high, 3)) == (0.832, 0.979)
    with pytest.raises(NoResults, match="none of the evaluated rates"):
        plot_heldout([("x", {"helpfulness/benign": 0.5}, {})], tmp_path / "n.png")

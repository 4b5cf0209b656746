"""The plan's FLOPs utilisation per phase, re-derived by hand from program rows."""

from __future__ import annotations

import numpy as np
import pytest

from alphaalign_jax.utilisation import PHASES, phase_of, utilisation

PEAK = 200e12


def row(program: str, flops: float, bytes_accessed: float, runs: int, bandwidth=800e9) -> dict:
    return {"program": program, "flops": flops, "runs_a_step": runs,
            "roofline_s": max(flops / PEAK, bytes_accessed / bandwidth)}


def test_every_program_of_a_plan_has_a_phase():
    names = ["sampler prefill", "sampler decode (one token)", "sampler decode loop (memory)",
             "reward model forward", "safety judge forward", "reference log-probs",
             "critic values", "update (fwd+bwd+optimizer)", "critic update"]
    assert [phase_of(n) for n in names] == ["rollout"] * 5 + ["reference"] * 2 + ["update"] * 2
    assert set(PHASES) == {"rollout", "reference", "update"}


def test_utilisation_is_flops_over_roofline_time_times_peak():
    rows = [row("sampler prefill", 4e12, 1e9, 1),               # compute bound
            row("sampler decode (one token)", 1e10, 8e9, 63),   # memory bound
            row("sampler decode loop (memory)", 1e12, 1e9, 0),  # memory only: not run
            row("reference log-probs", 2e13, 4e9, 2),
            row("update (fwd+bwd+optimizer)", 6e13, 2e10, 4)]
    got = utilisation(rows, PEAK)
    seconds = np.array([max(f / PEAK, b / 800e9) for f, b in
                        [(4e12, 1e9), (1e10, 8e9), (1e12, 1e9), (2e13, 4e9), (6e13, 2e10)]])
    flops, runs = np.array([4e12, 1e10, 1e12, 2e13, 6e13]), np.array([1, 63, 0, 2, 4])
    rollout = (flops[:3] * runs[:3]).sum() / ((seconds[:3] * runs[:3]).sum() * PEAK)
    assert got["rollout"] == pytest.approx(rollout)
    assert got["reference"] == pytest.approx(1.0) and got["update"] == pytest.approx(1.0)
    assert got["step"] == pytest.approx((flops * runs).sum() / ((seconds * runs).sum() * PEAK))
    assert 0 < got["rollout"] < got["step"] < 1


def test_a_plan_without_costs_has_no_utilisation():
    rows = [{**row("update (fwd+bwd+optimizer)", 1e12, 1e9, 1), "roofline_s": None}]
    assert utilisation(rows, PEAK)["update"] is None and utilisation(rows, PEAK)["step"] is None

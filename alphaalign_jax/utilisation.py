"""The FLOPs utilisation a plan allows, phase by phase (rollout, reference, update).

Kept apart from ``aot`` (which points JAX at libtpu when imported) so it is a plain function
of a plan's program rows.
"""

from __future__ import annotations

from typing import Any

# The step's phases, by their programs' names: a program is in the first whose prefix it has.
PHASES = {"rollout": ("sampler", "reward model", "safety judge"),
          "reference": ("reference log-probs", "critic values"),
          "update": ("update", "critic update")}


def phase_of(program: str) -> str:
    return next(phase for phase, prefixes in PHASES.items() if program.startswith(prefixes))


def utilisation(rows: list[dict[str, Any]], peak_flops: float) -> dict[str, float | None]:
    """The FLOPs utilisation of each phase and of the whole step at the roofline: the
    compiled FLOPs a chip runs over the roofline time times the chip's peak. The roofline
    time is the larger of compute and memory time, so this is the most the plan allows: 1
    where compute bound, far below where memory bound (a decode step reads every weight for
    one token a row). None without costs (a scanned plan that was not probed)."""
    def mfu(chosen: list[dict[str, Any]]) -> float | None:
        if any(r["roofline_s"] is None for r in chosen):
            return None
        seconds = sum(r["roofline_s"] * r["runs_a_step"] for r in chosen)
        flops = sum(r["flops"] * r["runs_a_step"] for r in chosen)
        return flops / (seconds * peak_flops) if seconds else None

    out = {phase: mfu([r for r in rows if phase_of(r["program"]) == phase]) for phase in PHASES}
    return {**out, "step": mfu(rows)}

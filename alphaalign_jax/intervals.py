"""Confidence intervals of the rates the evaluation reports."""

from __future__ import annotations


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at z = 1.96) of a proportion observed on n prompts:
    sound for the small n and the rates near 0 or 1 that these sets give (scipy's)."""
    from scipy import stats

    confidence = 2 * stats.norm.cdf(z) - 1
    ci = stats.binomtest(round(rate * n), n).proportion_ci(confidence_level=confidence,
                                                           method="wilson")
    return max(0.0, float(ci.low)), min(1.0, float(ci.high))

"""Helpfulness, total reward and metrics against a plain NumPy re-derivation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alphaalign_jax.rewards import (
    group_normalise,
    helpfulness_reward,
    reward_metrics,
    total_reward,
)

EPS = 1e-6


def ref_z(row: np.ndarray, members: np.ndarray) -> np.ndarray:
    """z over the members of one group; 0 off the members and for a constant group."""
    z = np.zeros_like(row, dtype=np.float64)
    values = row[members].astype(np.float64)
    if values.size and values.max() > values.min():
        z[members] = (values - values.mean()) / (values.std() + EPS)
    return z


def ref_helpfulness(scores, refusal, benign, in_stats: bool) -> np.ndarray:
    out = np.zeros(scores.shape)
    for p in range(scores.shape[0]):
        members = np.ones_like(refusal[p]) if in_stats else ~refusal[p]
        z = ref_z(scores[p], members)
        out[p] = np.where(refusal[p] | (not benign[p]), 0.0, np.maximum(z, 0.0))
    return out


def ref_total(safety, helpfulness, benign, normalise_each: bool) -> np.ndarray:
    if normalise_each:
        every = np.ones(safety.shape[1], bool)
        safety = np.stack([ref_z(row, every) for row in safety])
        helpfulness = np.stack([ref_z(row, every) for row in helpfulness])
    return safety + np.where(benign[:, None], helpfulness, 0.0)


def make_batch(seed: int, prompts: int = 6, group: int = 8):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(prompts, group)).round(1).astype(np.float32)  # rounding makes ties
    scores[0] = 0.7  # a constant group
    refusal = rng.random((prompts, group)) < 0.3
    refusal[1] = True  # a group of refusals only
    refusal[2] = False
    refusal[2, 1:] = True  # a single answering rollout
    benign = rng.random(prompts) < 0.6
    benign[:3] = True
    safety = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0, 1.5], size=(prompts, group)).astype(np.float32)
    return scores, refusal, benign, safety


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("in_stats", [True, False])
def test_helpfulness_matches_numpy(seed: int, in_stats: bool) -> None:
    scores, refusal, benign, _ = make_batch(seed)
    got = np.asarray(helpfulness_reward(scores, refusal, benign, EPS, refusals_in_stats=in_stats))
    want = ref_helpfulness(scores, refusal, benign, in_stats)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(got).all() and (got >= 0).all()
    assert (got[refusal] == 0).all() and (got[~benign] == 0).all()
    assert (got[0] == 0).all()  # constant group: exactly 0, not rounding noise / eps
    assert (got[1] == 0).all()  # all refusals
    if not in_stats:
        assert (got[2] == 0).all()  # one answering rollout has nothing to be compared with


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("normalise_each", [False, True])
def test_total_matches_numpy(seed: int, normalise_each: bool) -> None:
    scores, refusal, benign, safety = make_batch(seed)
    helpfulness = ref_helpfulness(scores, refusal, benign, True).astype(np.float32)
    got = np.asarray(total_reward(safety, helpfulness, benign, normalise_each=normalise_each))
    np.testing.assert_allclose(got, ref_total(safety, helpfulness, benign, normalise_each), rtol=1e-5, atol=1e-5)
    if not normalise_each:
        np.testing.assert_array_equal(got[~benign], safety[~benign])  # harmful: R_s alone


def test_group_normalise_edge_cases() -> None:
    values = jnp.array([[1.0, 1.0, 1.0], [2.0, 4.0, 9.0], [5.0, 7.0, 7.0]])
    mask = jnp.array([[True] * 3, [False] * 3, [True, False, False]])
    z = np.asarray(group_normalise(values, mask))
    assert np.isfinite(z).all() and (z[:2] == 0).all() and (z[2] == 0).all()
    z = np.asarray(group_normalise(jnp.array([[0.0, 2.0]])))
    np.testing.assert_allclose(z, [[-1.0, 1.0]], atol=1e-5)
    with pytest.raises(ValueError, match="num_prompts"):
        group_normalise(jnp.zeros(3))


def ref_metrics(fmt, refusal, safety, helpfulness, total, benign) -> dict[str, float]:
    b = np.broadcast_to(benign[:, None], fmt.shape)

    def mean(x, m):
        return float(x[m].mean()) if m.any() else 0.0

    return {
        "count/harmful": int((~b).sum()), "count/benign": int(b.sum()),
        "format_rate/harmful": mean(fmt, ~b), "format_rate/benign": mean(fmt, b),
        "refusal_rate/harmful": mean(refusal, ~b), "over_refusal_rate/benign": mean(refusal, b),
        "safety_reward/harmful": mean(safety, ~b), "safety_reward/benign": mean(safety, b),
        "helpfulness_reward/benign": mean(helpfulness, b),
        "reward/harmful": mean(total, ~b), "reward/benign": mean(total, b),
    }


@pytest.mark.parametrize("classes", ["both", "harmful only", "benign only"])
def test_metrics_per_class(classes: str) -> None:
    scores, refusal, benign, safety = make_batch(7)
    benign = {"both": benign, "harmful only": np.zeros_like(benign), "benign only": np.ones_like(benign)}[classes]
    fmt = (np.random.default_rng(1).random(safety.shape) < 0.5).astype(np.float32)
    helpfulness = np.asarray(helpfulness_reward(scores, refusal, benign))
    total = np.asarray(total_reward(safety, helpfulness, benign))
    got = reward_metrics(fmt, refusal.astype(np.float32), safety, helpfulness, total, benign)
    want = ref_metrics(fmt, refusal.astype(np.float32), safety, helpfulness, total, benign)
    assert set(got) == set(want)
    for key, value in want.items():
        assert np.isfinite(np.asarray(got[key])), key
        assert float(got[key]) == pytest.approx(value, abs=1e-6), key


def test_composes_under_jit() -> None:
    scores, refusal, benign, safety = make_batch(3)

    @jax.jit
    def step(scores, refusal, benign, safety):
        helpfulness = helpfulness_reward(scores, refusal, benign, refusals_in_stats=False)
        total = total_reward(safety, helpfulness, benign, normalise_each=True)
        return total, reward_metrics(safety, refusal, safety, helpfulness, total, benign)

    total, metrics = step(scores, refusal, benign, safety)
    assert total.shape == scores.shape and np.isfinite(np.asarray(total)).all()
    assert int(metrics["count/benign"]) == int(benign.sum()) * scores.shape[1]
    with pytest.raises(ValueError, match="is_benign"):
        helpfulness_reward(scores, refusal, benign[:2])

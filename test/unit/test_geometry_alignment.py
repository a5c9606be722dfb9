"""Scale/shift fits and the metric modes (hold, smoothing, expiry)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from d3_perception.geometry import MetricAligner, MetricConfig, fit_scale_shift, fit_scale_shift_robust

RNG = np.random.default_rng(0)


def _scene(n=(60, 80), scale=3.5, shift=0.7, noise=0.0):
    rel = RNG.uniform(0, 1, n).astype(np.float32)
    target = scale * rel + shift + RNG.normal(0, noise, n) if noise else scale * rel + shift
    return rel, target.astype(np.float32)


def test_least_squares_recovers_exact_scale_shift():
    rel, target = _scene()
    s, t, r = fit_scale_shift(rel, target)
    assert s == pytest.approx(3.5, rel=1e-5) and t == pytest.approx(0.7, abs=1e-5) and r < 1e-5


def test_robust_fit_ignores_30_percent_outliers_and_reports_metres():
    rel, target = _scene(noise=0.01)
    out = RNG.random(rel.shape) < 0.3
    target[out] = RNG.uniform(0.1, 20.0, out.sum())
    s_ls, _, _ = fit_scale_shift(rel, target)
    s, t, r = fit_scale_shift_robust(rel, target)
    assert abs(s_ls - 3.5) > 0.3  # plain least squares is ruined
    assert s == pytest.approx(3.5, rel=0.01) and t == pytest.approx(0.7, abs=0.02)
    assert 0.005 < r < 0.02  # the 1 cm noise, in metres
    assert fit_scale_shift_robust(rel, target) == (s, t, r)  # deterministic


def test_mask_and_invalid_targets_are_ignored():
    rel, target = _scene()
    target[:10] = np.nan
    target[10:20] = 0.0
    mask = np.ones_like(rel, bool)
    mask[20:30] = False
    target[20:30] = 99.0
    s, t, _ = fit_scale_shift(rel, target, mask)
    assert s == pytest.approx(3.5, rel=1e-4)


@pytest.mark.parametrize("fit", [fit_scale_shift, fit_scale_shift_robust])
def test_too_few_points_or_constant_prediction_raise(fit):
    rel, target = _scene((4, 4))
    target[:] = np.nan
    target[0, 0] = 1.0
    with pytest.raises(ValueError, match="at least"):
        fit(rel, target)
    with pytest.raises(ValueError, match="constant|consistent"):
        fit(np.ones((40, 40), np.float32), np.full((40, 40), 2.0, np.float32), min_points=2)


def test_metric_modes_fixed_and_depth_range():
    rel = np.array([[0.0, 0.5, 1.0]], np.float32)
    fixed = MetricAligner(MetricConfig(mode="fixed", fixed_scale=2.0, fixed_shift=0.5))
    res = fixed.update(rel)
    np.testing.assert_allclose(MetricAligner.apply(rel, res), [[0.5, 1.5, 2.5]])
    rng = MetricAligner(MetricConfig(mode="depth_range", near_m=1.0, far_m=5.0))
    np.testing.assert_allclose(MetricAligner.apply(rel, rng.update(rel)), [[1.0, 3.0, 5.0]])
    off = MetricAligner().update(rel)
    assert not off.is_metric and off.status == "off"


def test_sparse_mode_smooths_holds_and_expires():
    rel, target = _scene()
    aligner = MetricAligner(MetricConfig(mode="sparse_depth", min_points=20, smoothing=0.5, hold_frames=2))
    assert aligner.update(rel, None).status == "no_fit"
    first = aligner.update(rel, target)
    assert first.status == "fit" and first.scale == pytest.approx(3.5, rel=1e-4) and first.points_used == rel.size
    second = aligner.update(rel, 2 * target)  # scale 7: smoothed half-way
    assert second.scale == pytest.approx(5.25, rel=1e-3)
    few = np.full_like(target, np.nan)
    few[0, :5] = target[0, :5]
    held = aligner.update(rel, few)
    assert held.status == "held" and held.scale == second.scale and held.points_used == 5
    assert aligner.update(rel, None).status == "held"
    assert aligner.update(rel, None).status == "no_fit"  # hold_frames=2 exceeded
    aligner.set_config(MetricConfig(mode="fixed"))
    aligner.set_config(MetricConfig(mode="sparse_depth", min_points=20))
    assert aligner.update(rel, None).status == "no_fit"  # a mode change forgets the old fit


def test_apply_marks_non_positive_depth_invalid():
    res = MetricAligner(MetricConfig(mode="fixed", fixed_scale=1.0, fixed_shift=-0.5)).update(np.zeros((1, 1)))
    out = MetricAligner.apply(np.array([[0.0, 0.25, 1.0, np.nan]], np.float32), res)
    assert np.isnan(out[0, :2]).all() and out[0, 2] == 0.5 and math.isnan(out[0, 3])


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(mode="bogus"), "metric.mode"), (dict(near_m=5.0, far_m=1.0), "near_m"),
     (dict(smoothing=1.0), "smoothing"), (dict(fixed_scale=0.0), "fixed_scale"), (dict(min_points=1), "min_points")],
)
def test_metric_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MetricConfig(**kwargs)


def _reference_robust(p, t, thr, iterations=64, irls=5, sample=2000, seed=0):
    """The fit as first written (float64 scoring one matrix at a time, np.polyfit-style sums): the fast
    path must give the same numbers up to rounding."""
    rng = np.random.default_rng(seed)
    sub = rng.choice(p.size, size=sample, replace=False) if p.size > sample else slice(None)
    i, j = rng.integers(0, p.size, size=(2, iterations))
    ok = np.abs(p[i] - p[j]) >= 1e-9
    s = (t[i[ok]] - t[j[ok]]) / (p[i[ok]] - p[j[ok]])
    c = t[i[ok]] - s * p[i[ok]]
    k = np.argmax((np.abs(s[:, None] * p[sub] + c[:, None] - t[sub]) < thr).sum(axis=1))
    inl = np.abs(s[k] * p + c[k] - t) < thr
    pi, ti, w = p[inl], t[inl], np.ones(inl.sum())
    for _ in range(irls + 1):
        mp, mt = np.average(pi, weights=w), np.average(ti, weights=w)
        scale = (w * (pi - mp) * (ti - mt)).sum() / (w * (pi - mp) ** 2).sum()
        shift = mt - scale * mp
        w = np.minimum(1.0, thr / np.maximum(np.abs(scale * pi + shift - ti), 1e-12))
    return scale, shift, 1.4826 * np.median(np.abs(scale * pi + shift - ti))


@pytest.mark.parametrize("noise, outliers", [(0.0, 0.0), (0.02, 0.0), (0.02, 0.3), (0.05, 0.5)])
def test_robust_fit_equals_the_reference_algorithm_up_to_rounding(noise, outliers):
    rng = np.random.default_rng(7)
    p = rng.uniform(0, 1, 12000)
    t = 4.0 * p + 0.5 + (rng.normal(0, noise, p.size) if noise else 0.0)
    bad = rng.random(p.size) < outliers
    t[bad] = rng.uniform(0.1, 20.0, bad.sum())
    thr = max(0.01, 0.05 * float(np.median(t)))
    s, b, r = fit_scale_shift_robust(p, t, min_points=50)
    rs, rb, rr = _reference_robust(p, t, thr)
    assert s == pytest.approx(rs, rel=1e-9) and b == pytest.approx(rb, rel=1e-9, abs=1e-12)
    assert r == pytest.approx(rr, rel=1e-6, abs=1e-12)
    assert s == pytest.approx(4.0, rel=0.01) and b == pytest.approx(0.5, abs=0.02)


def test_least_squares_on_many_points_matches_polyfit():
    # more points than one BLAS call takes (the sums are then done in column blocks)
    rng = np.random.default_rng(3)
    p = rng.uniform(0.2, 0.9, 200_000)
    t = 2.5 * p + 1.25 + rng.normal(0, 0.05, p.size)
    s, b, r = fit_scale_shift(p, t)
    ps, pb = np.polyfit(p, t, 1)
    assert s == pytest.approx(ps, rel=1e-10) and b == pytest.approx(pb, rel=1e-10)
    assert r == pytest.approx(0.05, rel=0.05)

"""`scalinglab.experiments.lr_optimum`: the optimal learning rate between grid points and its
drift across widths, against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scalinglab.experiments import lr_optimum as lo

GRID = np.arange(-11.0, -4.0)  # log2 lr, factors of 2 as the study's sweep


def test_parabola_optimum_recovers_an_off_grid_vertex() -> None:
    # An exact parabola in log2(lr): the vertex between grid points comes back exactly (a fit
    # in lr instead of log2(lr), or a sign slip in -b/2a, would miss it).
    x0 = -7.3
    opt, how = lo.parabola_optimum(GRID, 0.2 * (GRID - x0) ** 2 + 1.5)
    assert how == "parabola"
    assert opt == pytest.approx(x0, abs=1e-9)


def test_parabola_optimum_uses_only_the_three_points_around_the_best() -> None:
    # Far points that would pull a global quadratic fit (diverged-like losses at high lr) do
    # not move the local vertex: the three points around the best are still a parabola at x0.
    x0 = -8.6
    y = 0.3 * (GRID - x0) ** 2 + 2.0
    y[-2:] = [40.0, 90.0]
    opt, _ = lo.parabola_optimum(GRID[::-1], y[::-1])  # grid order does not matter either
    assert opt == pytest.approx(x0, abs=1e-9)


def test_parabola_optimum_at_an_edge_or_next_to_a_gap_is_the_grid_point() -> None:
    y = np.linspace(3.0, 2.0, len(GRID))  # still falling at the largest lr: edge
    assert lo.parabola_optimum(GRID, y) == (GRID[-1], "edge")
    y = 0.2 * (GRID + 8.0) ** 2 + 1.0
    y[2] = np.nan  # the best point's left neighbour is missing (a diverged trial)
    assert lo.parabola_optimum(GRID, y) == (-8.0, "edge")
    with pytest.raises(ValueError, match="no finite loss"):
        lo.parabola_optimum(GRID, np.full(len(GRID), np.nan))


def test_drift_is_the_slope_per_doubling() -> None:
    # lr* = c / width: log2 lr* falls by exactly 1 per doubling of width.
    widths = np.log2([32.0, 64.0, 128.0, 256.0])
    assert lo.drift(widths, -5.0 - (widths - 5.0)) == pytest.approx(-1.0, abs=1e-12)
    assert lo.drift(widths, np.full(4, -6.0)) == pytest.approx(0.0, abs=1e-12)


def test_bootstrap_spread_matches_the_delta_method() -> None:
    # Three points at -h, 0, +h, losses (y0 + D/2, y0, y0 + D/2), each with noise se: the
    # vertex -h (y+ - y-) / (2 (y+ + y- - 2 y0)) has sd h sqrt(2) se / (2 D) to first order.
    # Catches a variance used as a standard deviation, or noise not redrawn per point.
    h, d, se = 1.0, 0.4, 0.004
    x = np.array([-h, 0.0, h]) - 7.0
    y = np.array([1.0 + d / 2, 1.0, 1.0 + d / 2])
    draws = lo.bootstrap_optima(x, y, np.full(3, se), n_boot=4000, seed=1)
    assert draws.mean() == pytest.approx(-7.0, abs=0.005)
    assert draws.std() == pytest.approx(h * math.sqrt(2) * se / (2 * d), rel=0.06)
    # No noise: every draw is the point estimate; a NaN se counts as no noise.
    quiet = lo.bootstrap_optima(x, y, np.array([0.0, np.nan, 0.0]), n_boot=5)
    assert quiet == pytest.approx(np.full(5, -7.0), abs=1e-12)


def test_summarise_ratio_and_slope() -> None:
    log_w = np.log2([32.0, 64.0, 128.0, 256.0])
    point = np.array([-6.0, -6.5, -7.5, -8.0])  # lr* falls 4x overall
    boot = np.tile(point, (10, 1))
    s = lo.summarise(log_w, boot, point)
    assert s["max_min_ratio"] == pytest.approx(4.0)
    assert s["max_min_ratio_ci"] == pytest.approx([4.0, 4.0])
    slope = np.polyfit(log_w, point, 1)[0]  # -0.7 by hand: sum dx dy / sum dx^2 = -3.5 / 5
    assert s["slope_per_doubling"] == pytest.approx(-0.7) == pytest.approx(slope)
    assert s["slope_ci"] == pytest.approx([-0.7, -0.7])
    with pytest.raises(ValueError, match="two widths"):
        lo.summarise(log_w[:1], boot[:, :1], point[:1])

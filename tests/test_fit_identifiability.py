"""Identifiability: E flagged when the design cannot pin it down, not on a good grid;
the profile-likelihood interval covers the truth; a known floor is used."""

import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import fit as F
from scalinglab.analysis import laws
from scalinglab.analysis.profile import chi2_1

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
GRID = laws.CHINCHILLA.start_grid()[::37]


def table(Ns, Ds, noise, seed):
    """Chinchilla losses written out by hand (not through the package), with log noise."""
    rng = np.random.default_rng(seed)
    N, D = (a.ravel() for a in np.meshgrid(Ns, Ds))
    L = TRUE["E"] + TRUE["A"] * N ** -TRUE["alpha"] + TRUE["B"] * D ** -TRUE["beta"]
    return pd.DataFrame({"N": N, "D": D, "loss": L * np.exp(noise * rng.standard_normal(len(N)))})


GOOD = (np.logspace(7.5, 10, 6), np.logspace(9.5, 12, 6))  # loss flattens: E dominates
BAD = (np.logspace(5, 5.6, 4), np.logspace(6.5, 7.2, 4))  # tiny models: E is 10% of the loss


def test_chi2_quantile():
    assert chi2_1(0.95) == pytest.approx(3.841459, rel=1e-6)
    assert chi2_1(0.99) == pytest.approx(6.634897, rel=1e-6)


def test_good_grid_identifies_E_and_profile_covers_truth():
    fit = F.fit_chinchilla(table(*GOOD, noise=0.01, seed=1), bootstrap=40, starts=GRID)
    ident = fit.identifiability
    assert ident["E"]["identified"] and ident["E"]["informative"]
    prof = ident["E"]["profile"]
    assert prof["low"] <= TRUE["E"] <= prof["high"]
    assert prof["low"] > 1.0 and prof["high"] < 2.0  # informative, not the whole range
    assert not any("not identified" in w for w in fit.warnings)


def test_unidentifiable_design_says_E_not_identified_with_advice():
    fit = F.fit_chinchilla(table(*BAD, noise=0.01, seed=0), bootstrap=40, starts=GRID)
    e = fit.identifiability["E"]
    assert not e["identified"] and e["informative"] is False
    assert e["profile"]["low"] == 0.0  # the profile interval reaches zero ...
    assert e["profile"]["high"] >= TRUE["E"]  # ... and still covers the truth
    (w,) = [w for w in fit.warnings if w.startswith("E not identified")]
    assert "fix E" in w and "L(C)" in w and "add budgets" in w
    assert fit.to_dict()["identifiability"]["E"]["identified"] is False
    assert fit.identifiability.lines()[0].startswith("E NOT identified, profile-likelihood")


def test_profile_lr_is_zero_at_least_squares_optimum_and_grows_away():
    fit = F.fit_chinchilla(table(*GOOD, noise=0.01, seed=1), starts=GRID)
    prof = fit.identifiability["E"]["profile"]
    lr, grid = np.array(prof["lr"]), np.array(prof["grid"])
    assert lr.min() == pytest.approx(0.0, abs=1e-6)
    j = int(np.argmin(lr))
    assert grid[j] == pytest.approx(prof["E_hat"], rel=0.02)
    assert lr[0] > lr[j] and lr[-1] > lr[j]
    # The interval's ends are where the LR curve crosses the chi-square(1) threshold, each
    # interpolated linearly between the grid points that straddle it (by hand here).
    thr = prof["threshold"]
    inside = np.flatnonzero(lr <= thr)
    assert inside[0] > 0 and inside[-1] < len(grid) - 1  # both ends inside the grid

    def cross(a: int, b: int) -> float:
        return grid[a] + (thr - lr[a]) / (lr[b] - lr[a]) * (grid[b] - grid[a])

    assert prof["low"] == pytest.approx(cross(inside[0] - 1, inside[0]), rel=1e-12)
    assert prof["high"] == pytest.approx(cross(inside[-1], inside[-1] + 1), rel=1e-12)
    assert grid[inside[0] - 1] < prof["low"] <= grid[inside[0]]


def test_bound_check_tolerance_is_one_millionth_on_both_sides():
    """power's alpha lies in [0, 5]: within 1e-6 of an end counts as at the bound (the
    tolerance lets an optimiser that stopped just short of it be flagged), 2e-6 away does not."""
    from scalinglab.analysis.diagnostics import bounds_reached
    from scalinglab.analysis.laws import POWER

    base = {"E": 1.0, "A": 1.0}
    for alpha, flagged in ((0.5e-6, True), (2e-6, False), (5 - 0.5e-6, True), (5 - 2e-6, False)):
        assert ("alpha" in bounds_reached(POWER, {**base, "alpha": alpha})) == flagged, alpha


def test_floor_check_reports_E_minus_H_and_warns_only_below_the_floor():
    """E - H and its interval shifted by H, by hand; a warning when E is more than 0.1% under
    the floor, none at the floor itself or within 0.1% under it."""
    from scalinglab.analysis.diagnostics import floor_check

    info, warned = floor_check(1.5, (1.4, 1.6), 1.8)
    assert info["E_minus_H"] == pytest.approx(-0.3) and warned
    assert info["E_minus_H_ci"] == pytest.approx((1.4 - 1.8, 1.6 - 1.8))
    assert "below the known floor" in warned[0]
    for E, warns in ((1.8, False), (1.8 * (1 - 0.5e-3), False), (1.8 * (1 - 2e-3), True)):
        assert bool(floor_check(E, None, 1.8)[1]) == warns, E


def _diagnose(raw: list[float], values: list[float]) -> object:
    """solver_diagnostics of power-law starts on the grid [0, 1]^3 (margin 0.01 per axis),
    the best start converged, at raw."""
    from scalinglab.analysis.diagnostics import solver_diagnostics
    from scalinglab.analysis.laws import POWER

    grid = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5]])
    k = len(grid)
    res = {"status": np.zeros(k, int), "grad_norm": np.zeros(k), "n_iter": np.ones(k, int)}
    logX = np.log(np.array([[1.0], [10.0], [100.0], [1000.0]]))
    return solver_diagnostics(POWER, grid, res, np.array(values), 0, np.array(raw), logX, None, 0)


def test_grid_edge_is_within_one_percent_of_the_grid_range():
    """An optimum counts as on the start grid's edge within 1% of each axis's range of either
    end (0.01 here), inclusive; 0.02 in is not."""
    assert _diagnose([0.01, 0.5, 0.5], [1.0, 2.0, 3.0]).on_grid_edge == ["e"]
    assert _diagnose([0.5, 0.99, 0.02], [1.0, 2.0, 3.0]).on_grid_edge == ["a"]
    assert _diagnose([0.02, 0.98, 0.5], [1.0, 2.0, 3.0]).on_grid_edge == []


def test_a_lone_best_start_is_flagged_and_shared_ones_are_not():
    lone = _diagnose([0.5, 0.5, 0.5], [1.0, 2.0, 3.0])
    assert lone.n_at_best == 1 and "only one start reached the best objective" in lone.warnings
    shared = _diagnose([0.5, 0.5, 0.5], [1.0, 1.0, 3.0])
    assert shared.n_at_best == 2 and not any("only one" in w for w in shared.warnings)

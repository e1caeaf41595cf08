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

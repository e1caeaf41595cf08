"""Compute-optimal allocation: the three approaches against known answers."""

import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import optimal as O
from scalinglab.analysis.fit import Fit

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def parabola_sweep(budgets, k=0.1, a=0.5, width=(0.3, 3.0), n=7, curvature=0.05, shift=None):
    """IsoFLOP runs whose loss is an exact parabola in log N around N* = k C^a."""
    rows = []
    for C in budgets:
        n_star = k * C**a
        lo, hi = shift.get(C, width) if shift else width
        for N in n_star * np.geomspace(lo, hi, n):
            loss = 2.0 + 1e3 / C**0.05 + curvature * np.log(N / n_star) ** 2
            rows.append({"N": N, "D": C / (6 * N), "C": C, "loss": loss})
    return pd.DataFrame(rows)


def test_approach2_finds_known_parabola_minima():
    budgets = [1e16, 1e17, 1e18, 1e19]
    df = parabola_sweep(budgets)
    minima = O.isoflop_minima(df)
    assert len(minima) == 4 and minima["flag"].isna().all()
    np.testing.assert_allclose(minima["N_opt"], 0.1 * np.array(budgets) ** 0.5, rtol=1e-8)
    np.testing.assert_allclose(minima["D_opt"], np.array(budgets) / (6 * minima["N_opt"]))
    ap = O.approach2(df, bootstrap=50)
    assert ap.a == pytest.approx(0.5, abs=1e-8) and ap.b == pytest.approx(0.5, abs=1e-8)
    assert ap.predict(1e21)["N_opt"] == pytest.approx(0.1 * 1e21**0.5, rel=1e-6)
    assert not ap.flags


def test_approach2_flags_a_minimum_outside_the_sampled_sizes():
    budgets = [1e16, 1e17, 1e18, 1e19]
    df = parabola_sweep(budgets, shift={1e19: (0.05, 0.5)})  # all sizes below N*
    ap = O.approach2(df, bootstrap=20)
    assert len(ap.points) == 3  # the flagged budget is left out of the power law
    assert any("1e+19" in f and "outside the sampled" in f for f in ap.flags)
    assert ap.a == pytest.approx(0.5, abs=1e-8)


def test_approach2_needs_two_usable_budgets():
    ap = O.approach2(parabola_sweep([1e16], n=5), bootstrap=0)
    assert not ap.ok and "fewer than two" in ap.flags[-1]
    assert not O.approach2(parabola_sweep([1e16, 1e17], n=2)).ok


def test_approach3_matches_closed_form_and_brute_force():
    fit = Fit.from_params("chinchilla", **TRUE)
    ap = O.approach3(fit)
    a = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
    G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (1 / 0.62)
    assert (round(ap.a, 3), round(ap.b, 3)) == (0.452, 0.548)
    C = 1e23
    pred = ap.predict(C)
    assert pred["N_opt"] == pytest.approx(G * (C / 6) ** a, rel=1e-12)
    assert pred["D_opt"] == pytest.approx((C / 6) ** (1 - a) / G, rel=1e-12)
    # Independent check: minimise the law along the IsoFLOP line numerically.
    N = np.geomspace(1e9, 1e12, 200_001)
    loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / (C / (6 * N)) ** TRUE["beta"]
    assert N[np.argmin(loss)] == pytest.approx(pred["N_opt"], rel=1e-4)


def test_approach3_needs_chinchilla():
    ap = O.approach3(Fit.from_params("power", E=1.0, A=2.0, alpha=0.1))
    assert not ap.ok and "chinchilla" in ap.flags[0]


def test_approach1_envelope_of_learning_curves():
    rows = []
    for i, N in enumerate(np.logspace(7, 10, 25)):
        for D in np.logspace(8, 12, 60):
            loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append({"trial_id": i, "N": N, "D": D, "C": 6 * N * D, "loss": loss})
    curves = pd.DataFrame(rows)
    env = O.envelope(curves)
    assert np.all(np.diff(env["loss"]) < 0) and np.all(np.diff(env["C"]) > 0)
    ap = O.approach1(curves, bootstrap=30, group="trial_id")
    lo, hi = ap.ci("a")
    assert lo <= 0.4516 <= hi and ap.a == pytest.approx(0.4516, abs=0.02)
    assert ap.a + ap.b == pytest.approx(1.0, abs=1e-9)  # C = 6ND exactly


def test_agreement_reports_clashing_intervals():
    def fake(name, a, spread):
        s = np.column_stack([np.zeros(100), a + spread * np.linspace(-1, 1, 100)] * 2)
        s[:, 3] = 1 - s[:, 1]
        return O.Approach(name, a, 1 - a, 0.0, 0.0, s)

    assert O.agreement([fake("1", 0.45, 0.05), fake("2", 0.48, 0.05)])["agree"]
    res = O.agreement([fake("1", 0.30, 0.02), fake("2", 0.50, 0.02)])
    assert not res["agree"] and res["disagreements"]


def test_isoflop_groups_tolerate_rounding():
    C = np.array([1e18, 1.01e18, 0.99e18, 1e19, 1.02e19])
    assert list(O.isoflop_groups(C)) == [0, 0, 0, 1, 1]

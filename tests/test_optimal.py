"""Compute-optimal allocation: the three approaches and their agreement, against known answers."""

import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import optimal as O
from scalinglab.analysis.agreement import MAX_WIDTH, agreement
from scalinglab.analysis.approach import Approach
from scalinglab.analysis.fit import Fit

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# Closed-form optimum of the Chinchilla law along C = 6ND: N*(C) = G (C/6)^a.
A_TRUE = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])
G_TRUE = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (
    1 / (TRUE["alpha"] + TRUE["beta"])
)


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


def chinchilla_sweep(noise=0.002, seed=0, width=6.0, n=9, budgets=(1e18, 1e19, 1e20, 1e21, 1e22)):
    """IsoFLOP runs from the Chinchilla law (nominal budgets), log-normal noise of sd ``noise``."""
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        for N in G_TRUE * (C / 6) ** A_TRUE * np.geomspace(1 / width, width, n):
            D = C / (6 * N)
            loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
            rows.append(
                {
                    "N": N,
                    "D": D,
                    "C": C,
                    "isoflop_C": C,
                    "loss": loss * np.exp(noise * rng.normal()),
                }
            )
    return pd.DataFrame(rows)


def no_nan_words(flags):
    return all("nan" not in f.lower().split() and "nan " not in f.lower() for f in flags)


def test_parabola_method_finds_known_parabola_minima():
    budgets = [1e16, 1e17, 1e18, 1e19]
    df = parabola_sweep(budgets)
    minima = O.isoflop_minima(df, "parabola")
    assert len(minima) == 4 and minima["flag"].isna().all()
    np.testing.assert_allclose(minima["N_opt"], 0.1 * np.array(budgets) ** 0.5, rtol=1e-8)
    np.testing.assert_allclose(minima["D_opt"], np.array(budgets) / (6 * minima["N_opt"]))
    ap = O.approach2(df, bootstrap=50, method="parabola")
    assert ap.a == pytest.approx(0.5, abs=1e-8) and ap.b == pytest.approx(0.5, abs=1e-8)
    assert ap.predict(1e21)["N_opt"] == pytest.approx(0.1 * 1e21**0.5, rel=1e-6)
    assert not ap.flags and ap.unusable_share == 0.0


def test_akima_minima_of_a_known_profile():
    budgets = [1e16, 1e17, 1e18, 1e19]
    minima = O.isoflop_minima(parabola_sweep(budgets))  # Akima is the default
    # Grid step is ln(10)/999 in log N; the spline through 7 exact points is close to the parabola.
    np.testing.assert_allclose(minima["N_opt"], 0.1 * np.array(budgets) ** 0.5, rtol=0.01)


def test_akima_recovers_the_chinchilla_exponent_within_its_interval():
    df = chinchilla_sweep(noise=0.002, seed=3)
    ap = O.approach2(df, bootstrap=200, seed=1)
    lo, hi = ap.ci("a")
    assert lo <= A_TRUE <= hi and hi - lo < 0.2
    assert ap.a == pytest.approx(A_TRUE, abs=0.05)
    # Each budget's minimum within 3 of its own standard deviations of the closed-form optimum.
    n_star = G_TRUE * (ap.points["C"] / 6) ** A_TRUE
    sd = np.array([m["sd_logN"] for m in ap.extra["minima"]])
    assert np.all(np.abs(np.log(ap.points["N_opt"] / n_star)) < 3 * sd)
    assert np.all(sd < 0.5)
    assert "isoflop_C" in ap.extra["budgets_from"]
    assert "residual scale" in ap.extra["noise_from"]
    assert ap.reliable


def test_edge_minima_are_dropped_and_named():
    budgets = [1e16, 1e17, 1e18, 1e19]
    df = parabola_sweep(budgets, shift={1e19: (0.05, 0.5), 1e16: (2.0, 20.0)})
    for method, words in (("akima", "not bracketed"), ("parabola", "outside the sampled")):
        ap = O.approach2(df, bootstrap=20, method=method)
        assert len(ap.points) == 2  # both flagged budgets left out of the power law
        assert any("1e+19" in f and words in f for f in ap.flags), ap.flags
        assert any("1e+16" in f for f in ap.flags)
        assert no_nan_words(ap.flags)
    akima = O.approach2(df, bootstrap=20)
    assert any("largest sampled size" in f and "1e+19" in f for f in akima.flags)
    assert any("smallest sampled size" in f and "1e+16" in f for f in akima.flags)
    assert akima.a == pytest.approx(0.5, abs=0.01)


def test_wide_chains_of_compute_are_refused():
    # Ten runs 10% apart in C chain (each gap under the 12% tolerance) but span 2.4x: refused.
    chained = pd.DataFrame(
        {"N": np.geomspace(1e6, 1e7, 10), "C": 1e18 * 1.1 ** np.arange(10), "loss": 3.0}
    )
    chained["D"] = chained["C"] / (6 * chained["N"])
    df = pd.concat([parabola_sweep([1e20, 1e21, 1e22]), chained], ignore_index=True)
    b = O.group_budgets(df)
    assert len(b.C) == 3 and (b.labels == -1).sum() == 10
    assert "2.4x" in b.refused[0] and "1.25x" in b.refused[0]
    ap = O.approach2(df, bootstrap=20)
    assert any("refused" in f for f in ap.flags) and len(ap.points) == 3
    assert np.isnan(O.budgets(df)[-10:]).all()


def test_nominal_budgets_group_runs_whatever_their_actual_compute():
    df = chinchilla_sweep(noise=0.0)
    jitter = np.random.default_rng(0).uniform(0.8, 1.25, len(df))
    df["C"] = df["isoflop_C"] * jitter  # actual C scattered +-25%: chaining would merge or split
    b = O.group_budgets(df)
    np.testing.assert_allclose(b.C, np.logspace(18, 22, 5))
    assert not b.refused


def test_unusable_resamples_are_counted_and_mark_the_result_unreliable():
    df = chinchilla_sweep(noise=0.0, width=2.0, n=5)  # flat profiles: noise moves the minimum
    df["final_eval_loss_se"] = 0.05 * df["loss"]  # 5% evaluation noise
    ap = O.approach2(df, bootstrap=100)
    assert "final_eval_loss_se" in ap.extra["noise_from"]
    assert ap.unusable_share > 0.1 and not ap.reliable
    assert any(f.startswith("UNRELIABLE") for f in ap.flags)
    assert any(f"{round(100 * ap.unusable_share)}%" in f for f in ap.flags)
    quiet = chinchilla_sweep(noise=0.0, width=2.0, n=5)
    quiet["final_eval_loss_se"] = 1e-6 * quiet["loss"]
    calm = O.approach2(quiet, bootstrap=100)
    assert calm.unusable_share == 0.0 and calm.reliable


def test_noise_from_repeated_runs_when_there_are_seeds():
    df = pd.concat([chinchilla_sweep(noise=0.004, seed=s) for s in range(3)], ignore_index=True)
    ap = O.approach2(df, bootstrap=50)
    assert "replicate scale" in ap.extra["noise_from"] and "90 degrees" in ap.extra["noise_from"]
    # Independent: the pooled within-size sd of the log-normal noise, drawn with sd 0.004.
    sigma = float(ap.extra["noise_from"].split()[2])
    assert sigma == pytest.approx(0.004, rel=0.2)
    assert all(m["n_runs"] == 27 and m["n_sizes"] == 9 for m in ap.extra["minima"])


def test_approach2_needs_two_usable_budgets():
    ap = O.approach2(parabola_sweep([1e16], n=5), bootstrap=0)
    assert not ap.ok and "fewer than two" in ap.flags[-1]
    two_sizes = O.approach2(parabola_sweep([1e16, 1e17], n=2))
    assert not two_sizes.ok and any("only 2 model size" in f for f in two_sizes.flags)
    # Three sizes are enough (a parabola's three coefficients): the minimum sits on the
    # middle one, exactly N* = 0.1 C^0.5 here, so the exponent is 0.5.
    runs = parabola_sweep([1e16, 1e17, 1e18], n=3, width=(0.5, 2.0))
    three = O.approach2(runs, bootstrap=0, method="parabola")
    assert three.ok and not any("model size" in f for f in three.flags), three.flags
    assert three.a == pytest.approx(0.5, abs=1e-6)
    with pytest.raises(ValueError, match="method"):
        O.approach2(parabola_sweep([1e16, 1e17]), method="spline")


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


def test_approach3_spends_the_fits_flops_per_parameter_token():
    """C = k N D with the fit's k (here 7.3, as when C counts more than 6 per N and D)."""
    k = 7.3
    fit = Fit.from_params("chinchilla", **TRUE)
    fit.counting = {"N": "N_total", "k": k}
    ap = O.approach3(fit)
    alpha, beta = TRUE["alpha"], TRUE["beta"]
    a = beta / (alpha + beta)
    G = (alpha * TRUE["A"] / (beta * TRUE["B"])) ** (1 / (alpha + beta))
    C = 3e21
    pred = ap.predict(C)
    assert pred["N_opt"] == pytest.approx(G * (C / k) ** a, rel=1e-12)
    assert pred["D_opt"] == pytest.approx((C / k) ** (1 - a) / G, rel=1e-12)
    assert k * pred["N_opt"] * pred["D_opt"] == pytest.approx(C, rel=1e-12)
    # Independent: minimise the law along C = k N D numerically; 6 would miss by (7.3/6)^a.
    N = np.geomspace(1e8, 1e12, 400_001)
    loss = TRUE["E"] + TRUE["A"] / N**alpha + TRUE["B"] / (C / (k * N)) ** beta
    assert N[np.argmin(loss)] == pytest.approx(pred["N_opt"], rel=1e-4)
    assert ap.to_dict()["k"] == k and ap.to_dict()["N"] == "N_total"
    assert fit.optimal(C)["N_opt"] == pytest.approx(pred["N_opt"], rel=1e-12)


def test_every_approach_names_its_N_and_a_mismatch_is_flagged():
    df = chinchilla_sweep(budgets=(1e18, 1e19, 1e20))
    df.attrs["n_column"] = "N_nonembed"
    fit = Fit.from_params("chinchilla", **TRUE)
    fit.counting = {"N": "N_nonembed", "k": 6.0}
    out = O.compute_optimal(df, fit, bootstrap=5)
    assert {k: a.to_dict()["N"] for k, a in out.items()} == dict.fromkeys((1, 2, 3), "N_nonembed")
    assert not any("counted N" in f for f in out[3].flags)
    fit.counting = {"N": "N", "k": 6.0}
    out = O.compute_optimal(df, fit, approaches=(3,), bootstrap=5)
    assert "the fit counted N as N but the runs' N is N_nonembed" in out[3].flags[-1]


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


def fake(name, a, sd, n=400, seed=0):
    """An approach whose bootstrap draws of a are normal(a, sd), and b = 1 - a."""
    s = np.zeros((n, 4))
    s[:, 1] = np.random.default_rng(seed).normal(a, sd, n)
    s[:, 3] = 1 - s[:, 1]
    return Approach(name, a, 1 - a, 0.0, 0.0, s)


def test_agreement_verdicts_from_the_difference_of_exponents():
    same = agreement([fake("1", 0.45, 0.02, seed=1), fake("2", 0.46, 0.02, seed=2)])
    assert same["verdict"] == "agree" and same["agree"]
    pr = same["pairs"][0]
    # Independent: the difference of two normals has sd 0.02 * sqrt(2); 95% width ~ 0.111.
    assert pr["width"] == pytest.approx(2 * 1.96 * 0.02 * np.sqrt(2), rel=0.15)
    apart = agreement([fake("1", 0.30, 0.01, seed=1), fake("2", 0.50, 0.01, seed=2)])
    assert apart["verdict"] == "disagree" and not apart["agree"]
    assert apart["pairs"][0]["ci"][1] < 0 and apart["disagreements"]
    assert apart["pairs"][0]["difference"] == pytest.approx(0.30 - 0.50)  # first minus second
    assert not apart["pairs"][0]["paired"]  # no shared resamples: draws paired at random
    noisy = agreement([fake("1", 0.45, 0.3, seed=1), fake("2", 0.47, 0.3, seed=2)])
    assert noisy["verdict"] == "inconclusive" and noisy["pairs"][0]["width"] > MAX_WIDTH
    assert "wide" in noisy["inconclusive"][0]
    # Overlapping intervals are not enough: these overlap, yet their difference excludes 0.
    close = agreement([fake("1", 0.45, 0.02, seed=1), fake("2", 0.51, 0.02, seed=2)])
    lo1, hi1 = fake("1", 0.45, 0.02, seed=1).ci("a")
    lo2, hi2 = fake("2", 0.51, 0.02, seed=2).ci("a")
    assert hi1 > lo2 and close["verdict"] == "disagree"


def test_an_unreliable_approach_makes_the_verdict_inconclusive():
    shaky = fake("2", 0.46, 0.02, seed=2)
    shaky.unusable_share = 0.4
    res = agreement([fake("1", 0.45, 0.02, seed=1), shaky])
    assert res["verdict"] == "inconclusive" and "unreliable" in res["pairs"][0]["reason"]
    alone = agreement([fake("1", 0.45, 0.02)])
    assert alone["verdict"] == "not compared" and not alone["agree"]


def test_two_methods_on_the_same_law_agree():
    df = chinchilla_sweep(noise=0.001, seed=5)
    aps = [O.approach2(df, bootstrap=200, method=m) for m in ("akima", "parabola")]
    aps[1].name = "2b: parabola"
    assert agreement(aps)["verdict"] == "agree"


def test_approach3_reads_the_fits_bootstrap_samples_by_name():
    fit = Fit.from_params("chinchilla", **TRUE)
    rng = np.random.default_rng(0)
    draws = {k: v * np.exp(0.01 * rng.normal(size=50)) for k, v in TRUE.items()}
    fit.samples = np.column_stack([draws[k] for k in fit.params])
    ap = O.approach3(fit)
    a = draws["beta"] / (draws["alpha"] + draws["beta"])
    np.testing.assert_allclose(ap.column("a"), a, rtol=1e-12)
    np.testing.assert_allclose(ap.column("b"), 1 - a, rtol=1e-12)
    assert ap.ci("a")[0] == pytest.approx(np.percentile(a, 2.5))
    assert ap.unusable_share == 0.0


def test_isoflop_groups_tolerate_rounding():
    C = np.array([1e18, 1.01e18, 0.99e18, 1e19, 1.02e19])
    assert list(O.isoflop_groups(C)) == [0, 0, 0, 1, 1]


def test_akima_matches_scipy_reference() -> None:
    """The numpy Akima spline approach 2 minimises equals scipy's Akima1DInterpolator."""
    from scipy.interpolate import Akima1DInterpolator

    from scalinglab.analysis.akima import akima

    rng = np.random.default_rng(3)
    for n in (2, 3, 4, 7):
        x = np.sort(rng.uniform(0, 10, n))
        Y = rng.normal(size=(n, 5))
        Y[:, 0] = 2.0 * x + 1.0  # collinear: Akima's weights vanish, the fallback slope
        grid = np.linspace(x[0], x[-1], 301)
        want = np.column_stack([Akima1DInterpolator(x, Y[:, j])(grid) for j in range(5)])
        np.testing.assert_allclose(akima(x, Y, grid), want, rtol=1e-12, atol=1e-12)


def test_same_resamples_are_differenced_resample_by_resample():
    """Approaches drawn from the same resamples of the runs: the difference's own bootstrap
    distribution, not two independent spreads added. Here p = q + 0.01 in every resample,
    so the difference is 0.01 for certain (disagree); paired at random it is wide."""
    rng = np.random.default_rng(0)
    a = 0.45 + 0.05 * rng.normal(size=300)
    q = Approach("q", 0.45, 0.55, 0.0, 0.0, np.column_stack([0 * a, a, 0 * a, 1 - a]))
    p = Approach("p", 0.46, 0.54, 0.0, 0.0, np.column_stack([0 * a, a + 0.01, 0 * a, 0.99 - a]))
    random = agreement([p, q])["pairs"][0]
    assert random["verdict"] == "inconclusive" and random["width"] > 0.2
    p.resampled = q.resampled = "runs n=20 count=300 seed=0"
    paired = agreement([p, q])["pairs"][0]
    assert paired["ci"] == pytest.approx([0.01, 0.01], abs=1e-12)
    assert paired["verdict"] == "disagree"
    assert paired["paired"] and not random["paired"]
    q.resampled = "runs n=20 count=300 seed=1"  # other resamples: paired at random again
    assert not agreement([p, q])["pairs"][0]["paired"]


def _drawn(name: str, a: list[float], key: str | None = "runs") -> Approach:
    """An approach whose draws of a are exactly `a` (b = 1 - a), from resamples `key`."""
    a_ = np.asarray(a, dtype=float)
    s = np.column_stack([0 * a_, a_, 0 * a_, 1 - a_])
    return Approach(
        name, float(np.nanmean(a_)), 1 - float(np.nanmean(a_)), 0.0, 0.0, s, resampled=key
    )


def test_paired_difference_keeps_every_resample_where_both_are_finite():
    """Paired draws: the difference of each resample where both are finite, in order; two such
    resamples are enough for an interval, one is not."""
    from scalinglab.analysis.agreement import difference

    p = _drawn("p", [0.5, np.nan, 0.7, 0.2, 0.4])
    q = _drawn("q", [0.1, 0.3, np.nan, 0.1, 0.3])
    np.testing.assert_allclose(difference(p, q, "a"), [0.4, 0.1, 0.1], rtol=1e-12)
    two = _drawn("p", [0.5, np.nan, np.nan, 0.2, np.nan])
    np.testing.assert_allclose(difference(two, q, "a"), [0.4, 0.1], rtol=1e-12)
    one = _drawn("p", [0.5, np.nan, np.nan, np.nan, np.nan])
    assert difference(one, q, "a") is None


def test_an_approach_without_draws_has_no_difference():
    from scalinglab.analysis.agreement import difference

    bare = Approach("1", 0.5, 0.5, 0.0, 0.0, None)
    drawn = _drawn("2", [0.4, 0.5, 0.6])
    assert difference(bare, drawn, "a") is None and difference(drawn, bare, "a") is None


def test_verdict_boundaries_an_exact_zero_agrees_and_a_width_of_exactly_max_width_agrees():
    """A difference that is exactly 0 in every resample (an approach against its own draws)
    contains 0: agree, not disagree. Draws of the difference that are +-0.1, half each, give
    the interval [-0.1, 0.1], 0.2 wide: "at most MAX_WIDTH" counts it as agreement."""
    same = agreement([_drawn("p", [0.4, 0.5, 0.6]), _drawn("q", [0.4, 0.5, 0.6])])
    assert same["pairs"][0]["ci"] == [0.0, 0.0] and same["verdict"] == "agree"
    from scalinglab.analysis.agreement import judge

    wide = judge(_drawn("p", [0.1, -0.1] * 20), _drawn("q", [0.0] * 40), "a", 0.95)
    assert MAX_WIDTH == 0.2 and wide["ci"] == [-0.1, 0.1] and wide["width"] == 0.2
    assert wide["verdict"] == "agree"


def test_approach1_and_the_fit_share_their_resamples():
    """compute_optimal gives approach 1 the fit's resamples of the runs (same key), and its
    draw b is the envelope of exactly the runs of the fit's resample b."""
    from scalinglab.analysis.fit import fit_chinchilla
    from scalinglab.analysis.intervals import resample_rows

    df = chinchilla_sweep(noise=0.01, seed=3, n=5, budgets=(1e18, 1e19, 1e20))
    df["trial_id"] = [f"t{i:02d}" for i in range(len(df))]
    fit = fit_chinchilla(df, bootstrap=30, seed=7, n_starts=200, profile=False)
    aps = O.compute_optimal(df, fit, bootstrap=30, seed=7, approaches=(1, 3))
    assert aps[1].resampled == aps[3].resampled is not None
    pick = resample_rows(len(df), 30, 7)[4]
    env = O.envelope(df.iloc[pick])
    want = np.polyfit(np.log(env["C"]), np.log(env["N"]), 1)[0]
    assert aps[1].column("a")[4] == pytest.approx(want, rel=1e-9)


def test_residual_noise_is_pooled_over_budgets_with_n_minus_3_dof_each():
    """Without seeds or an se column, the noise of log loss is the residual scale about a
    quadratic in log N per budget, pooled: here 5 budgets of 9 sizes, 5 x (9 - 3) = 30
    degrees of freedom, computed by hand with numpy."""
    from scalinglab.analysis.approach2 import group_budgets, noise_level

    df = chinchilla_sweep(noise=0.002, seed=3)
    sigma, text = noise_level(df, group_budgets(df).labels)
    ssr = 0.0
    for _, g in df.groupby("C"):
        x, y = np.log(g["N"].to_numpy()), np.log(g["loss"].to_numpy())
        ssr += float(np.sum((np.polyval(np.polyfit(x, y, 2), x) - y) ** 2))
    assert sigma == pytest.approx(np.full(len(df), np.sqrt(ssr / 30)), rel=1e-9)
    assert "30 degrees of freedom" in text and "5 budgets" in text


def test_minimum_sd_is_the_fine_grids_resolution_when_the_data_has_no_noise():
    """An exact parabola: no residual noise, every redrawn minimum lands on the same fine-grid
    point, so a budget's minimiser sd is the grid's own resolution, step / sqrt(12) (a
    uniform rounding error), with step = log(N_max / N_min) / (FINE_GRID - 1)."""
    ap = O.approach2(parabola_sweep([1e16, 1e17, 1e18], width=(0.3, 3.0)), bootstrap=20)
    from scalinglab.analysis.approach2 import FINE_GRID

    step = np.log(3.0 / 0.3) / (FINE_GRID - 1)
    sd = [m["sd_logN"] for m in ap.extra["minima"]]
    assert sd == pytest.approx([step / np.sqrt(12.0)] * 3, rel=1e-6)


def test_envelope_bins_by_log_compute_and_keeps_each_bins_best_if_it_improves():
    """Three log bins over C in [1, 1000] (edges 1, 10, 100, 1000; the top edge belongs to the
    last bin): one point per bin survives, the lowest-loss one, when it beats every cheaper
    point. Here C = 100 and 1000 share the last bin and 1000 is lower."""
    df = pd.DataFrame({"C": [1.0, 10.0, 100.0, 1000.0], "loss": [4.0, 3.0, 2.0, 1.0]})
    df["N"], df["D"] = df["C"], 1.0
    assert O.envelope(df, n_bins=3)["C"].tolist() == [1.0, 10.0, 1000.0]
    df.loc[2, "loss"] = 0.5  # now C = 100 wins the last bin
    assert O.envelope(df, n_bins=3)["C"].tolist() == [1.0, 10.0, 100.0]


def test_approach1_flags_a_short_envelope_and_pairs_only_with_given_runs():
    """Three envelope points are enough (no flag), two are flagged; the draws are paired with
    a fit's resamples (a resample key) only when the fit's runs are given."""
    rows = [
        {"C": 6 * n * d, "N": n, "D": d, "loss": 10.0 / (6 * n * d) ** 0.1}
        for n, d in ((1e3, 2e4), (2e3, 4e5), (4e3, 8e6))
    ]
    three = pd.DataFrame(rows)
    ap = O.approach1(three, bootstrap=5)
    assert len(O.envelope(three)) == 3 and not any("only" in f for f in ap.flags)
    assert ap.resampled is None
    assert O.approach1(three, bootstrap=5, runs=np.arange(3)).resampled is not None
    two = O.approach1(three.iloc[:2], bootstrap=5)
    assert "envelope has only 2 points" in two.flags


def test_compute_optimal_pairs_approach1_with_the_fit_only_for_the_fits_own_rows():
    """Without a run column, approach 1 shares the fit's resamples when it reads the fit's
    own table, not when it reads separate learning curves (their rows are other points)."""
    df = chinchilla_sweep(budgets=(1e18, 1e19, 1e20))
    own = O.compute_optimal(df, approaches=(1,), bootstrap=5)[1]
    assert own.resampled is not None
    curves = df[["C", "N", "D", "loss"]].copy()
    other = O.compute_optimal(df, approaches=(1,), bootstrap=5, curves=curves)[1]
    assert other.resampled is None


def test_reliability_boundary_and_two_draws_are_enough():
    """An approach with exactly UNRELIABLE_SHARE (10%) unusable resamples is still reliable
    ("no more than"); two bootstrap draws give a column, one does not."""
    from scalinglab.analysis.approach import UNRELIABLE_SHARE

    ap = _drawn("p", [0.4, 0.6])
    ap.unusable_share = UNRELIABLE_SHARE
    assert ap.reliable and ap.column("a") is not None
    ap.unusable_share = UNRELIABLE_SHARE + 1e-9
    assert not ap.reliable
    assert _drawn("p", [0.4]).column("a") is None


def test_predicted_allocation_interval_is_the_draws_power_law_at_that_compute():
    """N_opt's interval at compute C is the percentile interval of exp(log_kN + a log C) over
    the draws (by hand here, with two distinct draws)."""
    s = np.array([[np.log(0.1), 0.5, np.log(2.0), 0.5], [np.log(0.2), 0.4, np.log(1.0), 0.6]])
    ap = Approach("x", 0.45, 0.55, np.log(0.15), np.log(1.5), s)
    C = 1e20
    got = ap.predict(C)
    N = np.exp(s[:, 0] + s[:, 1] * np.log(C))
    assert got["N_opt_ci"] == pytest.approx(tuple(np.percentile(N, [2.5, 97.5])), rel=1e-12)
    assert got["N_opt"] == pytest.approx(0.15 * C**0.45, rel=1e-12)

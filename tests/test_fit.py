"""Robust fitting: Huber objective against numpy, recovery of known laws, diagnostics."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import fit as F
from scalinglab.analysis import laws
from scalinglab.analysis import multistart as multistart_mod
from scalinglab.analysis.lbfgs import GTOL, lbfgs
from scalinglab.errors import FitInputError

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
# A small start grid keeps the tests fast; the default 4,500-start grid is benchmarked.
SMALL_GRID = laws.CHINCHILLA.start_grid()[::61]


def chinchilla_table(noise: float = 0.0, seed: int = 0) -> pd.DataFrame:
    N, D = np.meshgrid(np.logspace(7, 10, 7), np.logspace(9, 12, 7))
    N, D = N.ravel(), D.ravel()
    loss = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    loss = loss * np.exp(noise * np.random.default_rng(seed).standard_normal(len(N)))
    return pd.DataFrame({"N": N, "D": D, "loss": loss})


def numpy_objective_and_grad(raw, logN, logD, logy, delta):
    """Direct numpy: sum of Huber terms and its analytic gradient."""
    e, a, b, alpha, beta = raw
    terms = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    z = np.exp(terms)
    pred = np.log(z.sum(axis=0))
    r = pred - logy
    h = np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    psi = np.clip(r, -delta, delta)  # dHuber/dr
    p = z / z.sum(axis=0)  # d pred / d term
    grad = np.array(
        [
            np.sum(psi * p[2]),
            np.sum(psi * p[0]),
            np.sum(psi * p[1]),
            -np.sum(psi * p[0] * logN),
            -np.sum(psi * p[1] * logD),
        ]
    )
    return h.sum(), grad


def test_huber_objective_and_gradient_match_numpy():
    df = chinchilla_table(noise=0.01)
    logN, logD, logy = (np.log(df[c].to_numpy()) for c in ("N", "D", "loss"))
    raw = laws.CHINCHILLA.to_raw(TRUE) + np.array([0.05, -0.1, 0.2, 0.01, -0.02])
    terms = np.stack([raw[1] - raw[3] * logN, raw[2] - raw[4] * logD, np.full_like(logN, raw[0])])
    r = np.log(np.exp(terms).sum(axis=0)) - logy
    delta = float(np.median(np.abs(r)))  # half the residuals in each Huber regime
    want_f, want_g = numpy_objective_and_grad(raw, logN, logD, logy, delta)
    with jax.enable_x64(True):
        args = (jnp.asarray(np.stack([logN, logD], 1)), jnp.asarray(logy), jnp.ones(len(logy)))
        f, g = jax.value_and_grad(F.objective)(jnp.asarray(raw), *args, delta)
    assert np.any(np.abs(r) < delta) and np.any(np.abs(r) > delta)
    assert float(f) == pytest.approx(want_f, rel=1e-12)
    np.testing.assert_allclose(np.asarray(g), want_g, rtol=1e-10)
    # ... and the analytic gradient against central finite differences.
    eps = 1e-6
    fd = [
        (
            numpy_objective_and_grad(raw + eps * e, logN, logD, logy, delta)[0]
            - numpy_objective_and_grad(raw - eps * e, logN, logD, logy, delta)[0]
        )
        / (2 * eps)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(want_g, fd, rtol=1e-5, atol=1e-10)


def test_objective_is_a_sum_not_a_mean():
    df = chinchilla_table(noise=0.05)
    X, y = np.log(df[["N", "D"]].to_numpy()), np.log(df["loss"].to_numpy())
    raw = laws.CHINCHILLA.to_raw(TRUE)
    with jax.enable_x64(True):
        one = F.objective(raw, X, y, np.ones(len(y)), 1e-3)
        two = F.objective(raw, np.tile(X, (2, 1)), np.tile(y, 2), np.ones(2 * len(y)), 1e-3)
    assert float(two) == pytest.approx(2 * float(one), rel=1e-12)


def test_lbfgs_minimises_rosenbrock_from_many_starts():
    def rosen(x):
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    with jax.enable_x64(True):
        x0 = jnp.array([[-1.2, 1.0], [2.0, 2.0], [0.0, -1.0]])
        res = jax.vmap(lambda x: lbfgs(rosen, x, gtol=1e-10))(x0)
    np.testing.assert_allclose(np.asarray(res.x), 1.0, atol=1e-6)
    assert np.all(np.asarray(res.status) <= 1)


def test_recovers_noise_free_law():
    fit = F.fit_chinchilla(chinchilla_table(), starts=SMALL_GRID)
    assert fit.converged and fit.diagnostics.n_at_best > 1
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-4), k
    # A sound fit well inside the bounds draws no "on a bound" warning.
    assert not any("bound" in w for w in fit.diagnostics.warnings), fit.diagnostics.warnings
    assert fit.rmse < 1e-7
    assert fit.predict(1e9, 1e11) == pytest.approx(
        float(laws.chinchilla(1e9, 1e11, **TRUE)), rel=1e-7
    )


def test_recovers_noisy_law_within_bootstrap_intervals():
    fit = F.fit_chinchilla(chinchilla_table(noise=0.01, seed=3), bootstrap=200, starts=SMALL_GRID)
    assert fit.converged
    assert fit.samples.shape == (200, 5)
    for k, v in TRUE.items():
        lo, hi = fit.ci[k]
        assert lo <= v <= hi, (k, fit.ci[k])
    assert 0.005 < fit.rmse < 0.015  # about the injected noise
    opt = fit.optimal(1e22)
    assert opt["N_opt_ci"][0] <= opt["N_opt"] <= opt["N_opt_ci"][1]
    ex = fit.exponents()
    assert ex["a_ci"][0] <= 0.4516 <= ex["a_ci"][1]


def test_optimal_is_on_the_budget_and_minimal():
    fit = F.Fit.from_params("chinchilla", **TRUE)
    C = 1e21
    opt = fit.optimal(C)
    assert 6 * opt["N_opt"] * opt["D_opt"] == pytest.approx(C)
    N = opt["N_opt"] * np.array([0.8, 1.25])
    assert np.all(fit.predict(N, C / (6 * N)) > opt["loss"])


def test_power_law_with_and_without_offset():
    x = np.logspace(15, 20, 12)
    y = 1.5 + 80.0 * x**-0.12
    fit = F.fit_power_law(x, y)
    assert fit.params == pytest.approx({"E": 1.5, "A": 80.0, "alpha": 0.12}, rel=1e-4)
    fit0 = F.fit_power_law(x, 80.0 * x**-0.12, offset=False)
    assert fit0.params == pytest.approx({"A": 80.0, "alpha": 0.12}, rel=1e-6)


def test_accepts_final_eval_loss_column():
    df = chinchilla_table().rename(columns={"loss": "final_eval_loss"})
    fit = F.fit_chinchilla(df, starts=SMALL_GRID)
    assert fit.params["E"] == pytest.approx(TRUE["E"], rel=1e-3)


def test_diagnostics_flag_grid_edge_and_non_convergence():
    df = chinchilla_table()
    df["loss"] += 8.0  # E ~ 9.7: log E = 2.3, outside the start grid's [-1, 1]
    fit = F.fit_chinchilla(df, starts=SMALL_GRID)
    assert "e" in fit.diagnostics.on_grid_edge
    assert any("start grid" in w for w in fit.diagnostics.warnings)
    stopped = F.fit_chinchilla(chinchilla_table(noise=0.01), starts=SMALL_GRID, max_iter=3)
    assert not stopped.converged
    assert "did not converge" in " ".join(stopped.diagnostics.warnings)
    corr = stopped.diagnostics.correlations
    assert corr["alpha"]["alpha"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("df", "match"),
    [
        (chinchilla_table().head(4), "5 parameters but only 4"),
        (chinchilla_table().assign(D=lambda d: d.D.where(d.index != 2, -1.0)), "'D' has 1 non-pos"),
        (chinchilla_table().assign(loss=np.nan), "'loss' has 49"),
        (chinchilla_table().drop(columns="N"), "missing column 'N'"),
    ],
)
def test_bad_input_is_one_clear_error(df, match):
    with pytest.raises(FitInputError, match=match) as e:
        F.fit_chinchilla(df, starts=SMALL_GRID)
    assert "\n" not in str(e.value)


def test_lbfgs_status_codes_are_reported():
    with jax.enable_x64(True):
        res = lbfgs(lambda x: jnp.sum((x - 3.0) ** 2), jnp.zeros(3))
    assert int(res.status) == GTOL and float(res.value) < 1e-18


def _line_search_state(fun, passes: int):
    """The L-BFGS state after `passes` objective evaluations from x0 = 0 (one variable)."""
    from scalinglab.analysis.lbfgs import lbfgs_init, lbfgs_run

    with jax.enable_x64(True):
        state = lbfgs_init(fun, jnp.zeros(1))
        return lbfgs_run(fun, state, max_passes=passes)


@pytest.mark.parametrize(
    ("b", "want"),
    [
        (1.25, 0.4),  # f(1) = 0.25: the quadratic's minimiser 1 / (2 b) = 0.4, inside [0.1, 0.5]
        (2.5, 0.2),  # 0.2: taken as it is (exact: the line is a quadratic)
        (100.0, 0.1),  # 0.005: clipped up to 0.1 t
        (1 - 0.5e-4, 0.5),  # f(1) = -5e-5 fails Armijo (needs -1e-4); 0.500025 clipped to 0.5 t
    ],
)
def test_first_backtrack_is_the_quadratic_minimiser_clipped_to_a_tenth_and_a_half(b, want):
    """f(x) = -x + b x^2 from 0: the unit steepest-descent trial t = 1 fails the sufficient-
    decrease test (f(1) = b - 1 > f(0) + 1e-4 * slope, slope = -1), and the next trial is the
    minimiser of the quadratic through f(0), f'(0) and f(1), -f'(0) / (2 (f(1) - f(0) -
    f'(0))) = 1 / (2 b), clipped to [0.1, 0.5] (the line search's documented rule)."""
    s = _line_search_state(lambda x: jnp.sum(-x + b * x**2), 1)
    assert (float(s.lo), float(s.hi)) == (0.0, 1.0)  # t = 1 was too long, nothing too short
    assert float(s.t) == pytest.approx(want, rel=1e-12)


def test_line_search_extrapolates_a_short_step_fourfold_then_bisects_the_bracket():
    """f(x) = -x + exp(2 (x - 2.5)) / 2 from 0: f'(1) = -1 + e^-3 = -0.950 is still below
    0.9 f'(0) = -0.899 (t = 1 too short: try 4 t), and f(4) = -4 + e^3 / 2 = 6.04 > f(0)
    (t = 4 too long): the bracket is [1, 4] and the next trial its midpoint 2.5."""
    fun = lambda x: jnp.sum(-x + jnp.exp(2.0 * (x - 2.5)) / 2.0)  # noqa: E731
    one = _line_search_state(fun, 1)
    assert (float(one.lo), float(one.hi), float(one.t)) == (1.0, np.inf, 4.0)
    two = _line_search_state(fun, 2)
    assert (float(two.lo), float(two.hi), float(two.t)) == (1.0, 4.0, 2.5)


def test_a_second_backtrack_interpolates_from_the_shorter_step():
    """f(x) = -x + 20 x^2: t = 1 fails, the quadratic's minimiser 0.025 is clipped up to 0.1;
    f(0.1) = 0.1 > f(0) fails too, and the quadratic through f(0), f'(0) and f(0.1) has its
    minimiser at 1 / (2 * 20) = 0.025 again, now inside [0.01, 0.05]: the interpolation uses
    the step it tried (0.1), not 1."""
    s = _line_search_state(lambda x: jnp.sum(-x + 20.0 * x**2), 2)
    assert (float(s.lo), float(s.hi)) == (0.0, 0.1)
    assert float(s.t) == pytest.approx(0.025, rel=1e-12)


def test_extrapolation_grows_the_last_step_fourfold():
    """f(x) = -x + exp(x - 8): t = 1 and t = 4 are both still too short (f' below 0.9 f'(0)),
    so the trials are 1, 4, 16; 16 overshoots (f(16) = e^8 - 16 > f(0)): bisect [4, 16]."""
    fun = lambda x: jnp.sum(-x + jnp.exp(x - 8.0))  # noqa: E731
    assert float(_line_search_state(fun, 2).t) == 16.0
    three = _line_search_state(fun, 3)
    assert (float(three.lo), float(three.hi), float(three.t)) == (4.0, 16.0, 10.0)


def test_recovers_kaplan_law():
    true = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6)))
    ratio = true["alpha_N"] / true["alpha_D"]
    loss = ((true["N_c"] / N) ** ratio + true["D_c"] / D) ** true["alpha_D"]
    fit = F.fit_kaplan(
        pd.DataFrame({"N": N, "D": D, "loss": loss}), starts=laws.KAPLAN.start_grid()[::7]
    )
    assert fit.converged
    assert fit.params == pytest.approx(true, rel=1e-6)
    assert not any("bound" in w for w in fit.diagnostics.warnings), fit.diagnostics.warnings


def test_chunked_multistart_matches_one_long_loop(monkeypatch):
    """Setting finished starts aside between chunks changes the work, not the answer.

    XLA's rounding depends on the vectorised width, so the reference runs at the driver's
    width (one lane width here, starts padded as the driver pads them); then every start
    must follow its one-long-loop trajectory: same optimum, the same iteration count
    (two steps of slack where rounding decides the last ftol test).
    Results written back to the wrong starts, or history lost between chunks, break it.
    """
    df = chinchilla_table(noise=0.01)
    logX = np.log(np.stack([df["N"], df["D"]], axis=1))
    logy = np.log(df["loss"].to_numpy())
    starts = SMALL_GRID
    width = 128
    monkeypatch.setattr(multistart_mod, "CHUNK_PASSES", 7)  # many compactions
    monkeypatch.setattr(multistart_mod, "LANES", width)
    monkeypatch.setattr(multistart_mod, "NARROW", width)
    chunked = F.multistart(laws.CHINCHILLA, logX, logy, starts)
    padded = np.concatenate([starts, np.repeat(starts[:1], width - len(starts), axis=0)])
    with jax.enable_x64(True):
        fun = lambda x, *a: F.objective(x, *a, law=laws.CHINCHILLA)  # noqa: E731
        ref = jax.vmap(
            lambda x0, w: lbfgs(fun, x0, jnp.asarray(logX), jnp.asarray(logy), w, F.DEFAULT_DELTA)
        )(jnp.asarray(padded, jnp.float64), jnp.ones((width, len(logy))))
    n = len(starts)
    np.testing.assert_allclose(chunked["value"], np.asarray(ref.value)[:n], rtol=1e-12)
    np.testing.assert_allclose(chunked["x"], np.asarray(ref.x)[:n], rtol=1e-7, atol=1e-12)
    steps = np.abs(chunked["n_iter"] - np.asarray(ref.n_iter)[:n])  # rounding at the last steps
    assert steps.max() <= 2 and np.mean(steps == 0) >= 0.95, steps


def test_options_object_equals_keywords_and_samples_are_named():
    df = chinchilla_table(noise=0.01, seed=3)
    opts = F.FitOptions(starts=SMALL_GRID, bootstrap=12, seed=4, profile=False)
    a = F.fit_chinchilla(df, options=opts)  # bootstrap=12 from the options object
    b = F.fit_chinchilla(df, bootstrap=12, starts=SMALL_GRID, seed=4, profile=False)
    assert list(a.samples.columns) == list(laws.CHINCHILLA.param_names)
    np.testing.assert_allclose(a.samples.to_numpy(), b.samples.to_numpy(), rtol=1e-9)
    np.testing.assert_array_equal(a.sample("alpha"), a.samples["alpha"].to_numpy())
    lo, hi = np.percentile(a.samples["beta"], [2.5, 97.5])  # numpy's own percentiles
    assert a.ci["beta"] == pytest.approx((lo, hi))
    with pytest.raises(FitInputError, match="unknown fit option"):
        F.fit_chinchilla(df, bootstrapp=3)


def test_runs_table_is_fitted_on_the_N_that_C_counts():
    # load_runs rows: the law holds in N_nonembed (C = 6 N_nonembed D under kaplan counting);
    # total N adds an embedding that is a varying share of the model. Fitting total N would
    # bend the law and miss the known parameters.
    df = chinchilla_table().rename(columns={"N": "N_nonembed", "loss": "final_eval_loss"})
    df["N"] = df["N_nonembed"] + 256 * 64 * (1 + np.arange(len(df)) % 3)
    df["flop_counting"] = "kaplan"
    fit = F.fit_chinchilla(df, starts=SMALL_GRID)
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-4), k


def test_interval_tails_and_their_bounds() -> None:
    """A central 95% interval leaves 2.5% in each tail; a confidence of 0 or 1 (or outside)
    names no interval."""
    from scalinglab.analysis.intervals import tails

    assert tails(0.95) == pytest.approx((2.5, 97.5))
    assert tails(0.5) == pytest.approx((25.0, 75.0))
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="confidence"):
            tails(bad)


def test_pruned_multistart_goes_on_with_exactly_the_best_starts(monkeypatch):
    """``keep``: after the first chunk the ``keep`` running starts of lowest objective go on
    (the same trajectories as without pruning) and the rest stop where they were. The
    reference state after one chunk comes from the L-BFGS primitives, not the driver. With a
    row of weights per start (bootstrap) nothing is pruned."""
    from scalinglab.analysis.lbfgs import PRUNED, RUNNING, lbfgs_init, lbfgs_run

    df = chinchilla_table(noise=0.01)
    logX = np.log(np.stack([df["N"], df["D"]], axis=1))
    logy = np.log(df["loss"].to_numpy())
    starts, width, chunk, keep = SMALL_GRID, 128, 7, 10
    monkeypatch.setattr(multistart_mod, "CHUNK_PASSES", chunk)
    monkeypatch.setattr(multistart_mod, "LANES", width)
    monkeypatch.setattr(multistart_mod, "NARROW", width)
    full = F.multistart(laws.CHINCHILLA, logX, logy, starts)
    pruned = F.multistart(laws.CHINCHILLA, logX, logy, starts, keep=keep)

    padded = np.concatenate([starts, np.repeat(starts[:1], width - len(starts), axis=0)])
    with jax.enable_x64(True):
        fun = lambda x, *a: F.objective(x, *a, law=laws.CHINCHILLA)  # noqa: E731
        args = (jnp.asarray(logX), jnp.asarray(logy))

        def one_chunk(x0, w):
            state = lbfgs_init(fun, x0, *args, w, F.DEFAULT_DELTA)
            return lbfgs_run(fun, state, *args, w, F.DEFAULT_DELTA, max_passes=chunk)

        after = jax.vmap(one_chunk)(jnp.asarray(padded), jnp.ones((width, len(logy))))
    n = len(starts)
    f1, running = np.asarray(after.f)[:n], np.asarray(after.status)[:n] == RUNNING
    assert running.sum() > keep  # the test prunes something
    order = np.flatnonzero(running)[np.argsort(f1[running], kind="stable")]
    went_on, stopped = order[:keep], order[keep:]
    assert set(np.flatnonzero(pruned["status"] == PRUNED)) == set(stopped)
    np.testing.assert_allclose(pruned["value"][stopped], f1[stopped], rtol=1e-12)
    np.testing.assert_allclose(pruned["value"][went_on], full["value"][went_on], rtol=1e-12)
    done = ~running  # finished within the first chunk: untouched
    np.testing.assert_allclose(pruned["value"][done], full["value"][done], rtol=1e-12)
    assert pruned["value"].min() == pytest.approx(full["value"].min(), rel=1e-12)

    rows = np.ones((n, len(logy)))  # one row of weights per start: values not comparable
    boot = F.multistart(laws.CHINCHILLA, logX, logy, starts, weights=rows, keep=keep)
    assert not np.any(boot["status"] == PRUNED)


def test_converged_counts_a_line_search_stop_only_at_a_tiny_gradient():
    """What counts as converged, by its definition: gtol and ftol stops always; a failed
    line search only with the gradient below 1e-6 (rounding at the optimum); never max_iter
    or a pruned start, whatever the gradient."""
    from scalinglab.analysis.lbfgs import FTOL, LS_FAIL, MAX_ITER, PRUNED

    conv = multistart_mod.converged
    assert conv(GTOL, 1.0) and conv(FTOL, 1.0)
    assert conv(LS_FAIL, 1e-9) and not conv(LS_FAIL, 1e-3)
    assert not conv(MAX_ITER, 1e-9) and not conv(PRUNED, 1e-9)


def test_distinct_best_skips_optima_within_a_relative_1e6():
    """The refit starts: the k lowest values, skipping any within 1e-6 (relative) of one
    already picked. At values near 1e-3 a relative and an absolute threshold differ."""
    xs = np.arange(6.0)[:, None]
    values = np.array([2e-3, 1e-3, 1e-3 * (1 + 1e-7), 1.0005e-3, np.inf, 3e-3])
    got = multistart_mod.distinct_best(xs, values, 3)
    np.testing.assert_array_equal(got[:, 0], [1.0, 3.0, 0.0])  # 1e-3, 1.0005e-3, 2e-3
    assert len(multistart_mod.distinct_best(xs, values, 10)) == 4  # inf never picked

"""More laws, one machinery: over-training (Gadre et al. 2024), data-constrained
(Muennighoff et al. 2023) and user-defined laws recover known parameters."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import fit_law, fit_table, laws
from scalinglab.analysis.custom import custom_law
from scalinglab.errors import FitInputError


def test_overtraining_law_is_chinchilla_with_equal_exponents():
    """Data from L = E + A/N^0.3 + B/D^0.3 written in C = 6ND and M = D/N: eta = 0.15,
    a = A 6^eta, b = B 6^eta (the reparametrisation, derived by hand)."""
    E, A, B, al = 1.8, 300.0, 500.0, 0.3
    N, M = (v.ravel() for v in np.meshgrid(np.logspace(7, 9.5, 6), [5, 10, 20, 40, 80, 160]))
    D = M * N
    loss = E + A * N**-al + B * D**-al
    df = pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": loss})
    fit = fit_table(
        df,
        "overtraining",
        starts=laws.OVERTRAINING.start_grid()[::3],
        profile=False,
        backtest=False,
    )
    eta = al / 2
    expected = {"E": E, "a": A * 6**eta, "b": B * 6**eta, "eta": eta}
    assert fit.params == pytest.approx(expected, rel=1e-5)
    assert fit.predict(C=1e22, M=20.0) == pytest.approx(
        E + (expected["a"] * 20**eta + expected["b"] * 20**-eta) * 1e22**-eta, rel=1e-9
    )


def test_data_constrained_law_recovers_repetition_half_life():
    true = {"E": 1.9, "A": 400.0, "B": 600.0, "alpha": 0.34, "beta": 0.3, "R_D": 15.0}
    rows = []
    for N in np.logspace(7, 9, 5):
        for U in (2e8, 1e9, 5e9):
            for epochs in (1, 2, 4, 8, 16, 40):
                D = U * epochs
                R = epochs - 1.0
                Dp = U + U * true["R_D"] * (1 - np.exp(-R / true["R_D"]))  # by hand
                loss = true["E"] + true["A"] * N ** -true["alpha"] + true["B"] * Dp ** -true["beta"]
                rows.append({"N": N, "D": D, "C": 6 * N * D, "unique_tokens": U, "loss": loss})
    df = pd.DataFrame(rows)
    grid = laws.DATA_CONSTRAINED.start_grid()[::10]
    fit = fit_table(df, "data_constrained", starts=grid, profile=False, backtest=False)
    assert fit.converged
    assert fit.params == pytest.approx(true, rel=1e-4)


def test_custom_law_fitted_with_bootstrap_and_diagnostics():
    def law_fn(cols, p):
        return p["E"] + p["A"] * cols["N"] ** -p["alpha"] + p["B"] * cols["tokens"] ** -p["beta"]

    law = custom_law(
        "mine",
        law_fn,
        inputs=("N", "tokens"),
        params={
            "E": (0.5, 3.0),
            "A": (10.0, 1e4),
            "B": (10.0, 1e4),
            "alpha": (0.1, 0.8),
            "beta": (0.1, 0.8),
        },
        positive=("E", "A", "B"),
        points=3,
    )
    true = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
    N, D = (v.ravel() for v in np.meshgrid(np.logspace(7, 10, 6), np.logspace(9, 12, 6)))
    rng = np.random.default_rng(0)
    loss = (true["E"] + true["A"] * N ** -true["alpha"] + true["B"] * D ** -true["beta"]) * np.exp(
        0.005 * rng.standard_normal(N.size)
    )
    df = pd.DataFrame({"N": N, "D": D, "tokens": D, "C": 6 * N * D, "loss": loss})
    fit = fit_table(df, law, bootstrap=20, backtest=False)
    assert fit.law == "mine" and fit.diagnostics.n_starts == 3**5
    for k, v in true.items():
        assert fit.params[k] == pytest.approx(v, rel=0.25), k
        lo, hi = fit.ci[k]
        assert lo < hi
    assert "E" in fit.identifiability and "profile" in fit.identifiability["E"]
    assert fit.predict(N=1e9, tokens=1e11) == pytest.approx(
        float(law_fn({"N": 1e9, "tokens": 1e11}, fit.params)), rel=1e-9
    )
    X = df[["N", "tokens"]].to_numpy()
    again = fit_law(law, X, df["loss"].to_numpy(), profile=False)  # same law, same programs
    assert again.params == pytest.approx(fit.params, rel=1e-6)


def test_custom_law_bad_ranges_are_one_line_errors():
    with pytest.raises(FitInputError, match="positive E must be > 0"):
        custom_law("bad", lambda c, p: p["E"], ("N",), {"E": (0.0, 1.0)}, positive=("E",))
    with pytest.raises(FitInputError, match="unknown parameter"):
        custom_law("bad", lambda c, p: p["E"], ("N",), {"E": (1.0, 2.0)}, positive=("F",))


def test_natural_forms_match_log_forms():
    C, M = jnp.array([1e20, 3e21]), jnp.array([10.0, 100.0])
    theta = jnp.array([np.log(1.7), np.log(500.0), np.log(700.0), 0.15])
    logX = jnp.log(jnp.stack([C, M], axis=1))
    np.testing.assert_allclose(
        np.exp(laws.overtraining_log(theta, logX)),
        laws.overtraining(C, M, 1.7, 500.0, 700.0, 0.15),
        rtol=1e-6,
    )


def test_data_constrained_natural_form_matches_log_form_and_chinchilla_without_repeats():
    N, D, U = jnp.array([1e8, 1e9, 1e9]), jnp.array([1e10, 1e10, 4e10]), jnp.array([1e10, 1e9, 1e9])
    p = {"E": 1.9, "A": 400.0, "B": 600.0, "alpha": 0.34, "beta": 0.3, "R_D": 15.0}
    theta = jnp.array(
        [np.log(1.9), np.log(400.0), np.log(600.0), 0.34, 0.3, np.log(15.0)], dtype=jnp.float32
    )
    logX = jnp.log(jnp.stack([N, D, U], axis=1))
    natural = laws.data_constrained(N, D, U, **p)
    np.testing.assert_allclose(np.exp(laws.data_constrained_log(theta, logX)), natural, rtol=1e-5)
    # one epoch (D = U): no discount, the Chinchilla loss
    chin = laws.chinchilla(N[0], D[0], 1.9, 400.0, 600.0, 0.34, 0.3)
    np.testing.assert_allclose(natural[0], chin, rtol=1e-6)
    # 40 epochs of 1e9 tokens are worth less than 4e10 fresh ones
    assert natural[2] > laws.chinchilla(N[2], D[2], 1.9, 400.0, 600.0, 0.34, 0.3)


def test_custom_law_start_specs_for_positive_parameters():
    """A (low, high) pair is a range (geometric for a positive parameter), anything else a
    list of start values; a positive parameter's range or values must be above 0, and 0 is
    not."""
    from scalinglab.analysis.custom import _start_values

    assert _start_values("L", "A", (1.0, 100.0), 3, True) == pytest.approx([1.0, 10.0, 100.0])
    assert _start_values("L", "c", [0.0, 1.0, 2.0], 3, False) == [0.0, 1.0, 2.0]
    assert _start_values("L", "A", [1.0, 2.0], 3, True) == [1.0, 2.0]  # a list of two: values
    for spec in ((0.0, 10.0), (1.0, 0.0), [0.0, 1.0, 2.0]):
        with pytest.raises(FitInputError, match="positive|> 0"):
            _start_values("L", "A", spec, 3, True)

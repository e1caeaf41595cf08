"""Back-test: fit on cheap runs, predict expensive ones."""

import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import laws
from scalinglab.analysis.backtest import backtest, default_threshold
from scalinglab.errors import FitInputError

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
GRID = laws.CHINCHILLA.start_grid()[::61]


def isoflop_table(noise=0.0):
    rng = np.random.default_rng(0)
    rows = []
    for C in np.logspace(17, 21, 5):
        n_opt = 0.6 * (C / 6) ** 0.45
        for N in n_opt * np.geomspace(0.1, 10, 8):
            D = C / (6 * N)
            loss = float(laws.chinchilla(N, D, **TRUE)) * np.exp(noise * rng.standard_normal())
            rows.append({"N": N, "D": D, "C": C, "loss": loss})
    return pd.DataFrame(rows)


def test_noise_free_extrapolation_is_exact():
    df = isoflop_table()
    bt = backtest(df, starts=GRID)
    assert bt.threshold == pytest.approx(1e21)
    assert bt.metrics["n_test"] == 8 and bt.metrics["n_train"] == 32
    assert bt.metrics["max_abs_rel_error"] < 1e-4
    assert set(bt.to_dict()) >= {"threshold_C", "rmse_log_loss", "params"}


def test_noisy_extrapolation_error_is_about_the_noise():
    bt = backtest(isoflop_table(noise=0.01), threshold=3e20, starts=GRID)
    assert bt.metrics["mean_abs_rel_error"] < 0.03


def test_threshold_above_every_run_is_an_error():
    with pytest.raises(FitInputError, match="no runs at or above"):
        backtest(isoflop_table(), threshold=1e30, starts=GRID)


def test_default_threshold_with_one_budget_uses_top_quarter():
    assert default_threshold(np.array([1.0, 1.01, 1.02, 1.03])) == pytest.approx(1.0225)


def test_split_values_are_compute_tokens_per_parameter_and_size():
    from scalinglab.analysis.backtest import split_values

    df = pd.DataFrame({"N": [10.0, 20.0], "D": [200.0, 100.0], "C": [1.2e4, 1.2e4]})
    np.testing.assert_array_equal(split_values(df, "C"), [1.2e4, 1.2e4])
    np.testing.assert_array_equal(split_values(df, "tokens_per_param"), [20.0, 5.0])
    np.testing.assert_array_equal(split_values(df, "N"), [10.0, 20.0])
    with pytest.raises(FitInputError, match="back-test split 'D'"):
        split_values(df, "D")


def test_over_training_split_holds_out_the_top_quarter_of_tokens_per_parameter():
    """by tokens_per_param without a threshold: the runs at or above the 75th percentile of
    D / N (computed here) are predicted from the others; the fit skips the profile."""
    df = isoflop_table()
    bt = backtest(df, by="tokens_per_param", starts=GRID)
    ratio = (df["D"] / df["N"]).to_numpy()
    assert bt.threshold == pytest.approx(np.quantile(ratio, 0.75), rel=1e-12)
    assert bt.metrics["n_test"] == int((ratio >= bt.threshold).sum()) == 10
    assert bt.metrics["max_abs_rel_error"] < 1e-3  # the law holds exactly here
    assert "profile" not in bt.fit.identifiability["E"]


def test_budgets_come_from_the_nominal_isoflop_C_only_when_every_run_has_a_positive_one():
    from scalinglab.analysis.backtest import budget_labels

    df = pd.DataFrame({"C": [1.0e18, 1.1e18, 3.0e18], "isoflop_C": [1e18, 1e18, 3e18]})
    np.testing.assert_array_equal(budget_labels(df), [1e18, 1e18, 3e18])
    df["isoflop_C"] = [1e18, 0.0, 3e18]  # one run without a nominal budget: group by C
    np.testing.assert_array_equal(budget_labels(df), [1.0e18, 1.0e18, 3.0e18])
    df["C"] = [1.0e18, 2.1e18, 3.0e18]  # over 2x (BUDGET_SPAN) above the group's start
    np.testing.assert_array_equal(budget_labels(df), [1.0e18, 2.1e18, 2.1e18])


def test_leave_one_budget_out_forecasts_the_largest_budget_one_up():
    """Each of the 5 budgets held out in turn (8 runs each); the "one budget up" entry is the
    largest budget's; on exact data every held-out prediction is right."""
    from scalinglab.analysis.backtest import leave_one_budget_out
    from scalinglab.analysis.options import FitOptions

    lobo = leave_one_budget_out(laws.CHINCHILLA, isoflop_table(), GRID, FitOptions())
    budgets = [b["budget_C"] for b in lobo["budgets"]]
    assert budgets == pytest.approx(list(np.logspace(17, 21, 5)))
    assert lobo["one_budget_up"] == lobo["budgets"][-1]
    assert all(b["n_test"] == 8 for b in lobo["budgets"])
    assert max(b["max_abs_rel_error"] for b in lobo["budgets"]) < 1e-3

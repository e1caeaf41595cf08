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

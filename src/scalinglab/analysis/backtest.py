"""Extrapolation back-test: fit on the cheap runs, predict the expensive ones.

A scaling law is only as good as its extrapolation. Fitting on the runs below
a compute threshold and scoring the predictions for the runs above it is the
honest check of the forecast a user is about to make.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.fit import Fit, fit_law
from scalinglab.analysis.laws import get_law
from scalinglab.errors import FitInputError


@dataclass
class Backtest:
    """Held-out predictions (``table``: N, D, C, loss, predicted, rel_error) and summary."""

    threshold: float
    fit: Fit
    table: pd.DataFrame

    @property
    def metrics(self) -> dict[str, float]:
        """Errors on the held-out runs: RMSE of log loss, mean and max relative error."""
        t = self.table
        log_err = np.log(t["predicted"]) - np.log(t["loss"])
        return {
            "n_train": self.fit.n_points,
            "n_test": len(t),
            "rmse_log_loss": float(np.sqrt(np.mean(log_err**2))),
            "mean_abs_rel_error": float(np.mean(np.abs(t["rel_error"]))),
            "max_abs_rel_error": float(np.max(np.abs(t["rel_error"]))),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"threshold_C": self.threshold, **self.metrics, "params": self.fit.params}


def default_threshold(C: np.ndarray) -> float:
    """Hold out the largest compute budget: the threshold sits below its lowest C.

    Budgets are grouped as in approach 2; with a single budget the top quarter
    of runs by compute is held out instead.
    """
    from scalinglab.analysis.optimal import isoflop_groups

    labels = isoflop_groups(C)  # by actual compute: the threshold is a compute value
    if labels.max() >= 1:
        return float(np.min(C[labels == labels.max()]))
    return float(np.quantile(C, 0.75))


def backtest(
    df: pd.DataFrame,
    threshold: float | None = None,
    *,
    law: str = "chinchilla",
    **fit_kwargs: Any,
) -> Backtest:
    """Fit ``law`` to runs with ``C < threshold`` and predict the runs with ``C >= threshold``."""
    C = df["C"].to_numpy(float)
    thr = default_threshold(C) if threshold is None else float(threshold)
    train, test = df[thr > C], df[thr <= C]
    if test.empty:
        raise FitInputError(f"no runs at or above the back-test threshold C={thr:.3g}")
    spec = get_law(law)
    cols = ["N", "D"] if len(spec.inputs) == 2 else ["C"]
    fit = fit_law(spec, train[cols].to_numpy(float), train["loss"].to_numpy(float), **fit_kwargs)
    pred = fit.predict(*(test[c].to_numpy(float) for c in cols))
    table = test[["N", "D", "C", "loss"]].reset_index(drop=True)
    table["predicted"] = pred
    table["rel_error"] = (pred - table["loss"]) / table["loss"]
    return Backtest(thr, fit, table)

"""Extrapolation back-tests: fit on some runs, predict the others.

A scaling law is only as good as its extrapolation. ``backtest`` fits on the runs on
one side of any split (compute, tokens per parameter, model size, or an explicit mask)
and scores the predictions for the rest; ``leave_one_budget_out`` holds out each compute
budget in turn, the largest one being the honest check of a forecast one budget up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.fit import Fit, fit_law
from scalinglab.analysis.laws import Law, get_law
from scalinglab.analysis.multistart import log_predict, refit_weighted
from scalinglab.analysis.options import FitOptions, resolve
from scalinglab.analysis.tables import law_columns
from scalinglab.errors import FitInputError

SPLITS = ("C", "tokens_per_param", "N")
BUDGET_SPAN = 2.0  # without nominal budgets, runs within this factor of C form one budget


@dataclass
class Backtest:
    """Held-out predictions (``table``: N, D, C, loss, predicted, rel_error) and summary."""

    threshold: float
    fit: Fit
    table: pd.DataFrame
    by: str = "C"

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
        """JSON-ready summary."""
        out = {"split": self.by, "threshold": self.threshold, **self.metrics}
        if self.by == "C":
            out["threshold_C"] = self.threshold
        return {**out, "params": self.fit.params}


def budget_labels(df: pd.DataFrame) -> np.ndarray:
    """One label per run naming its compute budget.

    The sweep's nominal ``isoflop_C`` when every run has one; otherwise runs sorted by C
    are grouped so that no group spans more than ``BUDGET_SPAN`` in compute (a new group
    starts at the first run more than that factor above the group's smallest C).
    """
    if "isoflop_C" in df.columns:
        nominal = pd.to_numeric(df["isoflop_C"], errors="coerce").to_numpy(float)
        if np.all(np.isfinite(nominal) & (nominal > 0)):
            return nominal
    C = df["C"].to_numpy(float)
    order = np.argsort(C)
    labels = np.empty(len(C))
    start = C[order[0]] if len(C) else 0.0
    for i in order:
        if C[i] > BUDGET_SPAN * start:
            start = C[i]
        labels[i] = start
    return labels


def default_threshold(C: np.ndarray) -> float:
    """Hold out the largest compute budget: the threshold sits below its lowest C.

    With a single budget the top quarter of runs by compute is held out instead.
    """
    labels = budget_labels(pd.DataFrame({"C": np.asarray(C, float)}))
    if len(np.unique(labels)) > 1:
        return float(np.min(C[labels == labels.max()]))
    return float(np.quantile(C, 0.75))


def split_values(df: pd.DataFrame, by: str) -> np.ndarray:
    """The quantity a back-test splits on: compute C, tokens per parameter D/N, or size N."""
    if by == "C":
        return df["C"].to_numpy(float)
    if by == "tokens_per_param":
        return (df["D"] / df["N"]).to_numpy(float)
    if by == "N":
        return df["N"].to_numpy(float)
    raise FitInputError(f"back-test split {by!r}: use one of {', '.join(SPLITS)}")


def backtest(
    df: pd.DataFrame,
    threshold: float | None = None,
    *,
    law: str | Law = "chinchilla",
    by: str = "C",
    test: np.ndarray | None = None,
    options: FitOptions | None = None,
    **overrides: Any,
) -> Backtest:
    """Fit ``law`` below ``threshold`` of the split ``by`` and predict the runs at or above it.

    ``by`` is ``"C"`` (compute; default threshold: the largest budget), ``"tokens_per_param"``
    (train on less over-trained runs, predict the more over-trained) or ``"N"`` (train on
    small models, predict large ones); the default threshold of the last two holds out the
    top quarter. ``test``, a boolean mask, names the held-out runs directly instead.
    """
    spec = get_law(law) if isinstance(law, str) else law
    values = split_values(df, by)
    if test is not None:
        held = np.asarray(test, dtype=bool)
        thr = float("nan") if threshold is None else float(threshold)
    else:
        if threshold is None:
            thr = default_threshold(values) if by == "C" else float(np.quantile(values, 0.75))
        else:
            thr = float(threshold)
        held = values >= thr
    if not held.any():
        raise FitInputError(f"no runs at or above the back-test threshold {by}={thr:.3g}")
    if held.all():
        raise FitInputError(f"every run is at or above the back-test threshold {by}={thr:.3g}")
    opts = resolve(options, **{"profile": False, **overrides})
    train, test_df = df[~held], df[held]
    fit = fit_law(spec, law_columns(train, spec.inputs), train["loss"].to_numpy(float), opts)
    pred = fit.predict(*law_columns(test_df, spec.inputs).T)
    table = test_df[["N", "D", "C", "loss"]].reset_index(drop=True)
    table["predicted"] = pred
    table["rel_error"] = (pred - table["loss"]) / table["loss"]
    return Backtest(thr, fit, table, by)


def leave_one_budget_out(
    law: Law,
    runs: pd.DataFrame,
    starts: np.ndarray,
    options: FitOptions,
) -> dict[str, Any] | None:
    """Hold out each compute budget in turn, refit on the rest, predict it.

    All refits run as one vmapped batch from ``starts`` (start-grid rows, never optima of a
    fit that saw the held-out runs), the held-out rows weighted zero. None with fewer than
    three budgets. The entry of the largest budget is the forecast one budget up.
    """
    labels = budget_labels(runs)
    budgets = np.unique(labels)
    if len(budgets) < 3:
        return None
    X = law_columns(runs, law.inputs)
    logX, logy = np.log(X), np.log(runs["loss"].to_numpy(float))
    weights = np.stack([(labels != b).astype(float) for b in budgets])
    raws, ok = refit_weighted(law, logX, logy, starts, weights, **options.solver())
    per_budget = []
    for b, raw, good in zip(budgets, raws, ok, strict=True):
        m = labels == b
        pred = np.exp(log_predict(law, raw, logX)[m])
        rel = (pred - np.exp(logy[m])) / np.exp(logy[m])
        per_budget.append(
            {
                "budget_C": float(b),
                "n_test": int(m.sum()),
                "mean_abs_rel_error": float(np.mean(np.abs(rel))),
                "max_abs_rel_error": float(np.max(np.abs(rel))),
                "mean_rel_error": float(np.mean(rel)),
                "converged": bool(good),
            }
        )
    return {
        "method": "leave one budget out",
        "budgets": per_budget,
        "one_budget_up": per_budget[-1],
    }

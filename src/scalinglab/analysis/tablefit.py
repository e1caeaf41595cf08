"""Fit a law to a table of runs, with every check that needs the runs themselves.

``fit_table`` is ``fit_law`` plus: the N that C counts (``Fit.counting``: which column,
and the FLOPs per parameter-token ``k = C/(N D)`` the allocation then uses), the misfit
report (RMSE against evaluation noise, residuals by tokens per parameter and size, the
runs far off the law by name), a known floor (a synthetic language's entropy rate: E - H,
and a warning when E falls below it) and the leave-one-budget-out back-test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.backtest import leave_one_budget_out
from scalinglab.analysis.diagnostics import floor_check
from scalinglab.analysis.fit import fit_law
from scalinglab.analysis.laws import Law, get_law
from scalinglab.analysis.misfit import eval_noise, misfit_report
from scalinglab.analysis.multistart import log_predict
from scalinglab.analysis.options import FitOptions, resolve
from scalinglab.analysis.result import KAPLAN_K, Fit
from scalinglab.analysis.tables import counting_of, flops_per_param_token, law_columns

K_SPREAD = 0.05  # C/(N D) varying more than this (relative) across runs is reported


def fit_table(
    runs: pd.DataFrame,
    law: str | Law = "chinchilla",
    options: FitOptions | None = None,
    *,
    curves: pd.DataFrame | None = None,
    n_column: str | None = None,
    **overrides: Any,
) -> Fit:
    """Fit ``law`` to ``runs`` (columns N, D, loss, C as ``load_source`` gives them).

    ``curves`` (learning curves) estimate the evaluation noise when the runs carry no
    ``final_eval_loss_se``. ``n_column`` names the column N came from (default: what
    ``load_source`` recorded, else ``N``). Keyword ``overrides`` are ``FitOptions`` fields.
    """
    opts = resolve(options, **overrides)
    spec = get_law(law) if isinstance(law, str) else law
    X = law_columns(runs, spec.inputs)
    y = runs["loss"].to_numpy(float)
    fit = fit_law(spec, X, y, opts)
    warnings = fit.diagnostics.warnings

    fit.counting = counting_info(runs, n_column)
    warnings += counting_warnings(fit.counting)

    logpred = log_predict(spec, fit.raw, np.log(X))
    resid = logpred - np.log(y)
    noise, source = eval_noise(runs, curves)
    fit.misfit, w = misfit_report(runs, resid, noise, source, fit.params, opts.outlier_z)
    warnings += w

    floor = known_floor(runs)
    if floor is not None and "E" in fit.params:
        H, fit.floor = floor
        info, w = floor_check(fit.params["E"], fit.ci.get("E"), fit.floor)
        info["entropy_rate"] = H
        fit.identifiability.setdefault("E", {})["floor"] = info
        warnings += w

    if opts.backtest:
        starts = _refit_starts(spec, opts)
        fit.backtest = leave_one_budget_out(spec, runs, starts, opts)
        up = (fit.backtest or {}).get("one_budget_up")
        if up and up["mean_abs_rel_error"] > max(0.02, 3 * (noise or 0.0)):
            warnings.append(
                f"back-test: fitted without the largest budget, the law misses it by"
                f" {up['mean_abs_rel_error']:.1%} on average (max {up['max_abs_rel_error']:.1%})"
            )
    return fit


def counting_info(runs: pd.DataFrame, n_column: str | None = None) -> dict[str, Any]:
    """Which N the fit uses and the FLOPs per parameter-token k = C/(N D) of the runs."""
    info: dict[str, Any] = {
        "N": n_column or runs.attrs.get("n_column", "N"),
        "flop_counting": runs.attrs.get("counting") or counting_of(runs),
        "C": runs.attrs.get("compute_from", "column" if "C" in runs.columns else "6ND"),
    }
    if "C" in runs.columns:
        info.update(flops_per_param_token(runs))
    else:
        info.update(k=KAPLAN_K, k_min=KAPLAN_K, k_max=KAPLAN_K)
    return info


def counting_warnings(info: dict[str, Any]) -> list[str]:
    """Plain-English warnings when C does not count the N the fit uses as C = k N D."""
    k, lo, hi = info["k"], info["k_min"], info["k_max"]
    out = []
    if hi > lo * (1 + K_SPREAD):
        out.append(
            f"C/(N D) ranges {lo:.3g}-{hi:.3g} across runs with N = {info['N']}: C counts"
            f" something N does not (flop counting {info['flop_counting']}); the allocation"
            f" uses the median k = {k:.3g}"
        )
    return out


def known_floor(runs: pd.DataFrame) -> tuple[float, float] | None:
    """(entropy rate H, loss floor) of the data when every run knows it, else None.

    The floor is the synthetic language's ``loss_floor`` (the best loss a model with the
    runs' context can reach) when recorded, else the entropy rate itself.
    """
    if "entropy_rate" not in runs.columns:
        return None
    H = pd.to_numeric(runs["entropy_rate"], errors="coerce").to_numpy(float)
    if not np.all(np.isfinite(H)):
        return None
    floor = H
    if "loss_floor" in runs.columns:
        lf = pd.to_numeric(runs["loss_floor"], errors="coerce").to_numpy(float)
        if np.all(np.isfinite(lf)):
            floor = np.maximum(lf, H)
    return float(np.median(H)), float(np.median(floor))


BACKTEST_STARTS = 64  # start-grid rows each back-test refit runs from


def _refit_starts(spec: Law, opts: FitOptions) -> np.ndarray:
    """Starts for the back-test refits: the start grid thinned evenly to ``BACKTEST_STARTS``.

    Never the full fit's optima: those saw the held-out budget, and where the objective is
    flat (E not identified) a refit started there stays near them, a forecast that peeked.
    """
    grid = opts.grid(spec.start_grid())
    if len(grid) <= BACKTEST_STARTS:
        return grid
    return grid[np.unique(np.linspace(0, len(grid) - 1, BACKTEST_STARTS).round().astype(int))]

"""Profile-likelihood interval for the irreducible loss E.

Method: model the log-loss residuals as Gaussian with an unknown variance (the objective
scale is then explicit: least squares, the variance profiled out). Fix E on a grid from
zero to the smallest observed loss, refit every other parameter by least squares (the same
multi-start L-BFGS, started from the best optima of the full fit), and compare each
profile with the unconstrained least-squares optimum by the likelihood ratio
``LR(E) = n log(SSR(E) / SSR_min)``. The interval is every E with ``LR(E)`` at most the
chi-square(1) quantile of the confidence level (3.84 at 95%), interpolated linearly
between grid points. Unlike the bootstrap, it does not need the optimum to be stable
under resampling, which is exactly when E is in doubt.

E is held fixed inside the same vectorised solver by cutting its gradient (the
``frozen`` mask of ``multistart``): L-BFGS never moves a coordinate whose gradient is
always zero, so all grid points run as one batch of starts, in the same compiled program
as the fit itself.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

from scalinglab.analysis.laws import Law
from scalinglab.analysis.multistart import multistart

LSQ_DELTA = 1e3  # a Huber delta no log residual reaches: the objective is 0.5 * SSR
N_GRID = 40


def chi2_1(confidence: float) -> float:
    """Quantile of the chi-square distribution with one degree of freedom."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    return z * z


def profile_E(
    law: Law,
    logX: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray,
    confidence: float = 0.95,
    *,
    max_iter: int = 500,
) -> dict[str, Any] | None:
    """E's profile-likelihood interval; None when the law has no log-fitted ``E``.

    ``starts`` are raw optima of the full fit to refit from. Returns ``low``, ``high``
    (``low`` is 0.0 when the interval reaches zero, ``high`` the smallest loss when it
    reaches that), the least-squares ``E_hat``, the ``grid`` and ``lr`` values and
    the ``threshold``.
    """
    if "E" not in law.param_names:
        return None
    i = law.param_names.index("E")
    if not law.logged[i]:
        return None
    n, top = len(logy), float(np.exp(np.min(logy)))
    opts = {"delta": LSQ_DELTA, "max_iter": max_iter, "gtol": 1e-10, "ftol": 1e-14}
    free = multistart(law, logX, logy, starts, **opts)
    vals = np.where(np.isfinite(free["value"]), free["value"], np.inf)
    ssr_min = 2.0 * float(np.min(vals))
    E_hat = float(np.exp(free["x"][int(np.argmin(vals)), i]))
    grid = np.unique(
        np.concatenate([[1e-9 * top], np.linspace(0.02, 0.995, N_GRID) * top, [min(E_hat, top)]])
    )
    grid = grid[grid > 0]  # an E_hat that underflowed to 0 has no log
    k = len(starts)
    rows = np.repeat(starts, len(grid), axis=0).reshape(k, len(grid), -1).transpose(1, 0, 2)
    rows = rows.copy()
    rows[:, :, i] = np.log(grid)[:, None]
    frozen = np.arange(starts.shape[1]) == i
    res = multistart(law, logX, logy, rows.reshape(-1, starts.shape[1]), frozen=frozen, **opts)
    pv = np.where(np.isfinite(res["value"]), res["value"], np.inf).reshape(len(grid), k)
    ssr = np.minimum(2.0 * pv.min(axis=1), np.inf)
    ssr_min = min(ssr_min, float(np.min(ssr)))
    lr = n * np.log(np.maximum(ssr, 1e-300) / max(ssr_min, 1e-300))
    thr = chi2_1(confidence)
    inside = lr <= thr
    out: dict[str, Any] = {
        "method": "profile likelihood, Gaussian log residuals, chi-square(1)",
        "E_hat": E_hat,
        "threshold": thr,
        "grid": grid.tolist(),
        "lr": [float(v) if np.isfinite(v) else None for v in lr],
    }
    if not inside.any():  # the grid missed the optimum's neighbourhood entirely
        out.update(low=None, high=None)
        return out
    j0, j1 = int(np.flatnonzero(inside)[0]), int(np.flatnonzero(inside)[-1])
    out["low"] = 0.0 if j0 == 0 else _cross(grid, lr, j0 - 1, j0, thr)
    out["high"] = top if j1 == len(grid) - 1 else _cross(grid, lr, j1, j1 + 1, thr)
    return out


def _cross(grid: np.ndarray, lr: np.ndarray, a: int, b: int, thr: float) -> float:
    """Where LR crosses ``thr`` between grid points a and b (linear interpolation)."""
    if not np.isfinite(lr[a]) or not np.isfinite(lr[b]) or lr[a] == lr[b]:
        return float(grid[b] if lr[b] <= thr else grid[a])
    t = (thr - lr[a]) / (lr[b] - lr[a])
    return float(grid[a] + np.clip(t, 0.0, 1.0) * (grid[b] - grid[a]))

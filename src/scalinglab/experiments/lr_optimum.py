"""The optimal learning rate of a loss-vs-learning-rate curve, between grid points: a parabola
in log2(lr) through the best grid point and its neighbours (a learning-rate sweep's grid is
too coarse, factors of 2 or 3, to read the optimum off its argmin alone), and its drift across
widths with an interval from the loss points' own noise."""

from __future__ import annotations

from typing import Any

import numpy as np


def parabola_optimum(log_lr: np.ndarray, loss: np.ndarray) -> tuple[float, str]:
    """(log2 lr*, how) from one curve: the vertex of the parabola through the best finite point
    and its two neighbours on the grid (`how` = "parabola"); at an edge of the grid, or where
    the three points are not convex, the best grid point itself ("edge" / "grid"). The vertex
    is clipped to the three points' span: a parabola only interpolates."""
    x = np.asarray(log_lr, dtype=float)
    y = np.asarray(loss, dtype=float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    ok = np.isfinite(y)
    if not ok.any():
        raise ValueError("no finite loss on the curve")
    i = int(np.nanargmin(np.where(ok, y, np.nan)))
    if i == 0 or i == len(x) - 1 or not (ok[i - 1] and ok[i + 1]):
        return float(x[i]), "edge"
    xs, ys = x[i - 1 : i + 2], y[i - 1 : i + 2]
    a, b, _ = np.polyfit(xs, ys, 2)
    if a <= 0:
        return float(x[i]), "grid"
    return float(np.clip(-b / (2 * a), xs[0], xs[-1])), "parabola"


def drift(log_width: np.ndarray, log_lr_opt: np.ndarray) -> float:
    """Least-squares slope of log2 lr* against log2 width: the change of log2 lr* per doubling
    of width (0: the optimum transfers; -1: it halves with every doubling)."""
    return float(np.polyfit(np.asarray(log_width, float), np.asarray(log_lr_opt, float), 1)[0])


def bootstrap_optima(
    log_lr: np.ndarray,
    loss: np.ndarray,
    loss_se: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
) -> np.ndarray:
    """`n_boot` draws of log2 lr* from one curve whose losses are redrawn as loss + se x N(0, 1)
    (the final eval loss's standard error over its validation batches): the optimum's
    uncertainty from the points' noise alone (one seed; seed-to-seed spread is not in it)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(loss, float)
    se = np.nan_to_num(np.asarray(loss_se, float), nan=0.0)
    draws = y[None, :] + se[None, :] * rng.standard_normal((n_boot, len(y)))
    return np.array([parabola_optimum(log_lr, d)[0] for d in draws])


def summarise(
    log_width: np.ndarray, boot: np.ndarray, point: np.ndarray, level: float = 0.95
) -> dict[str, Any]:
    """Drift (slope per doubling) and max/min lr* ratio across widths, each with its
    percentile interval; `boot` is (n_boot, n_widths) of log2 lr*, `point` the fitted ones."""
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    if len(np.unique(log_width)) < 2:
        raise ValueError("a drift across widths needs at least two widths")
    slopes = np.array([drift(log_width, b) for b in boot])
    ratios = 2.0 ** (boot.max(axis=1) - boot.min(axis=1))
    point = np.asarray(point, float)
    return {
        "slope_per_doubling": drift(log_width, point),
        "slope_ci": [float(v) for v in np.percentile(slopes, q)],
        "max_min_ratio": float(2.0 ** (point.max() - point.min())),
        "max_min_ratio_ci": [float(v) for v in np.percentile(ratios, q)],
    }

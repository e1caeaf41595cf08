"""A trend over model size with intervals from the seeds: the least-squares slope of a metric on
log10(N), bootstrapped by resampling each size's seeds with replacement.

With a few seeds per size the spread between seeds is the noise a size-to-size difference
must beat; resampling seeds within each size (the sizes fixed) gives intervals for the
per-size means and for the slope. An interval that holds 0 is "no measurable trend".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _slope(log_x: np.ndarray, y: np.ndarray) -> float:
    return float(np.polyfit(log_x, y, 1)[0])


def seed_bootstrap_trend(
    x: Sequence[float],
    y: Sequence[float],
    bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Slope of `y` per decade of `x` (one row per trial: x its size, y its metric), fitted to
    the per-size means, with a percentile interval over seed resamples; and each size's mean
    with its interval. `resolved` is True when the slope's interval excludes 0."""
    x_arr, y_arr = np.asarray(x, float), np.asarray(y, float)
    sizes = np.unique(x_arr)
    groups = [y_arr[x_arr == s] for s in sizes]
    log_x = np.log10(sizes)
    means = np.array([g.mean() for g in groups])
    rng = np.random.default_rng(seed)
    draws = np.stack(
        [np.array([rng.choice(g, len(g)).mean() for g in groups]) for _ in range(bootstrap)]
    )
    tail = 50.0 * (1.0 - confidence)
    lo_hi = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    per_size = [
        {"x": float(s), "mean": float(m), "ci": [float(lo), float(hi)], "n_seeds": len(g)}
        for s, m, lo, hi, g in zip(sizes, means, lo_hi[0], lo_hi[1], groups, strict=True)
    ]
    out: dict[str, Any] = {"per_size": per_size, "confidence": confidence}
    if len(sizes) < 2:
        return {**out, "slope_per_decade": None, "ci": None, "resolved": None}
    slopes = np.array([_slope(log_x, d) for d in draws])
    lo, hi = np.percentile(slopes, [tail, 100.0 - tail])
    return {
        **out,
        "slope_per_decade": _slope(log_x, means),
        "ci": [float(lo), float(hi)],
        "resolved": bool(lo > 0 or hi < 0),
    }


def describe_trend(trend: dict[str, Any], digits: int = 3) -> str:
    """A trend in words for an answer line: `+0.120 [0.050, 0.190] per decade of N`."""
    if trend["slope_per_decade"] is None:
        return "no trend (one size)"
    lo, hi = trend["ci"]
    s = trend["slope_per_decade"]
    return f"{s:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] per decade of N"

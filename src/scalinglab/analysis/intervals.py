"""Percentile intervals: the one place that turns a confidence level into bounds."""

from __future__ import annotations

import numpy as np


def tails(confidence: float) -> tuple[float, float]:
    """The lower and upper percentiles (0-100) of a central `confidence` interval."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1) (got {confidence})")
    tail = 50.0 * (1.0 - confidence)
    return tail, 100.0 - tail


def resample_rows(n: int, count: int, seed: int) -> np.ndarray:
    """``count`` bootstrap resamples of ``n`` runs, as row indices (count, n).

    The fit and approach 1 both draw theirs here from the same seed, so resample b is the
    same set of runs for both and a difference between them is computed resample by
    resample (``analysis.agreement``).
    """
    return np.random.default_rng(seed).integers(0, n, size=(count, n))


def resample_key(n: int, count: int, seed: int) -> str:
    """Names a set of resamples: equal keys mean row b of both is the same resample."""
    return f"runs n={n} count={count} seed={seed}"


def interval(
    samples: np.ndarray, confidence: float, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Central percentile interval of `samples` along `axis`; NaN samples are ignored."""
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=float), tails(confidence), axis=axis)
    return lo, hi

"""Percentile intervals: the one place that turns a confidence level into bounds."""

from __future__ import annotations

import numpy as np


def tails(confidence: float) -> tuple[float, float]:
    """The lower and upper percentiles (0-100) of a central `confidence` interval."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: must be in (0, 1) (got {confidence})")
    tail = 50.0 * (1.0 - confidence)
    return tail, 100.0 - tail


def interval(
    samples: np.ndarray, confidence: float, axis: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Central percentile interval of `samples` along `axis`; NaN samples are ignored."""
    lo, hi = np.nanpercentile(np.asarray(samples, dtype=float), tails(confidence), axis=axis)
    return lo, hi

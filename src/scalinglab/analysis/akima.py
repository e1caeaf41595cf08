"""Akima spline interpolation in numpy, vectorised over columns (approach 2's profiles)."""

from __future__ import annotations

import numpy as np


def akima(x: np.ndarray, Y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Akima's (1970) spline through (x, Y[:, j]) for every column j, evaluated at ``grid``.

    The slopes are Akima's weighted means of neighbouring secant slopes (two extra
    secants extrapolated at each end; where the weights vanish, the mean of the two
    middle ones), then a cubic Hermite segment per interval: the same curve as scipy's
    ``Akima1DInterpolator`` (tests compare them), in numpy so the fit command does not
    import scipy.interpolate. ``grid`` must lie within [x[0], x[-1]]; returns (len(grid), k).
    """
    x = np.asarray(x, float)
    Y = np.asarray(Y, float).reshape(len(x), -1)
    dx = np.diff(x)[:, None]
    if len(x) == 2:
        t = np.repeat((Y[1:] - Y[:-1]) / dx, 2, axis=0)
    else:
        m = np.empty((len(x) + 3, Y.shape[1]))
        m[2:-2] = np.diff(Y, axis=0) / dx
        m[1] = 2.0 * m[2] - m[3]
        m[0] = 2.0 * m[1] - m[2]
        m[-2] = 2.0 * m[-3] - m[-4]
        m[-1] = 2.0 * m[-2] - m[-3]
        dm = np.abs(np.diff(m, axis=0))
        f1, f2 = dm[2:], dm[:-2]
        f12 = f1 + f2
        t = 0.5 * (m[3:] + m[:-3])
        ok = f12 > 1e-9 * np.max(f12, axis=0, initial=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            akima_t = m[1:-2] + f2 / f12 * (m[2:-1] - m[1:-2])
        t = np.where(ok, akima_t, t)
    i = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(x) - 2)
    h = (x[i + 1] - x[i])[:, None]
    s = ((grid - x[i]) / (x[i + 1] - x[i]))[:, None]
    s2, s3 = s * s, s * s * s
    return (
        (2 * s3 - 3 * s2 + 1) * Y[i]
        + (s3 - 2 * s2 + s) * h * t[i]
        + (-2 * s3 + 3 * s2) * Y[i + 1]
        + (s3 - s2) * h * t[i + 1]
    )

"""The result type every compute-optimal approach returns, and the log-log fits they share.

An approach ends in two power laws, ``N_opt = k_N C^a`` and ``D_opt = k_D C^b``;
its bootstrap draws of (log k_N, a, log k_D, b) are kept so that intervals, and
the comparison between approaches (``analysis.agreement``), come from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.intervals import interval

SAMPLE_COLUMNS = ("log_kN", "a", "log_kD", "b")  # the columns of ``Approach.samples``
UNRELIABLE_SHARE = 0.10  # past this share of unusable resamples a result is marked unreliable


@dataclass
class Approach:
    """One approach's allocation laws ``N_opt = k_N C^a`` and ``D_opt = k_D C^b``.

    ``samples`` holds bootstrap draws, one row each, with columns
    ``SAMPLE_COLUMNS`` (read one with ``column``); ``points`` the (C, N_opt,
    D_opt) the power laws were fitted through (empty for approach 3); ``flags``
    what was left out or looks wrong, in words; ``unusable_share`` the share of
    resamples that gave no estimate (past ``UNRELIABLE_SHARE`` the result is
    unreliable). ``resampled`` names the resamples when row b of ``samples`` comes
    from a known resample of the runs (NaN rows then stay, to keep rows aligned).
    """

    name: str
    a: float
    b: float
    log_kN: float
    log_kD: float
    samples: np.ndarray | None = None
    points: pd.DataFrame = field(default_factory=pd.DataFrame)
    flags: list[str] = field(default_factory=list)
    confidence: float = 0.95
    extra: dict[str, Any] = field(default_factory=dict)
    unusable_share: float = 0.0
    resampled: str | None = None  # resample_key of the draws: equal keys pair row by row

    @classmethod
    def from_theta(
        cls, name: str, theta: np.ndarray, samples: np.ndarray | None = None, **fields: Any
    ) -> Approach:
        """An approach from its fitted (log k_N, a, log k_D, b), ``SAMPLE_COLUMNS`` order."""
        return cls(name, theta[1], theta[3], theta[0], theta[2], samples, **fields)

    @property
    def ok(self) -> bool:
        """Whether both exponents were estimated."""
        return bool(np.isfinite(self.a) and np.isfinite(self.b))

    @property
    def reliable(self) -> bool:
        """Estimated, and no more than ``UNRELIABLE_SHARE`` of its resamples were unusable."""
        return self.ok and self.unusable_share <= UNRELIABLE_SHARE

    def column(self, name: str) -> np.ndarray | None:
        """Bootstrap draws of one of ``SAMPLE_COLUMNS`` (None without samples)."""
        if self.samples is None or len(self.samples) < 2:
            return None
        return self.samples[:, SAMPLE_COLUMNS.index(name)]

    def ci(self, name: str) -> tuple[float, float] | None:
        """Percentile interval of ``a`` or ``b`` (None without samples)."""
        col = self.column(name)
        if col is None or not np.isfinite(col).any():
            return None
        lo, hi = interval(col, self.confidence)
        return float(lo), float(hi)

    def predict(self, compute: float) -> dict[str, Any]:
        """N_opt and D_opt at FLOPs ``compute``, with intervals when there are samples."""
        lc = np.log(compute)
        out: dict[str, Any] = {
            "C": float(compute),
            "N_opt": float(np.exp(self.log_kN + self.a * lc)),
            "D_opt": float(np.exp(self.log_kD + self.b * lc)),
        }
        if self.samples is not None and len(self.samples) >= 2:
            s = self.samples[np.isfinite(self.samples).all(axis=1)]
            for name, k, e in (("N_opt", 0, 1), ("D_opt", 2, 3)):
                lo, hi = interval(np.exp(s[:, k] + s[:, e] * lc), self.confidence)
                out[f"{name}_ci"] = (float(lo), float(hi))
        return out

    def to_dict(self, targets: tuple[float, ...] = ()) -> dict[str, Any]:
        """JSON-ready summary, with predictions at ``targets`` FLOPs."""
        return {
            "name": self.name,
            "a": finite_or_none(self.a),
            "a_ci": self.ci("a"),
            "b": finite_or_none(self.b),
            "b_ci": self.ci("b"),
            "k_N": finite_or_none(np.exp(self.log_kN)),
            "k_D": finite_or_none(np.exp(self.log_kD)),
            "n_points": len(self.points),
            "n_resamples": 0
            if self.samples is None
            else int(np.isfinite(self.samples).all(axis=1).sum()),
            "unusable_share": float(self.unusable_share),
            "reliable": self.reliable,
            "flags": self.flags,
            "predictions": [self.predict(c) for c in targets] if self.ok else [],
            **self.extra,
        }


def finite_or_none(x: float) -> float | None:
    """``x`` as a float, or None (JSON null) when it is not finite."""
    return float(x) if np.isfinite(x) else None


def loglog_fit(C: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> tuple[float, float]:
    """(Weighted) least squares of log y = k + e log C; returns (k, e)."""
    lc, ly = np.log(C), np.log(y)
    sw = np.ones_like(lc) if w is None else np.sqrt(w)
    X = np.column_stack([np.ones_like(lc), lc]) * sw[:, None]
    (k, e), *_ = np.linalg.lstsq(X, ly * sw, rcond=None)
    return float(k), float(e)


def allocation_fit(
    C: np.ndarray, N: np.ndarray, D: np.ndarray, wN: np.ndarray | None = None, wD=None
) -> np.ndarray:
    """(log k_N, a, log k_D, b) through the points; NaN with fewer than two budgets."""
    if len(np.unique(C)) < 2:
        return np.full(4, np.nan)
    return np.array([*loglog_fit(C, N, wN), *loglog_fit(C, D, wD)])


def nan_approach(name: str, flag: str, confidence: float) -> Approach:
    """An approach that produced nothing, saying why."""
    return Approach(name, np.nan, np.nan, np.nan, np.nan, flags=[flag], confidence=confidence)

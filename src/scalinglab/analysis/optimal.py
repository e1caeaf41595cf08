"""Compute-optimal allocation: the three approaches of Hoffmann et al. (2022).

Each approach ends in two power laws, ``N_opt = k_N C^a`` and
``D_opt = k_D C^b``, with percentile intervals from resampling runs:

1. **Envelope.** The lower envelope of loss over FLOPs, taken over every
   point of every run (a learning curve or a final result); the run on the
   envelope at each compute gives N_opt(C) and D_opt(C).
2. **IsoFLOP.** For each compute budget, a parabola of loss in log N; its
   minimum gives N_opt. A parabola that is not convex, or whose minimum lies
   outside the sampled sizes, is flagged and left out, never extrapolated.
3. **Parametric.** The closed form of the fitted Chinchilla law,
   ``N_opt = G (C/6)^a, a = beta/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.fit import Fit
from scalinglab.analysis.laws import chinchilla_allocation

ISOFLOP_TOL = 0.05  # budgets closer than this in log10 C are one IsoFLOP group (~12%)


@dataclass
class Approach:
    """One approach's allocation laws ``N_opt = k_N C^a`` and ``D_opt = k_D C^b``.

    ``samples`` holds bootstrap draws of (log k_N, a, log k_D, b), one row each,
    from which every interval is taken; ``points`` the (C, N_opt, D_opt) the
    power laws were fitted through (empty for approach 3); ``flags`` what was
    left out or looks wrong.
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

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.a) and np.isfinite(self.b))

    def ci(self, name: str) -> tuple[float, float] | None:
        """Percentile interval of ``a`` or ``b`` (None without samples)."""
        if self.samples is None or len(self.samples) < 2:
            return None
        col = self.samples[:, {"a": 1, "b": 3}[name]]
        lo, hi = np.nanpercentile(col, _pct(self.confidence))
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
            s = self.samples
            for name, k, e in (("N_opt", 0, 1), ("D_opt", 2, 3)):
                lo, hi = np.nanpercentile(np.exp(s[:, k] + s[:, e] * lc), _pct(self.confidence))
                out[f"{name}_ci"] = (float(lo), float(hi))
        return out

    def to_dict(self, targets: tuple[float, ...] = ()) -> dict[str, Any]:
        """JSON-ready summary, with predictions at ``targets`` FLOPs."""
        return {
            "name": self.name,
            "a": _f(self.a),
            "a_ci": self.ci("a"),
            "b": _f(self.b),
            "b_ci": self.ci("b"),
            "k_N": _f(np.exp(self.log_kN)),
            "k_D": _f(np.exp(self.log_kD)),
            "n_points": len(self.points),
            "flags": self.flags,
            "predictions": [self.predict(c) for c in targets] if self.ok else [],
            **self.extra,
        }


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _pct(confidence: float) -> list[float]:
    tail = 50.0 * (1.0 - confidence)
    return [tail, 100.0 - tail]


def _loglog_fit(C: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least squares of log y = k + e log C; returns (k, e)."""
    e, k = np.polyfit(np.log(C), np.log(y), 1)
    return float(k), float(e)


def _allocation_fit(C: np.ndarray, N: np.ndarray, D: np.ndarray) -> np.ndarray:
    if len(np.unique(C)) < 2:
        return np.full(4, np.nan)
    return np.array([*_loglog_fit(C, N), *_loglog_fit(C, D)])


def _nan_approach(name: str, flag: str, confidence: float) -> Approach:
    return Approach(name, np.nan, np.nan, np.nan, np.nan, flags=[flag], confidence=confidence)


# Approach 1: lower envelope ------------------------------------------------------


def envelope(df: pd.DataFrame, n_bins: int = 30) -> pd.DataFrame:
    """Points on the lower envelope of loss over compute.

    Compute is cut into ``n_bins`` log-spaced bins; the lowest-loss point of
    each bin is kept if it beats every point at smaller compute.
    """
    C, loss = df["C"].to_numpy(float), df["loss"].to_numpy(float)
    if C.max() <= C.min():
        return df.iloc[[int(np.argmin(loss))]][["C", "N", "D", "loss"]].reset_index(drop=True)
    edges = np.logspace(np.log10(C.min()), np.log10(C.max()), n_bins + 1)
    which = np.clip(np.searchsorted(edges, C, side="right") - 1, 0, n_bins - 1)
    order = np.lexsort((loss, which))  # by bin, then loss
    first = order[np.r_[True, which[order][1:] != which[order][:-1]]]
    first = first[np.argsort(C[first])]
    best = np.minimum.accumulate(loss[first])
    keep = first[loss[first] <= best]
    return df.iloc[keep][["C", "N", "D", "loss"]].reset_index(drop=True)


def approach1(
    df: pd.DataFrame,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    group: str | None = None,
    n_bins: int = 30,
) -> Approach:
    """Approach 1 from every point of every run (curves or final results).

    ``group`` names a column identifying runs (e.g. ``trial_id``) so the
    bootstrap resamples whole learning curves; without it rows are resampled.
    """
    name = "1: envelope"
    pts = envelope(df, n_bins)
    if pts["N"].nunique() < 2:
        return _nan_approach(name, "envelope holds fewer than two model sizes", confidence)
    theta = _allocation_fit(pts["C"].to_numpy(), pts["N"].to_numpy(), pts["D"].to_numpy())
    flags = []
    if len(pts) < 3:
        flags.append(f"envelope has only {len(pts)} points")
    rng = np.random.default_rng(seed)
    keys = df[group].to_numpy() if group else np.arange(len(df))
    uniq = np.unique(keys)
    rows = [np.flatnonzero(keys == u) for u in uniq]
    draws = []
    for _ in range(bootstrap):
        pick = np.concatenate([rows[i] for i in rng.integers(0, len(uniq), len(uniq))])
        p = envelope(df.iloc[pick], n_bins)
        draws.append(_allocation_fit(p["C"].to_numpy(), p["N"].to_numpy(), p["D"].to_numpy()))
    samples = np.array(draws) if draws else None
    pts = pts.rename(columns={"N": "N_opt", "D": "D_opt"})
    return Approach(name, theta[1], theta[3], theta[0], theta[2], samples, pts, flags, confidence)


# Approach 2: IsoFLOP parabolas --------------------------------------------------


def isoflop_groups(C: np.ndarray, tol: float = ISOFLOP_TOL) -> np.ndarray:
    """Label runs by IsoFLOP budget: sorted log10 C split where gaps exceed ``tol``."""
    lc = np.log10(C)
    order = np.argsort(lc)
    labels = np.empty(len(C), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(lc[order]) > tol)])
    return labels


def budgets(df: pd.DataFrame) -> np.ndarray:
    """Each run's IsoFLOP budget: the sweep's nominal ``isoflop_C`` when present, else C."""
    if "isoflop_C" in df:
        nominal = pd.to_numeric(df["isoflop_C"], errors="coerce").to_numpy(float)
        if np.all(np.isfinite(nominal) & (nominal > 0)):
            return nominal
    return df["C"].to_numpy(float)


def fit_parabola(logN: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    """Parabola ``loss = p0 + p1 x + p2 x^2`` in x = log N and its minimum x*.

    The third value is None when the minimum is usable, otherwise why not.
    """
    p2, p1, p0 = np.polyfit(logN, loss, 2)
    if not p2 > 0:
        return np.array([p0, p1, p2]), np.nan, "parabola is not convex"
    x_min = -p1 / (2 * p2)
    if not logN.min() < x_min < logN.max():
        return np.array([p0, p1, p2]), x_min, "minimum outside the sampled model sizes"
    return np.array([p0, p1, p2]), x_min, None


def isoflop_minima(df: pd.DataFrame, tol: float = ISOFLOP_TOL) -> pd.DataFrame:
    """One row per IsoFLOP budget: C, parabola, N_opt, D_opt, loss at the minimum, flag."""
    labels = isoflop_groups(budgets(df), tol)
    out = []
    for g in np.unique(labels):
        sub = df[labels == g]
        C = float(np.exp(np.mean(np.log(budgets(sub)))))
        if sub["N"].nunique() < 3:
            continue
        x, lx_d = np.log(sub["N"].to_numpy(float)), np.log(sub["D"].to_numpy(float))
        coef, x_min, why = fit_parabola(x, sub["loss"].to_numpy(float))
        # D at the minimum from the budget's own N-D relation (exact for C = k N D).
        d_slope, d_icpt = np.polyfit(x, lx_d, 1)
        out.append(
            {
                "C": C,
                "n_runs": len(sub),
                "p0": coef[0],
                "p1": coef[1],
                "p2": coef[2],
                "N_opt": float(np.exp(x_min)) if np.isfinite(x_min) else np.nan,
                "D_opt": float(np.exp(d_icpt + d_slope * x_min)) if np.isfinite(x_min) else np.nan,
                "loss_opt": float(np.polyval(coef[::-1], x_min)) if np.isfinite(x_min) else np.nan,
                "N_min": float(sub["N"].min()),
                "N_max": float(sub["N"].max()),
                "flag": why,
            }
        )
    return pd.DataFrame(out)


def approach2(
    df: pd.DataFrame,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    tol: float = ISOFLOP_TOL,
) -> Approach:
    """Approach 2: power laws through the minima of per-budget parabolas.

    The bootstrap resamples runs within each budget and refits every parabola,
    so an interval reflects how well each minimum is pinned down.
    """
    name = "2: IsoFLOP"
    minima = isoflop_minima(df, tol)
    if minima.empty:
        flag = "no IsoFLOP budget has three or more model sizes"
        return _nan_approach(name, flag, confidence)
    flags = [
        f"budget C={r.C:.3g}: {r.flag} (N*={r.N_opt:.3g}, sampled {r.N_min:.3g}..{r.N_max:.3g})"
        for r in minima.itertuples()
        if r.flag
    ]
    good = minima[minima["flag"].isna()]
    if len(good) < 2:
        flags.append("fewer than two budgets with an interior minimum; no power law fitted")
        a = _nan_approach(name, flags[-1], confidence)
        a.flags, a.extra = flags, {"minima": _minima_records(minima)}
        return a
    theta = _allocation_fit(*(good[c].to_numpy() for c in ("C", "N_opt", "D_opt")))
    rng = np.random.default_rng(seed)
    labels = isoflop_groups(budgets(df), tol)
    members = [np.flatnonzero(labels == g) for g in np.unique(labels)]
    draws = []
    for _ in range(bootstrap):
        pick = np.concatenate([m[rng.integers(0, len(m), len(m))] for m in members])
        m = isoflop_minima(df.iloc[pick], tol)
        m = m[m["flag"].isna()] if not m.empty else m
        if len(m) >= 2:
            draws.append(_allocation_fit(*(m[c].to_numpy() for c in ("C", "N_opt", "D_opt"))))
    samples = np.array(draws) if draws else None
    if bootstrap and len(draws) < bootstrap:
        flags.append(f"{bootstrap - len(draws)} of {bootstrap} resamples had <2 usable budgets")
    points = good[["C", "N_opt", "D_opt", "loss_opt"]].reset_index(drop=True)
    return Approach(
        name,
        theta[1],
        theta[3],
        theta[0],
        theta[2],
        samples,
        points,
        flags,
        confidence,
        {"minima": _minima_records(minima)},
    )


def _minima_records(minima: pd.DataFrame) -> list[dict[str, Any]]:
    cols = ["C", "n_runs", "N_opt", "D_opt", "loss_opt", "flag"]
    recs = minima[cols].to_dict("records")
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in recs
    ]


# Approach 3: parametric fit -----------------------------------------------------


def approach3(fit: Fit) -> Approach:
    """Approach 3: the closed-form allocation of a fitted Chinchilla law (C = 6ND)."""
    name = "3: parametric"
    if fit.law != "chinchilla":
        return _nan_approach(name, f"needs the chinchilla law, not {fit.law}", fit.confidence)
    p = fit.params
    theta = _closed_form(p["A"], p["B"], p["alpha"], p["beta"])
    samples = None
    if fit.samples is not None:
        s = fit.samples
        samples = np.stack(_closed_form(s[:, 1], s[:, 2], s[:, 3], s[:, 4]), axis=1)
    flags = [] if fit.converged else ["the parametric fit did not converge"]
    return Approach(
        name,
        theta[1],
        theta[3],
        theta[0],
        theta[2],
        samples,
        flags=flags,
        confidence=fit.confidence,
    )


def _closed_form(A, B, alpha, beta):
    """(log k_N, a, log k_D, b) with N_opt = G (C/6)^a, D_opt = (C/6)^b / G."""
    a, b, G = chinchilla_allocation(A, B, alpha, beta)
    return np.log(G) - a * np.log(6.0), a, -np.log(G) - b * np.log(6.0), b


# Side by side -------------------------------------------------------------------


def agreement(approaches: list[Approach]) -> dict[str, Any]:
    """Whether every pair of usable approaches has overlapping intervals for a and b."""
    usable = [a for a in approaches if a.ok and a.ci("a") and a.ci("b")]
    clashes = []
    for i, p in enumerate(usable):
        for q in usable[i + 1 :]:
            for e in ("a", "b"):
                (lo1, hi1), (lo2, hi2) = p.ci(e), q.ci(e)
                if hi1 < lo2 or hi2 < lo1:
                    clashes.append(f"{e}: approach {p.name} vs {q.name}")
    return {
        "compared": [a.name for a in usable],
        "agree": bool(len(usable) >= 2 and not clashes),
        "disagreements": clashes,
    }


def compute_optimal(
    df: pd.DataFrame,
    fit: Fit | None = None,
    *,
    approaches: tuple[int, ...] = (1, 2, 3),
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    curves: pd.DataFrame | None = None,
) -> dict[int, Approach]:
    """Run the chosen approaches; approach 1 uses ``curves`` (eval points) when given."""
    out: dict[int, Approach] = {}
    if 1 in approaches:
        src = curves if curves is not None else df
        group = next((c for c in ("trial_id", "run") if c in src), None)
        out[1] = approach1(src, bootstrap=bootstrap, seed=seed, confidence=confidence, group=group)
    if 2 in approaches:
        out[2] = approach2(df, bootstrap=bootstrap, seed=seed, confidence=confidence)
    if 3 in approaches:
        if fit is None:
            raise ValueError("approach 3 needs a fitted chinchilla law")
        out[3] = approach3(fit)
    return out

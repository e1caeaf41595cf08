"""Compute-optimal allocation: the three approaches of Hoffmann et al. (2022).

Each approach ends in two power laws, ``N_opt = k_N C^a`` and
``D_opt = k_D C^b`` (an ``Approach``), with percentile intervals from resampling:

1. **Envelope.** The lower envelope of loss over FLOPs, taken over every
   point of every run (a learning curve or a final result); the run on the
   envelope at each compute gives N_opt(C) and D_opt(C).
2. **IsoFLOP** (``analysis.approach2``). Per compute budget, the size where
   the loss profile bottoms out (Akima interpolation by default, or a parabola);
   budgets whose minimum is not bracketed by the sampled sizes are dropped and named.
3. **Parametric.** The closed form of the fitted Chinchilla law,
   ``N_opt = G (C/k)^a, a = beta/(alpha+beta), G = (alpha A/(beta B))^(1/(alpha+beta))``,
   with ``k = C/(N D)`` the FLOPs per parameter-token of the runs (``Fit.k``; 6 when C = 6 N D).

All three use the same N: the column the table's C counts (``N_nonembed`` under Kaplan
counting, see ``analysis.tables``), which ``Fit.counting["N"]`` names.

Whether they agree is ``analysis.agreement``: from the bootstrap difference of exponents.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from scalinglab.analysis.agreement import agreement
from scalinglab.analysis.approach import (
    SAMPLE_COLUMNS,
    Approach,
    allocation_fit,
    nan_approach,
)
from scalinglab.analysis.approach2 import (
    ISOFLOP_TOL,
    SPAN_TOL,
    approach2,
    budgets,
    group_budgets,
    isoflop_groups,
    isoflop_minima,
)
from scalinglab.analysis.fit import Fit
from scalinglab.analysis.intervals import resample_key, resample_rows
from scalinglab.analysis.laws import chinchilla_allocation

__all__ = [
    "ISOFLOP_TOL",
    "SAMPLE_COLUMNS",
    "SPAN_TOL",
    "Approach",
    "agreement",
    "approach1",
    "approach2",
    "approach3",
    "budgets",
    "compute_optimal",
    "envelope",
    "group_budgets",
    "isoflop_groups",
    "isoflop_minima",
]


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
    runs: np.ndarray | None = None,
) -> Approach:
    """Approach 1 from every point of every run (curves or final results).

    ``group`` names a column identifying runs (e.g. ``trial_id``) so the
    bootstrap resamples whole learning curves; without it rows are resampled.
    ``runs`` (the group keys in the order of the fit's table) makes resample b
    the fit's resample b (``intervals.resample_rows`` with the same seed), so the
    difference from approach 3 is taken resample by resample.
    """
    name = "1: envelope"
    pts = envelope(df, n_bins)
    if pts["N"].nunique() < 2:
        return nan_approach(name, "envelope holds fewer than two model sizes", confidence)
    theta = allocation_fit(pts["C"].to_numpy(), pts["N"].to_numpy(), pts["D"].to_numpy())
    flags = []
    if len(pts) < 3:
        flags.append(f"envelope has only {len(pts)} points")
    keys = df[group].to_numpy() if group else np.arange(len(df))
    uniq = np.unique(keys) if runs is None else np.asarray(runs)
    rows = [np.flatnonzero(keys == u) for u in uniq]
    picks = resample_rows(len(uniq), bootstrap, seed)
    draws = []
    for pick in picks:
        chosen = np.concatenate([rows[i] for i in pick])
        if len(chosen) == 0:
            draws.append(np.full(4, np.nan))
            continue
        p = envelope(df.iloc[chosen], n_bins)
        draws.append(allocation_fit(p["C"].to_numpy(), p["N"].to_numpy(), p["D"].to_numpy()))
    samples = np.array(draws) if draws else None
    share = 0.0
    if samples is not None:
        bad = ~np.isfinite(samples).all(axis=1)
        share = float(bad.mean())
        if bad.any():
            flags.append(
                f"{int(bad.sum())} of {bootstrap} resamples unusable: their envelope held"
                " fewer than two model sizes"
            )
    pts = pts.rename(columns={"N": "N_opt", "D": "D_opt"})
    paired = samples is not None and runs is not None
    key = resample_key(len(uniq), bootstrap, seed) if paired else None
    return Approach.from_theta(
        name,
        theta,
        samples,
        points=pts,
        flags=flags,
        confidence=confidence,
        unusable_share=share,
        resampled=key,
    )


# Approach 3: parametric fit -----------------------------------------------------


def approach3(fit: Fit) -> Approach:
    """Approach 3: the closed-form allocation of a fitted Chinchilla law, C = k N D.

    ``k`` is the fit's FLOPs per parameter-token (``fit.k``, from the runs' C/(N D)), so the
    allocation spends the same C the runs counted and N_opt is in the fit's N.
    """
    name = "3: parametric"
    if fit.law != "chinchilla":
        return nan_approach(name, f"needs the chinchilla law, not {fit.law}", fit.confidence)
    p = fit.params
    k = fit.k
    theta = _closed_form(p["A"], p["B"], p["alpha"], p["beta"], k)
    samples, share = None, 0.0
    cols = fit_samples(fit, ("A", "B", "alpha", "beta"))
    if cols is not None:
        samples = np.stack(_closed_form(*cols, k), axis=1)  # NaN rows kept: rows stay aligned
        bad = ~np.isfinite(samples).all(axis=1)
        n_failed = int(getattr(fit.diagnostics, "bootstrap_failed", 0) or 0) + int(bad.sum())
        share = n_failed / max(len(bad), 1)
    flags = [] if fit.converged else ["the parametric fit did not converge"]
    if share > 0:
        flags.append(f"{100 * share:.0f}% of the fit's bootstrap refits failed or gave no optimum")
    return Approach.from_theta(
        name,
        theta,
        samples,
        flags=flags,
        confidence=fit.confidence,
        extra={"k": k, "N": fit.counting.get("N", "N")},
        unusable_share=share,
        resampled=getattr(getattr(fit, "samples", None), "attrs", {}).get("resampled"),
    )


def fit_samples(fit: Fit, names: tuple[str, ...]) -> list[np.ndarray] | None:
    """The Fit's bootstrap draws of the parameters ``names``, one array each (None if none).

    Accepts samples as a (B, P) array in ``params`` order, or as named columns
    (a mapping or a DataFrame).
    """
    s = getattr(fit, "samples", None)
    if s is None or len(s) == 0:
        return None
    if isinstance(s, np.ndarray):
        order = list(fit.params)
        return [np.asarray(s[:, order.index(n)], dtype=float) for n in names]
    return [np.asarray(s[n], dtype=float) for n in names]


def _closed_form(A, B, alpha, beta, k=6.0):
    """(log k_N, a, log k_D, b) with N_opt = G (C/k)^a, D_opt = (C/k)^b / G."""
    a, b, G = chinchilla_allocation(A, B, alpha, beta)
    with np.errstate(divide="ignore", invalid="ignore"):  # degenerate laws give -inf/NaN
        return np.log(G) - a * np.log(k), a, -np.log(G) - b * np.log(k), b


def compute_optimal(
    df: pd.DataFrame,
    fit: Fit | None = None,
    *,
    approaches: tuple[int, ...] = (1, 2, 3),
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    curves: pd.DataFrame | None = None,
    method2: str = "akima",
) -> dict[int, Approach]:
    """Run the chosen approaches; approach 1 uses ``curves`` (eval points) when given.

    ``method2`` is approach 2's method: ``"akima"`` (default) or ``"parabola"``. Each
    approach records in ``extra["N"]`` the column its N came from (``df.attrs["n_column"]``
    as ``load_source`` sets it, else the fit's ``counting["N"]``, else ``"N"``).
    """
    out: dict[int, Approach] = {}
    if 1 in approaches:
        src = curves if curves is not None else df
        group = next((c for c in ("trial_id", "run") if c in src), None)
        # The fit's resamples when the runs line up with its table (same runs, same order).
        runs = None
        if group is not None and group in df and set(src[group]) <= set(df[group]):
            runs = df[group].to_numpy()
        elif group is None and src is df:
            runs = np.arange(len(df))
        out[1] = approach1(
            src, bootstrap=bootstrap, seed=seed, confidence=confidence, group=group, runs=runs
        )
    if 2 in approaches:
        out[2] = approach2(
            df, bootstrap=bootstrap, seed=seed, confidence=confidence, method=method2
        )
    if 3 in approaches:
        if fit is None:
            raise ValueError("approach 3 needs a fitted chinchilla law")
        out[3] = approach3(fit)
    n_col = df.attrs.get("n_column") or (fit.counting.get("N") if fit is not None else None)
    for ap in out.values():
        ap.extra.setdefault("N", n_col or "N")
    if 3 in out and n_col and out[3].extra["N"] != n_col:
        out[3].flags.append(
            f"the fit counted N as {out[3].extra['N']} but the runs' N is {n_col}:"
            " approach 3 is not comparable with approaches 1-2"
        )
    return out

"""Approach 2, IsoFLOP profiles: for each compute budget, the model size where loss bottoms out.

Default method ``"akima"`` (after Porian et al. 2024): per budget, log loss is
interpolated over log N with an Akima spline and minimised on a fine grid;
the minimiser's distribution comes from re-interpolating under resampled
noise; ``log N*`` is regressed on ``log C`` weighted by ``1/var(log N*)``.
Method ``"parabola"`` (Hoffmann et al. 2022) fits a parabola of loss in log N
per budget and an unweighted regression through the minima.

Budgets are the sweep's nominal IsoFLOP budgets when the table has them
(``isoflop_C`` or ``train.budget.flops``); otherwise runs are chained by C and a
chain wider than ``SPAN_TOL`` is refused. A budget whose lowest loss sits at
its smallest or largest sampled size is dropped and named: its minimum is not
bracketed. Noise for the re-interpolations is the evaluation noise when the
table has it: ``final_eval_loss_se_paired`` (runs scored on the same validation
batches, compared batch by batch; see ``sweep.store``), else ``final_eval_loss_se``
or ``loss_se``; else the spread between
repeated runs (seeds) of one size and budget when there are any, else the
residual scale of a quadratic in log N fitted to each budget's log loss,
pooled (an upper bound where profiles are not quadratic). When the minima scatter about the power
law more than that noise explains (reduced chi-square above 1), each minimum's
variance is scaled up by the reduced chi-square, so intervals reflect the scatter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.akima import akima
from scalinglab.analysis.approach import (
    UNRELIABLE_SHARE,
    Approach,
    allocation_fit,
    nan_approach,
)

METHODS = ("akima", "parabola")
ISOFLOP_TOL = 0.05  # runs closer than this in log10 C chain into one budget (~12%)
SPAN_TOL = 1.25  # a chained budget spanning more than this ratio (max C / min C) is refused
NOMINAL_COLUMNS = ("isoflop_C", "train.budget.flops")
SE_COLUMNS = ("final_eval_loss_se_paired", "final_eval_loss_se", "loss_se")  # first usable wins
FINE_GRID = 1000  # points of the fine log N grid the Akima spline is minimised on
NOISE_DRAWS = 200  # re-interpolations per budget when no bootstrap is asked for
NAME = "2: IsoFLOP"


def isoflop_groups(C: np.ndarray, tol: float = ISOFLOP_TOL) -> np.ndarray:
    """Label runs by chaining: sorted log10 C split where gaps exceed ``tol``."""
    lc = np.log10(C)
    order = np.argsort(lc)
    labels = np.empty(len(C), dtype=int)
    labels[order] = np.concatenate([[0], np.cumsum(np.diff(lc[order]) > tol)])
    return labels


@dataclass
class Budgets:
    """Which budget each run belongs to (-1: refused), each budget's C, and how they were found."""

    labels: np.ndarray
    C: np.ndarray
    source: str
    refused: list[str]


def _nominal(df: pd.DataFrame) -> tuple[np.ndarray, str] | None:
    for col in NOMINAL_COLUMNS:
        if col in df:
            v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
            if len(v) and np.all(np.isfinite(v) & (v > 0)):
                return v, col
    return None


def group_budgets(
    df: pd.DataFrame, tol: float = ISOFLOP_TOL, span_tol: float = SPAN_TOL
) -> Budgets:
    """IsoFLOP budgets: nominal ones when present, else chained C with wide chains refused."""
    nominal = _nominal(df)
    if nominal is not None:
        values, labels = np.unique(nominal[0], return_inverse=True)
        return Budgets(labels, values, f"the sweep's nominal budgets (column {nominal[1]})", [])
    C = df["C"].to_numpy(float)
    chain = isoflop_groups(C, tol)
    labels, budgets, refused = np.full(len(C), -1), [], []
    for g in np.unique(chain):
        m = chain == g
        lo, hi = C[m].min(), C[m].max()
        if hi / lo > span_tol:
            refused.append(
                f"{m.sum()} runs with C from {lo:.3g} to {hi:.3g} ({hi / lo:.1f}x) chain into"
                f" one budget wider than the {span_tol:g}x tolerance: refused (give each run its"
                " nominal budget in a column isoflop_C)"
            )
            continue
        labels[m] = len(budgets)
        budgets.append(float(np.exp(np.mean(np.log(C[m])))))
    source = f"C, runs within {tol:g} in log10 C chained, chains up to {span_tol:g}x wide"
    return Budgets(labels, np.array(budgets), source, refused)


def budgets(df: pd.DataFrame) -> np.ndarray:
    """Each run's budget C (NaN for a run in a refused group)."""
    b = group_budgets(df)
    out = np.full(len(df), np.nan)
    out[b.labels >= 0] = b.C[b.labels[b.labels >= 0]]
    return out


def noise_level(df: pd.DataFrame, labels: np.ndarray) -> tuple[np.ndarray, str]:
    """Noise sd of each run's log loss, and where it came from (in words)."""
    loss = df["loss"].to_numpy(float)
    for col in SE_COLUMNS:
        if col in df:
            se = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
            if np.all(np.isfinite(se) & (se >= 0)):
                return se / loss, f"evaluation noise (column {col})"
    logN, logL = np.log(df["N"].to_numpy(float)), np.log(loss)
    rep = _replicate_scale(logN, logL, labels)
    if rep is not None:
        sigma, dof = rep
        text = (
            f"replicate scale {sigma:.3g} of log loss between runs of one size and budget"
            f" (seeds; {dof} degrees of freedom)"
        )
        return np.full(len(df), sigma), text
    ssr, dof, used = 0.0, 0, 0
    for g in np.unique(labels[labels >= 0]):
        m = labels == g
        if m.sum() >= 4 and len(np.unique(logN[m])) >= 3:
            coef = np.polyfit(logN[m], logL[m], 2)
            ssr += float(np.sum((np.polyval(coef, logN[m]) - logL[m]) ** 2))
            dof, used = dof + int(m.sum()) - 3, used + 1
    if dof == 0:
        text = (
            "none: no budget has four or more runs and there is no final_eval_loss_se column;"
            " intervals come only from the scatter of the minima about the power law"
        )
        return np.zeros(len(df)), text
    sigma = np.sqrt(ssr / dof)
    text = (
        f"residual scale {sigma:.3g} of log loss about a quadratic in log N per budget"
        f" (pooled over {used} budgets, {dof} degrees of freedom)"
    )
    return np.full(len(df), sigma), text


def _replicate_scale(
    logN: np.ndarray, logL: np.ndarray, labels: np.ndarray
) -> tuple[float, int] | None:
    """Pooled sd of log loss among runs sharing a size and budget (None without repeats)."""
    keep = labels >= 0
    key = pd.Series(logL[keep]).groupby([labels[keep], logN[keep]])
    count = key.count()
    dof = int((count - 1).sum())
    if dof == 0:
        return None
    ssr = float(key.apply(lambda v: np.sum((v - v.mean()) ** 2)).sum())
    return float(np.sqrt(ssr / dof)), dof


@dataclass
class Profile:
    """One budget's loss profile: distinct sizes, mean log loss, its noise, and D against N."""

    C: float
    n_runs: int
    logN: np.ndarray
    logL: np.ndarray
    sigma: np.ndarray
    d_fit: np.ndarray  # log D = d_fit[0] log N + d_fit[1] within the budget


def profiles(df: pd.DataFrame, b: Budgets, sigma: np.ndarray) -> list[Profile]:
    """Per budget: log loss averaged over runs of one size (noise sd shrinks accordingly)."""
    out = []
    logN, logD = np.log(df["N"].to_numpy(float)), np.log(df["D"].to_numpy(float))
    logL = np.log(df["loss"].to_numpy(float))
    for g, C in enumerate(b.C):
        m = b.labels == g
        xs, inv = np.unique(logN[m], return_inverse=True)
        count = np.bincount(inv, minlength=len(xs))
        mean = np.bincount(inv, logL[m], len(xs)) / count
        sd = np.sqrt(np.bincount(inv, sigma[m] ** 2, len(xs))) / count
        d_fit = np.polyfit(logN[m], logD[m], 1) if len(xs) >= 2 else np.array([-1.0, 0.0])
        out.append(Profile(float(C), int(m.sum()), xs, mean, sd, d_fit))
    return out


def minimise(logN: np.ndarray, logL: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Minimiser x* of each column of ``logL`` (sizes x draws) over log N, and an edge mask.

    A column is "edge" when its minimum is not bracketed by the sampled sizes:
    for Akima, its lowest value is at the smallest or largest size; for the
    parabola, the parabola is not convex or its vertex lies outside the sizes.
    """
    Y = logL.reshape(len(logN), -1)
    if method == "parabola":
        p2, p1, _ = np.polyfit(logN, np.exp(Y), 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(p2 > 0, -p1 / (2 * p2), np.nan)
        edge = ~((x > logN[0]) & (x < logN[-1]))
        return x, edge
    arg = np.argmin(Y, axis=0)
    edge = (arg == 0) | (arg == len(logN) - 1)
    grid = np.linspace(logN[0], logN[-1], FINE_GRID)
    vals = akima(logN, Y, grid)
    return grid[np.argmin(vals, axis=0)], edge


def curve(p: Profile, method: str, grid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The interpolated profile (N, loss) at log N ``grid`` (default: 200 points across)."""
    grid = np.linspace(p.logN[0], p.logN[-1], 200) if grid is None else grid
    if method == "parabola":
        return np.exp(grid), np.polyval(np.polyfit(p.logN, np.exp(p.logL), 2), grid)
    return np.exp(grid), np.exp(akima(p.logN, p.logL, grid)[:, 0])


def _edge_reason(p: Profile, x: float, method: str) -> str:
    lo, hi = np.exp(p.logN[0]), np.exp(p.logN[-1])
    where = f"(sampled N {lo:.3g}..{hi:.3g})"
    if method == "parabola":
        if not np.isfinite(x):
            return f"parabola is not convex {where}"
        return f"parabola minimum N={np.exp(x):.3g} lies outside the sampled sizes {where}"
    side = "smallest" if np.argmin(p.logL) == 0 else "largest"
    return f"lowest loss at the {side} sampled size, so the minimum is not bracketed {where}"


def isoflop_minima(
    df: pd.DataFrame,
    method: str = "akima",
    tol: float = ISOFLOP_TOL,
    span_tol: float = SPAN_TOL,
) -> pd.DataFrame:
    """One row per budget: C, runs, sizes, N_opt, D_opt, loss_opt and ``flag`` (why dropped)."""
    b = group_budgets(df, tol, span_tol)
    return pd.DataFrame([_minimum_row(p, method) for p in profiles(df, b, np.zeros(len(df)))])


def _minimum_row(p: Profile, method: str) -> dict[str, Any]:
    row: dict[str, Any] = {
        "C": p.C,
        "n_runs": p.n_runs,
        "n_sizes": len(p.logN),
        "N_min": float(np.exp(p.logN[0])),
        "N_max": float(np.exp(p.logN[-1])),
        "N_opt": np.nan,
        "D_opt": np.nan,
        "loss_opt": np.nan,
        "flag": None,
    }
    if len(p.logN) < 3:
        row["flag"] = f"only {len(p.logN)} model size(s); three or more are needed"
        return row
    x, edge = minimise(p.logN, p.logL, method)
    if edge[0]:
        row["flag"] = _edge_reason(p, float(x[0]), method)
        return row
    row["N_opt"] = float(np.exp(x[0]))
    row["D_opt"] = float(np.exp(np.polyval(p.d_fit, x[0])))
    row["loss_opt"] = float(curve(p, method, x[:1])[1][0])
    return row


def approach2(
    df: pd.DataFrame,
    *,
    bootstrap: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "akima",
    tol: float = ISOFLOP_TOL,
    span_tol: float = SPAN_TOL,
) -> Approach:
    """Approach 2: power laws through each budget's minimum (see the module docstring).

    Every resample re-finds every budget's minimum under fresh noise; a
    resample in which any used budget's minimum is no longer bracketed is
    unusable, and past 10% of them the result is marked unreliable.
    """
    if method not in METHODS:
        raise ValueError(f"approach 2 method: {method!r} is not one of {', '.join(METHODS)}")
    b = group_budgets(df, tol, span_tol)
    sigma, noise_from = noise_level(df, b.labels)
    profs = profiles(df, b, sigma)
    rows = [_minimum_row(p, method) for p in profs]
    flags = list(b.refused)
    flags += [f"budget C={r['C']:.3g} dropped: {r['flag']}" for r in rows if r["flag"]]
    used = [i for i, r in enumerate(rows) if not r["flag"]]
    extra: dict[str, Any] = {"method": method, "budgets_from": b.source, "noise_from": noise_from}
    if len(used) < 2:
        flags.append("fewer than two budgets with a bracketed minimum; no power law fitted")
        out = nan_approach(NAME, flags[-1], confidence)
        out.flags, out.extra = flags, {**extra, "minima": _records(rows)}
        return out
    k = bootstrap if bootstrap > 0 else NOISE_DRAWS
    rng = np.random.default_rng(seed)
    xs, edges = [], []
    for i in used:
        p = profs[i]
        Y = p.logL[:, None] + p.sigma[:, None] * rng.standard_normal((len(p.logN), k))
        x, e = minimise(p.logN, Y, method)
        xs.append(x)
        edges.append(e)
    X, E = np.array(xs), np.array(edges)  # budgets x draws
    step = np.array([(profs[i].logN[-1] - profs[i].logN[0]) / (FINE_GRID - 1) for i in used])
    var = np.array(
        [np.nanvar(x[~e]) if (~e).sum() >= 2 else np.nanvar(x) for x, e in zip(X, E, strict=True)]
    )
    var = np.nan_to_num(var, nan=0.0) + step**2 / 12.0  # the fine grid's own resolution
    C = np.array([rows[i]["C"] for i in used])
    x0 = np.log([rows[i]["N_opt"] for i in used])
    slope = np.array([profs[i].d_fit[0] for i in used])
    icpt = np.array([profs[i].d_fit[1] for i in used])
    if method == "akima":
        theta = allocation_fit(C, np.exp(x0), np.exp(icpt + slope * x0), 1 / var, slope**2 / var)
        resid = x0 - (theta[0] + theta[1] * np.log(C))
        chi2 = float(np.sum(resid**2 / var) / (len(used) - 2)) if len(used) > 2 else 1.0
        if chi2 > 1.0:  # scatter beyond the noise: widen each minimum's spread to match it
            X = X + np.sqrt(var * (chi2 - 1.0))[:, None] * rng.standard_normal(X.shape)
            flags.append(
                f"the minima scatter about the power law {np.sqrt(chi2):.2g}x more than the"
                " noise explains; intervals widened to match"
            )
        w = 1 / (var * max(chi2, 1.0))
        extra["chi2_reduced"] = chi2
    else:
        w = np.ones(len(used))
        theta = allocation_fit(C, np.exp(x0), np.exp(icpt + slope * x0))
    unusable = E.any(axis=0)
    good = np.flatnonzero(~unusable)
    samples = np.array(
        [
            allocation_fit(C, np.exp(X[:, j]), np.exp(icpt + slope * X[:, j]), w, w / slope**2)
            for j in good
        ]
    ).reshape(-1, 4)
    share = float(unusable.mean())
    for n, i in enumerate(used):
        rows[i]["sd_logN"] = float(np.sqrt(var[n]))
        rows[i]["edge_share"] = float(E[n].mean())
    if unusable.any():
        worst = [f"{rows[i]['C']:.3g}" for n, i in enumerate(used) if E[n].mean() > 0]
        flags.append(
            f"{int(unusable.sum())} of {k} resamples ({100 * share:.0f}%) unusable: the minimum of"
            f" budget(s) C={', '.join(worst)} was not bracketed under resampled noise"
        )
    if share > UNRELIABLE_SHARE:
        flags.append(
            f"UNRELIABLE: over {100 * UNRELIABLE_SHARE:.0f}% of resamples unusable; sample sizes"
            " on both sides of each minimum, or repeat runs (seeds) to lower the noise"
        )
    points = pd.DataFrame(
        {
            "C": C,
            "N_opt": np.exp(x0),
            "D_opt": np.exp(icpt + slope * x0),
            "loss_opt": [rows[i]["loss_opt"] for i in used],
        }
    )
    extra["minima"] = _records(rows)
    return Approach.from_theta(
        NAME,
        theta,
        samples if bootstrap > 0 and len(samples) else None,
        points=points,
        flags=flags,
        confidence=confidence,
        extra=extra,
        unusable_share=share,
    )


def _records(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in rows
    ]

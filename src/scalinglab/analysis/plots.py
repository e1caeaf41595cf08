"""Figures for scaling studies, in one house style, saved as PNG and SVG.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot,
so plotting neither needs a display nor touches global state. Model size is
always colour (viridis, log scale), compute always on a log x axis, loss in
nats per token.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from scalinglab.analysis.approach import Approach
from scalinglab.analysis.fit import Fit
from scalinglab.analysis.intervals import interval

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.6,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "svg.fonttype": "none",  # keep text as text in SVG
}
CMAP = "viridis"
APPROACH_COLORS = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
LABELS = {
    "C": "compute C (FLOPs)",
    "N": "parameters N",
    "D": "tokens D",
    "loss": "loss (nats/token)",
}


def _styled(fn: Callable[..., Figure]) -> Callable[..., Figure]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with mpl.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _plain_loss_axis(ax: Any) -> None:
    """Loss spans well under a decade: label its log axis with plain numbers."""
    fmt = mpl.ticker.FormatStrFormatter("%.3g")
    ax.yaxis.set_major_formatter(fmt)
    ax.yaxis.set_minor_formatter(fmt)


def _size_norm(N: np.ndarray) -> LogNorm:
    lo, hi = float(np.min(N)), float(np.max(N))
    return LogNorm(lo, hi if hi > lo else lo * 1.01)


def n_label(n_column: str | None, prefix: str = "parameters N") -> str:
    """The axis label of N, naming the column it counts when that is not plain N
    (``N_nonembed`` under Kaplan counting: the N that C counts)."""
    return prefix if n_column in (None, "N") else f"{prefix} ({n_column})"


def _colorbar(fig: Figure, ax: Any, norm: LogNorm, runs: pd.DataFrame) -> None:
    sm = mpl.cm.ScalarMappable(norm=norm, cmap=CMAP)
    fig.colorbar(sm, ax=ax, label=n_label(runs.attrs.get("n_column")), pad=0.02)


@_styled
def loss_vs_compute(
    runs: pd.DataFrame,
    fit: Fit | None = None,
    *,
    curves: pd.DataFrame | None = None,
    frontier: pd.DataFrame | None = None,
) -> Figure:
    """Loss against compute (log-log): one curve (or point) per run, coloured by size.

    With ``frontier`` (approach 1's envelope) the compute-optimal frontier is
    drawn; with a Chinchilla ``fit`` its loss at the compute-optimal allocation,
    extended one decade past the data (a power-law fit is drawn as L(C)).
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    norm = _size_norm(runs["N"])
    cmap = mpl.colormaps[CMAP]
    if curves is not None and "trial_id" in curves:
        for _, c in curves.sort_values("C").groupby("trial_id"):
            ax.plot(c["C"], c["loss"], color=cmap(norm(c["N"].iloc[0])), lw=1.0, alpha=0.8)
    ax.scatter(
        runs["C"],
        runs["loss"],
        c=runs["N"],
        cmap=CMAP,
        norm=norm,
        s=18,
        zorder=3,
        edgecolors="white",
        linewidths=0.4,
        label="runs (final)",
    )
    if frontier is not None and len(frontier):
        ax.plot(frontier["C"], frontier["loss"], "k--", lw=1.2, label="compute-optimal frontier")
    cgrid = np.logspace(np.log10(runs["C"].min()), np.log10(runs["C"].max()) + 1, 200)
    if fit is not None and fit.law == "chinchilla":
        opt = fit.optimal(cgrid)
        ax.plot(cgrid, opt["loss"], color="crimson", label="fitted law at optimal N, D")
        if "loss_ci" in opt:
            ax.fill_between(cgrid, *opt["loss_ci"], color="crimson", alpha=0.15, lw=0)
    elif fit is not None and fit.law.startswith("power"):
        ax.plot(cgrid, fit.predict(cgrid), color="crimson", label="fitted L(C)")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel=LABELS["C"],
        ylabel=LABELS["loss"],
        title="Loss vs compute",
    )
    _plain_loss_axis(ax)
    _colorbar(fig, ax, norm, runs)
    ax.legend(loc="upper right")
    return fig


@_styled
def isoflop(
    runs: pd.DataFrame, minima: pd.DataFrame | None = None, method: str = "akima"
) -> Figure:
    """IsoFLOP profiles: loss against N per budget, the interpolated profile and its minimum.

    ``minima`` is ``approach2.isoflop_minima`` (computed with ``method`` when
    None); a dropped budget's profile is dashed and its lowest run marked with an x.
    """
    from scalinglab.analysis.approach2 import curve, group_budgets, isoflop_minima, profiles

    if minima is None:
        minima = isoflop_minima(runs, method)
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    b = group_budgets(runs)
    bs = b.C if len(b.C) else np.array([1.0])
    bnorm = LogNorm(bs.min(), max(bs.max(), bs.min() * 1.01))
    cmap = mpl.colormaps["plasma"]
    for g, p in enumerate(profiles(runs, b, np.zeros(len(runs)))):
        sub = runs[b.labels == g]
        color = cmap(0.85 * bnorm(p.C))
        ax.scatter(sub["N"], sub["loss"], color=color, s=16, zorder=3)
        row = minima[np.isclose(minima["C"], p.C)] if len(minima) else minima
        if row.empty or len(p.logN) < 3:
            continue
        r = row.iloc[0]
        flagged = isinstance(r["flag"], str)
        ax.plot(
            *curve(p, method),
            color=color,
            ls="--" if flagged else "-",
            label=f"C = {p.C:.2g}" + (" (dropped)" if flagged else ""),
        )
        if flagged:
            i = int(np.argmin(sub["loss"].to_numpy()))
            ax.scatter(sub["N"].iloc[i], sub["loss"].iloc[i], marker="x", s=50, color="k", zorder=4)
        else:
            ax.plot(r["N_opt"], r["loss_opt"], marker="*", ms=11, color=color, mec="k", zorder=4)
    ax.set(
        xscale="log",
        xlabel=n_label(runs.attrs.get("n_column")),
        ylabel=LABELS["loss"],
        title=f"IsoFLOP profiles ({method}; star: minimum, x: not bracketed)",
    )
    ax.legend(title="budget (FLOPs)", loc="upper right", ncols=2 if len(b.C) > 6 else 1)
    return fig


@_styled
def optimal_allocation(
    approaches: dict[int, Approach] | Sequence[Approach],
    compute: Sequence[float],
    confidence: float | None = None,
) -> Figure:
    """N_opt and D_opt against compute for each approach: points, fitted line, interval band.

    The band is the central ``confidence`` interval of the bootstrap draws
    (default: each approach's own confidence).
    """
    items = approaches.items() if isinstance(approaches, dict) else enumerate(approaches, 1)
    values = approaches.values() if isinstance(approaches, dict) else approaches
    n_column = next((ap.extra.get("N") for ap in values if ap.extra.get("N")), None)
    fig = Figure(figsize=(10, 4))
    axN, axD = fig.subplots(1, 2)
    c = np.logspace(np.log10(min(compute)), np.log10(max(compute)), 100)
    for key, ap in items:
        if not ap.ok:
            continue
        color = APPROACH_COLORS.get(key)
        for ax, col, k, e in ((axN, "N_opt", 0, 1), (axD, "D_opt", 2, 3)):
            coef, expo = (ap.log_kN, ap.a) if k == 0 else (ap.log_kD, ap.b)
            ax.plot(
                c,
                np.exp(coef + expo * np.log(c)),
                color=color,
                label=f"approach {ap.name} ({'a' if k == 0 else 'b'} = {expo:.3f})",
            )
            if ap.samples is not None and len(ap.samples) >= 2:
                s = ap.samples[:, [k, e]]
                band = np.exp(s[:, :1] + s[:, 1:] * np.log(c)[None])
                lo, hi = interval(band, confidence or ap.confidence)
                ax.fill_between(c, lo, hi, color=color, alpha=0.15, lw=0)
            if len(ap.points) and col in ap.points:
                ax.scatter(ap.points["C"], ap.points[col], color=color, s=18, zorder=3)
    axN.set(
        xscale="log",
        yscale="log",
        xlabel=LABELS["C"],
        ylabel=n_label(n_column, "optimal parameters N_opt"),
        title="N_opt(C)",
    )
    axD.set(
        xscale="log",
        yscale="log",
        xlabel=LABELS["C"],
        ylabel="optimal tokens D_opt",
        title="D_opt(C)",
    )
    for ax in (axN, axD):
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


@_styled
def observed_vs_predicted(runs: pd.DataFrame, fit: Fit) -> Figure:
    """Observed loss against the fit's prediction, coloured by size, with the y = x line."""
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    pred = fit.predict(runs["N"], runs["D"]) if len(fit.params) > 3 else fit.predict(runs["C"])
    norm = _size_norm(runs["N"])
    ax.scatter(pred, runs["loss"], c=runs["N"], cmap=CMAP, norm=norm, s=18, zorder=3)
    lo = min(pred.min(), runs["loss"].min()) * 0.98
    hi = max(pred.max(), runs["loss"].max()) * 1.02
    ax.plot([lo, hi], [lo, hi], "k--", lw=1.0, label="y = x")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=(lo, hi),
        ylim=(lo, hi),
        xlabel=f"predicted {LABELS['loss']}",
        ylabel=f"observed {LABELS['loss']}",
        title=f"Observed vs predicted ({fit.law}; RMSE log loss {fit.rmse:.3g})",
    )
    _plain_loss_axis(ax)
    ax.xaxis.set_major_formatter(mpl.ticker.FormatStrFormatter("%.3g"))
    ax.xaxis.set_minor_formatter(mpl.ticker.FormatStrFormatter("%.3g"))
    _colorbar(fig, ax, norm, runs)
    ax.legend(loc="upper left")
    return fig


def save(fig: Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` and ``name.svg`` under ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    with mpl.rc_context(STYLE):
        for p in paths:
            fig.savefig(p)
    return paths


def plot_all(
    runs: pd.DataFrame,
    out_dir: str | Path,
    fit: Fit | None,
    approaches: dict[int, Approach],
    curves: pd.DataFrame | None = None,
    method2: str = "akima",
) -> list[Path]:
    """Every figure this module makes for one study, saved under ``out_dir``."""
    from scalinglab.analysis.approach2 import isoflop_minima
    from scalinglab.analysis.optimal import envelope

    frontier = envelope(curves if curves is not None else runs)
    figs = {"loss_vs_compute": loss_vs_compute(runs, fit, curves=curves, frontier=frontier)}
    ap2 = approaches.get(2)
    method2 = ap2.extra.get("method", method2) if ap2 is not None else method2
    minima = isoflop_minima(runs, method2)
    if len(minima):
        figs["isoflop"] = isoflop(runs, minima, method2)
    if any(a.ok for a in approaches.values()):
        cmax = runs["C"].max() * 100
        figs["optimal_allocation"] = optimal_allocation(approaches, (runs["C"].min(), cmax))
    if fit is not None:
        figs["observed_vs_predicted"] = observed_vs_predicted(runs, fit)
    return [p for name, fig in figs.items() for p in save(fig, out_dir, name)]

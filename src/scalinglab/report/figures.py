"""The report's figures as inline SVG: the plots of ``analysis.plots`` (the same functions
``scalinglab plot`` draws with) and learning curves per model size.

Each figure is saved to SVG in memory in the house style (text kept as text), without the
XML prolog or namespace URLs, and with its element ids prefixed by the figure's name so
several figures share one HTML document without clashing ids.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure

from scalinglab.analysis import plots
from scalinglab.report.html import esc

MAX_PANELS = 8  # learning curves: more distinct sizes than this are grouped into log bins
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def to_svg(fig: Figure, name: str) -> str:
    """``fig`` as an ``<svg>`` element for inline use, its ids prefixed with ``name``."""
    buf = io.StringIO()
    with mpl.rc_context(plots.STYLE):
        fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    head_end = svg.index(">")
    head = re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", svg[:head_end])
    svg = head + f' role="img" aria-label="{esc(name)}"' + svg[head_end:]
    svg = svg.replace("xlink:href=", "href=")
    return re.sub(r'(\bid="|href="#|url\(#)', lambda m: f"{m.group(1)}{name}-", svg)


def figure(name: str, title: str, caption: str, draw: Callable[[], Figure | None]) -> str:
    """A ``<figure>`` holding ``draw()`` as inline SVG, or a note saying why it is missing."""
    try:
        fig = draw()
    except Exception as e:  # noqa: BLE001 - one figure failing must not lose the report
        return f'<p class="note" data-missing="{esc(name)}">{esc(title)}: not drawn ({esc(e)})</p>'
    if fig is None:
        return ""
    return (
        f'<figure id="fig-{esc(name)}" data-figure="{esc(name)}">{to_svg(fig, name)}'
        f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>"
    )


def learning_curves(curves: pd.DataFrame, n_column: str | None = None) -> Figure:
    """Eval loss against tokens seen, one panel per model size, one line per trial coloured
    by its compute budget; the dot is the trial's last evaluation."""
    with mpl.rc_context(plots.STYLE):
        return _learning_curves(curves, n_column)


def _learning_curves(curves: pd.DataFrame, n_column: str | None) -> Figure:
    curves = curves[(curves["loss"] > 0) & (curves["D"] > 0)]
    if curves.empty:
        raise ValueError("no evaluation points with positive loss and tokens")
    budget = _budgets(curves)
    groups = _size_groups(curves["N"].to_numpy(float))
    ncols = min(4, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = Figure(figsize=(3.1 * ncols + 1.0, 2.5 * nrows + 0.6))  # no layout engine: 3x faster
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    fig.subplots_adjust(hspace=0.45, wspace=0.08, top=1 - 0.5 / fig.get_figheight())
    lo, hi = float(budget.min()), float(budget.max())
    norm = LogNorm(lo, hi if hi > lo else lo * 1.01)
    cmap = ListedColormap(mpl.colormaps["plasma"](np.linspace(0.0, 0.85, 256)))
    n_all = curves["N"].to_numpy(float)
    for ax, (label, lo_n, hi_n) in zip(axes, groups, strict=False):
        sub = curves[(n_all >= lo_n) & (n_all <= hi_n)]
        for tid, c in sub.sort_values("D").groupby("trial_id", sort=False):
            color = cmap(norm(budget[tid]))
            ax.plot(c["D"], c["loss"], color=color, lw=1.2)
            ax.plot(c["D"].iloc[-1], c["loss"].iloc[-1], "o", color=color, ms=3.5)
        ax.set(xscale="log", yscale="log", title=label)
        fmt = mpl.ticker.FormatStrFormatter("%.3g")
        ax.yaxis.set_major_formatter(fmt)
        ax.yaxis.set_minor_formatter(fmt)
        ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())  # decades only: no overlap
    for ax in axes[len(groups) :]:
        ax.set_visible(False)
    fig.supxlabel(plots.LABELS["D"])
    fig.supylabel(plots.LABELS["loss"])
    fig.suptitle(f"Learning curves per size ({plots.n_label(n_column)})")
    if hi > lo:  # one budget: nothing to tell apart
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        fig.colorbar(sm, ax=list(axes[: len(groups)]), label="budget C (FLOPs)", shrink=0.8)
    return fig


def _budgets(curves: pd.DataFrame) -> pd.Series:
    """Each trial's budget: its nominal ``isoflop_C`` when known, else its largest C."""
    last = curves.groupby("trial_id")["C"].max()
    if "isoflop_C" in curves:
        nominal = pd.to_numeric(curves.groupby("trial_id")["isoflop_C"].first(), errors="coerce")
        last = nominal.where(nominal > 0, last)
    return last


def _size_groups(N: np.ndarray) -> list[tuple[str, float, float]]:
    """(title, low, high) per panel: each distinct N, or log-spaced bins when there are many."""
    sizes = np.unique(N)
    if len(sizes) <= MAX_PANELS:
        return [(f"N = {n:,.0f}", n, n) for n in sizes]
    edges = np.geomspace(sizes[0], sizes[-1], MAX_PANELS + 1)
    which = np.minimum(np.searchsorted(edges, sizes, side="right") - 1, MAX_PANELS - 1)
    out = []
    for b in np.unique(which):
        inside = sizes[which == b]
        out.append((f"N = {inside[0]:.3g} - {inside[-1]:.3g}", inside[0], inside[-1]))
    return out

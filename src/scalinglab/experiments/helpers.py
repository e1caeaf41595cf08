"""What study analyses share: one offset-free power law per group of runs, its numbers for
`findings.json`, paired bootstrap differences between groups, and the per-group figure.

With 2-5 points per group the offset E of `L = E + A x^-alpha` is not identifiable, so the
law is `L = A x^-alpha` (`scalinglab.fit_power_law(..., offset=False)`): alpha is the local
log-log slope over the swept range. Every fit uses the same bootstrap seed, so resample b
draws the same row positions in every group; with the groups' rows in the same order (sorted
by `pair_by`: the same width, data size or budget at each position) a difference between two
groups is computed resample by resample, a paired bootstrap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import scalinglab as sl

FINISHED = ("done", "stopped_early")


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    """The trials that trained to the end (or stopped early), without diverged or failed ones."""
    return runs[runs["status"].isin(FINISHED)].copy()


def label(values: Any, names: Sequence[str] | None = None) -> str:
    """A group's name in findings and legends: its values joined by '@' (`adafactor@0.01`),
    or `name=value` pairs joined by ',' when `names` are given (`dropout=0.5,wd=0`)."""
    values = values if isinstance(values, tuple) else (values,)
    text = [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    if names is None:
        return "@".join(text)
    return ",".join(f"{n}={t}" for n, t in zip(names, text, strict=True))


def group_fits(
    runs: pd.DataFrame,
    by: Sequence[str],
    x: str,
    y: str,
    pair_by: Sequence[str] = (),
    bootstrap: int = 200,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`{label: Fit}` of `y = A x^-alpha` per group of `by`, rows sorted by `pair_by` then `x`
    (`names`: see `label`)."""
    fits: dict[str, Any] = {}
    for values, g in runs.groupby(list(by), sort=True):
        g = g.sort_values([*pair_by, x], kind="stable")
        fits[label(values, names)] = sl.fit_power_law(
            g[x].to_numpy(float), g[y].to_numpy(float), bootstrap=bootstrap, offset=False
        )
    return fits


def exponent(fit: Any, name: str = "alpha") -> dict[str, Any]:
    """A fit's numbers for findings.json: the exponent with its interval, A, n, rmse."""
    lo, hi = fit.ci.get("alpha", (float("nan"), float("nan")))
    return {
        name: fit.params["alpha"],
        f"{name}_ci": [lo, hi],
        "A": fit.params["A"],
        "n_points": fit.n_points,
        "rmse_log": fit.rmse,
    }


def paired_difference(a: Any, b: Any, param: str = "alpha") -> dict[str, Any]:
    """`a - b` of one parameter with its paired bootstrap interval; `resolved` is True when
    the interval excludes 0 (an effect), False when it holds 0 (none measurable), None with a
    `why` when the fits cannot be paired (under 3 points, no samples, or groups of different
    sizes)."""
    value = a.params[param] - b.params[param]
    why = None
    if min(a.n_points, b.n_points) < 3:
        why = f"{min(a.n_points, b.n_points)} points per group: an exponent through two points"
        why += " has no interval"
    elif a.samples is None or b.samples is None:
        why = "no bootstrap samples (bootstrap=0)"
    elif a.samples.attrs.get("resampled") != b.samples.attrs.get("resampled"):
        why = f"groups of {a.n_points} and {b.n_points} points cannot be paired"
    if why is not None:
        return {"value": value, "ci": None, "resolved": None, "why": why}
    d = a.samples[param].to_numpy(float) - b.samples[param].to_numpy(float)
    tail = 50.0 * (1.0 - a.confidence)
    lo, hi = np.nanpercentile(d, [tail, 100.0 - tail])
    return {
        "value": value,
        "ci": [float(lo), float(hi)],
        "confidence": a.confidence,
        "resolved": bool(lo > 0 or hi < 0),
    }


def describe(diff: dict[str, Any], digits: int = 3) -> str:
    """A `paired_difference` in words for an answer line: `+0.012 [-0.020, 0.041]`, or the
    value with why it has no interval."""
    text = f"{diff['value']:+.{digits}f}"
    if diff["ci"] is None:
        return f"{text} (no interval: {diff['why']})"
    lo, hi = diff["ci"]
    return f"{text} [{lo:.{digits}f}, {hi:.{digits}f}]"


def save_figure(fig: Any, out: Path, name: str) -> list[Path]:
    """`scalinglab.plots.save` (name.png and name.svg in `out`), then close the figure."""
    import matplotlib.pyplot as plt

    paths = sl.plots.save(fig, out, name)
    plt.close(fig)
    return paths


def plot_groups(
    runs: pd.DataFrame,
    fits: dict[str, Any],
    by: Sequence[str],
    x: str,
    y: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    names: Sequence[str] | None = None,
) -> Any:
    """Every group's points and fitted `A x^-alpha` on log-log axes, one colour per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (values, g) in enumerate(runs.groupby(list(by), sort=True)):
        name = label(values, names)
        fit = fits[name]
        lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
        text = f"{name}: alpha {fit.params['alpha']:.3f} [{lo:.3f}, {hi:.3f}]"
        ax.plot(g[x], g[y], "o", color=f"C{i}", label=text)
        grid = np.geomspace(g[x].min(), g[x].max(), 50)
        ax.plot(grid, fit.params["A"] * grid ** -fit.params["alpha"], "-", color=f"C{i}")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

"""How does a one-hidden-layer MLP's approximation error fall with its width? `mse = A w^-alpha`
per function and activation, over the widths where the error falls.

Each point is the best of the swept learning rates at the full step budget (the lowest eval
MSE against the exact function). A curve is fitted only over its falling range: the longest run
of consecutive widths over which every doubling lowers the error by at least FALL (10%); widths
on a plateau before it or a floor after it are shown but not fitted, and a curve with fewer than
MIN_POINTS falling widths gets no law, with the reason. Activations are compared per function by
the paired bootstrap difference of alpha over the widths both ranges share. The steps check
compares lr 1e-2 at a third of the steps with lr 1e-2 at the full budget, width by width: a
ratio near 1 says more steps no longer help (the error is not optimisation-limited at that lr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import scalinglab as sl  # noqa: E402
from scalinglab.config import DataConfig  # noqa: E402
from scalinglab.data import build_dataset  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

FN, ACT, W, Y = "data.functions.name", "model.activation", "model.width", "final_eval_mse"
LR, STEPS = "optimizer.lr", "train.budget.steps"
CHECK_LR = 1e-2  # the learning rate the steps check runs at both budgets
FALL = 0.9  # a doubling counts as falling when it keeps at most 90% of the error
MIN_POINTS = 3
FORMULAS = {
    "sine": "sin(pi x)",
    "abs": "|x|",
    "high_freq": "sin(4 pi x)",
    "product_2d": "x1 x2",
    "gaussian_bump_2d": "exp(-4 |x|^2)",
    "kink_2d": "|x| (2-D)",
}
# What approximation theory says a one-hidden-layer net of width w can reach (context, not a
# measurement): relu nets are piecewise linear with w kinks, so on a smooth 1-D function the
# best L2 error is O(w^-2), mse O(w^-4); |x| is exact with 2 relu units; tanh units are
# analytic, so on analytic targets the best error falls faster than any power of w.
THEORY = {
    "relu, smooth 1-D target (best piecewise-linear fit, w kinks)": {"alpha": 4.0},
    "relu, |x|": "exact with 2 units (mse 0)",
    "tanh, analytic target": "faster than any power of w",
}


def best_of_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """Per function, activation and width at the full step budget: the run (learning rate)
    with the lowest eval MSE."""
    full = runs[runs[STEPS] == runs[STEPS].max()]
    best = full.sort_values(Y).groupby([FN, ACT, W], as_index=False).first()
    return best.sort_values([FN, ACT, W]).reset_index(drop=True)


def falling_range(errors: np.ndarray) -> tuple[int, int] | None:
    """(first, last) index of the longest run of consecutive points in which each error is at
    most FALL times the one before (the earliest of equally long runs); the whole curve when it
    has fewer than MIN_POINTS points (nothing to trim); None when no run reaches MIN_POINTS."""
    n = len(errors)
    if n < MIN_POINTS:
        return (0, n - 1)
    best, start = (0, 0), 0
    for i in range(1, n + 1):
        if i == n or not errors[i] <= FALL * errors[i - 1]:
            if i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = i
    return best if best[1] - best[0] + 1 >= MIN_POINTS else None


def _fit(rows: pd.DataFrame) -> Any:
    """The offset-free power law of the rows' MSE in width (one group)."""
    fits = h.group_fits(rows, [FN, ACT], W, Y)
    return next(iter(fits.values()))


def _curve(g: pd.DataFrame) -> dict[str, Any]:
    """One (function, activation) curve: its points, falling range, fit and floor."""
    g = g.sort_values(W)
    widths, errors = g[W].to_numpy(int), g[Y].to_numpy(float)
    span = falling_range(errors)
    out: dict[str, Any] = {
        "mse": {str(w): e for w, e in zip(widths, errors, strict=True)},
        "best_lr": {str(w): lr for w, lr in zip(widths, g[LR], strict=True)},
        "min_mse": float(errors.min()),
        "min_at_width": int(widths[errors.argmin()]),
    }
    if span is None:
        out["fit_range"] = None
        out["why"] = (
            f"no {MIN_POINTS} consecutive widths over which each doubling lowers the error by "
            f"{1 - FALL:.0%} or more: no power law in width here"
        )
        return out
    lo, hi = span
    out["fit_range"] = [int(widths[lo]), int(widths[hi])]
    out["fit"] = h.exponent(_fit(g.iloc[lo : hi + 1]))
    # What the law leaves out: a plateau before the range, a floor after it.
    for name, part in (("before_range", slice(0, lo)), ("after_range", slice(hi + 1, None))):
        if len(widths[part]):
            out[name] = {
                "widths": [int(w) for w in widths[part]],
                "mse_min": float(errors[part].min()),
                "mse_max": float(errors[part].max()),
            }
    return out


def _compare(best: pd.DataFrame, curves: dict[str, Any], fn: str) -> dict[str, Any]:
    """For one function: the widths at which each activation has the lower error; relu - tanh
    of the average log-log slope over every width (a paired bootstrap that always exists, but
    no power law where a curve floors); and relu - tanh alpha over the widths both falling
    ranges share, when they share MIN_POINTS."""
    rows = best[best[FN] == fn]
    wide = rows.pivot(index=W, columns=ACT, values=Y)
    every = h.group_fits(rows, [ACT], W, Y, pair_by=[W])
    out: dict[str, Any] = {
        "relu_lower_at": [int(w) for w in wide.index[wide["relu"] < wide["tanh"]]],
        "tanh_lower_at": [int(w) for w in wide.index[wide["tanh"] < wide["relu"]]],
        "slope_all_widths": {act: h.exponent(fit) for act, fit in every.items()},
        "relu_minus_tanh_slope_all_widths": h.paired_difference(every["relu"], every["tanh"]),
    }
    ranges = [curves[h.label((fn, act))]["fit_range"] for act in ("relu", "tanh")]
    shared = None
    if all(r is not None for r in ranges):
        lo, hi = max(r[0] for r in ranges), min(r[1] for r in ranges)  # type: ignore[index]
        shared = rows[(rows[W] >= lo) & (rows[W] <= hi)]
    n = 0 if shared is None else shared[W].nunique()
    if shared is None or n < MIN_POINTS:
        out["relu_minus_tanh_alpha"] = {
            "value": None,
            "ci": None,
            "resolved": None,
            "why": f"the falling ranges share {n} widths (fewer than {MIN_POINTS})",
        }
        return out
    fits = h.group_fits(shared, [ACT], W, Y, pair_by=[W])
    out["shared_range"] = [int(shared[W].min()), int(shared[W].max())]
    out["relu_minus_tanh_alpha"] = h.paired_difference(fits["relu"], fits["tanh"])
    return out


def _steps_check(runs: pd.DataFrame) -> dict[str, Any]:
    """Per curve and width: MSE at lr CHECK_LR after a third of the steps over the MSE at the
    full budget (1: converged at that lr; large: more steps still help)."""
    full = runs[STEPS].max()
    at = runs[np.isclose(runs[LR], CHECK_LR)]
    short = at[at[STEPS] < full]
    if short.empty:
        return {"why": "no shorter budget in this sweep (the smoke setting)"}
    steps = int(short[STEPS].max())
    a = short.set_index([FN, ACT, W])[Y]
    b = at[at[STEPS] == full].set_index([FN, ACT, W])[Y]
    ratio = (a / b).dropna()
    out: dict[str, Any] = {"steps": [steps, int(full)], "lr": CHECK_LR}
    for (fn, act), r in ratio.groupby(level=[0, 1]):
        out[h.label((fn, act))] = {
            "median_ratio": float(r.median()),
            "ratio": {str(w): float(v) for (_, _, w), v in r.items()},
        }
    return out


def _target_var(runs: pd.DataFrame, fn: str) -> float:
    """The variance of the function's validation targets: the MSE of the best constant."""
    row = runs[runs[FN] == fn].iloc[0]
    fields = ("n_train", "n_val", "noise", "seed")
    functions = {"name": fn, **{k: row[f"data.functions.{k}"] for k in fields}}
    data = DataConfig(source="functions", functions=functions)
    return float(build_dataset(data).info["target_var"])


def _figure(best: pd.DataFrame, curves: dict[str, Any], var: dict[str, float]) -> Any:
    """MSE vs width per function (panels) and activation (colours), fitted laws over their
    falling ranges (filled points; hollow: outside the range), the target variance dashed."""
    present = set(best[FN])
    fns = [fn for fn in FORMULAS if fn in present]  # smooth, kinked, high-frequency, then 2-D
    fig, axes = plt.subplots(1, len(fns), figsize=(4.2 * len(fns), 4.0), squeeze=False)
    for ax, fn in zip(axes[0], fns, strict=True):
        for i, (act, g) in enumerate(best[best[FN] == fn].groupby(ACT, sort=True)):
            c = curves[h.label((fn, act))]
            g = g.sort_values(W)
            lo, hi = c["fit_range"] or (np.inf, -np.inf)
            inside = (g[W] >= lo) & (g[W] <= hi)
            ax.plot(g[W], g[Y], "-", color=f"C{i}", alpha=0.3)
            ax.plot(g[W][inside], g[Y][inside], "o", color=f"C{i}")
            ax.plot(g[W][~inside], g[Y][~inside], "o", mfc="none", color=f"C{i}")
            text = f"{act}: no power law"
            if "fit" in c:
                f = c["fit"]
                a_lo, a_hi = f["alpha_ci"]
                text = f"{act}: alpha {f['alpha']:.2f} [{a_lo:.2f}, {a_hi:.2f}]"
                grid = np.geomspace(lo, hi, 50)
                ax.plot(grid, f["A"] * grid ** -f["alpha"], "-", color=f"C{i}", lw=2)
            ax.plot([], [], "o", color=f"C{i}", label=text)
        ax.axhline(var[fn], color="grey", ls="--", lw=1, label="variance of f")
        ax.set(xscale="log", yscale="log", xlabel="hidden width w")
        ax.set_title(f"{fn}: {FORMULAS.get(fn, fn)}")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("eval MSE (best learning rate)")
    fig.suptitle("one hidden layer: mse = A w^-alpha over the falling range", fontsize=10)
    fig.tight_layout()
    return fig


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Best-of-lr curves, their fits and floors, relu vs tanh per function, the steps check,
    the figure `approximation.png` and the table `approximation.csv`."""
    runs = h.finished(sl.load_runs(sweeps["universal_approximation"]))
    best = best_of_lr(runs)
    curves = {h.label(k): _curve(g) for k, g in best.groupby([FN, ACT], sort=True)}
    fns = sorted(best[FN].unique())
    var = {fn: _target_var(runs, fn) for fn in fns}
    acts = set(best[ACT])
    compare = {fn: _compare(best, curves, fn) for fn in fns} if acts >= {"relu", "tanh"} else {}
    h.save_figure(_figure(best, curves, var), out, "approximation")
    best[[FN, ACT, W, LR, Y]].to_csv(out / "approximation.csv", index=False)
    parts = []
    for name, c in curves.items():
        if "fit" in c:
            f = c["fit"]
            lo, hi = f["alpha_ci"]
            span = f"w {c['fit_range'][0]}-{c['fit_range'][1]}"
            parts.append(f"{name} alpha {f['alpha']:.2f} [{lo:.2f}, {hi:.2f}] over {span}")
        else:
            parts.append(f"{name} no power law (min mse {c['min_mse']:.1e})")
    return {
        "answer": "; ".join(parts),
        "alpha": {k: c["fit"] for k, c in curves.items() if "fit" in c},
        "curves": curves,
        "relu_vs_tanh": compare,
        "steps_check": _steps_check(runs),
        "target_variance": var,
        "relative_mse_at_largest_width": {
            k: c["mse"][str(int(best[W].max()))] / var[k.split("@")[0]] for k, c in curves.items()
        },
        "rule": {"fall": FALL, "min_points": MIN_POINTS},
        "theory": THEORY,
    }

"""Learning-rate transfer across width: where the optimal learning rate sits at each width,
under the standard parametrisation and under muP (base width 32).

1. Per parametrisation and width: the final eval loss against log2(lr); the optimal lr by a
   parabola in log2(lr) through the best grid point and its neighbours
   (`scalinglab.experiments.lr_optimum`), with the grid argmin alongside. Diverged trials
   (missing from the finished trials) count as the worst loss on their curve.
2. Per parametrisation: the drift of log2(lr*) across widths (least-squares slope per
   doubling of width) and the max/min ratio of lr* across widths, with 95% intervals from a
   parametric bootstrap over the loss points' noise (each final loss redrawn from its
   standard error over the validation batches; one seed, so seed-to-seed spread is not in it).
3. At the base width muP is the standard parametrisation: the full sweep trains that width
   once and uses it for both; where both were trained (the smoke) their losses are checked
   equal.
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
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import lr_optimum as lo  # noqa: E402

PARAMS = ("standard", "mup")
TRANSFER_RATIO = 2.0  # the criterion: lr* within a factor of 2 across widths
N_BOOT = 2000
SE_COLUMNS = ("final_eval_loss_se_paired", "final_eval_loss_se")  # first complete one


def curves(sweep_dir: Path) -> pd.DataFrame:
    """One row per parametrisation, width and learning rate of the grid: the final eval loss
    (NaN where the trial is missing from the finished ones: diverged) and its paired standard
    error (the noise between trials scored on the same validation batches). The muP curve at
    its base width is the standard one when the sweep trained that width once."""
    runs = h.finished(sl.load_runs(sweep_dir))
    # muP at its base width is the standard trial bit for bit: where the sweep trains that
    # width only once (as standard), its curve serves both parametrisations.
    mup = runs[runs["model.parametrization"] == "mup"]
    base_widths = set(mup["model.mup_base_width"].dropna().astype(int))
    trained = set(mup["model.d_model"].astype(int))
    reuse = runs[
        (runs["model.parametrization"] == "standard")
        & runs["model.d_model"].astype(int).isin(base_widths - trained)
    ].assign(**{"model.parametrization": "mup"})
    runs = pd.concat([runs, reuse], ignore_index=True)
    se = next(
        (runs[c] for c in SE_COLUMNS if c in runs and runs[c].notna().all()),
        pd.Series(np.nan, index=runs.index),
    )
    df = pd.DataFrame(
        {
            "param": runs["model.parametrization"].astype(str),
            "width": runs["model.d_model"].astype(int),
            "lr": runs["optimizer.lr"].astype(float),
            "loss": runs["final_eval_loss"].astype(float),
            "loss_se": se.astype(float),
        }
    )
    grid = pd.MultiIndex.from_product(
        [sorted(df["param"].unique()), sorted(df["width"].unique()), sorted(df["lr"].unique())],
        names=["param", "width", "lr"],
    )
    df = df.set_index(["param", "width", "lr"]).reindex(grid).reset_index()
    df["log2_lr"] = np.log2(df["lr"])
    return df.sort_values(["param", "width", "lr"]).reset_index(drop=True)


def _filled(loss: np.ndarray) -> np.ndarray:
    """A diverged point (NaN) as the curve's worst finite loss, so it never wins the argmin."""
    worst = np.nanmax(loss) if np.isfinite(loss).any() else np.inf
    return np.where(np.isfinite(loss), loss, worst + 1.0)


def optima(df: pd.DataFrame) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per parametrisation: each width's optimum (parabola and grid argmin) and the drift
    summary with its bootstrap intervals."""
    per_width: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for p in PARAMS:
        g = df[df["param"] == p]
        widths = sorted(g["width"].unique())
        if not widths:
            continue
        rows, boots, points = {}, [], []
        for i, w in enumerate(widths):
            c = g[g["width"] == w].sort_values("log2_lr")
            x, y = c["log2_lr"].to_numpy(), _filled(c["loss"].to_numpy(float))
            opt, how = lo.parabola_optimum(x, y)
            boot = lo.bootstrap_optima(
                x, y, c["loss_se"].to_numpy(float), n_boot=N_BOOT, seed=1000 * i + len(p)
            )
            rows[str(w)] = {
                "lr_opt": float(2.0**opt),
                "log2_lr_opt": opt,
                "log2_lr_opt_ci": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
                "how": how,
                "grid_lr_opt": float(2.0 ** x[int(np.argmin(y))]),
                "best_loss": float(np.min(y)),
                "missing_lrs": [float(v) for v in c.loc[~np.isfinite(c["loss"]), "lr"]],
            }
            boots.append(boot)
            points.append(opt)
        log_w = np.log2(np.array(widths, float))
        if len(widths) > 1:
            s = lo.summarise(log_w, np.stack(boots, axis=1), np.array(points))
        else:  # the smoke's single width: no drift to measure
            s = {"slope_per_doubling": None, "slope_ci": None}
            s |= {"max_min_ratio": 1.0, "max_min_ratio_ci": [1.0, 1.0]}
        s["transfers"] = s["max_min_ratio"] <= TRANSFER_RATIO
        s["edge_optima"] = [str(w) for w in widths if rows[str(w)]["how"] == "edge"]
        per_width[p], summary[p] = rows, s
    return per_width, summary


def cost_of_base_lr(df: pd.DataFrame) -> dict[str, Any]:
    """Per parametrisation and width: the loss at the grid learning rate that is best at the
    smallest width (tuned there, used everywhere) minus the width's own best grid loss."""
    out: dict[str, Any] = {}
    for p in PARAMS:
        g = df[df["param"] == p]
        if g.empty:
            continue
        base = g[g["width"] == g["width"].min()]
        lr0 = float(base["lr"].iloc[int(_filled(base["loss"].to_numpy(float)).argmin())])
        out[p] = {"base_lr": lr0}
        for w, c in g.groupby("width"):
            y = _filled(c["loss"].to_numpy(float))
            at = float(y[np.flatnonzero(c["lr"].to_numpy() == lr0)[0]])
            out[p][str(w)] = {"loss_at_base_lr": at, "excess_over_best": at - float(y.min())}
    return out


def base_width_check(sweep_dir: Path) -> dict[str, Any] | None:
    """muP at its base width is the standard trial: the largest loss difference there, where
    the sweep trained both (the smoke); None where it trained that width once."""
    runs = h.finished(sl.load_runs(sweep_dir))
    mup = runs[runs["model.parametrization"] == "mup"]
    base = mup[mup["model.d_model"] == mup["model.mup_base_width"]]
    std = runs[runs["model.parametrization"] == "standard"]
    a = std.set_index(["model.d_model", "optimizer.lr"])["final_eval_loss"]
    b = base.set_index(["model.d_model", "optimizer.lr"])["final_eval_loss"]
    both = a.index.intersection(b.index)
    if not len(both):
        return None
    diff = (a[both] - b[both]).abs()
    return {"n": len(both), "max_abs_loss_diff": float(diff.max())}


def plot(df: pd.DataFrame, per_width: dict[str, Any], out: Path) -> None:
    """Loss vs learning rate, one panel per parametrisation, one line per width, the fitted
    optimum of each marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    widths = sorted(df["width"].unique())
    colours = plt.cm.viridis(np.linspace(0.0, 0.85, len(widths)))
    finite = df["loss"][np.isfinite(df["loss"])]
    top = float(min(finite.max(), finite.min() + 1.5)) if len(finite) else 1.0
    for ax, p in zip(axes, PARAMS, strict=True):
        for colour, w in zip(colours, widths, strict=True):
            c = df[(df["param"] == p) & (df["width"] == w)]
            ax.plot(c["lr"], c["loss"], "o-", color=colour, ms=4, label=f"d_model {w}")
            o = per_width.get(p, {}).get(str(w))
            if o:
                ax.axvline(o["lr_opt"], color=colour, ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("learning rate (Adam, constant)")
        ax.grid(alpha=0.3)
        ax.set_title("muP (base width 32)" if p == "mup" else "standard parametrisation")
        ax.set_ylim(top=top)
    axes[0].set_ylabel("final eval loss (nats)")
    axes[1].legend(fontsize=8)
    fig.suptitle("Learning rate vs width (dotted: fitted optimum)")
    fig.tight_layout()
    h.save_figure(fig, out, "mup_transfer")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    sweep_dir = sweeps["lr_sweep"]
    df = curves(sweep_dir)
    per_width, summary = optima(df)
    check = base_width_check(sweep_dir)
    cost = cost_of_base_lr(df)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "mup_transfer.csv", index=False)
    plot(df, per_width, out)

    def words(p: str) -> str:
        s = summary[p]
        lrs = ", ".join(f"{per_width[p][w]['lr_opt']:.2g}" for w in per_width[p])
        return (
            f"{p} lr* {lrs} (max/min {s['max_min_ratio']:.2f}x "
            f"[{s['max_min_ratio_ci'][0]:.2f}, {s['max_min_ratio_ci'][1]:.2f}]"
            + (
                f"; {s['slope_per_doubling']:+.2f} [{s['slope_ci'][0]:+.2f}, "
                f"{s['slope_ci'][1]:+.2f}] log2 per doubling of width)"
                if s["slope_ci"]
                else ")"
            )
        )

    widths = sorted(df["width"].unique())
    mup_ok = summary["mup"]["transfers"]
    std_ok = summary["standard"]["transfers"]
    verdict = (
        f"muP keeps lr* within {TRANSFER_RATIO:g}x across d_model {widths[0]}-{widths[-1]}"
        if mup_ok
        else f"muP does NOT keep lr* within {TRANSFER_RATIO:g}x across d_model "
        f"{widths[0]}-{widths[-1]}"
    )
    verdict += "; standard " + ("stays within it too" if std_ok else "drifts beyond it")
    answer = f"{verdict}: {words('mup')}; {words('standard')}."
    return {
        "answer": answer,
        "widths": [int(w) for w in widths],
        "lrs": sorted(float(v) for v in df["lr"].unique()),
        "optimum": per_width,
        "drift": summary,
        "cost_of_base_lr": cost,
        "base_width_check": check,
        "method": (
            "lr* = vertex of a parabola in log2(lr) through the best grid point and its two "
            "neighbours (the grid point itself at an edge); intervals: 95% parametric bootstrap "
            f"({N_BOOT} draws) redrawing each final loss from its standard error over "
            "validation batches; one seed"
        ),
    }

"""Compare scaling exponents across groups of a sweep (activation, optimiser, ...).

    python analysis/compare_groups.py runs/activations --by model.activation \
        --out docs/figures/activations/by_activation.png
    python analysis/compare_groups.py runs/optimizers --by optimizer.name optimizer.lr

`scalinglab fit`/`plot` fit one law to a whole sweep; a question like "does GELU scale better
than ReLU?" needs one law per group. For each group (the distinct values of the `--by`
columns) this fits the offset-free power law L = A C^-alpha to the finished trials' final
eval loss against compute C (`scalinglab.fit_power_law(..., offset=False)`, robust Huber fit
in log space) and prints alpha with its bootstrap interval, then plots every group's points
and fitted line on log-log axes. With 4-5 points per group the offset E of L = E + A C^-alpha
is not identifiable, so the exponent here is the local log-log slope over the swept range.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import scalinglab as sl  # noqa: E402


def fit_groups(runs: pd.DataFrame, by: list[str], bootstrap: int = 200) -> pd.DataFrame:
    """One row per group: its columns, n points, alpha with interval, A, rmse, best loss."""
    done = runs[runs["status"] == "done"].dropna(subset=["C", "loss"])
    rows = []
    for values, g in done.groupby(by, sort=True):
        values = values if isinstance(values, tuple) else (values,)
        fit = sl.fit_power_law(g["C"], g["loss"], bootstrap=bootstrap, offset=False)
        lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
        rows.append(
            {
                **dict(zip(by, values, strict=True)),
                "n": len(g),
                "alpha": fit.params["alpha"],
                "alpha_lo": lo,
                "alpha_hi": hi,
                "A": fit.params["A"],
                "rmse": fit.rmse,
                "best_loss": g["loss"].min(),
            }
        )
    return pd.DataFrame(rows)


def plot_groups(runs: pd.DataFrame, table: pd.DataFrame, by: list[str]) -> plt.Figure:
    """Final eval loss vs compute per group, with each group's fitted power law."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    done = runs[runs["status"] == "done"]
    for i, row in table.iterrows():
        mask = np.logical_and.reduce([done[c] == row[c] for c in by])
        g = done[mask].sort_values("C")
        label = ", ".join(str(row[c]) for c in by) + f" (alpha {row['alpha']:.3f})"
        (line,) = ax.plot(g["C"], g["loss"], "o", label=label, color=f"C{i}")
        c = np.geomspace(g["C"].min(), g["C"].max(), 50)
        ax.plot(c, row["A"] * c ** -row["alpha"], "-", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("compute C (FLOPs)")
    ax.set_ylabel("final eval loss (nats/token)")
    ax.set_title("L = A C^-alpha per " + ", ".join(by))
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("source", type=Path, help="a sweep run directory")
    p.add_argument("--by", nargs="+", required=True, help="config columns that define a group")
    p.add_argument("--out", type=Path, default=None, help="PNG to write (and an SVG beside it)")
    p.add_argument("--bootstrap", type=int, default=200)
    args = p.parse_args(argv)
    runs = sl.load_runs(args.source)
    missing = [c for c in args.by if c not in runs.columns]
    if missing:
        p.error(f"unknown column(s) {missing}; e.g. {sorted(c for c in runs.columns if '.' in c)}")
    table = fit_groups(runs, args.by, args.bootstrap)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig = plot_groups(runs, table, args.by)
        fig.savefig(args.out, dpi=120)
        fig.savefig(args.out.with_suffix(".svg"))
        print(f"wrote {args.out}")
    return table


if __name__ == "__main__":
    main()

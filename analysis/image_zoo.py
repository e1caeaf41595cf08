"""Figures and tables of the image model-zoo sweeps (docs/model_zoo.md, "Images").

    python analysis/image_zoo.py families runs/families_digits --out docs/figures/families_digits
    python analysis/image_zoo.py regularisation runs/regularisation_digits \
        --out docs/figures/regularisation_digits

`families`: an IsoFLOP sweep over model families. Left, each budget's IsoFLOP profile (final
eval loss against N) per family; right, each family's compute frontier (the best loss at each
budget) with the offset-free power law L = A C^-alpha fitted to it
(`scalinglab.fit_power_law(..., offset=False)`; three budgets do not identify an offset E).

`regularisation`: a data-scaling sweep (`data.train_subset`) crossed with dropout and weight
decay (and seeds). Best (early-stopped) eval loss against the number of training examples n per
setting (small dots: seeds, large: their mean), with L = A n^-beta fitted to every seed's point;
beta is the data-scaling exponent.

Both print their table and write PNG and SVG figures plus a CSV table into `--out`.
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
from scalinglab import runfiles as rf  # noqa: E402


def load(sweep_dir: Path) -> pd.DataFrame:
    """Finished trials, with the eval accuracy of each summary (`final_eval_accuracy`)."""
    runs = sl.load_runs(sweep_dir)
    runs = runs[runs["status"].isin(["done", "stopped_early"])].copy()
    acc = {}
    for tid in runs["trial_id"]:
        summary = rf.read_json(sweep_dir / tid / rf.SUMMARY) or {}
        acc[tid] = summary.get("final_eval_accuracy")
    runs["accuracy"] = runs["trial_id"].map(acc).astype(float)
    return runs


def _power_law(x: pd.Series, y: pd.Series, bootstrap: int) -> dict[str, float]:
    fit = sl.fit_power_law(
        np.asarray(x, float), np.asarray(y, float), bootstrap=bootstrap, offset=False
    )
    lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
    return {"A": fit.params["A"], "exponent": fit.params["alpha"], "lo": lo, "hi": hi}


def families(sweep_dir: Path, out: Path, bootstrap: int = 200) -> pd.DataFrame:
    """IsoFLOP profiles and compute frontiers per model family."""
    runs = load(sweep_dir)
    runs["budget"] = runs["isoflop_C"]
    frontier = (
        runs.sort_values("loss")
        .groupby(["model.family", "budget"], as_index=False)
        .first()[["model.family", "budget", "model.width", "N", "C", "loss", "accuracy"]]
    )
    fits = {
        fam: _power_law(g["C"], g["loss"], bootstrap) for fam, g in frontier.groupby("model.family")
    }
    frontier["alpha"] = frontier["model.family"].map(lambda f: fits[f]["exponent"])

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    markers = {"mlp": "o", "resnet": "s"}
    budgets = sorted(runs["budget"].unique())
    colours = {b: f"C{i}" for i, b in enumerate(budgets)}
    for (fam, budget), g in runs.groupby(["model.family", "budget"]):
        g = g.sort_values("N")
        ax1.plot(
            g["N"],
            g["loss"],
            marker=markers.get(fam, "^"),
            color=colours[budget],
            linestyle="-" if fam == "mlp" else "--",
            label=f"{fam}, C={budget:.0e}",
        )
    ax1.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="final eval loss (nats)")
    ax1.set_title("IsoFLOP profiles (solid: mlp, dashed: resnet)")
    ax1.legend(fontsize=7)
    for i, (fam, g) in enumerate(frontier.groupby("model.family")):
        g = g.sort_values("C")
        f = fits[fam]
        label = f"{fam}: alpha {f['exponent']:.2f} [{f['lo']:.2f}, {f['hi']:.2f}]"
        ax2.plot(g["C"], g["loss"], markers.get(fam, "^"), color=f"C{i}", label=label)
        c = np.geomspace(g["C"].min(), g["C"].max(), 50)
        ax2.plot(c, f["A"] * c ** -f["exponent"], "-", color=f"C{i}", alpha=0.7)
    ax2.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="best eval loss (nats)")
    ax2.set_title("compute frontier, L = A C^-alpha")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, frontier, out, "families")
    return frontier


def regularisation(sweep_dir: Path, out: Path, bootstrap: int = 200) -> pd.DataFrame:
    """Data-scaling curves and exponents per (dropout, weight decay)."""
    runs = load(sweep_dir)
    keys = ["model.dropout", "optimizer.weight_decay"]
    rows = []
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (values, g) in enumerate(runs.groupby(keys)):
        n, loss = g["data.train_subset"], g["best_eval_loss"]
        f = _power_law(n, loss, bootstrap)  # every seed's point: the fit weighs them equally
        mean = g.groupby("data.train_subset")[["best_eval_loss", "accuracy"]].mean()
        dropout, wd = values
        rows.append(
            {
                "dropout": dropout,
                "weight_decay": wd,
                "beta": f["exponent"],
                "beta_lo": f["lo"],
                "beta_hi": f["hi"],
                "A": f["A"],
                **{f"loss@{k}": v for k, v in mean["best_eval_loss"].items()},
                "acc@max": mean["accuracy"].iloc[-1],
            }
        )
        label = f"dropout {dropout:g}, wd {wd:g}: beta {f['exponent']:.2f}"
        ax.plot(n, loss, ".", color=f"C{i}", alpha=0.35)
        ax.plot(mean.index, mean["best_eval_loss"], "o", color=f"C{i}", label=label)
        grid = np.geomspace(n.min(), n.max(), 50)
        ax.plot(grid, f["A"] * grid ** -f["exponent"], "-", color=f"C{i}", alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="training examples n")
    ax.set(ylabel="best (early-stopped) eval loss (nats)")
    ax.set_title("data scaling, L = A n^-beta, MLP 2x256 on digits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    table = pd.DataFrame(rows)
    _save(fig, table, out, "regularisation")
    return table


def _save(fig: plt.Figure, table: pd.DataFrame, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "svg"):
        fig.savefig(out / f"{name}.{ext}", dpi=150)
    table.to_csv(out / f"{name}.csv", index=False)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {out / name}.png, .svg, .csv")


def main(argv: Sequence[str] | None = None) -> pd.DataFrame:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=["families", "regularisation"])
    p.add_argument("source", type=Path, help="a sweep run directory")
    p.add_argument("--out", type=Path, required=True, help="folder for the figure and table")
    p.add_argument("--bootstrap", type=int, default=200, help="resamples for the intervals")
    args = p.parse_args(argv)
    fn = families if args.kind == "families" else regularisation
    return fn(args.source, args.out, args.bootstrap)


if __name__ == "__main__":
    main()

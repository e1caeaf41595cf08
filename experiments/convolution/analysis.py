"""How does loss scale for a ResNet vs an MLP on images? IsoFLOP profiles and frontiers.

Per family and compute budget the frontier is the best final eval loss over the swept widths;
each family's frontier gets `L = A C^-alpha` (three budgets do not identify an offset), and
the two exponents are compared by a paired bootstrap over budgets. FLOPs per parameter and
example (C / (N D)) say how much more a convolution's weights cost than a dense layer's.
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

FAMILY, BUDGET = "model.family", "isoflop_C"
MARKERS = {"mlp": "o", "resnet": "s"}


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """Per family and budget, the run with the lowest final eval loss."""
    best = runs.sort_values("loss").groupby([FAMILY, BUDGET], as_index=False).first()
    cols = [FAMILY, BUDGET, "model.width", "N", "C", "loss", "final_eval_accuracy"]
    return best[cols].sort_values([FAMILY, BUDGET])


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Frontier table, exponents per family, resnet - mlp, FLOPs per parameter, `families.png`."""
    runs = h.finished(sl.load_runs(sweeps["families_digits"]))
    front = frontier(runs)
    fits = h.group_fits(front, [FAMILY], "C", "loss", pair_by=[BUDGET])
    diff = h.paired_difference(fits["resnet"], fits["mlp"])
    per_param = (runs["C"] / (runs["N"] * runs["D"])).groupby(runs[FAMILY]).mean()
    wide = front.pivot(index=BUDGET, columns=FAMILY, values="loss")
    gap = (wide["resnet"] - wide["mlp"]).dropna()
    h.save_figure(_figure(runs, front, fits), out, "families")
    front.to_csv(out / "families.csv", index=False)
    ahead = "ahead of" if (gap > 0).all() else "not always ahead of"
    return {
        "answer": (
            f"the MLP is {ahead} the ResNet at every budget (ResNet minus MLP best loss "
            f"{gap.min():.3f} to {gap.max():.3f} nats); alpha resnet - mlp {h.describe(diff, 2)}"
        ),
        "alpha": {name: h.exponent(fit) for name, fit in fits.items()},
        "resnet_minus_mlp_alpha": diff,
        "flops_per_param_example": per_param.to_dict(),
        "resnet_over_mlp_flops_per_param": per_param["resnet"] / per_param["mlp"],
        "resnet_minus_mlp_loss": {f"{b:.0e}": v for b, v in gap.items()},
        "frontier": {
            fam: {
                f"{r[BUDGET]:.0e}": {
                    "width": r["model.width"],
                    "N": r["N"],
                    "loss": r["loss"],
                    "accuracy": r["final_eval_accuracy"],
                }
                for _, r in g.iterrows()
            }
            for fam, g in front.groupby(FAMILY)
        },
    }


def _figure(runs: pd.DataFrame, front: pd.DataFrame, fits: dict[str, Any]) -> Any:
    """Left: IsoFLOP profiles per family and budget; right: frontiers with their power laws."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    colours = {b: f"C{i}" for i, b in enumerate(sorted(runs[BUDGET].unique()))}
    for (fam, budget), g in runs.groupby([FAMILY, BUDGET]):
        g = g.sort_values("N")
        ax1.plot(
            g["N"],
            g["loss"],
            marker=MARKERS.get(fam, "^"),
            color=colours[budget],
            linestyle="-" if fam == "mlp" else "--",
            label=f"{fam}, C={budget:.0e}",
        )
    ax1.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="final eval loss (nats)")
    ax1.set_title("IsoFLOP profiles (solid: mlp, dashed: resnet)")
    ax1.legend(fontsize=7)
    for i, (fam, g) in enumerate(front.groupby(FAMILY)):
        fit = fits[fam]
        lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
        text = f"{fam}: alpha {fit.params['alpha']:.2f} [{lo:.2f}, {hi:.2f}]"
        ax2.plot(g["C"], g["loss"], MARKERS.get(fam, "^"), color=f"C{i}", label=text)
        c = np.geomspace(g["C"].min(), g["C"].max(), 50)
        ax2.plot(c, fit.params["A"] * c ** -fit.params["alpha"], "-", color=f"C{i}", alpha=0.7)
    ax2.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="best eval loss (nats)")
    ax2.set_title("compute frontier, L = A C^-alpha")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return fig

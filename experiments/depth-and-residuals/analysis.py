"""How deep can an MLP train, with and without residual connections?

Per (activation, residual, depth): the final eval loss and accuracy (trainability), and at the
final checkpoint the gradient norm of every layer's weights on 256 validation digits, summed
up by the least-squares slope of log10(norm) over the hidden layers' positions (decades per
layer towards the output; > 0 means vanishing towards the input) and the first hidden layer's
norm over the last's. Each residual net is compared with the plain net of the same depth and
activation: the difference of final eval losses (one seed: no interval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import scalinglab as sl  # noqa: E402
from scalinglab.experiments import gradients as g  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

ACT, RES, DEPTH = "model.activation", "model.residual", "model.depth"
KIND = {False: "plain", True: "residual"}


def per_trial(runs: pd.DataFrame, norms: pd.DataFrame) -> pd.DataFrame:
    """One row per trial: depth, kind, activation, final eval loss and accuracy, and the
    gradient slope through its hidden layers with its interval."""
    rows = []
    for tid, grp in norms.groupby("trial_id"):
        hidden = grp[grp["layer"] != "head"].sort_values("index")
        s = g.depth_slope(hidden["index"].to_numpy(), hidden["grad_norm"].to_numpy())
        run = runs[runs["trial_id"] == tid].iloc[0]
        rows.append(
            {
                "trial_id": tid,
                "activation": run[ACT],
                "kind": KIND[bool(run[RES])],
                "depth": int(run[DEPTH]),
                "final_eval_loss": float(run["final_eval_loss"]),
                "final_eval_accuracy": float(run["final_eval_accuracy"]),
                "grad_slope": s["slope"],
                "grad_slope_ci": s["ci"],
                "first_over_last": s.get("first_over_last"),
            }
        )
    return pd.DataFrame(rows).sort_values(["activation", "kind", "depth"], ignore_index=True)


def figure(table: pd.DataFrame, out: Path) -> None:
    """Left: final eval loss vs depth; right: first-over-last gradient norm vs depth."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, act in enumerate(sorted(table["activation"].unique())):
        for kind, style in (("plain", "-o"), ("residual", "--s")):
            t = table[(table["activation"] == act) & (table["kind"] == kind)]
            name = f"{act}, {kind}"
            left.plot(t["depth"], t["final_eval_loss"], style, color=f"C{i}", label=name)
            right.plot(t["depth"], t["first_over_last"], style, color=f"C{i}", label=name)
    left.set(
        xscale="log",
        xlabel="hidden layers",
        ylabel="final eval loss (nats)",
        title="trainability: loss after 400 steps",
    )
    right.axhline(1.0, color="k", lw=0.6)
    right.set(
        xscale="log",
        yscale="log",
        xlabel="hidden layers",
        ylabel="||dL/dW|| first hidden layer / last",
        title="gradient at the input end vs the output end",
    )
    depths = sorted(table["depth"].unique())
    for ax in (left, right):
        ax.minorticks_off()  # log axes: only the swept depths are labelled
        ax.set_xticks(depths, labels=[str(d) for d in depths])
        ax.legend(fontsize=8)
    fig.tight_layout()
    h.save_figure(fig, out, "depth")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Per-trial table (`depth_table.csv`), residual - plain loss per depth, the figure."""
    runs = h.finished(sl.load_runs(sweeps["depth_digits"]))
    norms = g.layer_norm_table(sweeps["depth_digits"], [ACT, RES, DEPTH])
    norms.to_csv(out / "layer_grad_norms.csv", index=False)
    table = per_trial(runs, norms)
    table.to_csv(out / "depth_table.csv", index=False)
    figure(table, out)
    wide = table.pivot_table(
        index=["activation", "depth"], columns="kind", values="final_eval_loss"
    )
    gap = {
        f"{act}@{depth}": {
            "plain": float(row["plain"]),
            "residual": float(row["residual"]),
            "residual_minus_plain": float(row["residual"] - row["plain"]),
        }
        for (act, depth), row in wide.iterrows()
        if {"plain", "residual"} <= set(row.index)
    }
    lines = []
    for act in sorted(table["activation"].unique()):
        t = table[table["activation"] == act]
        best = {k: t[t["kind"] == k].sort_values("final_eval_loss").iloc[0] for k in KIND.values()}
        deepest = int(t["depth"].max())
        at = {k: t[(t["kind"] == k) & (t["depth"] == deepest)].iloc[0] for k in KIND.values()}
        lines.append(
            f"{act}: best plain depth {int(best['plain']['depth'])} "
            f"(loss {best['plain']['final_eval_loss']:.3f}), best residual depth "
            f"{int(best['residual']['depth'])} ({best['residual']['final_eval_loss']:.3f}); at "
            f"depth {deepest} plain {at['plain']['final_eval_loss']:.3f} vs residual "
            f"{at['residual']['final_eval_loss']:.3f}"
        )
    return {
        "answer": "; ".join(lines),
        "trials": table.to_dict(orient="records"),
        "residual_vs_plain": gap,
        "layer_grad_norms": "layer_grad_norms.csv",
    }

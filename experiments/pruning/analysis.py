"""Global magnitude pruning vs model size: the loss (and accuracy) each sparsity costs, with
and without a short masked fine-tune, and the largest sparsity that stays near dense.

1. Every finished trial's final weights are pruned at 0-90% sparsity with one magnitude
   threshold over all kernels and embeddings (`scalinglab.experiments.prune`), and each
   pruned model is also fine-tuned for 5% of the trial's step budget with the mask applied
   after every update. Every version is scored by the trainer's eval step on the trial's
   validation batches; the dense row is checked against the trial's recorded loss.
2. Per family: the relative loss change against dense at each sparsity (the fine-tuned
   models against the dense model fine-tuned the same way), per size with an interval over
   seeds; per trial, the largest sparsity whose loss stays within 1% and 5% of dense (and,
   for classifiers, whose accuracy stays within 1 point), and its slope per decade of N with
   a seed bootstrap interval (`scalinglab.experiments.trend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import scalinglab as sl  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import prune as pr  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

SIZE = {"gpt": "model.d_model", "mlp": "model.width"}
REPORTED = (0.5, 0.7, 0.9)  # sparsities whose loss change vs N goes into findings (all: csv)
VARIANTS = {"pruned": "", "fine_tuned": "ft_"}  # column prefix of each variant's metrics
TOLERANCES = {"loss_1pct": ("rel_loss", 0.01), "loss_5pct": ("rel_loss", 0.05)}
ACCURACY_TOL = {"accuracy_1pt": ("accuracy_drop", 0.01)}
TOLERANCE_WORDS = {
    "loss_1pct": "loss within 1%",
    "loss_5pct": "loss within 5%",
    "accuracy_1pt": "accuracy within 1 point",
}


def prune_rows(sweep_dir: Path) -> tuple[pd.DataFrame, list[float]]:
    """One row per finished trial, sparsity and variant (pruned, or pruned and fine-tuned):
    eval metrics and their change against the same variant at sparsity 0; the recorded diffs."""
    rows, diffs = [], []
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        family = r["model.family"]
        table = pr.pruning_table(sweep_dir / r["trial_id"])
        diffs.append(table[0]["recorded_diff"])
        for variant, p in VARIANTS.items():
            dense = table[0]
            for t in table:
                row = {
                    "trial_id": r["trial_id"],
                    "family": family,
                    "size": int(r[SIZE[family]]),
                    "N": int(r["N"]),
                    "seed": int(r["seed"]),
                    "variant": variant,
                    "sparsity": t["sparsity"],
                    "weights_off": abs(t[f"{p}measured_sparsity"] - t["sparsity"])
                    * t["n_prunable"],
                    "ft_steps": t["ft_steps"],
                    "loss": t[f"{p}loss"],
                    "rel_loss": t[f"{p}loss"] / dense[f"{p}loss"] - 1.0,
                    "fine_tune_alone": dense["ft_loss"] / dense["loss"] - 1.0,
                }
                if "accuracy" in t:
                    row["accuracy"] = t[f"{p}accuracy"]
                    row["accuracy_drop"] = dense[f"{p}accuracy"] - t[f"{p}accuracy"]
                rows.append(row)
    return pd.DataFrame(rows), diffs


def max_sparsity(g: pd.DataFrame, column: str, tol: float) -> float:
    """The largest sparsity up to which `column` (a cost against dense) stays within `tol`
    at every sparsity of the grid."""
    g = g.sort_values("sparsity")
    over = g[g[column] > tol]
    ok = g if over.empty else g[g["sparsity"] < over["sparsity"].min()]
    return float(ok["sparsity"].max())


def summarise(table: pd.DataFrame) -> dict[str, Any]:
    """Per family and variant: the loss change at each sparsity vs N, and the largest
    sparsity within each tolerance vs N (each with seed intervals and a slope per decade)."""
    changes: dict[str, Any] = {}
    largest: dict[str, Any] = {}
    for (family, variant), g in table.groupby(["family", "variant"], sort=True):
        changes.setdefault(family, {})[variant] = {
            f"{s:g}": tr.seed_bootstrap_trend(gs["N"], gs["rel_loss"])
            for s, gs in g.groupby("sparsity")
            if s in REPORTED
        }
        tols = {
            **TOLERANCES,
            **(ACCURACY_TOL if "accuracy" in g and g["accuracy"].notna().all() else {}),
        }
        per_trial = g.groupby("trial_id")
        n = per_trial["N"].first()
        largest.setdefault(family, {})[variant] = {
            name: tr.seed_bootstrap_trend(n, per_trial.apply(max_sparsity, col, tol)[n.index])
            for name, (col, tol) in tols.items()
        }
    return {"loss_change": changes, "max_sparsity": largest}


PANELS = {  # per family: the cost plotted vs sparsity, and the tolerances plotted vs N
    "gpt": ("rel_loss", "eval loss change vs dense (%)", ("loss_1pct", "loss_5pct")),
    "mlp": ("accuracy_drop", "accuracy lost vs dense (points)", ("accuracy_1pt", "loss_5pct")),
}


def figure(table: pd.DataFrame, found: dict[str, Any], out: Path) -> None:
    """Per family (rows): the cost against dense vs sparsity per size (GPT: relative loss;
    MLP: accuracy, its loss being near 0), pruned (solid) and fine-tuned (dashed); and the
    largest sparsity within each tolerance vs N, with seed intervals."""
    families = sorted(found["max_sparsity"])
    fig, axes = plt.subplots(len(families), 2, figsize=(11.5, 4.2 * len(families)), squeeze=False)
    styles = {"pruned": "-o", "fine_tuned": "--s"}
    for (left, right), family in zip(axes, families, strict=True):
        column, ylabel, tols = PANELS[family]
        g = table[table["family"] == family]
        for i, (size, gs) in enumerate(g.groupby("size", sort=True)):
            for variant, style in styles.items():
                m = gs[gs["variant"] == variant].groupby("sparsity")[column].mean()
                tag = "" if variant == "pruned" else " fine-tuned"
                left.plot(
                    100 * m.index, 100 * m.to_numpy(), style, color=f"C{i}", ms=3,
                    label=f"{family} {size}{tag}",
                )  # fmt: skip
        left.axhline(0.0, color="k", lw=0.6)
        left.set(
            xlabel="sparsity (% of kernel and embedding weights)",
            ylabel=ylabel,
            title=f"{family}: cost of pruning (seed mean)",
        )
        left.set_yscale("symlog", linthresh=1.0)
        left.legend(fontsize=6, ncol=2)
        for j, (variant, style) in enumerate(styles.items()):
            for name, alpha in zip(tols, (1.0, 0.45), strict=True):
                t = found["max_sparsity"][family][variant][name]
                per = t["per_size"]
                right.errorbar(
                    [p["x"] for p in per],
                    [100 * p["mean"] for p in per],
                    yerr=[
                        [100 * (p["mean"] - p["ci"][0]) for p in per],
                        [100 * (p["ci"][1] - p["mean"]) for p in per],
                    ],
                    fmt=style, color=f"C{j}", alpha=alpha, ms=4, capsize=3,
                    label=f"{variant.replace('_', '-')}: {TOLERANCE_WORDS[name]}",
                )  # fmt: skip
        right.set(
            xscale="log",
            xlabel="parameters N",
            ylabel="largest sparsity within tolerance (%)",
            title=f"{family}: how much can be pruned",
            ylim=(-5, 95),
        )
        right.legend(fontsize=7)
    fig.tight_layout()
    h.save_figure(fig, out, "pruning")


def _words(t: dict[str, Any]) -> str:
    """A max-sparsity trend in words: smallest and largest size's means and the slope."""
    a, b = t["per_size"][0]["mean"], t["per_size"][-1]["mean"]
    if t["resolved"] is None:
        return f"{100 * a:.0f}%"
    points = {
        **t,
        "slope_per_decade": 100 * t["slope_per_decade"],
        "ci": [100 * c for c in t["ci"]],
    }
    trend = (
        tr.describe_trend(points, 0).replace("per decade of N", "points per decade of N")
        if t["resolved"]
        else "no measurable trend"
    )
    return f"{100 * a:.0f}% -> {100 * b:.0f}% ({trend})"


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Prune every trained GPT and classifier at 0-90%; loss vs sparsity and the largest
    sparsity within 1% and 5% of dense, with and without a masked fine-tune, vs N."""
    parts = [prune_rows(d) for d in sweeps.values()]
    table = pd.concat([p[0] for p in parts], ignore_index=True)
    diffs = [d for p in parts for d in p[1]]
    table.to_csv(out / "pruning.csv", index=False)
    found = summarise(table)
    figure(table, found, out)
    bits = []
    for family, per in found["max_sparsity"].items():
        _, _, tols = PANELS.get(family, (None, None, ("loss_1pct", "loss_5pct")))
        words = [
            f"{TOLERANCE_WORDS[name]} of dense up to {_words(per['pruned'][name])} sparsity "
            f"from the smallest to the largest N, {_words(per['fine_tuned'][name])} fine-tuned"
            for name in tols
        ]
        bits.append(f"{family}: " + "; ".join(words))
    dense = table[(table["sparsity"] == 0) & (table["variant"] == "pruned")]
    return {
        "answer": " | ".join(bits),
        "clean_check": {
            "max_abs_diff_from_recorded": float(max(diffs)),
            "trials": int(table["trial_id"].nunique()),
        },
        "sparsity_check": {"max_weights_off": float(table["weights_off"].max())},
        "fine_tune": {
            family: {
                "steps": sorted({int(s) for s in g["ft_steps"]}),
                "dense_loss_change": tr.seed_bootstrap_trend(g["N"], g["fine_tune_alone"]),
            }
            for family, g in dense.groupby("family")
        },
        **found,
        "sparsities": sorted(float(s) for s in table["sparsity"].unique()),
        "table": "pruning.csv",
    }

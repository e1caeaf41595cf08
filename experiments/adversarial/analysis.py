"""Adversarial robustness vs model size: FGSM and PGD accuracy per epsilon, family and size.

1. Every finished classifier's final checkpoint is attacked on the 297 validation digits
   (`scalinglab.experiments.attacks`: FGSM, and PGD with 10 steps and a random start, both
   L-infinity and clipped to the pixel range [0, 1]); the attacked images are scored by the
   trainer's own eval step. Epsilon 0 is the clean evaluation, checked against the accuracy
   and loss each trial's summary.json recorded.
2. Per family, attack and epsilon: the accuracy's slope per decade of N, fitted to the
   per-size means over seeds, with a 95% interval from resampling each size's seeds
   (`scalinglab.experiments.trend`). A positive slope is robustness that grows with N.
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
from scalinglab.experiments import attacks as at  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

FAMILY, WIDTH = "model.family", "model.width"
EPSILONS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
REFERENCE_EPS = 0.1  # the answer line's epsilon: 1.6 of the digits' 16 grey levels
PGD_STEPS = 10


def attack_rows(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """One row per trial, attack and epsilon: accuracy and loss on the attacked images, with
    the trial's family, width, N, seed and its recorded clean metrics."""
    rows = []
    for _, r in runs.iterrows():
        for row in at.attack_table(sweep_dir / r["trial_id"], EPSILONS, PGD_STEPS, seed=0):
            rows.append(
                {
                    "trial_id": r["trial_id"],
                    "family": r[FAMILY],
                    "width": int(r[WIDTH]),
                    "N": int(r["N"]),
                    "seed": int(r["seed"]),
                    "recorded_accuracy": float(r["final_eval_accuracy"]),
                    "recorded_loss": float(r["final_eval_loss"]),
                    **row,
                }
            )
    return pd.DataFrame(rows)


def clean_check(table: pd.DataFrame) -> dict[str, float]:
    """How far the evaluation at epsilon 0 is from what the trials recorded (it should be 0
    up to float rounding: the same eval step on the same batches)."""
    clean = table[table["eps"] == 0.0]
    return {
        "max_abs_accuracy_diff": float(
            (clean["accuracy"] - clean["recorded_accuracy"]).abs().max()
        ),
        "max_abs_loss_diff": float((clean["loss"] - clean["recorded_loss"]).abs().max()),
        "trials": int(clean["trial_id"].nunique()),
    }


def trends(table: pd.DataFrame) -> dict[str, Any]:
    """`{family: {attack@eps: trend}}`: accuracy's slope per decade of N with seed intervals."""
    out: dict[str, Any] = {}
    for (family, attack, eps), g in table.groupby(["family", "attack", "eps"], sort=True):
        if eps == 0.0 and attack == "pgd":
            continue  # the clean accuracy is listed once, as fgsm@0
        key = "clean" if eps == 0.0 else f"{attack}@{eps:g}"
        out.setdefault(family, {})[key] = tr.seed_bootstrap_trend(g["N"], g["accuracy"])
    return out


def accuracy_table(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean accuracy over seeds per family, size, attack and epsilon (the figure's points)."""
    keys = ["family", "width", "N", "attack", "eps"]
    mean = table.groupby(keys, sort=True)["accuracy"].agg(["mean", "min", "max", "count"])
    return [
        {**dict(zip(keys, k, strict=True)), **{c: float(v) for c, v in row.items()}}
        for k, row in mean.iterrows()
    ]


def figure(table: pd.DataFrame, found: dict[str, Any], out: Path) -> None:
    """Per family: accuracy vs epsilon per size (PGD solid, FGSM dashed); last panel: PGD
    accuracy at the reference epsilon vs N per family, seed mean with its interval."""
    families = sorted(table["family"].unique())
    fig, axes = plt.subplots(1, len(families) + 1, figsize=(5.2 * (len(families) + 1), 4.2))
    for ax, family in zip(axes, families, strict=False):
        sub = table[table["family"] == family]
        for i, (n, g) in enumerate(sub.groupby("N", sort=True)):
            width = int(g["width"].iloc[0])
            for attack, style in (("pgd", "-o"), ("fgsm", "--")):
                m = g[g["attack"] == attack].groupby("eps")["accuracy"].mean()
                label = f"width {width} (N={n:,})" if attack == "pgd" else None
                ax.plot(m.index, m.to_numpy(), style, color=f"C{i}", ms=3, label=label)
        ax.set(
            xlabel="epsilon (L-infinity, pixels in [0, 1])",
            ylabel="validation accuracy",
            title=f"{family}: PGD-{PGD_STEPS} solid, FGSM dashed",
            ylim=(0, 1.02),
        )
        ax.legend(fontsize=7)
    ax = axes[-1]
    for i, family in enumerate(families):
        for key, style in (("clean", ":s"), (f"pgd@{REFERENCE_EPS:g}", "-o")):
            t = found[family][key]
            xs = [p["x"] for p in t["per_size"]]
            ys = [p["mean"] for p in t["per_size"]]
            err = np.array(
                [[p["mean"] - p["ci"][0], p["ci"][1] - p["mean"]] for p in t["per_size"]]
            )
            ax.errorbar(
                xs,
                ys,
                yerr=err.T,
                fmt=style,
                color=f"C{i}",
                ms=4,
                capsize=3,
                label=f"{family}, {key}: {tr.describe_trend(t, 2)}",
            )
    ax.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="validation accuracy",
        title=f"clean and PGD accuracy at epsilon {REFERENCE_EPS:g} vs N",
        ylim=(0, 1.02),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    h.save_figure(fig, out, "adversarial")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Attack every classifier, check the clean evaluation, fit accuracy vs N per epsilon."""
    runs = h.finished(sl.load_runs(sweeps["classifiers"]))
    table = attack_rows(runs, sweeps["classifiers"])
    table.to_csv(out / "adversarial_accuracy.csv", index=False)
    found = trends(table)
    figure(table, found, out)
    ref = f"pgd@{REFERENCE_EPS:g}"
    parts = []
    for family, t in found.items():
        r = t[ref]
        means = ", ".join(f"{p['mean']:.2f}" for p in r["per_size"])
        verdict = (
            "no measurable trend"
            if r["resolved"] is False
            else "rises"
            if r["resolved"] and r["slope_per_decade"] > 0
            else "falls"
            if r["resolved"]
            else "one size"
        )
        parts.append(
            f"{family}: PGD accuracy at eps {REFERENCE_EPS:g} {means} from smallest to largest "
            f"N, {verdict} ({tr.describe_trend(r, 2)})"
        )
    return {
        "answer": "; ".join(parts),
        "epsilons": EPSILONS,
        "pgd_steps": PGD_STEPS,
        "reference_eps": REFERENCE_EPS,
        "clean_check": clean_check(table),
        "trend": found,
        "accuracy": accuracy_table(table),
        "table": "adversarial_accuracy.csv",
    }

"""Post-training weight quantisation vs model size: the loss (and accuracy) it costs and the
memory it saves, for GPTs and MLP classifiers.

1. Every finished trial's final weights are stored as fp16, bf16 and int8 (per-output-channel
   symmetric; `scalinglab.experiments.quantize`), read back as float32 and scored by the
   trainer's own eval step on the trial's validation batches. The fp32 row is checked against
   the loss (and accuracy) the trial's summary.json recorded.
2. Per family and scheme: the loss change against fp32 (paired: same trial, same batches),
   its mean per size with an interval over seeds, and its slope per decade of N with a seed
   bootstrap interval (`scalinglab.experiments.trend`); the bytes stored over fp32's.
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
from scalinglab.experiments import quantize as qz  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

QUANTISED = ("fp16", "bf16", "int8")
SIZE = {"gpt": "model.d_model", "mlp": "model.width"}


def quant_rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished trial and scheme: eval metrics, their change against fp32, bytes."""
    rows = []
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        family = r["model.family"]
        for row in qz.quantization_table(sweep_dir / r["trial_id"]):
            rows.append(
                {
                    "trial_id": r["trial_id"],
                    "family": family,
                    "size": int(r[SIZE[family]]),
                    "N": int(r["N"]),
                    "seed": int(r["seed"]),
                    **row,
                }
            )
    return pd.DataFrame(rows)


def trends(table: pd.DataFrame) -> dict[str, Any]:
    """`{family: {scheme: {metric: trend}}}` of the change against fp32 over N."""
    out: dict[str, Any] = {}
    for (family, scheme), g in table[table["scheme"].isin(QUANTISED)].groupby(
        ["family", "scheme"], sort=True
    ):
        metrics = ["delta_loss"] + (["delta_accuracy"] if g["delta_accuracy"].notna().all() else [])
        out.setdefault(family, {})[scheme] = {
            m: tr.seed_bootstrap_trend(g["N"], g[m]) for m in metrics
        }
    return out


def memory(table: pd.DataFrame) -> dict[str, Any]:
    """Per family and scheme: bytes stored over fp32's at each size (the same for every seed)."""
    out: dict[str, Any] = {}
    for (family, scheme), g in table.groupby(["family", "scheme"], sort=True):
        per = g.groupby("N", sort=True).first()
        out.setdefault(family, {})[scheme] = [
            {"N": int(n), "bytes": int(r["bytes"]), "ratio": float(r["memory_ratio"])}
            for n, r in per.iterrows()
        ]
    return out


def figure(table: pd.DataFrame, found: dict[str, Any], mem: dict[str, Any], out: Path) -> None:
    """Left: the loss change against fp32 vs N per family and scheme (seed mean and interval,
    symlog axis: fp16's changes are far below bf16's and int8's). Right: bytes over fp32's."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    styles = {"gpt": "-o", "mlp": "--s"}
    for family, per in found.items():
        for i, scheme in enumerate(QUANTISED):
            t = per[scheme]["delta_loss"]
            xs = [p["x"] for p in t["per_size"]]
            ys = [p["mean"] for p in t["per_size"]]
            lo = [p["mean"] - p["ci"][0] for p in t["per_size"]]
            hi = [p["ci"][1] - p["mean"] for p in t["per_size"]]
            left.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                fmt=styles[family],
                color=f"C{i}",
                ms=4,
                capsize=3,
                label=f"{family} {scheme}",
            )
            m = mem[family][scheme]
            right.plot(
                [p["N"] for p in m],
                [p["ratio"] for p in m],
                styles[family],
                color=f"C{i}",
                ms=4,
                label=f"{family} {scheme}",
            )
    left.axhline(0.0, color="k", lw=0.6)
    left.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="eval loss change vs fp32 (nats)",
        title="loss cost of weight quantisation",
    )
    left.set_yscale("symlog", linthresh=1e-5)
    left.legend(fontsize=7, ncol=2)
    right.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="bytes stored / fp32 bytes",
        title="memory of the stored weights",
        ylim=(0, 0.6),
    )
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    h.save_figure(fig, out, "quantization")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Quantise every trained GPT and classifier; loss change and memory per scheme vs N."""
    table = pd.concat([quant_rows(d) for d in sweeps.values()], ignore_index=True)
    table.to_csv(out / "quantization.csv", index=False)
    found = trends(table)
    mem = memory(table)
    figure(table, found, mem, out)
    fp32 = table[table["scheme"] == "fp32"]
    parts = []
    for family, per in found.items():
        bits = []
        for scheme in QUANTISED:
            t = per[scheme]["delta_loss"]
            sizes = t["per_size"]
            lo, hi = mem[family][scheme][0]["ratio"], mem[family][scheme][-1]["ratio"]
            trend = (
                "no measurable trend"
                if t["resolved"] is False
                else tr.describe_trend(t, 5)
                if t["resolved"]
                else "one size"
            )
            bits.append(
                f"{scheme} {sizes[0]['mean']:+.1e} to {sizes[-1]['mean']:+.1e} nats "
                f"({trend}), memory x{lo:.2f}-{hi:.2f}"
            )
        parts.append(f"{family}: " + "; ".join(bits))
    return {
        "answer": " | ".join(parts),
        "clean_check": {
            "max_abs_diff_from_recorded": float(fp32["recorded_diff"].max()),
            "trials": int(fp32["trial_id"].nunique()),
        },
        "trend": found,
        "memory": mem,
        "table": "quantization.csv",
    }

"""Shortcut learning: how much a digits classifier relies on a planted spurious marker, vs the
marker's strength and the model's size, and whether more data or an augmentation that
removes the marker fixes it.

1. Every finished trial's final checkpoint is scored by the trainer's eval step on its 297
   validation digits four ways (`scalinglab.experiments.shortcut`): clean (unmarked, as the
   trainer evaluated it: checked against the trial's recorded loss and accuracy), marker
   absent (the marker region set to 0), aligned (marker = label) and flipped (marker = label
   + 1 mod 10). Reliance = accuracy(aligned) - accuracy(flipped).
2. `strength` and `resnet` sweeps: per family and strength, reliance and accuracy vs N with
   a slope per decade of N and seed-bootstrap intervals (`scalinglab.experiments.trend`);
   `reliance_above_control` subtracts the reliance of the same family, width and seed
   trained without a marker (strength 0: the same init and batches).
3. `fixes` sweep: per training-set size, reliance with and without marker removal; the
   removal's effect as paired (same size and seed) differences with a bootstrap interval,
   and reliance's slope per decade of training examples.
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
from scalinglab.experiments import imageeval as ie  # noqa: E402
from scalinglab.experiments import shortcut as sc  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

STRENGTH, SUBSET, REMOVE = (
    "data.shortcut.strength",
    "data.train_subset",
    "data.shortcut.remove_prob",
)
REFERENCE_STRENGTH = 0.9  # the answer line's strength (the fixes sweep's)
FULL_TRAIN = 1500  # digits' training split: train_subset unset means all of it


def score_rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per finished trial: its settings, accuracy and loss per variant, reliance."""
    rows = []
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        s = sc.variant_scores(sweep_dir / r["trial_id"])
        subset = r.get(SUBSET)
        row = {
            "trial_id": r["trial_id"],
            "family": r["model.family"],
            "width": int(r["model.width"]),
            "N": int(r["N"]),
            "seed": int(r["seed"]),
            "strength": float(r.get(STRENGTH, 0.0) if pd.notna(r.get(STRENGTH)) else 0.0),
            "train_subset": int(subset) if pd.notna(subset) else FULL_TRAIN,
            "remove_prob": float(r[REMOVE]) if pd.notna(r.get(REMOVE)) else 0.0,
            "recorded_diff": s["recorded_diff"],
            "reliance": s["reliance"],
        }
        for v in sc.VARIANTS:
            row[f"{v}_accuracy"] = s[v]["accuracy"]
            row[f"{v}_loss"] = s[v]["loss"]
        rows.append(row)
    return pd.DataFrame(rows)


def with_control(table: pd.DataFrame) -> pd.DataFrame:
    """`table` with `reliance_above_control`: each trial's reliance minus that of the trial of
    the same family, width and seed trained without a marker (strength 0: the same init and
    batches), which is what stamping a pixel the model never saw lit does by itself."""
    keys = ["family", "width", "seed"]
    control = table[table["strength"] == 0].set_index(keys)["reliance"]
    idx = pd.MultiIndex.from_frame(table[keys])
    base = control.reindex(idx).to_numpy()
    return table.assign(reliance_above_control=table["reliance"].to_numpy() - base)


STRENGTH_METRICS = (
    "reliance",
    "reliance_above_control",
    *(f"{v}_accuracy" for v in sc.VARIANTS),
)


def strength_findings(table: pd.DataFrame) -> dict[str, Any]:
    """`{family: {strength: {metric: trend over N}}}` for reliance (raw and above the
    strength-0 control) and each variant's accuracy."""
    out: dict[str, Any] = {}
    table = with_control(table)
    for (family, strength), g in table.groupby(["family", "strength"], sort=True):
        out.setdefault(family, {})[f"{strength:g}"] = {
            m: tr.seed_bootstrap_trend(g["N"], g[m]) for m in STRENGTH_METRICS if g[m].notna().all()
        }
    return out


def fixes_findings(table: pd.DataFrame) -> dict[str, Any]:
    """Reliance and accuracies per (train_subset, remove_prob) with seed intervals; removal's
    paired effect at each size; reliance's slope per decade of training examples."""
    out: dict[str, Any] = {"per_setting": [], "removal_effect": {}, "data_trend": {}}
    for (subset, remove), g in table.groupby(["train_subset", "remove_prob"], sort=True):
        out["per_setting"].append(
            {
                "train_subset": int(subset),
                "remove_prob": float(remove),
                "n_seeds": len(g),
                **{
                    m: ie.paired_mean(g[m].to_numpy())
                    for m in ("reliance", "clean_accuracy", "flipped_accuracy")
                },
            }
        )
    for (subset, remove), on in table.groupby(["train_subset", "remove_prob"], sort=True):
        off = table[(table["train_subset"] == subset) & (table["remove_prob"] == 0)]
        on, off = on.sort_values("seed"), off.sort_values("seed")
        if remove > 0 and list(off["seed"]) == list(on["seed"]):
            out["removal_effect"][f"{int(subset)}@{remove:g}"] = {
                "train_subset": int(subset),
                "remove_prob": float(remove),
                **{
                    m: ie.paired_mean(on[m].to_numpy() - off[m].to_numpy())
                    for m in ("reliance", "clean_accuracy", "flipped_accuracy")
                },
            }
    for remove, g in table.groupby("remove_prob", sort=True):
        out["data_trend"][f"{remove:g}"] = {
            m: tr.seed_bootstrap_trend(g["train_subset"], g[m])
            for m in ("reliance", "clean_accuracy", "flipped_accuracy")
        }
    return out


def _errorbar(ax: Any, t: dict[str, Any], style: str, color: str, label: str) -> None:
    xs = [p["x"] for p in t["per_size"]]
    ys = [p["mean"] for p in t["per_size"]]
    err = np.array([[p["mean"] - p["ci"][0], p["ci"][1] - p["mean"]] for p in t["per_size"]])
    ax.errorbar(xs, ys, yerr=err.T, fmt=style, color=color, ms=4, capsize=3, label=label)


def figure(strength: dict[str, Any], fixes: dict[str, Any], out: Path) -> None:
    """Reliance and clean accuracy vs N per strength (MLP solid, ResNet dashed); reliance vs
    training examples with and without marker removal."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    styles = {"mlp": "-o", "resnet": "--s"}
    strengths = sorted({s for fam in strength.values() for s in fam}, key=float)
    colour = {s: f"C{i}" for i, s in enumerate(strengths)}
    for ax, metric, ylabel, title in (
        (axes[0], "reliance", "acc(aligned) - acc(flipped)", "reliance on the marker vs N"),
        (axes[1], "clean_accuracy", "clean validation accuracy", "clean accuracy vs N"),
    ):
        for family, by_strength in strength.items():
            for s, t in by_strength.items():
                label = f"{family}, strength {s}"
                if metric == "reliance":
                    label += f": {tr.describe_trend(t[metric], 2)}"
                _errorbar(ax, t[metric], styles.get(family, "-^"), colour[s], label)
        ax.set(xscale="log", xlabel="parameters N", ylabel=ylabel, title=title)
        ax.legend(fontsize=6)
    axes[0].set_ylim(-0.15, 1.02)
    ax = axes[2]
    for i, (remove, t) in enumerate(fixes["data_trend"].items()):
        _errorbar(
            ax,
            t["reliance"],
            "-o",
            f"C{i}",
            f"remove_prob {remove}: {tr.describe_trend(t['reliance'], 2)}".replace(
                "of N", "of examples"
            ),
        )
    ax.set(
        xscale="log",
        xlabel="training examples",
        ylabel="acc(aligned) - acc(flipped)",
        title=f"fixes, mlp width 64, strength {REFERENCE_STRENGTH:g}",
        ylim=(-0.05, 1.02),
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    h.save_figure(fig, out, "shortcut")


def _verdict(t: dict[str, Any]) -> str:
    if t["resolved"] is None:
        return "one size"
    if not t["resolved"]:
        return "no measurable trend"
    return "rises" if t["slope_per_decade"] > 0 else "falls"


def answer(strength: dict[str, Any], fixes: dict[str, Any]) -> str:
    """The one-line answer from the findings."""
    parts = []
    for family, by_strength in strength.items():
        for s, t in by_strength.items():
            if s == "0":
                continue
            r = t["reliance"]
            means = " -> ".join(f"{p['mean']:.2f}" for p in (r["per_size"][0], r["per_size"][-1]))
            parts.append(f"{family} {s}: {means} ({_verdict(r)}, {tr.describe_trend(r, 2)})")
    text = "Reliance acc(aligned) - acc(flipped), smallest -> largest model, by strength: "
    text += "; ".join(parts)
    fx = []
    for e in fixes["removal_effect"].values():
        r = e["reliance"]
        fx.append(
            f"p={e['remove_prob']:g} at {e['train_subset']} examples {r['value']:+.2f} "
            f"[{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}]"
        )
    if fx:
        text += ". Marker removal changes reliance by " + ", ".join(fx)
    dt = fixes["data_trend"].get("0")
    if dt is not None:
        slope = tr.describe_trend(dt["reliance"], 2).replace("of N", "of examples")
        text += f"; more data: {slope} ({_verdict(dt['reliance'])})"
    return text


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Score every trial on the four variants; fit reliance vs N and vs data; the figure."""
    tables = {name: score_rows(d) for name, d in sweeps.items()}
    table = pd.concat([t.assign(sweep=name) for name, t in tables.items()], ignore_index=True)
    table.to_csv(out / "shortcut_accuracy.csv", index=False)
    both = [tables[n] for n in ("strength", "resnet") if n in tables]
    strength = strength_findings(pd.concat(both, ignore_index=True))
    fixes = fixes_findings(tables["fixes"])
    figure(strength, fixes, out)
    return {
        "answer": answer(strength, fixes),
        "clean_check": {
            "max_abs_diff_from_recorded": float(table["recorded_diff"].max()),
            "trials": len(table),
        },
        "strength": strength,
        "fixes": fixes,
        "table": "shortcut_accuracy.csv",
    }

"""What do dropout, weight decay, batch norm, augmentation and early stopping do to the
train/validation gap and to the data-scaling exponent?

A setting is which of the five regularisers are on (each off at the sweep's smallest value:
dropout 0, weight decay 0, no batch norm, no augmentation, no early stopping). Each setting gets
two offset-free power laws in the number of training examples n, fitted to every seed's
point: `L = A n^-beta_final` through the final eval loss (the model training ends with, the
one a run returns) and `L = A n^-beta` through the best eval loss seen during training (what
keeping the best checkpoint on the validation set would give). Every final model is restored
and scored in evaluation mode on its own training examples (`scalinglab.experiments.imageeval`):
the gap is validation loss minus training loss of the same model.

Each regulariser's effect is measured twice: alone (it alone on vs none) and with the others
(all five vs all but it). Exponent differences are paired bootstrap intervals (resample b draws
the same data sizes and seeds for both settings); the gap difference is the mean over the
matched (n, seed) trials with a bootstrap interval over them.
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

N, BEST, FINAL = "data.train_subset", "best_eval_loss", "final_eval_loss"
# Each regulariser and the column that says how much of it a trial has.
FACTORS = {
    "dropout": "model.dropout",
    "weight_decay": "optimizer.weight_decay",
    "batch_norm": "model.batch_norm",
    "augment": "data.augment.crop_pad",
    "early_stopping": "early_stopping",
}
VERDICT = {True: "changes", False: "no measurable effect on", None: "undecided on"}


def settings(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs with `label` (findings key: `dropout=0,wd=0.5` plus every other regulariser
    that is on, `,batch_norm`), `setting` (`none`, a regulariser's name, `all`, `all_but_X`)
    and `on` (the regularisers that are on); and the regularisers the sweep varies."""
    runs = runs.copy()
    patience = runs.get("train.early_stopping.patience", pd.Series(np.nan, index=runs.index))
    runs["early_stopping"] = patience.notna()
    for col in FACTORS.values():
        if col not in runs:
            runs[col] = 0
    varied = [f for f, col in FACTORS.items() if runs[col].nunique() > 1]
    off = {f: runs[FACTORS[f]].min() for f in FACTORS}
    on = runs.apply(lambda r: tuple(f for f in FACTORS if r[FACTORS[f]] != off[f]), axis=1)
    runs["on"] = on

    def label(r: pd.Series) -> str:
        values = (float(r[FACTORS["dropout"]]), float(r[FACTORS["weight_decay"]]))
        return h.label(values, ["dropout", "wd"]) + "".join(
            f",{f}" for f in r["on"] if f not in ("dropout", "weight_decay")
        )

    def name(on: tuple[str, ...]) -> str:
        if not on:
            return "none"
        if len(on) == 1:
            return on[0]
        if set(on) == set(varied):
            return "all"
        if len(on) == len(varied) - 1:
            return "all_but_" + next(f for f in varied if f not in on)
        return "+".join(on)

    runs["label"] = runs.apply(label, axis=1)
    runs["setting"] = runs["on"].map(name)
    return runs, varied


def gaps(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """The runs with each final model's training-split and validation loss and accuracy
    (evaluation mode, every example once), and the gaps between them."""
    rows = []
    for trial_id in runs["trial_id"]:
        scores = ie.split_scores(sweep_dir / trial_id)
        train, val = scores["train"], scores["val"]
        rows.append(
            {
                "trial_id": trial_id,
                "train_loss": train["loss"],
                "train_accuracy": train["accuracy"],
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
            }
        )
    out = runs.merge(pd.DataFrame(rows), on="trial_id")
    out["gap"] = out["val_loss"] - out["train_loss"]
    out["accuracy_gap"] = out["train_accuracy"] - out["val_accuracy"]
    return out


def _paired(runs: pd.DataFrame, a: str, b: str, value: Any) -> np.ndarray:
    """`value(row_a, row_b)` for each (n, seed) that both settings `a` and `b` trained."""
    keyed = runs.set_index(["label", N, "seed"]).sort_index()
    pa, pb = keyed.loc[a], keyed.loc[b]
    both = pa.index.intersection(pb.index)
    return np.asarray(value(pa.loc[both], pb.loc[both]), np.float64)


def effect(
    runs: pd.DataFrame, fits: dict[str, dict[str, Any]], with_: str, without: str
) -> dict[str, Any]:
    """Setting `with_` against `without`: the exponent differences (final and best eval
    loss), the mean gap difference and log final-loss ratio over matched trials, and the
    final eval loss at the smallest and largest n."""
    mean = runs.pivot_table(index=N, columns="label", values=FINAL)
    n0, n1 = mean.index[0], mean.index[-1]
    return {
        "with": with_,
        "without": without,
        "beta_final_difference": h.paired_difference(fits[FINAL][with_], fits[FINAL][without]),
        "beta_difference": h.paired_difference(fits[BEST][with_], fits[BEST][without]),
        "gap_difference": ie.paired_mean(
            _paired(runs, with_, without, lambda a, b: a["gap"] - b["gap"])
        ),
        "final_loss_log_ratio": ie.paired_mean(
            _paired(runs, with_, without, lambda a, b: np.log(a[FINAL] / b[FINAL]))
        ),
        "smallest_n": int(n0),
        "largest_n": int(n1),
        "final_loss_at_smallest_n": {k: mean.loc[n0, k] for k in (without, with_)},
        "final_loss_at_largest_n": {k: mean.loc[n1, k] for k in (without, with_)},
    }


def effects(runs: pd.DataFrame, fits: dict[str, dict[str, Any]], varied: list[str]) -> dict:
    """Per regulariser: `alone` (it alone vs none) and `with_the_others` (all vs all but it),
    where the sweep has those settings; and `all_vs_none`."""
    by_name = runs.groupby("setting")["label"].first().to_dict()
    out: dict[str, Any] = {}
    for f in varied:
        pairs = {"alone": (f, "none"), "with_the_others": ("all", f"all_but_{f}")}
        out[f] = {
            how: effect(runs, fits, by_name[a], by_name[b])
            for how, (a, b) in pairs.items()
            if a in by_name and b in by_name and by_name[a] != by_name[b]
        }
    if {"all", "none"} <= set(by_name):
        out["all_vs_none"] = effect(runs, fits, by_name["all"], by_name["none"])
    return out


def _means(runs: pd.DataFrame, value: str) -> dict[str, dict[str, float]]:
    """`{label: {n: mean over seeds}}` of one column."""
    table = runs.pivot_table(index=N, columns="label", values=value)
    return {k: {str(n): float(v) for n, v in col.items()} for k, col in table.items()}


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Exponents and gaps per setting, each regulariser's effect, the tables, the figure."""
    sweep_dir = sweeps["regularisation_digits"]
    runs, varied = settings(h.finished(sl.load_runs(sweep_dir)))
    runs = gaps(runs, sweep_dir)
    fits = {y: h.group_fits(runs, ["label"], N, y, pair_by=[N, "seed"]) for y in (BEST, FINAL)}
    found_effects = effects(runs, fits, varied)
    names = runs.groupby("label")["setting"].first().to_dict()
    cols = ["label", "setting", N, "seed", "steps", "status", BEST, FINAL, "train_loss"]
    cols += ["val_loss", "gap", "train_accuracy", "val_accuracy", "accuracy_gap"]
    runs[cols].sort_values(["label", N, "seed"]).to_csv(out / "gaps.csv", index=False)
    h.save_figure(_figure(runs, fits, names), out, "regularisation")
    found: dict[str, Any] = {
        "settings": names,
        "beta": {k: h.exponent(fit, "beta") for k, fit in fits[BEST].items()},
        "beta_final": {k: h.exponent(fit, "beta") for k, fit in fits[FINAL].items()},
        **{f"{f}_effect": e for f, e in found_effects.items() if f != "all_vs_none"},
        "all_vs_none": found_effects.get("all_vs_none"),
        "mean_loss": _means(runs, BEST),
        "mean_final_loss": _means(runs, FINAL),
        "mean_train_loss": _means(runs, "train_loss"),
        "mean_gap": _means(runs, "gap"),
        "mean_accuracy_gap": _means(runs, "accuracy_gap"),
        "mean_steps": _means(runs, "steps"),
        "stopped_early": runs.groupby("label")["status"]
        .apply(lambda s: int((s == "stopped_early").sum()))
        .to_dict(),
        "gap_table": "gaps.csv",
    }
    return {"answer": _answer(found, varied), **found}


def _answer(found: dict[str, Any], varied: list[str]) -> str:
    """Per regulariser and way of measuring it, the verdict on beta_final and the gap change."""
    parts = []
    for f in varied:
        for how, e in found[f"{f}_effect"].items():
            d, gap = e["beta_final_difference"], e["gap_difference"]
            gap_text = f"gap {h.describe(gap, 3)} nats"
            parts.append(
                f"{f} ({how.replace('_', ' ')}) {VERDICT[d['resolved']]} beta_final: "
                f"{h.describe(d, 2)}, {gap_text}"
            )
    return "; ".join(parts)


def _figure(runs: pd.DataFrame, fits: dict[str, dict[str, Any]], names: dict[str, str]) -> Any:
    """(a) final and (b) best eval loss against n with each fitted law, for none, each
    regulariser alone and all five; (c) the gap (validation minus training loss of the final
    model) against n; (d) beta_final and beta of every setting with 95% intervals."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 10))
    (ax1, ax2), (ax3, ax4) = axes
    order = sorted(names, key=lambda k: _rank(names[k]))
    shown = [k for k in order if not names[k].startswith("all_but_")]
    colours = {k: f"C{i % 10}" for i, k in enumerate(shown)}
    for ax, y, title in ((ax1, FINAL, "final"), (ax2, BEST, "best")):
        for k in shown:
            g = runs[runs["label"] == k]
            fit = fits[y][k]
            ax.plot(g[N], g[y], "o", ms=3, color=colours[k], alpha=0.6)
            text = f"{names[k]}: beta {fit.params['alpha']:.2f}"
            grid = np.geomspace(g[N].min(), g[N].max(), 50)
            ax.plot(grid, fit.params["A"] * grid ** -fit.params["alpha"], "-", color=colours[k])
            ax.plot([], [], "o-", color=colours[k], label=text)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="training examples n",
            ylabel=f"{title} eval loss (nats)",
            title=f"({'a' if y == FINAL else 'b'}) {title} eval loss, L = A n^-beta",
        )
        ax.legend(fontsize=7)
    for k in shown:
        g = runs[runs["label"] == k].groupby(N)["gap"].mean()
        ax3.plot(g.index, g.to_numpy(), "o-", color=colours[k], label=names[k])
    ax3.axhline(0.0, color="grey", lw=0.8)
    ax3.set(
        xscale="log",
        xlabel="training examples n",
        ylabel="validation minus training loss (nats), mean of seeds",
        title="(c) train/validation gap of the final model",
    )
    ax3.legend(fontsize=7)
    for i, k in enumerate(order):
        for y, marker, dx in ((FINAL, "o", -0.15), (BEST, "s", 0.15)):
            fit = fits[y][k]
            lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
            a = fit.params["alpha"]
            ax4.errorbar(
                [i + dx],
                [a],
                yerr=[[a - lo], [hi - a]],
                fmt=marker,
                color="C0" if y == FINAL else "C1",
                capsize=3,
                label=("beta_final (final eval loss)" if y == FINAL else "beta (best eval loss)")
                if i == 0
                else None,
            )
    ax4.set_xticks(range(len(order)), [names[k] for k in order], rotation=45, ha="right")
    ax4.set(ylabel="data-scaling exponent, 95% interval", title="(d) beta per setting")
    ax4.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _rank(name: str) -> tuple[int, int, str]:
    """none, the single regularisers (in FACTORS order), all, then all-but-each."""
    if name == "none":
        return (0, 0, "")
    if name == "all":
        return (2, 0, "")
    if name.startswith("all_but_"):
        return (3, 0, name)
    return (1, list(FACTORS).index(name) if name in FACTORS else len(FACTORS), name)

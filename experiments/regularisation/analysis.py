"""What do dropout and weight decay do to the data-scaling exponent? `L = A n^-beta` per setting.

Each (dropout, weight decay) setting gets an offset-free power law of the best (early-stopped)
eval loss in the number of training examples n, fitted to every seed's point. Each effect is
the paired bootstrap interval of a beta difference at fixed other setting (resample b draws
the same data sizes and seeds for both), and the loss change at the smallest n.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

import scalinglab as sl
from scalinglab.experiments import helpers as h

N, Y = "data.train_subset", "best_eval_loss"
BY = ["model.dropout", "optimizer.weight_decay"]
NAMES = ["dropout", "wd"]


def _setting(value: float, other: float, vary: int) -> tuple[float, float]:
    """The (dropout, weight decay) key with `value` at position `vary` and `other` elsewhere."""
    return (value, other) if vary == 0 else (other, value)


def _effects(fits: dict[str, Any], losses: pd.DataFrame, vary: int) -> dict[str, Any]:
    """Setting `vary` (0: dropout, 1: weight decay) from its smallest value to each larger one,
    the other held fixed: the beta difference and the mean loss at the smallest n."""
    out: dict[str, Any] = {}
    levels = sorted({k[vary] for k in losses.columns})
    n0 = losses.index[0]
    for other in sorted({k[1 - vary] for k in losses.columns}):
        base = _setting(levels[0], other, vary)
        for level in levels[1:]:
            key = _setting(level, other, vary)
            a, b = h.label(key, NAMES), h.label(base, NAMES)
            if a in fits and b in fits:
                out[f"{a} vs {b}"] = {
                    "beta_difference": h.paired_difference(fits[a], fits[b]),
                    "smallest_n": n0,
                    "loss_at_smallest_n": {b: losses.loc[n0, base], a: losses.loc[n0, key]},
                }
    return out


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """beta per setting, the effects of weight decay and dropout, the table, the figure."""
    runs = h.finished(sl.load_runs(sweeps["regularisation_digits"]))
    fits = h.group_fits(runs, BY, N, Y, pair_by=[N, "seed"], names=NAMES)
    losses = runs.pivot_table(index=N, columns=BY, values=Y)  # mean over seeds
    accuracy = runs.pivot_table(index=N, columns=BY, values="final_eval_accuracy")
    weight_decay = _effects(fits, losses, vary=1)
    dropout = _effects(fits, losses, vary=0)
    fig = h.plot_groups(
        runs,
        fits,
        BY,
        N,
        Y,
        xlabel="training examples n",
        ylabel="best (early-stopped) eval loss (nats)",
        title="data scaling, L = A n^-beta",
        names=NAMES,
    )
    h.save_figure(fig, out, "regularisation")
    lines = []
    for what, effects in (("weight decay", weight_decay), ("dropout", dropout)):
        for name, e in effects.items():
            d = e["beta_difference"]
            verdict = {True: "changes", False: "does not measurably change", None: "undecided on"}
            lines.append(f"{what} ({name}) {verdict[d['resolved']]} beta: {h.describe(d, 2)}")
    return {
        "answer": "; ".join(lines),
        "beta": {name: h.exponent(fit, "beta") for name, fit in fits.items()},
        "weight_decay_effect": weight_decay,
        "dropout_effect": dropout,
        "mean_loss": {
            h.label(k, NAMES): {str(n): v for n, v in col.items()} for k, col in losses.items()
        },
        "mean_accuracy_at_largest_n": {
            h.label(k, NAMES): col.iloc[-1] for k, col in accuracy.items()
        },
    }

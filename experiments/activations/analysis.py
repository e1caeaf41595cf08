"""Does GELU scale better than ReLU? `L = A C^-alpha` per activation and gelu - relu.

Each activation's final eval losses over the swept widths get an offset-free power law in
compute (a local slope; four points do not identify an offset). The answer is the paired
bootstrap interval of alpha(gelu) - alpha(relu): resample b draws the same widths for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import scalinglab as sl
from scalinglab.experiments import helpers as h

BY = ["model.activation"]


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Exponents per activation, gelu - relu, the loss table and `by_activation.png`."""
    runs = h.finished(sl.load_runs(sweeps["activations"]))
    fits = h.group_fits(runs, BY, "C", "loss", pair_by=["model.d_model"])
    losses = runs.pivot_table(index="model.d_model", columns=BY[0], values="loss")
    largest = losses.iloc[-1]
    diff = h.paired_difference(fits["gelu"], fits["relu"])
    fig = h.plot_groups(
        runs,
        fits,
        BY,
        "C",
        "loss",
        xlabel="compute C (FLOPs)",
        ylabel="final eval loss (nats/byte)",
        title="L = A C^-alpha per activation",
    )
    h.save_figure(fig, out, "by_activation")
    if diff["resolved"] is None:
        verdict = "undecided"
    elif diff["resolved"]:
        verdict = "gelu scales better" if diff["value"] > 0 else "relu scales better"
    else:
        verdict = "no measurable difference between gelu and relu"
    return {
        "answer": f"{verdict}: alpha(gelu) - alpha(relu) = {h.describe(diff)}",
        "alpha": {name: h.exponent(fit) for name, fit in fits.items()},
        "gelu_minus_relu_alpha": diff,
        "steepest": max(fits, key=lambda k: fits[k].params["alpha"]),
        "flattest": min(fits, key=lambda k: fits[k].params["alpha"]),
        "final_eval_loss": {str(d): row.dropna().to_dict() for d, row in losses.iterrows()},
        "largest_d_model": int(losses.index[-1]),
        "best_at_largest": str(largest.idxmin()),
    }

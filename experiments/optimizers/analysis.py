"""Does Adafactor keep Adam's exponent? `L = A C^-alpha` per (optimizer, lr), each against AdamW.

Each (optimizer, learning rate) gets an offset-free power law in compute over the swept
widths; every Adafactor setting is compared with AdamW by the paired bootstrap interval of
its exponent difference, and by its loss offset at each width (AdamW's loss minus its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import scalinglab as sl
from scalinglab.experiments import helpers as h

BY = ["optimizer.name", "optimizer.lr"]
REFERENCE = "adamw"


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Exponents per setting, differences and offsets against AdamW, and `by_optimizer.png`."""
    runs = h.finished(sl.load_runs(sweeps["optimizers"]))
    fits = h.group_fits(runs, BY, "C", "loss", pair_by=["model.d_model"])
    runs["setting"] = [h.label(tuple(v)) for v in runs[BY].itertuples(index=False)]
    losses = runs.pivot_table(index="model.d_model", columns="setting", values="loss")
    ref = next(k for k in fits if k.split("@")[0] == REFERENCE)
    against: dict[str, Any] = {}
    lines = []
    for name, fit in fits.items():
        if name == ref:
            continue
        diff = h.paired_difference(fit, fits[ref])
        ahead = (losses[ref] - losses[name]).dropna()
        against[name] = {
            "alpha_minus_adamw": diff,
            "loss_ahead_of_adamw": {str(d): v for d, v in ahead.items()},
            "ahead_at_every_width": bool((ahead > 0).all()),
        }
        same = {False: "keeps", True: "changes", None: "undecided on"}[diff["resolved"]]
        lines.append(f"{name} {same} AdamW's exponent (difference {h.describe(diff)})")
    fig = h.plot_groups(
        runs,
        fits,
        BY,
        "C",
        "loss",
        xlabel="compute C (FLOPs)",
        ylabel="final eval loss (nats/byte)",
        title="L = A C^-alpha per optimizer@lr",
    )
    h.save_figure(fig, out, "by_optimizer")
    return {
        "answer": "; ".join(lines),
        "reference": ref,
        "alpha": {name: h.exponent(fit) for name, fit in fits.items()},
        "against_adamw": against,
        "final_eval_loss": {str(d): row.dropna().to_dict() for d, row in losses.iterrows()},
    }

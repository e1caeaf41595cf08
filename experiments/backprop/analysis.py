"""Are the toolkit's gradients right, and how do they scale through depth?

1. For each 2-layer net (`two_layer` sweep, one hidden layer then the head): the toolkit's
   gradient (`jax.grad` of the task loss, what the train step uses) against a chain rule
   written out by hand in float64 numpy, and against central finite differences of the loss
   along the gradient's direction and 8 random directions.
2. For each 16-layer MLP (`depth` sweep): the gradient norm of every layer's weights at the
   final checkpoint, and the least-squares slope of log10(norm) over the hidden layers'
   positions with its 95% t interval: decades per layer towards the output (> 0: vanishing
   towards the input).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scalinglab.experiments import gradients as g  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

ACT, RES = "model.activation", "model.residual"


def gradient_checks(sweep_dir: Path) -> dict[str, Any]:
    """Per activation: the hand chain rule's and the finite differences' distance from the
    toolkit's gradient at the trained 2-layer net."""
    checks: dict[str, Any] = {}
    for d in g.finished_run_dirs(sweep_dir):
        cfg = g.trial_config(d)
        params, model_state, step = g.final_params(cfg, d)
        batch = g.probe_batch(cfg)
        toolkit = g.toolkit_grads(cfg, params, model_state, batch)
        hand = g.hand_grads_one_hidden_layer(params, batch, cfg.model.activation)
        fd = g.directional_fd(
            cfg, params, model_state, batch, jax.random.PRNGKey(cfg.seed), grads=toolkit
        )
        checks[cfg.model.activation] = {
            "step": step,
            "examples": len(batch["label"]),
            "hand_chain_rule_max_relative_error": g.max_relative_error(toolkit, hand),
            "finite_difference_max_error_over_grad_norm": max(
                abs(r["finite_difference"] - r["toolkit"]) / r["grad_norm"] for r in fd
            ),
            "directional_derivatives": fd,
        }
    return checks


def slopes(table: pd.DataFrame) -> dict[str, Any]:
    """`depth_slope` over the hidden layers (the head left out) per (activation, residual)."""
    out: dict[str, Any] = {}
    for (act, res), grp in table.groupby([ACT, RES], sort=True):
        hidden = grp[grp["layer"] != "head"].sort_values("index")
        out[h.label((act, "residual" if res else "plain"))] = g.depth_slope(
            hidden["index"].to_numpy(), hidden["grad_norm"].to_numpy()
        )
    return out


def figure(table: pd.DataFrame, checks: dict[str, Any], out: Path) -> None:
    """Left: gradient norm per layer, per activation, plain solid and residual dashed. Right:
    finite-difference vs toolkit directional derivatives of the 2-layer nets."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.4))
    for i, act in enumerate(sorted(table[ACT].unique())):
        for res, style in ((False, "-o"), (True, "--s")):
            grp = table[(table[ACT] == act) & (table[RES] == res)].sort_values("index")
            if len(grp):
                name = f"{act}, {'residual' if res else 'plain'}"
                left.plot(grp["index"], grp["grad_norm"], style, color=f"C{i}", ms=3, label=name)
    left.set(
        yscale="log",
        xlabel="layer (0: next to the input; last: the head)",
        ylabel="||dL/dW|| at the final checkpoint",
        title="gradient norm through depth",
    )
    left.legend(fontsize=8)
    for i, (act, c) in enumerate(sorted(checks.items())):
        fd = np.array([r["finite_difference"] for r in c["directional_derivatives"]])
        tk = np.array([r["toolkit"] for r in c["directional_derivatives"]])
        right.plot(tk, fd, "o", color=f"C{i}", label=act)
    lim = right.get_xlim()
    right.plot(lim, lim, "k-", lw=0.8, label="y = x")
    right.set(
        xlabel="toolkit <grad, v>",
        ylabel="finite difference (L(p + eps v) - L(p - eps v)) / 2 eps",
        title="2-layer nets: directional derivatives",
    )
    right.legend(fontsize=8)
    fig.tight_layout()
    h.save_figure(fig, out, "gradients")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Gradient checks of the 2-layer nets; per-layer norms and slopes of the deep MLPs."""
    checks = gradient_checks(sweeps["two_layer"])
    table = g.layer_norm_table(sweeps["depth"], [ACT, RES])
    table.to_csv(out / "layer_grad_norms.csv", index=False)
    per_group = slopes(table)
    figure(table, checks, out)
    worst_hand = max(c["hand_chain_rule_max_relative_error"] for c in checks.values())
    worst_fd = max(c["finite_difference_max_error_over_grad_norm"] for c in checks.values())
    vanishing = [k for k, s in per_group.items() if s["ci"] is not None and s["ci"][0] > 0]
    lines = [
        f"the toolkit's gradients equal the hand chain rule to {worst_hand:.1e} (relative) and "
        f"finite differences to {worst_fd:.1e} of the gradient norm",
        "vanishing towards the input: "
        + (
            ", ".join(f"{k} ({per_group[k]['slope']:.2f} decades per layer)" for k in vanishing)
            or "none"
        ),
    ]
    return {
        "answer": "; ".join(lines),
        "gradient_checks": checks,
        "depth_slopes": per_group,
        "layer_grad_norms": "layer_grad_norms.csv",
    }

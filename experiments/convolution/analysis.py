"""CNN vs MLP on images: loss per FLOP and per parameter, translation invariance, pooling.

Three model kinds, one IsoFLOP sweep: `mlp`, `resnet` (average pooling, the family's default)
and `resnet_max` (max pooling), each at 5 widths and 4 compute budgets.

1. Compute: per kind and budget the frontier is the best final eval loss over the widths;
   each kind's frontier gets `L = A C^-alpha` (four budgets do not identify an offset), with
   95% bootstrap intervals, and exponents are compared by a paired bootstrap over budgets.
2. Parameters: per kind and width the best final eval loss over the budgets (the size's best
   trained model) gets `L = A N^-alpha_N`, compared the same way (paired by width rank).
3. Translation invariance: each size's best-trained model scored on the validation digits
   moved by 0-3 pixels in the four axis directions, with wrap-around (a cyclic shift) and with
   zero fill (`scalinglab.experiments.imageeval`); per kind the accuracy averaged over its
   widths, and the accuracy lost to a shift compared between kinds by a bootstrap over the
   validation images (paired: the same images for both).
4. Pooling: max minus average at each matched width and budget, as the mean log loss ratio
   with a bootstrap interval over the matched pairs; and both pools' exponents.
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

KIND, BUDGET, WIDTH = "kind", "isoflop_C", "model.width"
KINDS = ("mlp", "resnet", "resnet_max")
MARKERS = {"mlp": "o", "resnet": "s", "resnet_max": "D"}
SHIFTS = (0, 1, 2, 3)


def kinds(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with a `kind` column: the family, `_max` added for a max-pooling ResNet."""
    runs = runs.copy()
    pool = runs["model.pool"] if "model.pool" in runs else pd.Series("avg", index=runs.index)
    is_max = (runs["model.family"] == "resnet") & (pool == "max")
    runs[KIND] = runs["model.family"].where(~is_max, "resnet_max")
    return runs


def frontier(runs: pd.DataFrame) -> pd.DataFrame:
    """Per kind and budget, the run with the lowest final eval loss."""
    best = runs.sort_values("loss").groupby([KIND, BUDGET], as_index=False).first()
    cols = [KIND, BUDGET, WIDTH, "N", "C", "loss", "final_eval_accuracy"]
    return best[cols].sort_values([KIND, BUDGET])


def best_per_size(runs: pd.DataFrame) -> pd.DataFrame:
    """Per kind and width, the run (over the budgets) with the lowest final eval loss."""
    best = runs.sort_values("loss").groupby([KIND, WIDTH], as_index=False).first()
    cols = [KIND, WIDTH, "N", BUDGET, "steps", "loss", "final_eval_accuracy", "trial_id"]
    return best[cols].sort_values([KIND, "N"]).reset_index(drop=True)


def _fits(table: pd.DataFrame, x: str, pair_by: list[str]) -> dict[str, Any]:
    """`L = A x^-alpha` per kind with at least two distinct x (one point has no slope)."""
    usable = table.groupby(KIND)[x].transform("nunique") >= 2
    return h.group_fits(table[usable], [KIND], x, "loss", pair_by=pair_by)


def _compare(fits: dict[str, Any], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """`a - b` of the exponent for each pair of kinds that both have a fit."""
    return {
        f"{a}_minus_{b}": h.paired_difference(fits[a], fits[b])
        for a, b in pairs
        if a in fits and b in fits
    }


def shift_table(best: pd.DataFrame, sweep_dir: Path) -> tuple[Any, Any]:
    """Per best-trained model: accuracy and loss at every (mode, shift) (a DataFrame), and per
    kind the per-image correctness averaged over its models, `{kind: {(mode, shift): (n,)}}`."""
    rows, per_image = [], {}
    for kind, group in best.groupby(KIND):
        stacks: dict[tuple[str, int], list[np.ndarray]] = {}
        for _, r in group.iterrows():
            scores = ie.shift_scores(sweep_dir / r["trial_id"], SHIFTS)
            for (mode, s), v in scores.items():
                stacks.setdefault((mode, s), []).append(v["correct"])
                rows.append(
                    {
                        KIND: kind,
                        "width": int(r[WIDTH]),
                        "N": int(r["N"]),
                        "mode": mode,
                        "shift": s,
                        "accuracy": float(v["correct"].mean()),
                        "loss": float(v["loss"].mean()),
                    }
                )
        per_image[kind] = {k: np.mean(v, axis=0) for k, v in stacks.items()}
    return pd.DataFrame(rows), per_image


def shift_findings(per_image: dict[str, Any]) -> dict[str, Any]:
    """Per kind, accuracy at every shift (mean over widths); between kinds, the difference of
    the accuracy lost to each shift, bootstrapped over the validation images."""
    accuracy = {
        kind: {mode: {str(s): float(v[(mode, s)].mean()) for s in SHIFTS} for mode in ie.MODES}
        for kind, v in per_image.items()
    }
    compared: dict[str, Any] = {}
    for a, b in (("resnet", "mlp"), ("resnet_max", "mlp"), ("resnet_max", "resnet")):
        if a not in per_image or b not in per_image:
            continue
        name = f"{a}_minus_{b}"
        compared[name] = {}
        for mode in ie.MODES:
            for s in SHIFTS[1:]:
                drop = {k: per_image[k][(mode, 0)] - per_image[k][(mode, s)] for k in (a, b)}
                compared[name][f"{mode}_{s}"] = ie.paired_mean(drop[b] - drop[a])
    return {"accuracy": accuracy, "kept_accuracy_advantage": compared}


def pooling(runs: pd.DataFrame) -> dict[str, Any] | None:
    """Max vs average pooling at matched width and budget: log(L_max / L_avg) bootstrapped
    over the matched pairs (negative: max pooling lower)."""
    res = runs[runs["model.family"] == "resnet"]
    wide = res.pivot_table(index=[WIDTH, BUDGET], columns=KIND, values="loss")
    if not {"resnet", "resnet_max"} <= set(wide.columns):
        return None
    wide = wide.dropna()
    log_ratio = np.log(wide["resnet_max"] / wide["resnet"]).to_numpy()
    diff = ie.paired_mean(log_ratio)
    return {
        "log_loss_ratio_max_over_avg": diff,
        "loss_ratio_max_over_avg": float(np.exp(diff["value"])),
        "loss_ratio_ci": [float(np.exp(x)) for x in diff["ci"]],
        "max_lower_in": int((log_ratio < 0).sum()),
        "pairs": len(log_ratio),
    }


def _frontier_table(front: pd.DataFrame) -> dict[str, Any]:
    """`{kind: {budget: {width, N, loss, accuracy}}}` of the compute frontier."""
    return {
        kind: {
            f"{r[BUDGET]:.0e}": {
                "width": int(r[WIDTH]),
                "N": int(r["N"]),
                "loss": float(r["loss"]),
                "accuracy": float(r["final_eval_accuracy"]),
            }
            for _, r in g.iterrows()
        }
        for kind, g in front.groupby(KIND)
    }


def _size_table(best: pd.DataFrame) -> dict[str, Any]:
    """`{kind: {width: {N, budget, steps, loss, accuracy}}}` of each size's best run."""
    return {
        kind: {
            str(int(r[WIDTH])): {
                "N": int(r["N"]),
                "budget": float(r[BUDGET]),
                "steps": int(r["steps"]),
                "loss": float(r["loss"]),
                "accuracy": float(r["final_eval_accuracy"]),
            }
            for _, r in g.iterrows()
        }
        for kind, g in best.groupby(KIND)
    }


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Frontiers, loss vs N, shifted accuracy and pooling; `families.png` and CSV tables."""
    sweep_dir = sweeps["families_digits"]
    runs = kinds(h.finished(sl.load_runs(sweep_dir)))
    front = frontier(runs)
    fits = _fits(front, "C", [BUDGET])
    diff = h.paired_difference(fits["resnet"], fits["mlp"])
    per_param = (runs["C"] / (runs["N"] * runs["D"])).groupby(runs[KIND]).mean()
    wide = front.pivot(index=BUDGET, columns=KIND, values="loss")
    gap = (wide["resnet"] - wide["mlp"]).dropna()
    best = best_per_size(runs)
    n_fits = _fits(best, "N", [])
    shifts, per_image = shift_table(best, sweep_dir)
    shifted = shift_findings(per_image)
    pool = pooling(runs)
    h.save_figure(_figure(runs, front, fits, best, n_fits, shifted), out, "families")
    front.to_csv(out / "families.csv", index=False)
    best.to_csv(out / "best_per_size.csv", index=False)
    shifts.to_csv(out / "shifted_accuracy.csv", index=False)
    pairs = [("resnet", "mlp"), ("resnet_max", "mlp"), ("resnet_max", "resnet")]
    found = {
        "alpha": {name: h.exponent(fit) for name, fit in fits.items()},
        "resnet_minus_mlp_alpha": diff,
        "alpha_differences": _compare(fits, pairs),
        "flops_per_param_example": per_param.to_dict(),
        "resnet_over_mlp_flops_per_param": per_param["resnet"] / per_param["mlp"],
        "resnet_minus_mlp_loss": {f"{b:.0e}": v for b, v in gap.items()},
        "frontier": _frontier_table(front),
        "alpha_N": {name: h.exponent(fit) for name, fit in n_fits.items()},
        "alpha_N_differences": _compare(n_fits, pairs),
        "best_per_size": _size_table(best),
        "shift": shifted,
        "shift_table": "shifted_accuracy.csv",
        "pooling": pool,
    }
    return {"answer": _answer(found, gap), **found}


def _answer(found: dict[str, Any], gap: pd.Series) -> str:
    """One line: the compute comparison, the parameter exponents, the shift, the pooling."""
    behind = [f"{b:.0e}" for b, v in gap.items() if v < 0]
    lead = (
        "the MLP is ahead of the ResNet at every budget"
        if not behind
        else f"the ResNet is ahead of the MLP at C = {', '.join(behind)} only"
    )
    parts = [
        f"{lead} (ResNet minus MLP best loss {gap.min():+.3f} to {gap.max():+.3f} nats); "
        f"alpha resnet - mlp {h.describe(found['resnet_minus_mlp_alpha'], 2)}"
    ]
    if found["alpha_N"]:
        parts.append(
            "loss vs N: "
            + ", ".join(
                f"{k} alpha_N {v['alpha']:.2f} [{v['alpha_ci'][0]:.2f}, {v['alpha_ci'][1]:.2f}]"
                for k, v in found["alpha_N"].items()
            )
        )
    acc = found["shift"]["accuracy"]
    parts.append(
        "accuracy at shift 0 / 1 / 2 px (wrap): "
        + ", ".join(
            f"{k} " + " / ".join(f"{100 * v['wrap'][str(s)]:.0f}%" for s in (0, 1, 2))
            for k, v in acc.items()
        )
    )
    adv = found["shift"]["kept_accuracy_advantage"].get("resnet_minus_mlp", {})
    if "wrap_1" in adv:
        d = adv["wrap_1"]
        parts.append(
            f"the ResNet keeps {100 * d['value']:+.0f} points more accuracy at 1 px "
            f"[{100 * d['ci'][0]:.0f}, {100 * d['ci'][1]:.0f}]"
        )
    pool = found["pooling"]
    if pool is not None:
        d = pool["log_loss_ratio_max_over_avg"]
        verdict = "differs" if d["resolved"] else "no measurable difference"
        lo, hi = pool["loss_ratio_ci"]
        parts.append(
            f"max vs avg pooling: loss ratio {pool['loss_ratio_max_over_avg']:.2f} "
            f"[{lo:.2f}, {hi:.2f}] ({verdict})"
        )
    return "; ".join(parts)


def _power_line(ax: Any, fit: Any, x: pd.Series, colour: str) -> None:
    """A fitted `A x^-alpha` over the range of `x`."""
    grid = np.geomspace(x.min(), x.max(), 50)
    ax.plot(grid, fit.params["A"] * grid ** -fit.params["alpha"], "-", color=colour, alpha=0.7)


def _figure(
    runs: pd.DataFrame,
    front: pd.DataFrame,
    fits: dict[str, Any],
    best: pd.DataFrame,
    n_fits: dict[str, Any],
    shifted: dict[str, Any],
) -> Any:
    """(a) IsoFLOP profiles, (b) compute frontiers, (c) best loss per size vs N, (d) validation
    accuracy against the shift (mean over each kind's best-trained sizes)."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    (ax1, ax2), (ax3, ax4) = axes
    colours = {k: f"C{i}" for i, k in enumerate(KINDS)}
    budgets = sorted(runs[BUDGET].unique())
    styles = dict(zip(budgets, ["-", ":", "--", "-."], strict=False))
    for (kind, budget), g in runs.groupby([KIND, BUDGET]):
        g = g.sort_values("N")
        ax1.plot(
            g["N"],
            g["loss"],
            marker=MARKERS.get(kind, "^"),
            ms=4,
            color=colours.get(kind, "C3"),
            linestyle=styles.get(budget, "-"),
            label=f"{kind}, C={budget:.0e}",
        )
    ax1.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="final eval loss (nats)")
    ax1.set_title("(a) IsoFLOP profiles (line style: budget)")
    ax1.legend(fontsize=6, ncol=2)
    for kind, g in front.groupby(KIND):
        c = colours.get(kind, "C3")
        text = kind
        if kind in fits:
            lo, hi = fits[kind].ci.get("alpha", (np.nan, np.nan))
            text += f": alpha {fits[kind].params['alpha']:.2f} [{lo:.2f}, {hi:.2f}]"
            _power_line(ax2, fits[kind], g["C"], c)
        ax2.plot(g["C"], g["loss"], MARKERS.get(kind, "^"), color=c, label=text)
    ax2.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="best eval loss (nats)")
    ax2.set_title("(b) compute frontier, L = A C^-alpha")
    ax2.legend(fontsize=8)
    for kind, g in best.groupby(KIND):
        c = colours.get(kind, "C3")
        text = kind
        if kind in n_fits:
            lo, hi = n_fits[kind].ci.get("alpha", (np.nan, np.nan))
            text += f": alpha_N {n_fits[kind].params['alpha']:.2f} [{lo:.2f}, {hi:.2f}]"
            _power_line(ax3, n_fits[kind], g["N"], c)
        ax3.plot(g["N"], g["loss"], MARKERS.get(kind, "^"), color=c, label=text)
    ax3.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="best loss over budgets")
    ax3.set_title("(c) parameter efficiency, L = A N^-alpha_N")
    ax3.legend(fontsize=8)
    for kind, acc in shifted["accuracy"].items():
        c = colours.get(kind, "C3")
        for mode, ls in (("wrap", "-"), ("zero", "--")):
            y = [100 * acc[mode][str(s)] for s in SHIFTS]
            ax4.plot(SHIFTS, y, ls, marker=MARKERS.get(kind, "^"), color=c, label=f"{kind}, {mode}")
    ax4.set(xlabel="shift (pixels, each axis direction)", ylabel="validation accuracy (%)")
    ax4.set_xticks(SHIFTS)
    ax4.set_ylim(0, 100)
    ax4.set_title("(d) shifted validation digits (solid: wrap-around, dashed: zero fill)")
    ax4.legend(fontsize=8)
    fig.tight_layout()
    return fig

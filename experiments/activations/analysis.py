"""How does each activation scale with compute, and when do ReLU units die?

1. `activations` sweep (GPT, 8 activations x 4 widths): per activation, the offset-free power
   law `L = A C^-alpha` through its final eval losses (a local slope; four points do not
   identify an offset), with a 95% bootstrap interval, and the paired bootstrap interval of
   its alpha minus gelu's and minus relu's (resample b draws the same widths for both).
2. `dead_units` sweep (MLP on the digits, relu / leaky_relu / elu x 4 learning rates):
   every kept checkpoint (and step 0) restored, each hidden layer's pre-activations on the
   297 validation digits, and the fraction of units that are <= 0 on all of them (dead), with
   how many of those come back later and how much gradient they still pass
   (`scalinglab.experiments.activity`); the final eval loss per (activation, lr).
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
from scalinglab.experiments import activity  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

ACT, LR = "model.activation", "optimizer.lr"
ORDER = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "swiglu"]
REFERENCES = ("gelu", "relu")


def _ordered(names: Any) -> list[str]:
    names = list(names)
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def _verdict(diff: dict[str, Any], a: str, b: str) -> str:
    if diff["resolved"] is None:
        return "undecided"
    if not diff["resolved"]:
        return "no measurable difference"
    return f"{a} steeper" if diff["value"] > 0 else f"{b} steeper"


def exponents(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any], dict[str, Any]]:
    """The GPT runs, their fits per activation, and the findings of part 1."""
    runs = h.finished(sl.load_runs(sweep_dir))
    fits = h.group_fits(runs, [ACT], "C", "loss", pair_by=["model.d_model"])
    losses = runs.pivot_table(index="model.d_model", columns=ACT, values="loss")
    losses = losses[_ordered(losses.columns)]
    against: dict[str, dict[str, Any]] = {}
    for ref in REFERENCES:
        if ref not in fits:
            continue
        against[ref] = {}
        for name in _ordered(fits):
            if name != ref:
                diff = h.paired_difference(fits[name], fits[ref])
                against[ref][name] = {**diff, "verdict": _verdict(diff, name, ref)}
    largest = losses.iloc[-1].dropna()
    found: dict[str, Any] = {
        "alpha": {name: h.exponent(fits[name]) for name in _ordered(fits)},
        "against": against,
        "steepest": max(fits, key=lambda k: fits[k].params["alpha"]),
        "flattest": min(fits, key=lambda k: fits[k].params["alpha"]),
        "final_eval_loss": {
            str(d): {k: float(v) for k, v in row.dropna().items()} for d, row in losses.iterrows()
        },
        "largest_d_model": int(losses.index[-1]),
        "best_at_largest": str(largest.idxmin()),
        "worst_at_largest": str(largest.idxmax()),
    }
    if {"gelu", "relu"} <= set(fits):
        found["gelu_minus_relu_alpha"] = against["relu"]["gelu"]
    return runs, fits, found


def dead_units(sweep_dir: Path, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The per-layer activity table (also written to `dead_units.csv`), the runs, and the
    findings of part 2, per `activation@lr`."""
    table = activity.activity_table(sweep_dir, [ACT, LR])
    table.to_csv(out / "dead_units.csv", index=False)
    runs = sl.load_runs(sweep_dir)
    curves = sl.load_curves(sweep_dir).dropna(subset=["eval_loss"])
    # All hidden layers together, per (trial, step): units, dead, revived, ever dead.
    for col in ("revived", "ever_dead"):
        table[f"{col}_units"] = table[col] * table["units"]
    total = (
        table.groupby([ACT, LR, "trial_id", "status", "step"], sort=True)[
            ["units", "dead", "revived_units", "ever_dead_units"]
        ]
        .sum()
        .reset_index()
    )
    total["dead_fraction"] = total["dead"] / total["units"]
    per_group: dict[str, Any] = {}
    for (act, lr), grp in total.groupby([ACT, LR], sort=True):
        grp = grp.sort_values("step")
        last = grp.iloc[-1]
        layers = table[(table[ACT] == act) & (table[LR] == lr)]
        final_layers = layers[layers["step"] == last["step"]].sort_values("index")
        run = runs[(runs[ACT] == act) & (runs[LR] == lr)].iloc[0]
        slopes = final_layers.loc[final_layers["dead"] > 0, ["dead", "dead_slope"]]
        curve = curves[curves["trial_id"] == run["trial_id"]]
        peak = curve.loc[curve["eval_loss"].idxmax()] if len(curve) else None
        per_group[h.label((act, lr))] = {
            "activation": act,
            "lr": float(lr),
            "status": str(run["status"]),
            "final_eval_loss": _num(run["final_eval_loss"]),
            "final_eval_accuracy": _num(run.get("final_eval_accuracy")),
            # The worst evaluation on the way (a transient blow-up at a high rate).
            "peak_eval_loss": None if peak is None else float(peak["eval_loss"]),
            "peak_eval_step": None if peak is None else int(peak["step"]),
            "steps": [int(s) for s in grp["step"]],
            "dead_fraction": [float(x) for x in grp["dead_fraction"]],
            "dead_fraction_by_layer": {
                layer: [float(x) for x in g.sort_values("step")["dead_fraction"]]
                for layer, g in sorted(
                    layers.groupby("layer"), key=lambda kv: kv[1]["index"].iloc[0]
                )
            },
            "final_by_layer": {
                str(r["layer"]): {
                    "dead_fraction": float(r["dead_fraction"]),
                    "ever_dead": float(r["ever_dead"]),
                    "revived": float(r["revived"]),
                    "dead_slope": _num(r["dead_slope"]),
                }
                for _, r in final_layers.iterrows()
            },
            "initial_dead_fraction": float(grp["dead_fraction"].iloc[0]),
            "final_dead_fraction": float(last["dead_fraction"]),
            "peak_dead_fraction": float(grp["dead_fraction"].max()),
            "ever_dead_fraction": float(last["ever_dead_units"] / last["units"]),
            "revived_fraction": float(last["revived_units"] / last["units"]),
            # Mean derivative of the activation over the final dead units' probe inputs.
            "final_dead_slope": (
                float(np.average(slopes["dead_slope"], weights=slopes["dead"]))
                if len(slopes)
                else None
            ),
        }
    return table, total, per_group


def _num(x: Any) -> float | None:
    return None if x is None or pd.isna(x) else float(x)


def figure(
    runs: pd.DataFrame,
    fits: dict[str, Any],
    found: dict[str, Any],
    total: pd.DataFrame,
    dead: dict[str, Any],
    out: Path,
) -> None:
    """Top: (a) L vs C per activation with its fit, (b) alpha with its 95% interval, (c) final
    eval loss (solid) and dead fraction at the end (dashed) against the learning rate. Bottom:
    the fraction of dead hidden units over training, one panel per activation, one line per
    learning rate."""
    acts = _ordered(total[ACT].unique())
    fig, axes = plt.subplots(2, max(3, len(acts)), figsize=(16, 9), squeeze=False)
    a, b, d = axes[0][:3]
    names = _ordered(fits)
    colours = {n: f"C{i}" for i, n in enumerate(names)}
    for name in names:
        g = runs[runs[ACT] == name]
        fit = fits[name]
        a.plot(g["C"], g["loss"], "o", color=colours[name], ms=4, label=name)
        grid = np.geomspace(g["C"].min(), g["C"].max(), 50)
        a.plot(grid, fit.params["A"] * grid ** -fit.params["alpha"], "-", color=colours[name])
    a.set(
        xscale="log",
        yscale="log",
        xlabel="compute C (FLOPs)",
        ylabel="final eval loss (nats/byte)",
        title="(a) GPT: L = A C^-alpha per activation",
    )
    lo, hi = runs["C"].min(), runs["C"].max()
    ticks = [
        m * 10.0**k
        for k in range(int(np.floor(np.log10(lo))), int(np.ceil(np.log10(hi))) + 1)
        for m in (1, 2, 5)
        if lo <= m * 10.0**k <= hi
    ]
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.set_xticks(ticks, [f"{t:.0e}".replace("e+", "e") for t in ticks])
    a.legend(fontsize=8, ncol=2)
    for i, name in enumerate(names):
        e = found["alpha"][name]
        lo, hi = e["alpha_ci"]
        b.errorbar(
            [i],
            [e["alpha"]],
            yerr=[[e["alpha"] - lo], [hi - e["alpha"]]],
            fmt="o",
            color=colours[name],
            capsize=4,
        )
    b.set_xticks(range(len(names)), names, rotation=30)
    b.set(ylabel="alpha, 95% bootstrap interval", title="(b) GPT: exponent per activation")
    act_colour = {n: colours.get(n, f"C{i}") for i, n in enumerate(acts)}
    twin = d.twinx()
    for act in acts:
        rows = sorted((v for v in dead.values() if v["activation"] == act), key=lambda v: v["lr"])
        x = [v["lr"] for v in rows]
        loss = [np.nan if v["final_eval_loss"] is None else v["final_eval_loss"] for v in rows]
        d.plot(x, loss, "o-", color=act_colour[act], label=f"{act}: final eval loss")
        frac = [100 * v["final_dead_fraction"] for v in rows]
        twin.plot(x, frac, "s--", color=act_colour[act], alpha=0.6, label=f"{act}: dead (%)")
    d.set(
        xscale="log",
        yscale="log",
        xlabel="peak learning rate (AdamW)",
        ylabel="final eval loss (nats), solid",
        title="(c) MLP on digits: loss and dead units vs lr",
    )
    twin.set_ylabel("dead hidden units at the end (%), dashed")
    twin.set_ylim(0, 100)
    lines, more = d.get_legend_handles_labels(), twin.get_legend_handles_labels()
    d.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="upper center")
    for ax in axes[0][3:]:
        ax.axis("off")
    lrs = sorted(total[LR].unique())
    shades = dict(zip(lrs, np.linspace(0.35, 1.0, len(lrs)), strict=True))
    for i, (ax, act) in enumerate(zip(axes[1], acts, strict=False)):
        for lr, grp in total[total[ACT] == act].groupby(LR, sort=True):
            grp = grp.sort_values("step")
            status = grp["status"].iloc[0]
            ax.plot(
                grp["step"],
                100 * grp["dead_fraction"],
                "o-",
                ms=3,
                color=act_colour[act],
                alpha=shades[lr],
                label=f"lr {lr:g}" + ("" if status == "done" else f" ({status})"),
            )
            if lr == lrs[-1]:  # the gap to the solid line: units that came back
                ax.plot(
                    grp["step"],
                    100 * grp["ever_dead_units"] / grp["units"],
                    ":",
                    color=act_colour[act],
                    label=f"lr {lr:g}: dead at any step so far",
                )
        ax.set(
            ylim=(0, 100),
            xlabel="step",
            ylabel="dead hidden units (%)" if i == 0 else None,
            title=f"({chr(ord('d') + i)}) {act}: pre-activation <= 0 on all probe digits",
        )
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8)
    for ax in axes[1][len(acts) :]:
        ax.axis("off")
    fig.tight_layout()
    h.save_figure(fig, out, "activations")


def _answer(found: dict[str, Any], dead: dict[str, Any]) -> str:
    alphas = found["alpha"]
    parts = [
        "alpha "
        + ", ".join(f"{n} {alphas[n]['alpha']:.3f}" for n in alphas)
        + f" (steepest {found['steepest']}, flattest {found['flattest']})"
    ]
    for ref, diffs in found["against"].items():
        same = [n for n, d in diffs.items() if d["resolved"] is False]
        differ = [f"{n} {h.describe(d)}" for n, d in diffs.items() if d["resolved"]]
        open_ = [n for n, d in diffs.items() if d["resolved"] is None]
        text = [f"no measurable difference for {', '.join(same)}"] if same else []
        text += [f"alpha - alpha({ref}) resolved for {', '.join(differ)}"] if differ else []
        text += [f"undecided (no interval) for {', '.join(open_)}"] if open_ else []
        parts.append(f"vs {ref}: " + ", ".join(text))
    if dead:
        top = max(v["lr"] for v in dead.values())
        at_top = [v for v in dead.values() if v["lr"] == top]
        parts.append(
            f"dead hidden units at the end, lr {top:g}: "
            + ", ".join(
                f"{v['activation']} {100 * v['final_dead_fraction']:.0f}%"
                f" (revived {100 * v['revived_fraction']:.0f}%)"
                for v in sorted(at_top, key=lambda v: ORDER.index(v["activation"]))
            )
        )
    return "; ".join(parts)


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Exponents per activation with paired differences; dead units over training."""
    runs, fits, found = exponents(sweeps["activations"])
    _, total, dead = dead_units(sweeps["dead_units"], out)
    figure(runs, fits, found, total, dead, out)
    return {
        "answer": _answer(found, dead),
        **found,
        "dead_units": dead,
        "dead_units_table": "dead_units.csv",
    }

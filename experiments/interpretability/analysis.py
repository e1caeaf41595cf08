"""Interpretability vs model size: linear probes of GPT activations, saliency maps of digit
classifiers and the ResNets' first-layer filters.

1. Probes (`scalinglab.experiments.probe`): every GPT's residual stream (layer 0 = embeddings,
   layer l = output of block l) on 256 fresh windows of its order-2 Markov language; a ridge
   probe per layer for the token one position back (lag 1: the model needs it) and two back
   (lag 2: it does not), fitted on half the windows and scored on the other half, against
   chance (the majority class) and the exact best guess of the lag-1 token from the current
   token alone (`pair_ceiling`: what the embedding layer can know).
2. Saliency (`scalinglab.experiments.saliency`): per classifier, on the 297 validation digits,
   the input gradient and integrated gradients (IG) of the label's logit from a black baseline
   (32 midpoint steps; completeness checked, and at 8 steps to show the Riemann error fall);
   the share of |IG| in the top 6 of 64 pixels; deletion curves: accuracy as the pixels of
   highest IG (or of highest |gradient|, or random pixels) are set to 0. The clean logits are
   checked against the loss and accuracy each trial recorded.
3. Filters: the ResNets' 3x3 stem filters, their roughness (mean squared neighbour difference
   over mean squared tap; 2 for independent taps) trained vs at initialisation.

Every per-trial number becomes a trend per decade of N with a seed-bootstrap interval
(`scalinglab.experiments.trend`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import scalinglab as sl  # noqa: E402
from scalinglab.data.synthetic import make_language  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import imageeval as ie  # noqa: E402
from scalinglab.experiments import probe as pb  # noqa: E402
from scalinglab.experiments import saliency as sa  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

LAGS = (1, 2)
PROBE_WINDOWS = 256
IG_STEPS = 32
IG_STEPS_COARSE = 8
TOP_K = 6  # pixels of 64: the concentration measure
DELETE_KS = [0, 2, 4, 6, 8, 12, 16, 24, 32]
REFERENCE_K = 8  # the answer line's deletion count


# ----------------------------------------------------------------------------- probes
def probe_rows(sweep_dir: Path) -> pd.DataFrame:
    """One row per GPT trial, lag and layer: held-out probe accuracy, chance, ceiling."""
    rows = []
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        cfg, params, _ = ie.restore(sweep_dir / r["trial_id"])
        windows = pb.probe_windows(cfg, PROBE_WINDOWS)
        stream = pb.residual_stream(cfg, params, windows.tokens)
        ceilings = pb.lag_ceilings(cfg)
        entropy = make_language(cfg.data.synthetic).entropy_rate_nats
        for lag in LAGS:
            res = pb.layer_accuracies(stream, windows.tokens, lag, cfg.data.synthetic.vocab_size)
            for layer, acc in enumerate(res["accuracy"]):
                rows.append(
                    {
                        "trial_id": r["trial_id"],
                        "d_model": int(r["model.d_model"]),
                        "N": int(r["N"]),
                        "seed": int(r["seed"]),
                        "n_layer": cfg.model.n_layer,
                        "lag": lag,
                        "layer": layer,
                        "accuracy": acc,
                        "chance": res["chance"],
                        "ceiling": ceilings[lag],
                        "final_eval_loss": float(r["final_eval_loss"]),
                        "entropy_rate": entropy,
                        "n_test": res["n_test"],
                    }
                )
    return pd.DataFrame(rows)


def probe_findings(table: pd.DataFrame) -> dict[str, Any]:
    """Per lag and layer: accuracy vs N; the last layer minus the embeddings vs N; the loss's
    excess over the entropy rate vs N."""
    out: dict[str, Any] = {}
    for lag, g in table.groupby("lag"):
        last = g[g["layer"] == g["n_layer"]].set_index("trial_id")
        first = g[g["layer"] == 0].set_index("trial_id")
        out[f"lag{lag}"] = {
            "per_layer": {
                str(layer): tr.seed_bootstrap_trend(gl["N"], gl["accuracy"])
                for layer, gl in g.groupby("layer")
            },
            "last_minus_embedding": tr.seed_bootstrap_trend(
                last["N"], last["accuracy"] - first.loc[last.index, "accuracy"]
            ),
            "chance": float(g["chance"].mean()),
            "ceiling": float(g["ceiling"].mean()),
        }
    one = table[(table["lag"] == 1) & (table["layer"] == 0)]
    out["loss_excess_nats"] = tr.seed_bootstrap_trend(
        one["N"], one["final_eval_loss"] - one["entropy_rate"]
    )
    out["entropy_rate_nats"] = float(one["entropy_rate"].iloc[0])
    out["n_test_positions"] = int(one["n_test"].iloc[0])
    return out


# ----------------------------------------------------------------------------- saliency
def saliency_trial(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(row of numbers, arrays for the figure) of one classifier's saliency on its val split."""
    cfg, fn, variables = sa.load_classifier(run_dir)
    images, labels = ie.split_arrays(cfg, "val")
    x, y = jnp.asarray(images, jnp.float32), jnp.asarray(labels, jnp.int32)
    base = jnp.zeros_like(x)
    z = sa.logits(fn, variables, x)
    scored = ie.per_example(z, labels)
    f_x = z[np.arange(len(z)), labels]
    f_b = sa.target_logits(fn, variables, base, labels)
    grad = np.asarray(sa.input_gradient(fn, variables, x, y))
    ig = np.asarray(sa.integrated_gradients(fn, variables, x, y, base, IG_STEPS))
    ig_coarse = np.asarray(sa.integrated_gradients(fn, variables, x, y, base, IG_STEPS_COARSE))
    scale = np.abs(f_x - f_b).mean()
    gap = sa.completeness_gap(ig, f_x, f_b)
    gap_coarse = sa.completeness_gap(ig_coarse, f_x, f_b)
    pixels = images.shape[1] * images.shape[2]
    orders = {
        "ig": sa.saliency_order(ig, signed=True),
        "gradient": sa.saliency_order(grad),
        "random": sa.random_order(len(images), pixels, seed=0),
    }
    curves = {
        name: sa.deletion_accuracy(fn, variables, images, labels, order, DELETE_KS)
        for name, order in orders.items()
    }
    row = {
        "accuracy": float(scored["correct"].mean()),
        "loss": float(scored["loss"].mean()),
        "ig_completeness_rel": float(np.abs(gap).max() / scale),
        "ig_completeness_rel_coarse": float(np.abs(gap_coarse).max() / scale),
        "ig_top_k_share": float(sa.top_k_share(ig, TOP_K).mean()),
        "gradient_top_k_share": float(sa.top_k_share(grad, TOP_K).mean()),
        **{f"del_{n}_{k}": c[i] for n, c in curves.items() for i, k in enumerate(DELETE_KS)},
    }
    if cfg.model.family == "resnet":
        kernel = sa.first_conv_kernel(variables["params"])
        init = sa.initial_stem_kernel(cfg, cfg.seed)
        row["roughness"] = float(sa.roughness(kernel).mean())
        row["roughness_init"] = float(sa.roughness(init).mean())
    arrays = {"ig": ig[:4], "images": images[:4], "labels": labels[:4]}
    if cfg.model.family == "resnet":
        arrays["kernel"] = kernel
    return row, arrays


def saliency_rows(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per classifier trial, with the recorded metrics; arrays of one seed per size."""
    rows, arrays = [], {}
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        row, arr = saliency_trial(sweep_dir / r["trial_id"])
        family, width = r["model.family"], int(r["model.width"])
        rows.append(
            {
                "trial_id": r["trial_id"],
                "family": family,
                "width": width,
                "N": int(r["N"]),
                "seed": int(r["seed"]),
                "recorded_accuracy": float(r["final_eval_accuracy"]),
                "recorded_loss": float(r["final_eval_loss"]),
                **row,
            }
        )
        arrays.setdefault((family, width, int(r["N"])), arr)
    return pd.DataFrame(rows), arrays


def saliency_findings(table: pd.DataFrame) -> dict[str, Any]:
    """Per family: trends vs N of concentration, deletion at REFERENCE_K, filter roughness."""
    k = REFERENCE_K
    out: dict[str, Any] = {}
    for family, g in table.groupby("family"):
        f = {
            "ig_top_k_share": tr.seed_bootstrap_trend(g["N"], g["ig_top_k_share"]),
            "gradient_top_k_share": tr.seed_bootstrap_trend(g["N"], g["gradient_top_k_share"]),
            **{
                f"accuracy_after_deleting_{k}_{n}": tr.seed_bootstrap_trend(
                    g["N"], g[f"del_{n}_{k}"]
                )
                for n in ("ig", "gradient", "random")
            },
            f"random_minus_ig_at_{k}": tr.seed_bootstrap_trend(
                g["N"], g[f"del_random_{k}"] - g[f"del_ig_{k}"]
            ),
            "deletion_curves": {
                str(n): {
                    name: [float(gn[f"del_{name}_{kk}"].mean()) for kk in DELETE_KS]
                    for name in ("ig", "gradient", "random")
                }
                for n, gn in g.groupby("N")
            },
        }
        if "roughness" in g and g["roughness"].notna().all():
            f["filter_roughness"] = tr.seed_bootstrap_trend(g["N"], g["roughness"])
            f["filter_roughness_init"] = tr.seed_bootstrap_trend(g["N"], g["roughness_init"])
        out[family] = f
    return out


# ----------------------------------------------------------------------------- figures
def _trend_plot(ax: Any, t: dict[str, Any], label: str, style: str, color: str) -> None:
    per = t["per_size"]
    ax.errorbar(
        [p["x"] for p in per],
        [p["mean"] for p in per],
        yerr=[[p["mean"] - p["ci"][0] for p in per], [p["ci"][1] - p["mean"] for p in per]],
        fmt=style, color=color, ms=4, capsize=3, label=label,
    )  # fmt: skip


def figure(
    probes: pd.DataFrame,
    pf: dict[str, Any],
    sal: pd.DataFrame,
    sf: dict[str, Any],
    arrays: dict[str, Any],
    out: Path,
) -> None:
    """Top: probe accuracy per layer per size; probe accuracy vs N; IG concentration vs N.
    Middle: deletion curves per family. Bottom: one digit's IG per size, and the ResNets'
    first-layer filters (one seed per size)."""
    fig = plt.figure(figsize=(16, 12))
    grid = fig.add_gridspec(3, 4)
    ax = fig.add_subplot(grid[0, 0:2])
    for i, (d, g) in enumerate(probes.groupby("d_model")):
        for lag, style in ((1, "-o"), (2, "--s")):
            m = g[g["lag"] == lag].groupby("layer")["accuracy"].mean()
            label = f"d_model {d} (N={g['N'].iloc[0]:,})" if lag == 1 else None
            ax.plot(m.index, m.to_numpy(), style, color=f"C{i}", ms=4, label=label)
    ax.axhline(pf["lag1"]["ceiling"], color="C7", ls=":", lw=1.2)
    ax.axhline(pf["lag2"]["ceiling"], color="k", ls=":", lw=1.2)
    ax.axhline(pf["lag1"]["chance"], color="gray", ls="-.", lw=1)
    ax.set(
        xlabel="layer (0 = embeddings, l = after block l)",
        ylabel="held-out probe accuracy",
        title="probe for token t-1 (solid) and t-2 (dashed); dotted: best guess of t-1 from "
        "token t (grey) and of t-2 from t-1 and t (black); dash-dot: chance",
        ylim=(0, 1.02),
    )
    ax.set_xticks(sorted(probes["layer"].unique()))
    ax.title.set_fontsize(8)
    ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 2])
    last = str(int(probes["n_layer"].max()))
    for i, (lag, layer, style) in enumerate(((1, last, "-o"), (2, last, "--s"), (1, "0", ":^"))):
        t = pf[f"lag{lag}"]["per_layer"][layer]
        _trend_plot(ax, t, f"t-{lag}, layer {layer}: {tr.describe_trend(t, 2)}", style, f"C{i}")
    ax.set(xscale="log", xlabel="parameters N", ylabel="probe accuracy", ylim=(0, 1.02))
    ax.set_title("GPT probes vs N", fontsize=9)
    ax.legend(fontsize=6)
    ax = fig.add_subplot(grid[0, 3])
    for i, (family, f) in enumerate(sorted(sf.items())):
        _trend_plot(ax, f["ig_top_k_share"], f"{family} IG", "-o", f"C{i}")
        _trend_plot(ax, f["gradient_top_k_share"], f"{family} gradient", "--s", f"C{i}")
    ax.axhline(TOP_K / 64, color="gray", ls="-.", lw=1)
    ax.set(xscale="log", xlabel="parameters N", ylabel=f"share of |attribution| in top {TOP_K}")
    ax.set_title(f"saliency concentration (flat map: {TOP_K}/64)", fontsize=9)
    ax.legend(fontsize=6)
    for j, family in enumerate(sorted(sf)):
        ax = fig.add_subplot(grid[1, 2 * j : 2 * j + 2])
        for i, (n, curves) in enumerate(sf[family]["deletion_curves"].items()):
            for name, style in (("ig", "-o"), ("gradient", ":"), ("random", "--")):
                label = f"N={int(n):,} {name}"
                ax.plot(DELETE_KS, curves[name], style, color=f"C{i}", ms=3, label=label)
        ax.set(
            xlabel="pixels set to 0 (of 64)",
            ylabel="validation accuracy",
            title=f"{family}: deletion by IG (solid), |gradient| (dotted), random (dashed)",
            ylim=(0, 1.02),
        )
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6, ncol=3)
    keys = sorted(arrays)
    sub = grid[2, 0:2].subgridspec(1, len(keys))
    for i, key in enumerate(keys):
        a = fig.add_subplot(sub[0, i])
        ig = arrays[key]["ig"][0, ..., 0]
        lim = np.abs(ig).max() or 1.0
        a.imshow(ig, cmap="RdBu_r", vmin=-lim, vmax=lim)
        a.set_title(f"{key[0]} {key[1]}\nIG, digit {arrays[key]['labels'][0]}", fontsize=7)
        a.axis("off")
    res = [k for k in keys if "kernel" in arrays[k]]
    if res:
        most = max(arrays[k]["kernel"].shape[-1] for k in res)
        sub = grid[2, 2:4].subgridspec(len(res), most)
        for i, key in enumerate(res):
            kern = arrays[key]["kernel"]
            lim = np.abs(kern).max() or 1.0
            for c in range(kern.shape[-1]):
                a = fig.add_subplot(sub[i, c])
                a.imshow(kern[:, :, 0, c], cmap="RdBu_r", vmin=-lim, vmax=lim)
                a.set_xticks([])
                a.set_yticks([])
                if c == 0:
                    a.set_ylabel(f"width {key[1]}", fontsize=7)
                if i == 0 and c == 0:
                    a.set_title("ResNet stem filters (3x3), one seed per width", loc="left")
    fig.tight_layout()
    h.save_figure(fig, out, "interpretability")


# ----------------------------------------------------------------------------- analyse
def _verdict(t: dict[str, Any], digits: int = 2) -> str:
    if t["resolved"] is None:
        return "one size"
    return (
        tr.describe_trend(t, digits)
        if t["resolved"]
        else f"no measurable trend ({tr.describe_trend(t, digits)})"
    )


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Probe every GPT per layer; saliency, deletion and filters of every classifier; vs N."""
    probes = probe_rows(sweeps["gpt"])
    probes.to_csv(out / "probes.csv", index=False)
    pf = probe_findings(probes)
    sal, arrays = saliency_rows(sweeps["classifiers"])
    sal.to_csv(out / "saliency.csv", index=False)
    sf = saliency_findings(sal)
    figure(probes, pf, sal, sf, arrays, out)

    last = str(int(probes["n_layer"].max()))
    l1, l2 = pf["lag1"]["per_layer"][last], pf["lag2"]["per_layer"][last]
    emb = pf["lag1"]["per_layer"]["0"]

    def means(t: dict[str, Any]) -> str:
        return " -> ".join(f"{p['mean']:.2f}" for p in (t["per_size"][0], t["per_size"][-1]))

    def each(t: dict[str, Any]) -> str:
        return ", ".join(f"{p['mean']:.2f}" for p in t["per_size"])

    sizes = ", ".join(str(d) for d in sorted(probes["d_model"].unique()))
    parts = [
        f"GPT probes at the last layer, d_model {sizes}: token t-1 {each(l1)} (best guess "
        f"from token t {pf['lag1']['ceiling']:.2f}), t-2 {each(l2)} (best guess from t-1 and t "
        f"{pf['lag2']['ceiling']:.2f}); embeddings alone {each(emb)}; chance "
        f"{pf['lag1']['chance']:.2f}"
    ]
    k = REFERENCE_K
    for family, f in sorted(sf.items()):
        d = f[f"random_minus_ig_at_{k}"]
        c = f["ig_top_k_share"]
        bit = (
            f"{family}: deleting the {k} top-IG pixels costs {means(d)} more accuracy than "
            f"{k} random ({_verdict(d)}); IG top-{TOP_K} share {means(c)} ({_verdict(c)})"
        )
        if "filter_roughness" in f:
            r = f["filter_roughness"]
            bit += f"; stem filter roughness {means(r)} (init ~2; {_verdict(r)})"
        parts.append(bit)
    clean = {
        "max_abs_accuracy_diff": float((sal["accuracy"] - sal["recorded_accuracy"]).abs().max()),
        "max_abs_loss_diff": float((sal["loss"] - sal["recorded_loss"]).abs().max()),
        "trials": len(sal),
    }
    completeness = {
        f"max_rel_gap_{IG_STEPS}_steps": float(sal["ig_completeness_rel"].max()),
        f"max_rel_gap_{IG_STEPS_COARSE}_steps": float(sal["ig_completeness_rel_coarse"].max()),
    }
    return {
        "answer": "; ".join(parts),
        "probes": pf,
        "saliency": sf,
        "clean_check": clean,
        "ig_completeness": completeness,
        "settings": {
            "lags": list(LAGS),
            "probe_windows": PROBE_WINDOWS,
            "ig_steps": IG_STEPS,
            "top_k": TOP_K,
            "delete_ks": DELETE_KS,
            "reference_k": REFERENCE_K,
        },
        "tables": ["probes.csv", "saliency.csv"],
    }

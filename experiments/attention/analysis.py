"""Do attention heads specialise, and how does loss change with the number of heads?

1. Loss vs heads: per head count, the mean final eval loss over seeds with its 95% bootstrap
   interval (seeds resampled), and its difference from the 1-head model's mean (both resampled
   independently).
2. Per trial, on 64 fresh windows of the `induction` source
   (`scalinglab.experiments.attention_maps`): every head's attention maps, recomputed from the
   final checkpoint; its previous-token score (mass on key t - 1, over all queries and over the
   ECHO queries whose target copies token t - 1) and its induction score (mass on the key after
   the query token's most recent earlier occurrence, over the queries whose target is an
   induction copy); the model's loss per target kind against the true per-token floor, on the
   targets whose episode began inside the window.
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
from scalinglab.data.induction import KIND_NAMES, entropy_rate_nats, markers  # noqa: E402
from scalinglab.experiments import attention_maps as am  # noqa: E402
from scalinglab.experiments import gradients as g  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

HEADS = "model.n_head"
SPECIALISED = 0.5  # a head with at least half its attention on the relation's key


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def trial_table(sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per finished trial: head count, seed, final eval loss, in-context loss per kind,
    each head's scores; and the maps of every trial (for the figures), by trial id."""
    runs = h.finished(sl.load_runs(sweep_dir)).set_index("trial_id")
    rows, maps = [], {}
    for d in g.finished_run_dirs(sweep_dir):
        cfg = g.trial_config(d)
        params, _, _ = g.final_params(cfg, d)
        pr = am.probe(cfg)
        logits, probs = am.attention_probs(cfg, params, pr.inputs)
        scores = am.head_scores(probs, pr)
        losses = am.kind_losses(logits, pr)
        maps[d.name] = {"cfg": cfg, "probs": probs, "inputs": pr.inputs, "scores": scores}
        row: dict[str, Any] = {
            "trial_id": d.name,
            "n_head": cfg.model.n_head,
            "seed": cfg.seed,
            "final_eval_loss": float(runs.loc[d.name, "final_eval_loss"]),
        }
        for kind, v in losses.items():
            row[f"loss_{kind}"], row[f"floor_{kind}"] = v["loss"], v["floor"]
        for name, s in scores.items():
            row[f"{name}_scores"] = np.round(s, 4).tolist()  # (layer, head)
            best = np.unravel_index(np.nanargmax(s), s.shape) if np.isfinite(s).any() else None
            row[f"best_{name}"] = _num(s[best]) if best else None
            row[f"best_{name}_head"] = [int(best[0]), int(best[1])] if best else None
        rows.append(row)
    return pd.DataFrame(rows).sort_values(["n_head", "seed"]), maps


def _by_heads(table: pd.DataFrame, col: str) -> dict[int, Any]:
    groups = {int(k): g[col].dropna().to_list() for k, g in table.groupby("n_head")}
    groups = {k: v for k, v in groups.items() if v}
    return am.bootstrap_means(groups, reference=min(groups)) if groups else {}


def _label(token: int, bos: int, echo: int) -> str:
    if token == bos:
        return "^"
    if token == echo:
        return "="
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[token % 62]


def _draw_maps(axes: Any, entry: dict[str, Any], width: int, title: str) -> None:
    """One panel per (layer, head): the attention of the probe's first window (which starts at
    a BOS) over its first `width` positions."""
    cfg, probs, tokens = entry["cfg"], entry["probs"], entry["inputs"][0, :width]
    bos, echo = markers(cfg.data.induction)
    labels = [_label(int(t), bos, echo) for t in tokens]
    n_layer, n_head = probs.shape[0], probs.shape[2]
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            ax.imshow(probs[layer, 0, head, :width, :width], cmap="viridis", vmin=0, vmax=1)
            sc = entry["scores"]
            ax.set_title(
                f"L{layer} H{head}: prev {sc['previous'][layer, head]:.2f}, "
                f"ind {sc['induction'][layer, head]:.2f}",
                fontsize=7,
            )
            ax.set_xticks(range(width), labels, fontsize=4, family="monospace")
            ax.set_yticks(range(width), labels, fontsize=4, family="monospace")
            ax.tick_params(length=0, pad=1)
    axes[0][0].set_ylabel(f"{title}\nquery", fontsize=8)


def figure(
    table: pd.DataFrame, loss: dict[int, Any], maps: dict[str, Any], best: str, out: Path
) -> None:
    """Top: (a) final eval loss vs heads (seeds and mean with interval), (b) in-context loss
    per target kind vs heads, (c) each head's previous-token vs induction score. Bottom: the
    attention maps of every head of the best trial."""
    entry = maps[best]
    n_layer, n_head = entry["probs"].shape[0], entry["probs"].shape[2]
    cols = max(3, n_head)
    fig = plt.figure(figsize=(4.2 * cols, 4.0 + 3.6 * n_layer))
    grid = fig.add_gridspec(1 + n_layer, cols, height_ratios=[1.1] + [1.0] * n_layer)
    a, b, c = (fig.add_subplot(grid[0, i]) for i in range(3))
    counts = sorted(loss)
    a.plot(table["n_head"], table["final_eval_loss"], "o", color="0.6", ms=4, label="one seed")
    means = [loss[k]["mean"] for k in counts]
    err = [[m - loss[k]["ci"][0] for k, m in zip(counts, means, strict=True)]]
    err += [[loss[k]["ci"][1] - m for k, m in zip(counts, means, strict=True)]]
    a.errorbar(counts, means, yerr=err, fmt="s-", color="C0", capsize=4, label="mean, 95% CI")
    rate = entropy_rate_nats(entry["cfg"].data.induction)
    a.axhline(rate, color="k", ls=":", lw=1, label=f"entropy rate {rate:.3f}")
    a.set(
        xscale="log",
        xlabel="heads per layer (d_model fixed)",
        ylabel="final eval loss (nats/token)",
        title="(a) loss vs number of heads",
    )
    a.set_xticks(counts, [str(k) for k in counts])
    a.minorticks_off()
    a.legend(fontsize=8)
    for i, kind in enumerate(KIND_NAMES):
        col = f"loss_{kind}"
        if col in table:
            m = table.groupby("n_head")[col].mean()
            b.plot(m.index, m.to_numpy(), "o-", color=f"C{i}", label=f"{kind}")
            f = table.groupby("n_head")[f"floor_{kind}"].mean()
            b.plot(f.index, f.to_numpy(), ":", color=f"C{i}")
    b.set(
        xscale="log",
        xlabel="heads per layer",
        ylabel="in-context loss (nats/token), floor dotted",
        title="(b) loss per target kind (mean over seeds)",
    )
    b.set_xticks(counts, [str(k) for k in counts])
    b.minorticks_off()
    b.legend(fontsize=8)
    markers_ = dict(zip(counts, "os^Dv<>p", strict=False))
    for layer in range(n_layer):
        for k in counts:
            prev, ind = [], []
            for _, r in table[table["n_head"] == k].iterrows():
                prev += list(np.asarray(r["previous_scores"])[layer])
                ind += list(np.asarray(r["induction_scores"])[layer])
            c.plot(prev, ind, markers_[k], color=f"C{layer}", alpha=0.6, ms=5)
    for layer in range(n_layer):
        c.plot([], [], "o", color=f"C{layer}", label=f"layer {layer}")
    for k in counts:
        c.plot([], [], markers_[k], color="0.4", label=f"{k} head{'s' if k > 1 else ''}")
    c.set(
        xlim=(-0.02, 1.02),
        ylim=(-0.02, 1.02),
        xlabel="previous-token score (mass on t - 1)",
        ylabel="induction score (mass after the earlier occurrence)",
        title="(c) every head of every trial",
    )
    c.legend(fontsize=7, ncol=2)
    for ax in fig.axes[3:]:
        ax.axis("off")
    axes = [
        [fig.add_subplot(grid[1 + layer, hd]) for hd in range(n_head)] for layer in range(n_layer)
    ]
    row = table.set_index("trial_id").loc[best]
    width = min(40, entry["inputs"].shape[1])
    _draw_maps(axes, entry, width, f"{n_head} heads, seed {row['seed']}")
    fig.tight_layout()
    h.save_figure(fig, out, "attention")


def figure_all(table: pd.DataFrame, maps: dict[str, Any], out: Path) -> None:
    """Every head count's first seed: its attention maps, one row per layer."""
    firsts = table.sort_values(["n_head", "seed"]).groupby("n_head").head(1)
    n_layer = maps[firsts["trial_id"].iloc[0]]["probs"].shape[0]
    cols = int(firsts["n_head"].max())
    fig, axes = plt.subplots(
        n_layer * len(firsts),
        cols,
        figsize=(2.2 * cols, 2.3 * n_layer * len(firsts)),
        squeeze=False,
    )
    for ax in axes.ravel():
        ax.axis("off")
    for i, (_, r) in enumerate(firsts.iterrows()):
        entry = maps[r["trial_id"]]
        rows = axes[i * n_layer : (i + 1) * n_layer]
        for row in rows:
            for ax in row[: r["n_head"]]:
                ax.axis("on")
        width = min(32, entry["inputs"].shape[1])
        _draw_maps(rows, entry, width, f"{r['n_head']} heads, seed {r['seed']}")
    fig.tight_layout()
    h.save_figure(fig, out, "attention_maps_by_heads")


def _answer(loss: dict[int, Any], spec: dict[int, Any], rate: float) -> str:
    parts = [
        "final eval loss by heads per layer: "
        + ", ".join(
            f"{k}: {v['mean']:.3f} [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" for k, v in loss.items()
        )
        + f" (entropy rate {rate:.3f})"
    ]
    diffs = {k: v["minus_reference"] for k, v in loss.items() if "minus_reference" in v}
    ref = min(loss)
    if diffs:
        resolved = [k for k, d in diffs.items() if d["resolved"]]
        same = [k for k, d in diffs.items() if not d["resolved"]]
        text = []
        if resolved:
            text.append(
                ", ".join(
                    f"{k} heads {diffs[k]['value']:+.3f} [{diffs[k]['ci'][0]:+.3f}, "
                    f"{diffs[k]['ci'][1]:+.3f}]"
                    for k in resolved
                )
            )
        if same:
            text.append(f"no measurable difference for {', '.join(map(str, same))} heads")
        parts.append(f"vs {ref} head: " + "; ".join(text))
    parts.append(
        "trials with an induction head (score >= 0.5): "
        + ", ".join(f"{k} heads {v['induction_head']}/{v['trials']}" for k, v in spec.items())
    )
    return "; ".join(parts)


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Loss vs heads with bootstrap intervals; per-head attention maps and scores."""
    table, maps = trial_table(sweeps["heads"])
    table.to_csv(out / "heads.csv", index=False)
    loss = _by_heads(table, "final_eval_loss")
    kinds = {
        kind: _by_heads(table, f"loss_{kind}")
        for kind in (*KIND_NAMES, "all")
        if f"loss_{kind}" in table
    }
    spec = {}
    for k, grp in table.groupby("n_head"):
        spec[int(k)] = {
            "trials": len(grp),
            "induction_head": int((grp["best_induction"].fillna(0) >= SPECIALISED).sum()),
            "previous_token_head": int((grp["best_previous"].fillna(0) >= SPECIALISED).sum()),
            "copy_head": int((grp["best_copy"].fillna(0) >= SPECIALISED).sum()),
        }
    best = str(table.loc[table["final_eval_loss"].idxmin(), "trial_id"])
    figure(table, loss, maps, best, out)
    figure_all(table, maps, out)
    first = next(iter(maps.values()))["cfg"]
    rate = entropy_rate_nats(first.data.induction)
    floors = {
        k: float(table[f"floor_{k}"].mean()) for k in (*KIND_NAMES, "all") if f"floor_{k}" in table
    }
    trials = table.to_dict(orient="records")  # NaN (no such query) is written as null
    return {
        "answer": _answer(loss, spec, rate),
        "entropy_rate_nats": rate,
        "loss_vs_heads": {str(k): v for k, v in loss.items()},
        "best_n_head": int(min(loss, key=lambda k: loss[k]["mean"])),
        "in_context_loss": {kind: {str(k): v for k, v in d.items()} for kind, d in kinds.items()},
        "in_context_floor": floors,
        "specialised_heads": {str(k): v for k, v in spec.items()},
        "specialised_threshold": SPECIALISED,
        "best_trial": best,
        "trials": trials,
        "trials_table": "heads.csv",
        "figures": ["attention", "attention_maps_by_heads"],
    }

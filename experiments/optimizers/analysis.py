"""How do SGD, momentum, Adam, AdamW and Adafactor scale, and how sensitive are they to
learning rate and schedule? Four analyses of the three sweeps, and one figure.

1. Exponents: every (optimizer, lr) setting trained with warmup + cosine gets an offset-free
   `L = A C^-alpha` over its widths; each setting of the `optimizers` sweep is compared with
   the reference AdamW by the paired bootstrap interval of the exponent difference (same widths
   in each resample) and by its loss offset at every width.
2. Learning-rate sensitivity: per optimizer and width with several peak rates (warmup +
   cosine, any sweep), final loss against lr, the best rate on the grid, what one grid step
   (3x) either side costs, a parabola in log lr through the best point and its neighbours
   (the interpolated best), and whether the best moves with width.
3. Schedules: the reference AdamW with each schedule: loss per width against warmup + cosine
   (with the paired evaluation noise) and an exponent per schedule, paired against cosine's.
4. Optimiser state memory per parameter, measured from the state pytree the trainer builds
   (`scalinglab.experiments.optimizer_state`) for the trained widths and larger presets.

Loss differences between two trials carry `se`: the root sum of squares of their
`final_eval_loss_se_paired` (every trial is scored on the same validation batches; the paired
noise is computed per sweep); a difference within 2 se is "no measurable difference". That is
the evaluation's noise only: with one seed, seed-to-seed variation is not in it.
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
from scalinglab.experiments.optimizer_state import memory_table  # noqa: E402

BY = ["optimizer.name", "optimizer.lr"]
WIDTH, SCHEDULE, SE = "model.d_model", "optimizer.schedule.name", "final_eval_loss_se_paired"
STEPS = "planned_steps"  # a trial's budget (D falls short of it when a trial diverges)
DEFAULT_SCHEDULE = "warmup_cosine"
REFERENCE = ("adamw", 1.0e-2)  # the setting every other one is compared with
MAIN_SWEEP = "optimizers"  # its settings are the exponent comparison
OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "adafactor")
# Larger GPTs whose optimiser state is measured too (jax.eval_shape: never allocated).
PRESETS = ("tiny", "small", "base")
NOISE = 2.0  # a loss difference within NOISE se is no measurable difference


def _load(sweeps: dict[str, Path]) -> pd.DataFrame:
    """Every trial of every sweep (one table, a `sweep` column), with its setting's label."""
    frames = []
    for name, path in sweeps.items():
        runs = sl.load_runs(path)
        runs["sweep"] = name
        frames.append(runs)
    runs = pd.concat(frames, ignore_index=True)
    runs["setting"] = [h.label(tuple(v)) for v in runs[BY].itertuples(index=False)]
    # A point of a curve: its width (one budget per width in the full run), or its width and
    # budget where a width has several (the smoke's two budgets of one tiny width).
    several = runs.groupby(WIDTH)[STEPS].transform("nunique") > 1
    runs["point"] = [
        f"{w},{n:g} steps" if many else str(w)
        for w, n, many in zip(runs[WIDTH], runs[STEPS], several, strict=True)
    ]
    return runs.sort_values([WIDTH, STEPS], kind="stable").reset_index(drop=True)


def _se(*values: float) -> float | None:
    """Root sum of squares of paired standard errors (None when one is unknown)."""
    v = np.array(values, dtype=float)
    return float(np.sqrt((v**2).sum())) if np.isfinite(v).all() else None


def _verdict(diff: float, se: float | None) -> str:
    if se is None:
        return "no noise estimate"
    return "no measurable difference" if abs(diff) <= NOISE * se else "measurable"


def exponents(runs: pd.DataFrame, ref: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fits per setting (warmup + cosine) and the comparison of the main sweep's settings."""
    cos = h.finished(runs[runs[SCHEDULE] == DEFAULT_SCHEDULE])
    fits = h.group_fits(cos, BY, "C", "loss", pair_by=[WIDTH])
    main = sorted(set(runs.loc[runs["sweep"] == MAIN_SWEEP, "setting"]) | {ref}, key=_order)
    table = cos[cos["setting"].isin(main)].set_index(["point", "setting"])
    points = list(dict.fromkeys(cos["point"]))
    against: dict[str, Any] = {}
    for name in main:
        if name == ref or name not in fits or ref not in fits:
            continue
        ahead, se, verdict = {}, {}, {}
        for w in points:
            if (w, name) in table.index and (w, ref) in table.index:
                a, b = table.loc[(w, ref)], table.loc[(w, name)]
                ahead[w] = a["loss"] - b["loss"]
                se[w] = _se(a[SE], b[SE])
                verdict[w] = _verdict(ahead[w], se[w])
        against[name] = {
            "alpha_minus_adamw": h.paired_difference(fits[name], fits[ref]),
            "loss_ahead_of_adamw": ahead,
            "loss_ahead_se": se,
            "loss_difference_verdict": verdict,
            "ahead_at_every_width": bool(ahead) and all(v > 0 for v in ahead.values()),
        }
    losses = {
        w: {s: table.loc[(w, s), "loss"] for s in main if (w, s) in table.index} for w in points
    }
    return fits, {"main_settings": main, "against_adamw": against, "final_eval_loss": losses}


def _order(setting: str) -> tuple[int, str]:
    name = setting.split("@")[0]
    return (OPTIMIZERS.index(name) if name in OPTIMIZERS else len(OPTIMIZERS), setting)


def _parabola_best(lrs: np.ndarray, losses: np.ndarray, i: int) -> float | None:
    """The vertex of the parabola in log10(lr) through the best grid point and its two
    neighbours (None at the grid's edge, or when they do not bend upwards)."""
    if i == 0 or i == len(lrs) - 1 or not np.isfinite(losses[i - 1 : i + 2]).all():
        return None
    x = np.log10(lrs[i - 1 : i + 2])
    a, b, _ = np.polyfit(x, losses[i - 1 : i + 2], 2)
    return float(10 ** (-b / (2 * a))) if a > 0 else None


def lr_sensitivity(runs: pd.DataFrame) -> dict[str, Any]:
    """Loss against lr per optimizer and width (warmup + cosine; the largest budget of each
    width; diverged trials listed without a loss), the best lr per width and whether it moves
    with width."""
    cos = runs[(runs[SCHEDULE] == DEFAULT_SCHEDULE) & (runs["status"] != "failed")]
    out: dict[str, Any] = {}
    for opt, g in cos.groupby("optimizer.name", sort=False):
        curves: dict[str, Any] = {}
        for w, gw in g.groupby(WIDTH, sort=True):
            gw = gw[gw[STEPS] == gw[STEPS].max()].sort_values("optimizer.lr")
            if gw["optimizer.lr"].nunique() < 2:
                continue
            lrs = gw["optimizer.lr"].to_numpy(float)
            done = gw["status"].isin(h.FINISHED).to_numpy()
            if done.sum() < 2:  # no curve to find a best on
                continue
            losses = np.where(done, gw["loss"].to_numpy(float), np.nan)
            ses = gw[SE].to_numpy(float)
            i = int(np.nanargmin(losses))
            order = np.argsort(np.where(np.isfinite(losses), losses, np.inf))
            j = int(order[1])
            gap, gap_se = losses[j] - losses[i], _se(ses[i], ses[j])
            step = {}
            for k, where in ((i - 1, "lr/3"), (i + 1, "lr*3")):
                if 0 <= k < len(lrs):
                    step[where] = float(losses[k] - losses[i]) if done[k] else "diverged"
            curves[str(w)] = {
                "lr": lrs.tolist(),
                "loss": [float(v) if d else None for v, d in zip(losses, done, strict=True)],
                "status": gw["status"].tolist(),
                "loss_se": [float(v) if np.isfinite(v) else None for v in ses],
                "best_lr": float(lrs[i]),
                "best_loss": float(losses[i]),
                "best_at_grid_edge": i in (0, len(lrs) - 1),
                "runner_up_lr": float(lrs[j]),
                "runner_up_gap": float(gap),
                "runner_up_gap_se": gap_se,
                "best_resolved": gap_se is not None and gap > NOISE * gap_se,
                "loss_one_step_off": step,
                "interpolated_best_lr": _parabola_best(lrs, losses, i),
            }
        if not curves:
            continue
        widths = sorted(curves, key=int)
        lo, hi = curves[widths[0]], curves[widths[-1]]
        moves: dict[str, Any] = {"widths": [int(widths[0]), int(widths[-1])]}
        if len(widths) > 1:
            moves["grid_best_ratio"] = hi["best_lr"] / lo["best_lr"]
            if lo["interpolated_best_lr"] and hi["interpolated_best_lr"]:
                moves["interpolated_ratio"] = (
                    hi["interpolated_best_lr"] / lo["interpolated_best_lr"]
                )
            same = hi["best_lr"] == lo["best_lr"]
            if same:
                moves["verdict"] = "the best grid lr is the same at both widths"
                if "interpolated_ratio" in moves:
                    moves["verdict"] += (
                        f"; interpolated, it moves {moves['interpolated_ratio']:.2g}x"
                    )
            elif lo["best_resolved"] and hi["best_resolved"]:
                moves["verdict"] = f"the best grid lr moves {moves['grid_best_ratio']:g}x"
            else:
                moves["verdict"] = (
                    f"the best grid lr moves {moves['grid_best_ratio']:g}x, but a width's best "
                    "is within the noise of its runner-up"
                )
        out[str(opt)] = {"by_width": curves, "best_lr_moves": moves}
    return out


def schedules(runs: pd.DataFrame, ref: tuple[str, float]) -> tuple[dict[str, Any], dict]:
    """The reference AdamW under each schedule: loss per width, differences against warmup +
    cosine, an exponent per schedule paired against cosine's."""
    name, lr = ref
    r = h.finished(runs[(runs["optimizer.name"] == name) & np.isclose(runs["optimizer.lr"], lr)])
    fits = h.group_fits(r, [SCHEDULE], "C", "loss", pair_by=[WIDTH])
    table = r.set_index(["point", SCHEDULE])
    widths = list(dict.fromkeys(r["point"]))
    loss = {
        s: {w: table.loc[(w, s), "loss"] for w in widths if (w, s) in table.index} for s in fits
    }
    against: dict[str, Any] = {}
    for s in fits:
        if s == DEFAULT_SCHEDULE or DEFAULT_SCHEDULE not in fits:
            continue
        diff, se, verdict = {}, {}, {}
        for w in widths:
            if (w, s) in table.index and (w, DEFAULT_SCHEDULE) in table.index:
                a, b = table.loc[(w, s)], table.loc[(w, DEFAULT_SCHEDULE)]
                diff[w] = a["loss"] - b["loss"]
                se[w] = _se(a[SE], b[SE])
                verdict[w] = _verdict(diff[w], se[w])
        against[s] = {
            "loss_minus_cosine": diff,
            "se": se,
            "verdict": verdict,
            "alpha_minus_cosine": h.paired_difference(fits[s], fits[DEFAULT_SCHEDULE]),
        }
    best = {
        w: min((s for s in fits if (w, s) in table.index), key=lambda s: table.loc[(w, s), "loss"])
        for w in widths
    }
    return fits, {
        "setting": h.label(ref),
        "final_eval_loss": loss,
        "alpha": {s: h.exponent(f) for s, f in fits.items()},
        "against_warmup_cosine": against,
        "best_schedule_by_width": best,
    }


def state_memory(runs: pd.DataFrame) -> dict[str, Any]:
    """Optimiser state bytes per parameter, per optimizer, for every trained width and the
    presets, measured from the state pytree (jax.eval_shape: nothing allocated)."""
    first = runs.iloc[0]
    base = {
        "model": {
            "family": first["model.family"],
            "n_layer": int(first["model.n_layer"]),
            "n_head": int(first["model.n_head"]),
            "activation": first["model.activation"],
        },
        "data": {"source": first["data.source"], "seq_len": int(first["data.seq_len"])},
    }
    models: dict[str, dict[str, Any]] = {
        f"d_model={w}": {"d_model": int(w)} for w in sorted(runs[WIDTH].unique())
    }
    models.update({p: {"size": p} for p in PRESETS})
    table = memory_table(base, models, OPTIMIZERS)
    return {
        "base": base,
        "bytes_per_param": {
            o: {m: r["bytes_per_param"] for m, r in t.items()} for o, t in table.items()
        },
        "n_params": {m: r["n_params"] for m, r in next(iter(table.values())).items()},
        "detail": table,
    }


def _count(n: int) -> str:
    """A parameter count for a tick label: 11.7k, 3.24M."""
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k"


def _figure(
    runs: pd.DataFrame,
    fits: dict[str, Any],
    found: dict[str, Any],
    sched_fits: dict[str, Any],
    lr: dict[str, Any],
    sched: dict[str, Any],
    memory: dict[str, Any],
) -> Any:
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 9.5))
    ax = axes[0, 0]
    cos = h.finished(runs[runs[SCHEDULE] == DEFAULT_SCHEDULE])
    for i, name in enumerate(found["main_settings"]):
        g = cos[cos["setting"] == name].sort_values("C")
        if name not in fits or g.empty:
            continue
        fit = fits[name]
        lo, hi = fit.ci.get("alpha", (np.nan, np.nan))
        text = f"{name}: alpha {fit.params['alpha']:.3f} [{lo:.3f}, {hi:.3f}]"
        ax.plot(g["C"], g["loss"], "o", color=f"C{i}", label=text)
        grid = np.geomspace(g["C"].min(), g["C"].max(), 50)
        ax.plot(grid, fit.params["A"] * grid ** -fit.params["alpha"], "-", color=f"C{i}")
    ax.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="final eval loss")
    ax.set_title("(a) L = A C^-alpha per optimizer@lr (warmup + cosine)")
    ax.legend(fontsize=7)

    ax = axes[0, 1]
    styles = ["o-", "s--", "^-.", "d:"]
    for i, (opt, res) in enumerate(lr.items()):
        for k, (w, c) in enumerate(res["by_width"].items()):
            x = np.array(c["lr"])
            y = np.array([np.nan if v is None else v for v in c["loss"]])
            ax.plot(x, y, styles[k % 4], color=f"C{i}", label=f"{opt}, d_model {w}")
            ax.plot(c["best_lr"], c["best_loss"], "*", color=f"C{i}", ms=14, mec="k")
            bad = np.isnan(y)
            if bad.any():
                top = np.nanmax(y) if np.isfinite(y).any() else 1.0
                ax.plot(x[bad], np.full(bad.sum(), top), "x", color=f"C{i}", ms=9)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="final eval loss")
    ax.set_title("(b) loss vs lr per width (star: best; x: diverged)")
    ax.legend(fontsize=7)

    ax = axes[1, 0]
    points = list(dict.fromkeys(w for v in sched["final_eval_loss"].values() for w in v))
    names = [s for s in sched_fits if s != DEFAULT_SCHEDULE]
    for i, s in enumerate(names):
        a = sched["against_warmup_cosine"][s]
        ks = [k for k, w in enumerate(points) if w in a["loss_minus_cosine"]]
        d = [a["loss_minus_cosine"][points[k]] for k in ks]
        err = [NOISE * (a["se"][points[k]] or 0.0) for k in ks]
        fit = sched_fits[s]
        diff = a["alpha_minus_cosine"]
        text = f"{s}: alpha {fit.params['alpha']:.3f}, minus cosine's {h.describe(diff)}"
        x = np.array(ks, dtype=float) + 0.08 * (i - 0.5)
        ax.errorbar(x, d, yerr=err, fmt="o-", capsize=3, color=f"C{i + 1}", label=text)
    ax.axhline(0.0, color="k", lw=0.8)
    if DEFAULT_SCHEDULE in sched_fits:
        f = sched_fits[DEFAULT_SCHEDULE]
        ax.plot(
            [], [], " ", label=f"{DEFAULT_SCHEDULE}: alpha {f.params['alpha']:.3f} (the zero line)"
        )
    ax.set(xlabel="d_model", ylabel="final loss minus warmup + cosine's")
    ax.set_xticks(range(len(points)), points)
    ax.set_title(f"(c) schedules, {sched['setting']} (bars: {NOISE:g} paired se)")
    ax.legend(fontsize=7)

    ax = axes[1, 1]
    labels = list(memory["n_params"])
    x = np.arange(len(labels))
    width = 0.8 / len(OPTIMIZERS)
    for i, opt in enumerate(OPTIMIZERS):
        v = [memory["bytes_per_param"][opt][m] for m in labels]
        bars = ax.bar(x + (i - 2) * width, v, width, color=f"C{i}", label=opt)
        ax.bar_label(bars, [f"{b:.2g}" for b in v], fontsize=6, rotation=90, padding=2)
    ticks = [f"{m.replace('d_model=', 'd')}\n{_count(memory['n_params'][m])}" for m in labels]
    ax.set_xticks(x, ticks, fontsize=7)
    ax.set(ylabel="optimiser state bytes per parameter", ylim=(0, 10))
    ax.set_title("(d) optimiser state memory, measured from the pytree")
    ax.legend(fontsize=7, ncol=5, loc="upper center")
    fig.tight_layout()
    return fig


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Exponents, lr sensitivity, schedules, state memory, and `optimizers.png`."""
    runs = _load(sweeps)
    ref = h.label(REFERENCE)
    fits, found = exponents(runs, ref)
    lr = lr_sensitivity(runs)
    sched_fits, sched = schedules(runs, REFERENCE)
    memory = state_memory(runs)
    h.save_figure(_figure(runs, fits, found, sched_fits, lr, sched, memory), out, "optimizers")

    lines = []
    for name, a in found["against_adamw"].items():
        d = a["alpha_minus_adamw"]
        same = {False: "keeps", True: "changes", None: "undecided on"}[d["resolved"]]
        lines.append(f"{name} {same} AdamW's exponent (difference {h.describe(d)})")
    for opt, res in lr.items():
        best = ", ".join(f"d{w}: {c['best_lr']:g}" for w, c in res["by_width"].items())
        verdict = res["best_lr_moves"].get("verdict", "one width only")
        lines.append(f"{opt} best lr {best} ({verdict})")
    for s, a in sched["against_warmup_cosine"].items():
        d = a["loss_minus_cosine"]
        n = sum(v == "measurable" for v in a["verdict"].values())
        lines.append(
            f"{s} minus warmup_cosine loss {min(d.values()):+.3f} to {max(d.values()):+.3f} "
            f"(beyond {NOISE:g} se at {n} of {len(d)} widths), alpha difference "
            f"{h.describe(a['alpha_minus_cosine'])}"
        )
    per = memory["bytes_per_param"]
    big = list(memory["n_params"])[-1]
    lines.append(
        "state bytes/param at "
        + big
        + ": "
        + ", ".join(f"{o} {per[o][big]:.3g}" for o in OPTIMIZERS)
    )
    return {
        "answer": "; ".join(lines),
        "reference": ref,
        "alpha": {name: h.exponent(fit) for name, fit in fits.items()},
        **found,
        "lr_sensitivity": lr,
        "schedules": sched,
        "state_memory": memory,
    }

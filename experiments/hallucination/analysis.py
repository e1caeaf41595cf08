"""Recall, made-up answers and calibration vs GPT size, on the `facts` source.

1. Every finished trial is restored and asked every fact once (a fixed filler prefix, the
   entity's pieces, REL; `scalinglab.experiments.facts_eval`): per exposure count, the share
   of facts whose most likely next token is the true attribute, the mean top probability, and
   the share of confident answers (top probability > 0.5) that are wrong. For the held-out
   facts (seen 0 times) no answer is knowable: a calibrated model answers with the attribute
   prior (top probability about 1/16 here), so a confident answer there is made up.
   The same metrics at the facts as they occur in the validation stream check that the
   prompt's fixed filler prefix does not change the answer.
2. The expected calibration error (15 equal-width bins) of the top-1 next-token probability on
   the trial's validation batches, over every target and over the attribute targets alone; the
   same pass's loss must equal the trainer's recorded one.
3. Each quantity vs N: per size its seed mean with a 95% interval from resampling the seeds,
   and the slope per decade of N with an interval the same way (`scalinglab.experiments.trend`).
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
from scalinglab.data import build_dataset  # noqa: E402
from scalinglab.experiments import facts_eval as fe  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402
from scalinglab.experiments.gradients import trial_config  # noqa: E402

RECALL = ("accuracy", "mean_top_prob", "mean_p_true", "confident", "confident_wrong")
HELD_OUT = ("mean_top_prob", "confident", "confident_wrong", "accuracy")
CALIBRATION = ("ece", "loss", "accuracy", "mean_confidence")


def trial_rows(sweep_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Per finished trial: one row per exposure count (recall) and one row of calibration
    numbers; and the data facts every trial shares (train tokens, passes, prior)."""
    recall, calib, diffs, passes = [], [], [], set()
    shared: dict[str, Any] = {}
    for _, r in h.finished(sl.load_runs(sweep_dir)).iterrows():
        run_dir = sweep_dir / r["trial_id"]
        res = fe.trial_facts_eval(run_dir)
        base = {
            "trial_id": r["trial_id"],
            "d_model": int(r["model.d_model"]),
            "N": int(r["N"]),
            "seed": int(r["seed"]),
        }
        diffs.append(res["recorded_diff"])
        for c, v in res["recall"].items():
            stream = res["stream_recall"].get(c, {})
            recall.append(
                {
                    **base,
                    "exposures": c,
                    **v,
                    "stream_occurrences": stream.get("facts", 0),
                    "stream_accuracy": stream.get("accuracy", np.nan),
                    "stream_confident_wrong": stream.get("confident_wrong", np.nan),
                }
            )
        row = {**base, "train_loss": float(r["final_train_loss"])}
        for scope, v in res["calibration"].items():
            row.update({f"{scope}_{k}": v[k] for k in CALIBRATION})
            row[f"{scope}_tokens"] = v["tokens"]
        calib.append(row)
        if not shared:
            cfg = trial_config(run_dir)
            info = build_dataset(cfg.data).info
            shared = {
                "train_tokens": info["n_train_tokens"],
                "train_fact_occurrences": info["train_fact_occurrences"],
                "n_facts": info["n_facts"],
                "n_attributes": cfg.data.facts.n_attributes,
                "trained_tokens": int(r["D"]),
            }
        passes.add(float(r["D"]) / shared["train_tokens"])
    shared["passes_over_train_stream"] = sorted(passes)
    shared["max_abs_diff_from_recorded"] = float(max(diffs))
    return pd.DataFrame(recall), pd.DataFrame(calib), shared


def _trend(g: pd.DataFrame, column: str) -> dict[str, Any]:
    return tr.seed_bootstrap_trend(g["N"], g[column])


def summarise(recall: pd.DataFrame, calib: pd.DataFrame) -> dict[str, Any]:
    """Every recall metric per exposure count vs N, and every calibration metric vs N."""
    by_count = {str(c): {m: _trend(g, m) for m in RECALL} for c, g in recall.groupby("exposures")}
    stream = {
        str(c): {m: _trend(g, f"stream_{m}") for m in ("accuracy", "confident_wrong")}
        for c, g in recall.groupby("exposures")
        if g["stream_occurrences"].min() > 0
    }
    return {
        "recall_by_exposure": by_count,
        "stream_recall_by_exposure": stream,
        "held_out": by_count.get("0"),
        "calibration": {
            scope: {m: _trend(calib, f"{scope}_{m}") for m in CALIBRATION}
            for scope in ("all", "attribute", "filler")
        },
        # The trainer's last logged train loss against the validation loss: how far the
        # models fit their 45k-token train stream beyond what carries over.
        "generalisation_gap": _trend(
            calib.assign(gap=calib["all_loss"] - calib["train_loss"]), "gap"
        ),
    }


def _errorbar(ax: Any, t: dict[str, Any], scale: float = 1.0, **kw: Any) -> None:
    per = t["per_size"]
    ax.errorbar(
        [p["x"] for p in per],
        [scale * p["mean"] for p in per],
        yerr=[
            [scale * (p["mean"] - p["ci"][0]) for p in per],
            [scale * (p["ci"][1] - p["mean"]) for p in per],
        ],
        capsize=3, ms=4, **kw,
    )  # fmt: skip


def figure(recall: pd.DataFrame, found: dict[str, Any], prior: float, out: Path) -> None:
    """Left: accuracy vs exposure count per size (seed mean). Middle: the held-out facts' top
    probability and confident-wrong share vs N, against the prior. Right: ECE vs N."""
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.3))
    counts = sorted(recall["exposures"].unique())
    xpos = {cnt: (np.log2(cnt) + 1 if cnt else 0.0) for cnt in counts}
    for i, (d, g) in enumerate(recall.groupby("d_model", sort=True)):
        m = g.groupby("exposures")["accuracy"].agg(["mean", "min", "max"])
        x = [xpos[cnt] for cnt in m.index]
        n = int(g["N"].iloc[0])
        a.plot(x, m["mean"], "-o", color=f"C{i}", ms=4, label=f"d_model {d} (N {n:,})")
        a.fill_between(x, m["min"], m["max"], color=f"C{i}", alpha=0.15)
    a.axhline(1.0 / prior, color="k", lw=0.6, ls=":", label="chance (1/A)")
    a.set_xticks([xpos[cnt] for cnt in counts], [str(cnt) for cnt in counts])
    a.set(
        xlabel="times the fact is in the train stream (0: held out)",
        ylabel="recall accuracy (argmax = true attribute)",
        title="recall vs exposure (seed mean, min-max band)",
        ylim=(-0.02, 1.02),
    )
    a.legend(fontsize=7)
    held = found["held_out"]
    if held is not None:
        _errorbar(b, held["mean_top_prob"], fmt="-o", color="C3", label="held out: mean top prob")
        _errorbar(
            b, held["confident_wrong"], fmt="--s", color="C1", label="held out: confident & wrong"
        )
        seen = found["recall_by_exposure"]
        _errorbar(b, seen[str(max(counts))]["mean_top_prob"], fmt="-^", color="C2",
                  alpha=0.6, label=f"seen {max(counts)}x: mean top prob")  # fmt: skip
    b.axhline(1.0 / prior, color="k", lw=0.6, ls=":", label="calibrated: the prior 1/A")
    b.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="probability, or share of facts",
        ylim=(-0.02, 1.02),
        title="held-out facts: made-up confidence",
    )
    b.legend(fontsize=7)
    cal = found["calibration"]
    _errorbar(c, cal["all"]["ece"], fmt="-o", color="C0", label="all validation targets")
    _errorbar(c, cal["attribute"]["ece"], fmt="--s", color="C3", label="attribute targets")
    _errorbar(c, cal["filler"]["ece"], fmt=":^", color="C7", label="filler targets")
    c.set(xscale="log", xlabel="parameters N", ylabel="expected calibration error (15 bins)",
          title="calibration of next-token probabilities")  # fmt: skip
    c.set_ylim(bottom=0)
    c.legend(fontsize=7)
    fig.tight_layout()
    h.save_figure(fig, out, "hallucination")


def _span(t: dict[str, Any], digits: int = 2) -> str:
    """First -> last size's seed mean, and the slope in words (or 'no measurable trend')."""
    a, b = t["per_size"][0]["mean"], t["per_size"][-1]["mean"]
    if t["resolved"] is None:
        return f"{a:.{digits}f}"
    slope = tr.describe_trend(t, digits) if t["resolved"] else "no measurable trend"
    if not t["resolved"]:
        lo, hi = t["ci"]
        slope += f" ({t['slope_per_decade']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}])"
    return f"{a:.{digits}f} -> {b:.{digits}f}, {slope}"


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Ask every trained GPT every fact; recall per exposure and made-up confidence on held-out
    facts vs N, and the calibration error of its next-token probabilities vs N."""
    recall, calib, shared = trial_rows(next(iter(sweeps.values())))
    recall.to_csv(out / "recall.csv", index=False)
    calib.to_csv(out / "calibration.csv", index=False)
    found = summarise(recall, calib)
    figure(recall, found, shared["n_attributes"], out)
    counts = sorted(int(c) for c in recall["exposures"].unique())
    seen = [c for c in counts if c > 0]
    rec = found["recall_by_exposure"]
    bits = []
    if seen:
        low, high = str(seen[0]), str(seen[-1])
        bits.append(
            f"recall of facts seen {low}x: {_span(rec[low]['accuracy'])}; "
            f"seen {high}x: {_span(rec[high]['accuracy'])}"
        )
    if found["held_out"] is not None:
        held = found["held_out"]
        bits.append(
            f"held-out facts (prior 1/{shared['n_attributes']} = "
            f"{1 / shared['n_attributes']:.3f}): mean top prob {_span(held['mean_top_prob'])}, "
            f"confident and wrong {_span(held['confident_wrong'])}"
        )
    cal = found["calibration"]
    bits.append(
        f"ECE all tokens {_span(cal['all']['ece'], 3)}; attribute tokens "
        f"{_span(cal['attribute']['ece'], 3)}; filler tokens {_span(cal['filler']['ece'], 3)}"
    )
    return {
        "answer": " | ".join(bits),
        "clean_check": {
            "max_abs_diff_from_recorded": shared.pop("max_abs_diff_from_recorded"),
            "trials": int(calib["trial_id"].nunique()),
        },
        "data": shared,
        "exposure_counts": counts,
        "confident_threshold": fe.CONFIDENT,
        "ece_bins": fe.N_BINS,
        **found,
        "tables": ["recall.csv", "calibration.csv"],
    }

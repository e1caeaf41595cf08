"""Distribution shift vs model size: in- vs out-of-distribution accuracy and loss, and the
effective-robustness line (does scale close the gap, or only move along the line?).

1. Digits: every classifier's final checkpoint is scored by the trainer's own eval step on the
   297 validation digits as they are (ID; checked against the accuracy and loss each trial's
   summary.json recorded) and shifted (`scalinglab.experiments.shift`: moved one pixel, blurred,
   lower contrast, noisier, rotated; labels unchanged).
2. Text: every GPT, trained on a generated Markov language A, is scored on A's validation split
   (ID, checked against the record), on a fresh sample of A (the control: only the sample
   changes) and on two shifted languages, each as excess loss over the language's exact
   entropy rate. The exact loss of A's true law on each shifted language (`cross_entropy_rate`)
   is the excess a model that learned A perfectly would pay: where scale leads in the limit.
3. Per family and shift: the ID - OOD gap's slope per decade of N (`scalinglab.experiments.
   trend`), and the line OOD vs ID fitted to the per-size means with the residuals' trend over
   N (`shift.effective_robustness`): for accuracies on logit axes (where accuracies near 1 are
   not squeezed together), for text on excess loss, with the fresh sample of the training
   language as ID (so ID and OOD are measured on samples of the same size). The ResNets'
   residuals are taken from the MLPs' line (the reference family). Intervals: 95%, from
   resampling each size's seeds (all trials share the evaluation images and token samples, so
   the intervals hold the seeds' spread, not that of the evaluation sample).
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
from scalinglab.data.synthetic import MarkovLanguage, make_language  # noqa: E402
from scalinglab.experiments import evaluation as ev  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import shift as sh  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

IMAGE_SHIFTS: dict[str, dict[str, Any]] = {
    "translate_1px": {"kind": "translate", "dy": 0, "dx": 1},
    "blur_sigma1": {"kind": "blur", "sigma": 1.0},
    "contrast_0.5": {"kind": "contrast", "factor": 0.5},
    "noise_0.2": {"kind": "noise", "std": 0.2, "seed": 0},
    "rotate_20deg": {"kind": "rotate", "degrees": 20.0},
}
ZIPF_SHIFTED = 0.6  # training language: 1.1
REDRAW_FRAC, REDRAW_SEED = 0.5, 1
TEXT_DRAWS = 8  # samples of each language, each the size of the trial's validation batches
REFERENCE = "mlp"  # the family whose line the other family's residuals are measured from


def image_rows(runs: pd.DataFrame, sweep_dir: Path) -> pd.DataFrame:
    """One row per classifier and shift: ID and OOD accuracy and loss, family, width, N, seed;
    the ID numbers are the trainer's evaluation, checked against the recorded ones."""
    shifts = sh.image_shifts(IMAGE_SHIFTS)
    rows = []
    for _, r in runs.iterrows():
        te = ev.load_trial_eval(sweep_dir / r["trial_id"])
        clean = sh.shifted_eval(te, lambda x: x)  # the shift path with no shift
        diff = ev.check_recorded(te, clean)
        for name, fn in shifts.items():
            ood = sh.shifted_eval(te, fn)
            rows.append(
                {
                    "trial_id": r["trial_id"],
                    "family": r["model.family"],
                    "width": int(r["model.width"]),
                    "N": int(r["N"]),
                    "seed": int(r["seed"]),
                    "shift": name,
                    "id_accuracy": clean["accuracy"],
                    "ood_accuracy": ood["accuracy"],
                    "id_loss": clean["loss"],
                    "ood_loss": ood["loss"],
                    "id_logit": float(sh.logit(clean["accuracy"])),
                    "ood_logit": float(sh.logit(ood["accuracy"])),
                    "recorded_diff": diff,
                }
            )
    return pd.DataFrame(rows)


def text_languages(te: ev.TrialEval) -> dict[str, MarkovLanguage]:
    """The control (the training language itself, a fresh sample) and the shifted languages."""
    lang = make_language(te.cfg.data.synthetic)
    return {
        "resample": lang,
        f"zipf_{ZIPF_SHIFTED:g}": sh.with_zipf(lang, ZIPF_SHIFTED),
        f"redraw_{REDRAW_FRAC:g}": sh.redraw(lang, REDRAW_FRAC, REDRAW_SEED),
    }


def text_rows(runs: pd.DataFrame, sweep_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per GPT and language: the recorded (ID) loss, the loss on TEXT_DRAWS fresh
    samples of the language (mean and standard error over the draws), its excess over the
    language's entropy rate and the fresh training-language sample's (`id_excess`); and per
    language its entropy rate and the excess of the training language's true law on it
    (`ideal_excess`, a perfect ID model's OOD excess)."""
    rows, langs_info = [], {}
    for _, r in runs.iterrows():
        te = ev.load_trial_eval(sweep_dir / r["trial_id"])
        clean = ev.evaluate(te)
        diff = ev.check_recorded(te, clean)
        langs = text_languages(te)
        train_lang = langs["resample"]
        trial_rows = []
        for name, lang in langs.items():
            if name not in langs_info:
                langs_info[name] = {
                    "entropy_rate_nats": lang.entropy_rate_nats,
                    "ideal_excess": sh.cross_entropy_rate(lang, train_lang)
                    - lang.entropy_rate_nats,
                }
            losses = [sh.shifted_eval(te, lang, seed=s)["loss"] for s in range(TEXT_DRAWS)]
            trial_rows.append(
                {
                    "trial_id": r["trial_id"],
                    "family": "gpt",
                    "width": int(r["model.d_model"]),
                    "N": int(r["N"]),
                    "seed": int(r["seed"]),
                    "shift": name,
                    "id_loss": clean["loss"],
                    "ood_loss": float(np.mean(losses)),
                    "ood_loss_se": float(np.std(losses, ddof=1) / np.sqrt(len(losses))),
                    "recorded_excess": clean["loss"] - train_lang.entropy_rate_nats,
                    "ood_excess": float(np.mean(losses)) - lang.entropy_rate_nats,
                    "recorded_diff": diff,
                }
            )
        fresh = trial_rows[0]["ood_excess"]  # the training language's fresh sample
        rows += [{**row, "id_excess": fresh} for row in trial_rows]
    return pd.DataFrame(rows), langs_info


def _line_or_none(g: pd.DataFrame, x: str, y: str, target: pd.DataFrame | None = None) -> Any:
    """`shift.effective_robustness` of `g` (and `target`), or None under 2 sizes (the smoke)."""
    if g["N"].nunique() < 2:
        return None
    tgt = None if target is None else (target["N"], target[x], target[y])
    return sh.effective_robustness(g["N"], g[x], g[y], target=tgt)


def image_findings(table: pd.DataFrame) -> dict[str, Any]:
    """Per shift: per family, the ID - OOD accuracy gap's trend over N and the line; the
    other family's residuals from the reference family's line."""
    out: dict[str, Any] = {}
    for name, g in table.groupby("shift", sort=False):
        entry: dict[str, Any] = {}
        ref = g[g["family"] == REFERENCE]
        for family, f in g.groupby("family", sort=True):
            entry[family] = {
                "ood_accuracy": tr.seed_bootstrap_trend(f["N"], f["ood_accuracy"]),
                "gap": tr.seed_bootstrap_trend(f["N"], f["id_accuracy"] - f["ood_accuracy"]),
                "logit_line": _line_or_none(f, "id_logit", "ood_logit"),
            }
            if family != REFERENCE and len(ref):
                entry[family][f"vs_{REFERENCE}_logit_line"] = _line_or_none(
                    ref, "id_logit", "ood_logit", target=f
                )
        out[str(name)] = entry
    return out


def text_findings(table: pd.DataFrame, langs: dict[str, Any]) -> dict[str, Any]:
    """Per shifted language: the OOD excess and the gap (OOD - ID excess, both on fresh
    samples) over N, and the line. For the control (a fresh sample of the training language):
    its difference from the recorded validation loss, the size of token-sampling noise."""
    out: dict[str, Any] = {}
    for name, g in table.groupby("shift", sort=False):
        entry = {**langs[name], "ood_excess": tr.seed_bootstrap_trend(g["N"], g["ood_excess"])}
        entry["draw_se_max"] = float(g["ood_loss_se"].max())
        if name == "resample":
            entry["fresh_minus_recorded"] = tr.seed_bootstrap_trend(
                g["N"], g["ood_excess"] - g["recorded_excess"]
            )
        else:
            entry["gap"] = tr.seed_bootstrap_trend(g["N"], g["ood_excess"] - g["id_excess"])
            entry["line"] = _line_or_none(g, "id_excess", "ood_excess")
        out[str(name)] = entry
    return out


def clean_check(images: pd.DataFrame, text: pd.DataFrame) -> dict[str, Any]:
    """The largest difference between the ID evaluation and what the trials recorded (0 up to
    float rounding: the trainer's eval step on the trial's own validation batches)."""
    both = pd.concat([images, text])
    return {
        "max_abs_diff": float(both["recorded_diff"].max()),
        "trials": int(both["trial_id"].nunique()),
    }


def _means(g: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    return g.groupby("N", sort=True)[[x, y]].mean()


def figure(images: pd.DataFrame, text: pd.DataFrame, found: dict[str, Any], out: Path) -> None:
    """Top: digits, logit OOD vs logit ID accuracy per shift (MLP circles with their line,
    ResNet squares) and the accuracy gap vs N. Bottom: text, OOD vs ID excess loss per shifted
    language (the star: the training language's true law) and OOD excess vs N."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 9.5))
    ax = axes[0, 0]
    for i, (name, g) in enumerate(images.groupby("shift", sort=False)):
        for family, marker in (("mlp", "o"), ("resnet", "s")):
            m = _means(g[g["family"] == family], "id_logit", "ood_logit")
            label = name if family == REFERENCE else None
            ax.plot(m["id_logit"], m["ood_logit"], marker, color=f"C{i}", ms=5, label=label)
        line = found["images"][name].get(REFERENCE, {}).get("logit_line")
        if line:
            xs = np.linspace(images["id_logit"].min(), images["id_logit"].max(), 2)
            ax.plot(xs, line["intercept"] + line["slope"] * xs, "-", color=f"C{i}", lw=1)
    lim = [images["id_logit"].min(), images["id_logit"].max()]
    ax.plot(lim, lim, "k:", lw=1, label="OOD = ID")
    ax.set(
        xlabel="logit ID accuracy (validation digits)",
        ylabel="logit OOD accuracy (shifted digits)",
        title="digits: MLP o (line fitted), ResNet s; per-size means",
    )
    ax.legend(fontsize=7)
    ax = axes[0, 1]
    for i, (name, g) in enumerate(images.groupby("shift", sort=False)):
        for family, style in (("mlp", "-o"), ("resnet", "--s")):
            f = g[g["family"] == family]
            m = (f["id_accuracy"] - f["ood_accuracy"]).groupby(f["N"]).mean()
            label = name if family == REFERENCE else None
            ax.plot(m.index, m.to_numpy(), style, color=f"C{i}", ms=4, label=label)
    ax.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="ID - OOD accuracy",
        title="digits: the gap vs N (MLP solid, ResNet dashed)",
    )
    ax.legend(fontsize=7)
    shifted = [n for n in found["text"] if n != "resample"]
    ax = axes[1, 0]
    for i, name in enumerate(shifted):
        m = _means(text[text["shift"] == name], "id_excess", "ood_excess")
        ax.plot(m["id_excess"], m["ood_excess"], "o", color=f"C{i}", ms=5, label=name)
        line = found["text"][name].get("line")
        if line:
            xs = np.linspace(0.0, text["id_excess"].max(), 2)
            ax.plot(xs, line["intercept"] + line["slope"] * xs, "-", color=f"C{i}", lw=1)
        ax.plot([0.0], [found["text"][name]["ideal_excess"]], "*", color=f"C{i}", ms=12)
    hi = float(text["id_excess"].max())
    ax.plot([0, hi], [0, hi], "k:", lw=1, label="OOD = ID")
    ax.set(
        xlabel="ID excess loss over the entropy rate (nats, fresh sample)",
        ylabel="OOD excess loss over its entropy rate (nats)",
        title="text: per-size means; star: the training language's true law",
    )
    ax.legend(fontsize=7)
    ax = axes[1, 1]
    for i, name in enumerate(["resample", *shifted]):
        t = found["text"][name]["ood_excess"]
        xs = [p["x"] for p in t["per_size"]]
        ys = [p["mean"] for p in t["per_size"]]
        err = np.array([[p["mean"] - p["ci"][0], p["ci"][1] - p["mean"]] for p in t["per_size"]])
        color = "k" if name == "resample" else f"C{i - 1}"
        label = "training language (ID)" if name == "resample" else name
        ax.errorbar(xs, ys, yerr=err.T, fmt="-o", color=color, ms=4, capsize=3, label=label)
        if name != "resample":
            ax.axhline(found["text"][name]["ideal_excess"], color=color, ls=":", lw=1)
    ax.set(
        xscale="log",
        xlabel="parameters N",
        ylabel="excess loss (nats)",
        title="text: excess loss vs N (dotted: the true law's OOD excess)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    h.save_figure(fig, out, "distribution_shift")


def _trend_words(t: dict[str, Any] | None, digits: int = 3) -> str:
    if t is None or t.get("slope_per_decade") is None:
        return "one size"
    return tr.describe_trend(t, digits)


def _resid_words(line: dict[str, Any] | None) -> str:
    if not line or line.get("residual_slope_per_decade") is None:
        return "one size"
    lo, hi = line["residual_slope_ci"]
    return f"{line['residual_slope_per_decade']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def answer(found: dict[str, Any]) -> str:
    """One line: per digits shift the MLP gap's trend, the MLPs' residual trend from their own
    logit line and the ResNets' residuals from it; per text shift the gap's trend and line."""
    parts = []
    for name, e in found["images"].items():
        mlp = e.get(REFERENCE)
        if mlp is None:
            continue
        words = (
            f"digits {name}: MLP gap {_trend_words(mlp['gap'], 3)}, residual from its logit "
            f"line {_resid_words(mlp['logit_line'])}/decade"
        )
        res = e.get("resnet", {}).get(f"vs_{REFERENCE}_logit_line")
        if res:
            r = res["residual_per_size"]
            words += f", ResNet {r[0]['residual']:+.2f} to {r[-1]['residual']:+.2f} logits off it"
        parts.append(words)
    for name, e in found["text"].items():
        if name == "resample":
            continue
        line = e.get("line")
        slope = (
            f", line slope {line['slope']:.2f} [{line['slope_ci'][0]:.2f}, "
            f"{line['slope_ci'][1]:.2f}]"
            if line
            else ""
        )
        parts.append(
            f"text {name}: gap {_trend_words(e['gap'], 3)}{slope} (true law's OOD excess "
            f"{e['ideal_excess']:.3f})"
        )
    return "; ".join(parts)


def per_size_table(images: pd.DataFrame, text: pd.DataFrame) -> list[dict[str, Any]]:
    """Seed means per family, size and shift (the figure's points)."""
    rows = []
    for df, cols in (
        (images, ["id_accuracy", "ood_accuracy", "id_loss", "ood_loss"]),
        (text, ["id_loss", "ood_loss", "recorded_excess", "id_excess", "ood_excess"]),
    ):
        for (family, width, n, name), g in df.groupby(["family", "width", "N", "shift"]):
            rows.append(
                {
                    "family": family,
                    "width": int(width),
                    "N": int(n),
                    "shift": name,
                    "seeds": len(g),
                    **{c: float(g[c].mean()) for c in cols},
                }
            )
    return rows


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Score every trial ID and shifted, check the ID scores, fit the lines and trends."""
    images = image_rows(h.finished(sl.load_runs(sweeps["classifiers"])), sweeps["classifiers"])
    text, langs = text_rows(h.finished(sl.load_runs(sweeps["gpt"])), sweeps["gpt"])
    images.to_csv(out / "distribution_shift_images.csv", index=False)
    text.to_csv(out / "distribution_shift_text.csv", index=False)
    found = {"images": image_findings(images), "text": text_findings(text, langs)}
    figure(images, text, found, out)
    return {
        "answer": answer(found),
        "clean_check": clean_check(images, text),
        "image_shifts": IMAGE_SHIFTS,
        "text_shifts": {
            "zipf_exponent": ZIPF_SHIFTED,
            "redraw_frac": REDRAW_FRAC,
            "redraw_seed": REDRAW_SEED,
            "draws": TEXT_DRAWS,
        },
        **found,
        "per_size": per_size_table(images, text),
        "tables": ["distribution_shift_images.csv", "distribution_shift_text.csv"],
    }

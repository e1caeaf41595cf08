"""Knowledge distillation vs student size, for two teacher sizes.

1. Every teacher is restored through the trainer's own path (`scalinglab.experiments.
   evaluation`) and evaluated again: it must reproduce its recorded loss, since the students
   were trained against exactly this restored state (`teacher_check`).
2. Per student size: the final eval loss (plain cross-entropy for every student, so
   distilled and data-only compare directly) trained on the data alone and distilled from
   each teacher size, each mean with a seed-bootstrap interval; the distillation gain
   (data-only minus distilled, paired by seed: same init, same batches) and its trend per
   decade of N (`scalinglab.experiments.trend`).
3. "How much of the teacher a student keeps": (L_unigram - L_student) / (L_unigram -
   L_teacher), with L_unigram the cross-entropy of the train split's byte frequencies on the
   same validation batches (what a model with no context reaches), the student paired with
   its same-seed teacher; vs the student/teacher parameter ratio, and the smallest ratio at
   which the mean keeps 97% (interpolated in log ratio between measured sizes; none when no
   measured size reaches it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from scalinglab.config import TrialConfig  # noqa: E402
from scalinglab.experiments import evaluation as ev  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402
from scalinglab.experiments import trend as tr  # noqa: E402

KEEP = 0.97  # the DistilBERT claim: 97% of the teacher at 40% of its size
BOOT = 2000


def _trials(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished trial: size, N, seed, teacher d_model (0: data only), eval loss."""
    rows = []
    for d in sorted(p for p in sweep_dir.iterdir() if (p / "summary.json").is_file()):
        s = json.loads((d / "summary.json").read_text())
        if s.get("status") != "done":
            continue
        cfg = TrialConfig.model_validate(yaml.safe_load((d / "config.yaml").read_text()))
        dist = cfg.train.distill
        teacher = 0
        if dist is not None:
            teacher = int(dist.teacher.get("model.d_model", cfg.model.d_model))
        rows.append(
            {
                "trial_id": d.name,
                "run_dir": d,
                "cfg": cfg,
                "size": cfg.model.d_model,
                "N": int(s["N"]),
                "seed": cfg.seed,
                "teacher": teacher,
                "loss": float(s["final_eval_loss"]),
            }
        )
    return rows


def unigram_loss(cfg: TrialConfig) -> float:
    """Cross-entropy (nats/token) of the train split's token frequencies (add-one smoothed)
    on the trial's own validation targets: the loss of the best model that sees no context."""
    from scalinglab.data import build_dataset

    data = build_dataset(cfg.data)
    counts = np.bincount(np.asarray(data.train), minlength=cfg.model.vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    val = data.val_batches(cfg.train.batch_size, cfg.train.eval_tokens)
    targets = np.concatenate([b[..., 1:].ravel() for b in val])
    return float(-logp[targets].mean())


def _mean_ci(values: list[float], seed: int = 0) -> dict[str, Any]:
    """Mean over seeds with a percentile bootstrap interval (resampling the seeds)."""
    v = np.asarray(values, float)
    rng = np.random.default_rng(seed)
    boots = rng.choice(v, size=(BOOT, len(v))).mean(axis=1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"mean": float(v.mean()), "ci95": [float(lo), float(hi)], "n": len(v)}


def _crossing(ratios: list[float], kept: list[float], level: float) -> float | None:
    """The smallest ratio where `kept` (ordered by ratio) reaches `level`, interpolated in log
    ratio; None when no measured ratio reaches it."""
    for i, (r, k) in enumerate(zip(ratios, kept, strict=True)):
        if k >= level:
            if i == 0:
                return r
            r0, k0 = ratios[i - 1], kept[i - 1]
            t = (level - k0) / (k - k0)
            return float(np.exp(np.log(r0) + t * (np.log(r) - np.log(r0))))
    return None


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    teachers = _trials(sweeps["teachers"])
    students = _trials(sweeps["students"])

    diffs = []
    for t in teachers:
        te = ev.load_trial_eval(t["run_dir"])
        diffs.append(ev.check_recorded(te, ev.evaluate(te), tol=1e-6))
    teacher_check = {"teachers": len(teachers), "max_abs_diff_from_recorded": max(diffs)}

    l_uni = unigram_loss(students[0]["cfg"])
    t_sizes = sorted({t["size"] for t in teachers})
    s_sizes = sorted({s["size"] for s in students})
    t_loss = {(t["size"], t["seed"]): t["loss"] for t in teachers}
    t_n = {t["size"]: t["N"] for t in teachers}
    s_n = {s["size"]: s["N"] for s in students}
    loss = {(s["size"], s["teacher"], s["seed"]): s["loss"] for s in students}
    conditions = [0, *[c for c in t_sizes if any(s["teacher"] == c for s in students)]]

    teacher_loss = {
        f"d_model={c}": {
            "N": t_n[c],
            **_mean_ci([v for (d, _), v in t_loss.items() if d == c]),
        }
        for c in t_sizes
    }
    student_loss: dict[str, Any] = {}
    for size in s_sizes:
        row: dict[str, Any] = {"N": s_n[size]}
        for c in conditions:
            vals = [v for (d, t, _), v in loss.items() if d == size and t == c]
            row["data_only" if c == 0 else f"teacher_{c}"] = _mean_ci(vals)
        student_loss[f"d_model={size}"] = row

    gain: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    ninety_seven: dict[str, Any] = {}
    for c in conditions[1:]:
        g_rows, g_x = [], []
        kept_rows: dict[str, Any] = {}
        ratios, kept_distilled, kept_data = [], [], []
        for size in s_sizes:
            seeds = sorted(s for (d, t, s) in loss if d == size and t == c)
            paired = [
                loss[(size, 0, s)] - loss[(size, c, s)] for s in seeds if (size, 0, s) in loss
            ]
            g_rows.append({"d_model": size, "N": s_n[size], **_mean_ci(paired)})
            g_x += [(s_n[size], p) for p in paired]
            frac = [(l_uni - loss[(size, c, s)]) / (l_uni - t_loss[(c, s)]) for s in seeds]
            frac0 = [
                (l_uni - loss[(size, 0, s)]) / (l_uni - t_loss[(c, s)])
                for s in seeds
                if (size, 0, s) in loss
            ]
            ratio = s_n[size] / t_n[c]
            kept_rows[f"d_model={size}"] = {
                "N_ratio": ratio,
                "distilled": _mean_ci(frac),
                "data_only": _mean_ci(frac0),
            }
            ratios.append(ratio)
            kept_distilled.append(float(np.mean(frac)))
            kept_data.append(float(np.mean(frac0)))
        trend = tr.seed_bootstrap_trend([x for x, _ in g_x], [y for _, y in g_x])
        gain[f"teacher_{c}"] = {
            "per_size": g_rows,
            "slope_per_decade_N": {
                "slope": trend["slope_per_decade"],
                "ci95": trend["ci"],
                "resolved": trend["resolved"],
            },
        }
        kept[f"teacher_{c}"] = kept_rows
        ninety_seven[f"teacher_{c}"] = {
            "distilled_N_ratio": _crossing(ratios, kept_distilled, KEEP),
            "data_only_N_ratio": _crossing(ratios, kept_data, KEEP),
            "largest_student_kept": kept_distilled[-1],
        }

    _figure(out, student_loss, teacher_loss, kept, conditions, l_uni)
    answer = _answer(gain, kept, ninety_seven, conditions, s_sizes)
    return {
        "answer": answer,
        "teacher_check": teacher_check,
        "unigram_loss": l_uni,
        "teacher_loss": teacher_loss,
        "student_loss": student_loss,
        "distill_gain": gain,
        "fraction_kept": kept,
        "keep_97": ninety_seven,
    }


def _fmt_ci(d: dict[str, Any], digits: int = 3) -> str:
    lo, hi = d["ci95"]
    return f"{d['mean']:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def _answer(
    gain: dict[str, Any],
    kept: dict[str, Any],
    ninety_seven: dict[str, Any],
    conditions: list[int],
    s_sizes: list[int],
) -> str:
    parts = []
    for c in conditions[1:]:
        key = f"teacher_{c}"
        gains = []
        for g in gain[key]["per_size"]:
            holds_zero = g["ci95"][0] <= 0.0 <= g["ci95"][1]
            text = _fmt_ci(g) + (" (no measurable difference)" if holds_zero else "")
            gains.append(f"d{g['d_model']} {text}")
        slope = gain[key]["slope_per_decade_N"]
        if slope["slope"] is None:
            trend = "no trend (one size)"
        else:
            lo, hi = slope["ci95"]
            trend = f"{slope['slope']:+.3f} [{lo:+.3f}, {hi:+.3f}] nats per decade of N" + (
                "" if slope["resolved"] else ", no measurable trend"
            )
        r97 = ninety_seven[key]["distilled_N_ratio"]
        big = kept[key][f"d_model={s_sizes[-1]}"]["distilled"]
        where = (
            f"97% kept at {r97:.2f}x the teacher's size"
            if r97 is not None
            else f"no student keeps 97% (largest, {s_sizes[-1]} wide: {big['mean']:.1%})"
        )
        parts.append(
            f"teacher d_model {c}: gain (data-only minus distilled loss) {'; '.join(gains)}; "
            f"trend {trend}; {where}"
        )
    return " | ".join(parts)


def _figure(
    out: Path,
    student_loss: dict[str, Any],
    teacher_loss: dict[str, Any],
    kept: dict[str, Any],
    conditions: list[int],
    l_uni: float,
) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = list(student_loss.values())
    n = [r["N"] for r in rows]
    colors = {0: "0.3"} | {c: f"C{i}" for i, c in enumerate(conditions[1:])}
    for c in conditions:
        name = "data_only" if c == 0 else f"teacher_{c}"
        m = np.array([r[name]["mean"] for r in rows])
        ci = np.array([r[name]["ci95"] for r in rows]).T
        label = "data only" if c == 0 else f"distilled from d_model {c}"
        ax1.errorbar(
            n, m, yerr=[m - ci[0], ci[1] - m], marker="o", capsize=3, color=colors[c], label=label
        )
    for c in conditions[1:]:
        t = teacher_loss[f"d_model={c}"]
        ax1.scatter([t["N"]], [t["mean"]], marker="*", s=120, color=colors[c])
        ax1.annotate(f"teacher {c}", (t["N"], t["mean"]), textcoords="offset points", xytext=(4, 4))
    ax1.axhline(l_uni, ls=":", color="0.5", label=f"unigram {l_uni:.3f}")
    ax1.set_xscale("log")
    ax1.set_xlabel("parameters N")
    ax1.set_ylabel("final eval loss (nats/byte)")
    ax1.set_title("Student loss vs size (seed means, 95% CI)")
    ax1.legend(fontsize=8)
    for c in conditions[1:]:
        k = list(kept[f"teacher_{c}"].values())
        r = [x["N_ratio"] for x in k]
        for variant, ls in (("distilled", "-"), ("data_only", "--")):
            m = np.array([x[variant]["mean"] for x in k])
            ci = np.array([x[variant]["ci95"] for x in k]).T
            ax2.errorbar(
                r,
                m,
                yerr=[m - ci[0], ci[1] - m],
                ls=ls,
                marker="o",
                capsize=3,
                color=colors[c],
                label=f"teacher {c}, {variant.replace('_', ' ')}",
            )
    ax2.axhline(KEEP, ls=":", color="k", label="97%")
    ax2.set_xscale("log")
    ax2.set_xlabel("student N / teacher N")
    ax2.set_ylabel("fraction of the teacher kept")
    ax2.set_title("(L_unigram - L_student) / (L_unigram - L_teacher)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    h.save_figure(fig, out, "distillation")
    plt.close(fig)

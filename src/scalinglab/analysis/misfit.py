"""Does the law describe the runs? RMSE against evaluation noise, residuals by tokens per
parameter and by size, and the runs that sit far off the law, by name.

Residuals are in log loss (``log predicted - log observed``, about the relative error).
The evaluation noise, also in log loss, comes from the runs' own standard error of the
final evaluation when the table has it: ``final_eval_loss_se_paired`` (the runs compared
batch by batch on shared validation batches) before ``final_eval_loss_se``; otherwise from the
spread of each run's last few evaluation points around a straight line (learning
curves); otherwise it is unknown and said to be.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.approach2 import SE_COLUMNS

OUTLIER_MIN = 0.01  # a run must be at least 1% off the law to be named
MISFIT_RATIO = 3.0  # RMSE this many times the evaluation noise: the law misses the runs
TPP_EDGES = (0.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, np.inf)  # tokens per parameter bins
LAST_POINTS = 4  # evaluation points per curve used to estimate the noise


def eval_noise(runs: pd.DataFrame, curves: pd.DataFrame | None) -> tuple[float | None, str]:
    """Typical evaluation noise in log loss and where it came from."""
    for col in SE_COLUMNS:
        if col not in runs.columns:
            continue
        rel = pd.to_numeric(runs[col], errors="coerce") / runs["loss"]
        rel = rel[np.isfinite(rel) & (rel > 0)]
        if len(rel):
            return float(np.median(rel)), f"{col} of the runs"
    if curves is not None and {"trial_id", "loss"} <= set(curves.columns):
        per_run = []
        for _, c in curves.groupby("trial_id"):
            y = np.log(pd.to_numeric(c["loss"], errors="coerce").to_numpy(float))[-LAST_POINTS:]
            y = y[np.isfinite(y)]
            if len(y) >= 3:
                t = np.arange(len(y), dtype=float)
                resid = y - np.polyval(np.polyfit(t, y, 1), t)
                per_run.append(np.sqrt(np.sum(resid**2) / (len(y) - 2)))
        if per_run:
            return float(np.median(per_run)), f"spread of the last {LAST_POINTS} eval points"
    return None, "unknown"


def run_names(runs: pd.DataFrame) -> list[str]:
    """A name for each run: its trial_id when present, else its row, N and D."""
    if "trial_id" in runs.columns:
        return [str(t) for t in runs["trial_id"]]
    rows = zip(runs.index, runs["N"], runs["D"], strict=True)
    return [f"row {i} (N={n:.3g}, D={d:.3g})" for i, n, d in rows]


def _groups(resid: np.ndarray, labels: np.ndarray, rmse: float, what: str) -> tuple[list, list]:
    rows, warnings = [], []
    for lab in pd.unique(labels):
        m = labels == lab
        mean = float(np.mean(resid[m]))
        rows.append({what: lab, "n": int(m.sum()), "mean_residual": mean})
        if abs(mean) > max(0.01, 3 * rmse / np.sqrt(m.sum())) and m.sum() < len(resid):
            side = "below" if mean > 0 else "above"
            warnings.append(
                f"runs with {what} {lab} sit {abs(mean):.1%} {side} the law on average"
                f" ({int(m.sum())} runs): the law's shape misses them"
            )
    return rows, warnings


def misfit_report(
    runs: pd.DataFrame,
    resid: np.ndarray,
    noise: float | None,
    noise_source: str,
    params: dict[str, float],
    outlier_z: float = 4.0,
) -> tuple[dict[str, Any], list[str]]:
    """Misfit summary (JSON-ready) and its warnings; ``resid`` = log predicted - log observed."""
    rmse = float(np.sqrt(np.mean(resid**2)))
    warnings: list[str] = []
    out: dict[str, Any] = {"rmse_log_loss": rmse, "noise_log_loss": noise, "noise": noise_source}
    if noise is not None and noise > 0:
        out["rmse_over_noise"] = rmse / noise
        if rmse > MISFIT_RATIO * noise:
            warnings.append(
                f"misfit: RMSE of log loss {rmse:.3g} is {rmse / noise:.1f}x the evaluation"
                f" noise {noise:.3g} ({noise_source}); the law does not describe these runs"
            )
    else:
        out["rmse_over_noise"] = None
    for name in ("alpha", "beta"):
        if params.get(name, 0.0) > 1.0:
            warnings.append(
                f"{name} = {params[name]:.3g} is above 1, implausible for a loss exponent:"
                " the fit is likely bending to misfit or outliers"
            )
    tpp = (runs["D"] / runs["N"]).to_numpy(float)
    idx = np.digitize(tpp, TPP_EDGES[1:-1])
    labels = np.array([_bin_label(i) for i in idx])
    out["by_tokens_per_param"], w1 = _groups(resid, labels, rmse, "tokens/param")
    sizes = runs["N"].to_numpy(float)
    uniq = np.unique(sizes)
    if len(uniq) > 6:
        edges = np.quantile(sizes, np.linspace(0, 1, 6)[1:-1])
        size_labels = np.array([f"bin {i + 1}/5" for i in np.digitize(sizes, edges)])
    else:
        size_labels = np.array([f"N={n:.3g}" for n in sizes])
    out["by_size"], w2 = _groups(resid, size_labels, rmse, "size")
    warnings += w1 + w2
    center = np.median(resid)
    robust = 1.4826 * float(np.median(np.abs(resid - center)))
    thr = max(outlier_z * max(robust, noise or 0.0), OUTLIER_MIN)
    names = run_names(runs)
    far = np.flatnonzero(np.abs(resid - center) > thr)
    out["outliers"] = [
        {
            "run": names[i],
            "N": float(runs["N"].iloc[i]),
            "D": float(runs["D"].iloc[i]),
            "loss": float(runs["loss"].iloc[i]),
            "residual": float(resid[i]),
        }
        for i in far
    ]
    out["outlier_threshold"] = thr
    if len(far):
        shown = ", ".join(f"{names[i]} ({-resid[i]:+.1%})" for i in far[:8])
        more = f" and {len(far) - 8} more" if len(far) > 8 else ""
        warnings.append(
            f"{len(far)} run(s) far off the law (observed vs predicted): {shown}{more};"
            " check them (diverged, mis-configured, too few tokens) before trusting the fit"
        )
    return out, warnings


def _bin_label(i: int) -> str:
    lo, hi = TPP_EDGES[i], TPP_EDGES[i + 1]
    return f">= {lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"

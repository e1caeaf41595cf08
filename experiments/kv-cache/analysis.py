"""Greedy generation time per new token with and without the KV cache vs total sequence length
and model size, on the same trained GPTs, with the cached and uncached outputs checked equal.

1. Every finished trial: greedy tokens of `generate` (cached) and `generate_uncached` at each
   length are compared, and the cached path's logits against the full forward pass's over the
   longest sequence (`scalinglab.experiments.decode_timing`).
2. One trial per d_model: interleaved timed rounds of both paths at every length; per path the
   growth exponent of time per token in length (log-log slope, interval from resampling the
   rounds, `scalinglab.experiments.trend`) and per length the speedup, uncached over cached
   time of the same round (median and interval over rounds); the speedup's trend over N.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

import scalinglab as sl  # noqa: E402
from scalinglab.experiments import decode_timing as dt  # noqa: E402
from scalinglab.experiments import helpers as h  # noqa: E402

PATHS = ("cached", "uncached")


def measure(sweep_dir: Path) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Output checks on every trial; timed rounds on one trial per d_model (lowest seed)."""
    runs = h.finished(sl.load_runs(sweep_dir)).sort_values(["model.d_model", "seed", "trial_id"])
    checks, times = [], []
    timed: set[int] = set()
    for _, r in runs.iterrows():
        cfg, params, prompt = dt.restore(sweep_dir / r["trial_id"])
        lengths = dt.generation_lengths(cfg.max_seq_len)
        rows, tokens = dt.check_outputs(cfg, params, prompt, lengths)
        gap = dt.logits_gap(cfg, params, tokens[lengths[-1]], prompt.shape[1])
        d, n = int(r["model.d_model"]), int(r["N"])
        checks.append({"trial_id": r["trial_id"], "d_model": d, "N": n, "lengths": rows, **gap})
        if d not in timed:
            timed.add(d)
            t = dt.time_generation(cfg, params, prompt, lengths)
            times.append(t.assign(d_model=d, N=n, trial_id=r["trial_id"]))
    return checks, pd.concat(times, ignore_index=True)


def figure(summary: dict[str, Any], times: pd.DataFrame, out: Path) -> None:
    """Left: time per new token vs total length per size (cached solid, uncached dashed; median
    of rounds with interval). Right: the speedup (uncached / cached) vs length per size."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4))
    for i, s in enumerate(summary.values()):
        for path, style in zip(PATHS, ("-o", "--s"), strict=True):
            stats = s["growth"][path]["per_token_s"].values()
            med = np.array([1e3 * x["median"] for x in stats])
            ci = np.array([[1e3 * c for c in x["ci"]] for x in stats])
            left.errorbar(
                s["lengths"],
                med,
                yerr=[med - ci[:, 0], ci[:, 1] - med],
                fmt=style,
                color=f"C{i}",
                ms=4,
                capsize=2,
                label=f"d{s['d_model']} {path}",
            )
        sp = s["speedup"]
        med = np.array([x["median"] for x in sp])
        ci = np.array([x["ci"] for x in sp])
        right.errorbar(
            s["lengths"],
            med,
            yerr=[med - ci[:, 0], ci[:, 1] - med],
            fmt="-o",
            color=f"C{i}",
            ms=4,
            capsize=2,
            label=f"d_model {s['d_model']} (N={s['N']:,})",
        )
    left.set(
        xscale="log",
        yscale="log",
        xlabel="total length (prompt + new tokens)",
        ylabel="ms per new token (median of rounds)",
        title="greedy generation, batch 1",
    )
    left.legend(fontsize=6, ncol=2)
    right.axhline(1.0, color="k", lw=0.6)
    right.set(
        xscale="log",
        yscale="log",
        xlabel="total length (prompt + new tokens)",
        ylabel="uncached / cached time (same round)",
        title="KV-cache speedup",
    )
    right.legend(fontsize=7)
    ticks = sorted(int(n) for n in times["length"].unique())
    for ax in (left, right):
        ax.set_xticks(ticks, [str(n) for n in ticks])
        ax.xaxis.set_minor_formatter(NullFormatter())
    right.yaxis.set_major_formatter(ScalarFormatter())
    right.yaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    h.save_figure(fig, out, "kv_cache")


def analyse(sweeps: dict[str, Path], out: Path) -> dict[str, Any]:
    """Check equal outputs, time both paths per length and size, and summarise the speedup."""
    checks, times = measure(sweeps["gpt"])
    times.to_csv(out / "kv_cache_times.csv", index=False)
    summary = dt.summarise(times)
    figure(summary, times, out)
    pairs = [row for c in checks for row in c["lengths"]]
    equal = {
        "all_same": all(row["same"] for row in pairs),
        "comparisons": len(pairs),
        "trials": len(checks),
        "max_abs_logit_diff": max(c["max_abs_diff"] for c in checks),
        "max_abs_logit": max(c["max_abs_logit"] for c in checks),
        "per_trial": checks,
    }
    load = times["load"]
    first, last = summary[next(iter(summary))], summary[next(reversed(summary))]
    sp_lo, sp_hi = last["speedup"][0], last["speedup"][-1]
    g = {p: last["growth"][p]["longest_over_shortest"] for p in PATHS}
    cells = [(s["d_model"], x) for s in summary.values() for x in s["speedup"]]
    slower = [f"d{d} L{x['length']}" for d, x in cells if x["ci"][1] < 1]
    unresolved = [f"d{d} L{x['length']}" for d, x in cells if x["ci"][0] <= 1 <= x["ci"][1]]
    answer = (
        f"{'same' if equal['all_same'] else 'DIFFERENT'} greedy tokens in "
        f"{equal['comparisons']} comparisons (logits within {equal['max_abs_logit_diff']:.1e}). "
        f"Speedup at length {sp_hi['length']}: {first['speedup'][-1]['median']:.1f}x "
        f"(d_model {first['d_model']}) to {sp_hi['median']:.1f}x (d_model {last['d_model']}); "
        f"at d_model {last['d_model']} from {sp_lo['median']:.1f}x at length "
        f"{sp_lo['length']}, as time per token grows {g['uncached']:.1f}x uncached and "
        f"{g['cached']:.1f}x cached over lengths {sp_lo['length']}-{sp_hi['length']}. "
        f"Cache slower: {', '.join(slower) or 'nowhere'}; no measurable difference: "
        f"{', '.join(unresolved) or 'nowhere'}"
    )
    return {
        "answer": answer,
        "equal_outputs": equal,
        "sizes": summary,
        "speedup_vs_size": dt.speedup_vs_size(times),
        "load": {k: float(getattr(load, k)()) for k in ("min", "median", "max")},
        "setup": {
            "prompt_tokens": dt.PROMPT_LEN,
            "batch": 1,
            "repeats": dt.REPEATS,
            "greedy": True,
        },
        "table": "kv_cache_times.csv",
    }

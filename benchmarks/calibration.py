"""Benchmark: are the fit's intervals calibrated? Coverage and width on simulated studies.

Simulates runs from a known Chinchilla law (Hoffmann et al.'s E, A, B, alpha, beta) with
multiplicative log-normal noise on the loss, on three designs, and fits each of
``--replicates`` noise draws through the public API (``scalinglab.fit_chinchilla`` with
``--bootstrap`` resamples, the full start grid by default):

- ``good``: an IsoFLOP grid, 8 budgets 1e17-1e21 FLOPs x 9 sizes spanning N_opt / 8 .. 8 N_opt;
- ``sparse``: the quickstart's, 3 budgets 1e11, 3e11, 1e12 x 4 GPT sizes (d_model 16, 24,
  32, 48, n_layer 2: N = 24 d_model^2 non-embedding, 6e3-6e4), D = C / (6 N);
- ``overtrain``: 5 sizes 1e7-1e9 x tokens/param 10, 20, 40, 80, 160, 320.

For E, A, B, alpha, beta and the allocation exponents a, b (N_opt ~ C^a, D_opt ~ C^b) it
reports the share of intervals that cover the truth, their median width, the spread of the
point estimates over replicates (their central range at the same confidence) and the ratio
width / spread (about 1 for an honest interval; the target is at most 2). It counts the fits
that say "E not identified" (``fit.identifiability``, when the fit reports it) and how often
E's interval misses the truth *without* such a warning.

    python benchmarks/calibration.py                     # 3 designs x 40 replicates
    python benchmarks/calibration.py --design good --replicates 100 --json out.json
    python benchmarks/calibration.py --quick             # seconds; the smoke test

Targets: coverage 90-98% on ``good`` and width / spread <= 2; on ``sparse`` calibrated
intervals or an explicit "not identified".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
PARAMS = ("E", "A", "B", "alpha", "beta", "a", "b")
DESIGNS = ("good", "sparse", "overtrain")


def truth() -> dict[str, float]:
    """The law's parameters and its allocation exponents a = beta/(alpha+beta), b = 1 - a."""
    s = TRUE["alpha"] + TRUE["beta"]
    return {**TRUE, "a": TRUE["beta"] / s, "b": TRUE["alpha"] / s}


def design(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Model sizes N and token counts D of one design (see the module docstring)."""
    if name == "good":
        G = (TRUE["alpha"] * TRUE["A"] / (TRUE["beta"] * TRUE["B"])) ** (
            1 / (TRUE["alpha"] + TRUE["beta"])
        )
        t = truth()
        N, D = [], []
        for C in np.logspace(17, 21, 8):
            n_opt = G * (C / 6) ** t["a"]
            for f in np.logspace(np.log10(1 / 8), np.log10(8), 9):
                N.append(n_opt * f)
                D.append(C / (6 * n_opt * f))
        return np.array(N), np.array(D)
    if name == "sparse":
        sizes = 24.0 * np.array([16, 24, 32, 48]) ** 2  # 12 n_layer d^2, n_layer 2
        NN, CC = np.meshgrid(sizes, [1e11, 3e11, 1e12])
        return NN.ravel(), CC.ravel() / (6 * NN.ravel())
    if name == "overtrain":
        NN, RR = np.meshgrid(np.logspace(7, 9, 5), [10, 20, 40, 80, 160, 320])
        return NN.ravel(), (NN * RR).ravel()
    raise SystemExit(f"error: --design {name!r}; use one of {', '.join(DESIGNS)}")


def simulate(N: np.ndarray, D: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Losses of the true law at (N, D) times exp(noise * standard normal)."""
    h = TRUE
    loss = h["E"] + h["A"] / N ** h["alpha"] + h["B"] / D ** h["beta"]
    return loss * np.exp(noise * rng.standard_normal(len(N)))


def one_fit(df: Any, bootstrap: int, seed: int, starts: np.ndarray) -> dict[str, Any]:
    """Fit one replicate; estimates, intervals and what the fit says about E."""
    import scalinglab

    fit = scalinglab.fit_chinchilla(df, bootstrap=bootstrap, seed=seed, starts=starts)
    est = dict(fit.params)
    ci = {k: tuple(v) for k, v in fit.ci.items()}
    ex = fit.exponents()
    for k in ("a", "b"):
        est[k] = ex[k]
        if f"{k}_ci" in ex:
            ci[k] = tuple(ex[f"{k}_ci"])
    ident = getattr(fit, "identifiability", None) or {}
    warnings = list(getattr(fit, "warnings", None) or fit.diagnostics.warnings)
    e_info = ident.get("E", {}) if isinstance(ident, dict) else {}
    flagged = e_info.get("identified") is False or any(
        w.startswith("E not identified") for w in warnings
    )
    vague = [n for n, v in ident.items() if isinstance(v, dict) and v.get("informative") is False]
    profile = e_info.get("profile") or {}
    out = {
        "est": est,
        "ci": ci,
        "E_not_identified": bool(flagged),
        "not_informative": vague,
        "converged": bool(fit.converged),
    }
    if profile.get("low") is not None and profile.get("high") is not None:
        out["ci"]["E (profile)"] = (float(profile["low"]), float(profile["high"]))
    return out


def summarise(fits: list[dict[str, Any]], confidence: float) -> dict[str, Any]:
    """Coverage, median width, spread of estimates and width / spread per parameter."""
    t = truth()
    tail = 50.0 * (1 - confidence)
    rows = {}
    names = list(PARAMS) + (["E (profile)"] if any("E (profile)" in f["ci"] for f in fits) else [])
    for name in names:
        true = t["E" if name == "E (profile)" else name]
        est = np.array([f["est"]["E" if name == "E (profile)" else name] for f in fits])
        cis = np.array([f["ci"][name] for f in fits if name in f["ci"]], dtype=float)
        if not len(cis):
            continue
        covered = (cis[:, 0] <= true) & (true <= cis[:, 1])
        width = float(np.median(cis[:, 1] - cis[:, 0]))
        lo, hi = np.percentile(est, [tail, 100 - tail])
        spread = float(hi - lo)
        rows[name] = {
            "truth": true,
            "median_estimate": float(np.median(est)),
            "coverage": float(np.mean(covered)),
            "n_intervals": len(cis),
            "median_width": width,
            "spread": spread,
            "width_over_spread": width / spread if spread > 0 else float("inf"),
        }
    flagged = np.array([f["E_not_identified"] for f in fits])
    e_cov = np.array([f["ci"]["E"][0] <= t["E"] <= f["ci"]["E"][1] for f in fits if "E" in f["ci"]])
    flag_for_ci = np.array([f["E_not_identified"] for f in fits if "E" in f["ci"]])
    silent_miss = int(np.sum(~e_cov & ~flag_for_ci)) if len(e_cov) else 0
    return {
        "params": rows,
        "replicates": len(fits),
        "converged": int(sum(f["converged"] for f in fits)),
        "E_not_identified": int(flagged.sum()),
        "E_missed_without_warning": silent_miss,
        "E_coverage_when_identified": (
            float(np.mean(e_cov[~flag_for_ci])) if np.any(~flag_for_ci) else None
        ),
        "not_informative_counts": {
            n: int(sum(n in f["not_informative"] for f in fits)) for n in TRUE
        },
    }


def run_design(name: str, args: argparse.Namespace, starts: np.ndarray) -> dict[str, Any]:
    """Fit ``args.replicates`` noise draws of one design and summarise them."""
    import pandas as pd

    N, D = design(name)
    rng = np.random.default_rng([args.seed, DESIGNS.index(name)])
    fits, t0 = [], time.perf_counter()
    for r in range(args.replicates):
        df = pd.DataFrame({"N": N, "D": D, "loss": simulate(N, D, args.noise, rng)})
        fits.append(one_fit(df, args.bootstrap, args.seed + r, starts))
        print(f"{name}: replicate {r + 1}/{args.replicates} fitted", file=sys.stderr, flush=True)
    out = summarise(fits, 0.95)
    out.update(
        design=name,
        n_runs=len(N),
        N_range=[float(N.min()), float(N.max())],
        tokens_per_param_range=[float((D / N).min()), float((D / N).max())],
        C_range=[float((6 * N * D).min()), float((6 * N * D).max())],
        seconds=time.perf_counter() - t0,
    )
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the designs, print the tables, write ``--json``; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--design", action="append", choices=DESIGNS, help="repeatable; all")
    ap.add_argument("--replicates", type=int, default=40, help="noise draws per design")
    ap.add_argument("--bootstrap", type=int, default=200, help="resamples per fit")
    ap.add_argument("--noise", type=float, default=0.01, help="sd of log loss noise")
    ap.add_argument("--starts", type=int, default=None, help="thin the 4,500-start grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="tiny run, for the smoke test")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.replicates, args.bootstrap = 2, 8
        args.starts = args.starts or 30
        args.design = args.design or ["sparse"]
    if args.replicates < 2 or args.bootstrap < 2:
        raise SystemExit("error: --replicates and --bootstrap must be at least 2")
    from scalinglab.analysis.laws import CHINCHILLA

    grid = CHINCHILLA.start_grid()
    if args.starts is not None and args.starts < len(grid):
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, args.starts).round().astype(int))]
    load0 = os.getloadavg()[0]
    results = []
    for d in args.design or DESIGNS:
        results.append(run_design(d, args, grid))
        if args.json:  # written after every design, so a stopped run keeps what it finished
            Path(args.json).write_text(json.dumps({"designs": results}, indent=2) + "\n")
    out = {
        "settings": {
            "replicates": args.replicates,
            "bootstrap": args.bootstrap,
            "noise": args.noise,
            "n_starts": len(grid),
            "seed": args.seed,
            "confidence": 0.95,
            "truth": truth(),
            "cpu_count": os.cpu_count(),
            "load_1min_start_end": [load0, os.getloadavg()[0]],
        },
        "designs": results,
    }
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


def report(out: dict[str, Any]) -> str:
    """Markdown tables, one per design."""
    s = out["settings"]
    lines = [
        f"{s['replicates']} replicates x {s['bootstrap']} bootstrap resamples, noise sd"
        f" {s['noise']:g} in log loss, {s['n_starts']} starts, 95% intervals; load"
        f" {s['load_1min_start_end'][0]:.1f}-{s['load_1min_start_end'][1]:.1f}"
    ]
    for d in out["designs"]:
        lines += [
            "",
            f"design {d['design']}: {d['n_runs']} runs, N {d['N_range'][0]:.3g}-"
            f"{d['N_range'][1]:.3g}, C {d['C_range'][0]:.3g}-{d['C_range'][1]:.3g}, tokens/param"
            f" {d['tokens_per_param_range'][0]:.3g}-{d['tokens_per_param_range'][1]:.3g};"
            f" {d['seconds']:.0f} s",
            "",
            "| parameter | truth | median estimate | coverage | median width | spread |"
            " width / spread |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in d["params"].items():
            lines.append(
                f"| {name} | {r['truth']:.4g} | {r['median_estimate']:.4g} |"
                f" {100 * r['coverage']:.0f}% | {r['median_width']:.3g} | {r['spread']:.3g} |"
                f" {r['width_over_spread']:.2f} |"
            )
        ec = d["E_coverage_when_identified"]
        vague = ", ".join(f"{k} {v}" for k, v in d["not_informative_counts"].items() if v)
        lines.append(
            f"\n'E not identified' in {d['E_not_identified']} of {d['replicates']} fits;"
            f" E's interval missed the truth without that warning in"
            f" {d['E_missed_without_warning']}; E coverage when identified"
            f" {'n/a' if ec is None else f'{100 * ec:.0f}%'}; converged"
            f" {d['converged']}/{d['replicates']}"
            + (f"; not informative: {vague}" if vague else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

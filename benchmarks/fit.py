"""Benchmark: the whole `scalinglab fit` command against scipy's L-BFGS-B over the same starts.

Writes a synthetic Chinchilla table (12 IsoFLOP budgets x 20 sizes = 240 runs by default,
known parameters, 1% multiplicative noise) and times `scalinglab fit TABLE --bootstrap B`
as a subprocess: once cold (a fresh, empty compilation cache) and `--repeats` times warm
(the same cache). The reference is scipy's L-BFGS-B minimising the same objective (sum of
Huber losses, delta 1e-3, of log-loss residuals; log-sum-exp parametrisation; analytic
gradient, history 10, the same iteration cap and tolerances) from the same start grid
(Hoffmann et al.'s 4,500 starts) on the same data, in this process, optimiser time only.
Also timed in this process: the library fit (`scalinglab.fit_chinchilla`) first call and
repeat, without and with bootstrap.

    python benchmarks/fit.py                            # ~1-2 min on 2 idle cores
    python benchmarks/fit.py --repeats 5 --json out.json
    python benchmarks/fit.py --quick                    # seconds; the smoke test

Target: warm whole command >= 10x faster than scipy. The machine may be shared: the 1-minute
load average is recorded around every phase and CPU seconds are reported beside wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DELTA, MAX_ITER, GTOL, FTOL, MEMORY = 1e-3, 500, 1e-9, 1e-13, 10
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def make_data(
    budgets: int = 12, sizes: int = 20, noise: float = 0.01, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """IsoFLOP grid: ``budgets`` budgets 1e18..1e22 FLOPs x ``sizes`` sizes around N_opt."""
    rng = np.random.default_rng(seed)
    N, D = [], []
    for C in np.logspace(18, 22, budgets):
        n_opt = 0.6 * (C / 6) ** 0.5
        for f in np.logspace(-1, 1, sizes):
            N.append(n_opt * f)
            D.append(C / (6 * n_opt * f))
    N, D = np.array(N), np.array(D)
    h = TRUE
    loss = h["E"] + h["A"] / N ** h["alpha"] + h["B"] / D ** h["beta"]
    return np.stack([N, D], 1), loss * np.exp(noise * rng.standard_normal(len(N)))


def numpy_objective(raw, logN, logD, logy):
    """Sum of Huber losses and its analytic gradient, in numpy (scipy's reference).

    The log-sum-exp is max-shifted, so the reference never overflows.
    """
    e, a, b, alpha, beta = raw
    t = np.stack([a - alpha * logN, b - beta * logD, np.full_like(logN, e)])
    m = t.max(axis=0)
    z = np.exp(t - m)
    Z = z.sum(axis=0)
    r = m + np.log(Z) - logy
    ar = np.abs(r)
    f = np.sum(np.where(ar <= DELTA, 0.5 * r * r, DELTA * (ar - 0.5 * DELTA)))
    psi, p = np.clip(r, -DELTA, DELTA), z / Z
    g = np.array(
        [
            np.sum(psi * p[2]),
            np.sum(psi * p[0]),
            np.sum(psi * p[1]),
            -np.sum(psi * p[0] * logN),
            -np.sum(psi * p[1] * logD),
        ]
    )
    return f, g


def start_grid(n: int | None) -> np.ndarray:
    """Hoffmann's 4,500-start grid, thinned evenly to about ``n`` rows like ``--starts``."""
    e, step5, half = (-1.0, -0.5, 0.0, 0.5, 1.0), np.arange(0.0, 26.0, 5.0), np.arange(5) / 2
    mesh = np.meshgrid(e, step5, step5, half, half, indexing="ij")
    grid = np.stack([m.ravel() for m in mesh], axis=1)
    if n is None or n >= len(grid):
        return grid
    return grid[np.unique(np.linspace(0, len(grid) - 1, n).round().astype(int))]


def run_scipy(
    starts: np.ndarray, X: np.ndarray, y: np.ndarray, blas_threads: int = 1
) -> dict[str, Any]:
    """scipy L-BFGS-B from every start; wall and CPU seconds of the loop, best objective.

    ``blas_threads`` limits the BLAS pool during the loop (0: the library's default). One
    thread is scipy's best setting for 5 parameters: L-BFGS-B's tiny BLAS calls otherwise
    wake a thread pool each time, which measured 13x slower on a loaded 2-core machine
    (17.2 s against 1.3 s for 100 starts).
    """
    import contextlib

    import scipy.optimize

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not installed: the library default, reported as such
        threadpool_limits, blas_threads = None, 0
    limit = (
        threadpool_limits(limits=blas_threads, user_api="blas")
        if blas_threads and threadpool_limits
        else contextlib.nullcontext()
    )

    logN, logD, logy = np.log(X[:, 0]), np.log(X[:, 1]), np.log(y)
    opts = {"maxiter": MAX_ITER, "gtol": GTOL, "ftol": FTOL, "maxcor": MEMORY}
    vals, nit = [], []
    w0, c0 = time.perf_counter(), time.process_time()
    with limit:
        for x0 in starts:
            res = scipy.optimize.minimize(
                numpy_objective,
                x0,
                args=(logN, logD, logy),
                jac=True,
                method="L-BFGS-B",
                options=opts,
            )
            vals.append(res.fun)
            nit.append(res.nit)
    return {
        "blas_threads": blas_threads or "default",
        "wall_s": time.perf_counter() - w0,
        "cpu_s": time.process_time() - c0,
        "best_objective": float(np.min(vals)),
        "iters_median": float(np.median(nit)),
    }


def progress(msg: str) -> None:
    """One line on stderr as each phase ends, so a run stopped early still says something."""
    print(f"[{time.strftime('%H:%M:%S')}, load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr)


def run_command(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one command; its wall seconds, CPU seconds (user + sys of the child) and load."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(argv[2:5])} exited {proc.returncode}: {stderr}")
    cpu = usage.ru_utime + usage.ru_stime
    cache = argv[argv.index("--cache-dir") + 1] if "--cache-dir" in argv else "default"
    progress(f"scalinglab fit (cache {cache}): {wall:.2f} s wall, {cpu:.2f} s CPU")
    return {"wall_s": wall, "cpu_s": cpu, "load_1min": load, "stderr": stderr}


def fit_command(table: Path, cache: str, args: argparse.Namespace, json_out: Path) -> list[str]:
    """The `scalinglab fit` command line (run with this interpreter)."""
    argv = [sys.executable, "-m", "scalinglab.cli", "fit", str(table)]
    argv += ["--bootstrap", str(args.bootstrap), "--cache-dir", cache, "--json", str(json_out)]
    if args.starts is not None:
        argv += ["--starts", str(args.starts)]
    if args.approach:
        argv += ["--approach", args.approach]
    return argv


def in_process(X: np.ndarray, y: np.ndarray, grid: np.ndarray, bootstrap: int) -> dict[str, Any]:
    """The library fit in this process: first call (compiles) and repeat, +- bootstrap."""
    import pandas as pd

    import scalinglab

    df = pd.DataFrame({"N": X[:, 0], "D": X[:, 1], "loss": y})
    out = {}
    for key, b in (("fit", 0), ("fit_bootstrap", bootstrap)):
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fit = scalinglab.fit_chinchilla(df, bootstrap=b, starts=grid)
            times.append(time.perf_counter() - t0)
        out[f"{key}_first_s"], out[f"{key}_repeat_s"] = times
        out["objective"] = fit.loss
    # What pruning the starts saves: objective evaluations of the main fit, all starts run to
    # the end against the default (the best `keep_starts` go on after the first chunk).
    from scalinglab.analysis.laws import CHINCHILLA
    from scalinglab.analysis.multistart import multistart
    from scalinglab.analysis.options import FitOptions

    keep = FitOptions().keep_starts
    for name, k in (("all", None), ("pruned", keep)):
        res = multistart(CHINCHILLA, np.log(X), np.log(y), grid, keep=k)
        out[f"evals_{name}"] = int(res["n_eval"].sum())
        out[f"best_{name}"] = float(np.nanmin(res["value"]))
    out["keep_starts"] = keep
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the table, write ``--json``; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--budgets", type=int, default=12, help="IsoFLOP budgets in the table")
    ap.add_argument("--sizes", type=int, default=20, help="model sizes per budget")
    ap.add_argument("--starts", type=int, default=None, help="thin the 4,500-start grid")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--approach", default=None, help="passed to `scalinglab fit --approach`")
    ap.add_argument("--repeats", type=int, default=3, help="warm command runs (median)")
    ap.add_argument(
        "--scipy-blas-threads", type=int, default=1, help="BLAS threads for scipy (0: default)"
    )
    ap.add_argument("--no-in-process", action="store_true", help="skip the library timings")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the smoke test")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.budgets, args.sizes, args.starts = 3, 8, args.starts or 20
        args.bootstrap, args.repeats = min(args.bootstrap, 10), 1
        args.approach = args.approach or "3"
        args.no_in_process = True

    X, y = make_data(args.budgets, args.sizes)
    grid = start_grid(args.starts)
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="scalinglab-fit-bench-") as tmp:
        table = Path(tmp) / "runs.csv"
        rows = zip(X[:, 0], X[:, 1], y, strict=True)
        lines = ["N,D,loss"] + [f"{n:.17g},{d:.17g},{v:.17g}" for n, d, v in rows]
        table.write_text("\n".join(lines) + "\n")
        cache = str(Path(tmp) / "jax-cache")
        out_json = Path(tmp) / "fit.json"
        cold = run_command(fit_command(table, cache, args, out_json), env)
        warm = [
            run_command(fit_command(table, cache, args, out_json), env)
            for _ in range(max(args.repeats, 1))
        ]
        nocache = None
        if not args.quick:
            nocache = run_command(fit_command(table, "off", args, out_json), env)
        fit_out = json.loads(out_json.read_text())
        n_entries = sum(1 for p in Path(cache).rglob("*") if p.is_file())
    load1 = os.getloadavg()[0]
    sp = run_scipy(grid, X, y, args.scipy_blas_threads)
    progress(f"scipy: {sp['wall_s']:.2f} s wall, {sp['cpu_s']:.2f} s CPU")
    load2 = os.getloadavg()[0]
    w_wall = float(np.median([w["wall_s"] for w in warm]))
    w_cpu = float(np.median([w["cpu_s"] for w in warm]))
    result: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_1min_start_commands_scipy_end": [load0, load1, load2],
        },
        "n_points": len(y),
        "n_starts": len(grid),
        "bootstrap": args.bootstrap,
        "approach": args.approach or "1,2,3",
        "command_cold": cold,
        "command_warm": warm,
        "command_no_cache": nocache,
        "command_warm_wall_s": w_wall,
        "command_warm_cpu_s": w_cpu,
        "cache_entries": n_entries,
        "scipy": sp,
        "speedup_warm": sp["wall_s"] / w_wall,
        "speedup_cold": sp["wall_s"] / cold["wall_s"],
        "speedup_no_cache": sp["wall_s"] / nocache["wall_s"] if nocache else None,
        "speedup_warm_cpu": sp["cpu_s"] / w_cpu,
        "objective_command": float(fit_out["loss"]),
        "objective_rel_diff": abs(float(fit_out["loss"]) - sp["best_objective"])
        / abs(sp["best_objective"]),
    }
    if not args.no_in_process:
        result["in_process"] = in_process(X, y, grid, args.bootstrap)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(r: dict[str, Any]) -> str:
    """Markdown table of one run."""
    m, sp = r["machine"], r["scipy"]
    c, n = r["command_cold"], r["command_no_cache"]
    warm = ", ".join(f"{w['wall_s']:.2f}" for w in r["command_warm"])
    loads = ", ".join(f"{v:.1f}" for v in m["load_1min_start_commands_scipy_end"])
    rows = [
        f"data: {r['n_points']} runs, {r['n_starts']} starts, {r['bootstrap']} bootstrap"
        f" resamples, approaches {r['approach']}; {m['cpu_count']} CPU cores"
        f" ({m['processor']}); 1-min load average {loads} (start, after commands, after scipy)",
        "",
        "| | wall s | CPU s | vs scipy (wall) |",
        "| --- | --- | --- | --- |",
        f"| `scalinglab fit`, warm cache (median of {len(r['command_warm'])}: {warm}) |"
        f" {r['command_warm_wall_s']:.2f} | {r['command_warm_cpu_s']:.2f} |"
        f" **{r['speedup_warm']:.1f}x** |",
        f"| `scalinglab fit`, cold (empty cache, {r['cache_entries']} entries written) |"
        f" {c['wall_s']:.2f} | {c['cpu_s']:.2f} | {r['speedup_cold']:.1f}x |",
        f"| `scalinglab fit --cache-dir off` | {n['wall_s']:.2f} | {n['cpu_s']:.2f} |"
        f" {r['speedup_no_cache']:.1f}x |"
        if n
        else "| `scalinglab fit --cache-dir off` | not run (--quick) | | |",
        f"| scipy L-BFGS-B, same starts (loop only; BLAS threads {sp['blas_threads']}) |"
        f" {sp['wall_s']:.2f} |"
        f" {sp['cpu_s']:.2f} | 1x |",
        "",
        f"best objective: command {r['objective_command']:.12g}, scipy"
        f" {sp['best_objective']:.12g} (relative difference {r['objective_rel_diff']:.1e});"
        f" CPU-time ratio warm {r['speedup_warm_cpu']:.1f}x",
    ]
    if "in_process" in r:
        p = r["in_process"]
        rows.append(
            f"in process (`fit_chinchilla`): fit {p['fit_first_s']:.2f} s first call,"
            f" {p['fit_repeat_s']:.2f} s repeat; with {r['bootstrap']} bootstrap"
            f" {p['fit_bootstrap_first_s']:.2f} s first, {p['fit_bootstrap_repeat_s']:.2f} s repeat"
        )
        rel = abs(p["best_pruned"] - p["best_all"]) / abs(p["best_all"])
        rows.append(
            f"objective evaluations of the main fit: every start to the end {p['evals_all']:,};"
            f" the best {p['keep_starts']} going on after the first chunk {p['evals_pruned']:,}"
            f" (best objective relative difference {rel:.1e})"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

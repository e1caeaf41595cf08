"""Benchmark: vmapped multi-start L-BFGS (scalinglab) against scipy's L-BFGS-B.

Both minimise the same objective (sum of Huber losses, delta 1e-3, of
log-loss residuals; log-sum-exp parametrisation) from the same start grid
(Hoffmann et al.'s 4,500 starts by default) on the same synthetic Chinchilla
data, in the same process. scipy gets an analytic numpy gradient, the same
history size (10), iteration cap and tolerances. Also timed: a 1,000-resample
bootstrap, and optionally optax.lbfgs vmapped over a subset of the starts.

    python benchmarks/fit.py                 # full grid, ~2 minutes on 2 cores
    python benchmarks/fit.py --starts 1000   # quicker
    python benchmarks/fit.py --optax 500     # add optax.lbfgs on 500 starts

Targets (2 CPU cores): same best objective within 1e-6 relative, >= 10x
faster than scipy over >= 1,000 starts, 1,000-resample bootstrap < 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy
import scipy.optimize

from scalinglab.analysis import fit as F
from scalinglab.analysis.laws import CHINCHILLA

DELTA, MAX_ITER, GTOL, FTOL, MEMORY = 1e-3, 500, 1e-9, 1e-13, 10
TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def make_data(noise: float = 0.02, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """9 IsoFLOP budgets (1e18..1e22 FLOPs) x 12 sizes, 2% multiplicative noise."""
    rng = np.random.default_rng(seed)
    N, D = [], []
    for C in np.logspace(18, 22, 9):
        n_opt = 0.6 * (C / 6) ** 0.5
        for f in np.logspace(-1, 1, 12):
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


def run_scipy(starts, logX, logy):
    logN, logD = logX[:, 0], logX[:, 1]
    opts = {"maxiter": MAX_ITER, "gtol": GTOL, "ftol": FTOL, "maxcor": MEMORY}
    vals, xs, nit = [], [], []
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
        xs.append(res.x)
        nit.append(res.nit)
    return np.array(vals), np.array(xs), np.array(nit)


def run_optax(starts, logX, logy):
    """optax.lbfgs (zoom line search) in a vmapped while_loop: the design we measured first."""
    import optax

    def one(x0):
        fun = partial(F.objective, logX=logX, logy=logy, weights=jnp.ones_like(logy), delta=DELTA)
        opt = optax.lbfgs(memory_size=MEMORY)
        vg = optax.value_and_grad_from_state(fun)

        def body(c):
            x, st = c
            v, g = vg(x, state=st)
            u, st = opt.update(g, st, x, value=v, grad=g, value_fn=fun)
            return optax.apply_updates(x, u), st

        def cond(c):
            _, st = c
            k = optax.tree_utils.tree_get(st, "count")
            g = optax.tree_utils.tree_get(st, "grad")
            return (k == 0) | ((k < MAX_ITER) & (jnp.max(jnp.abs(g)) > GTOL))

        x, _ = jax.lax.while_loop(cond, body, (x0, opt.init(x0)))
        return x, fun(x)

    return jax.jit(jax.vmap(one))(starts)


def timed(fn, *args):
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--starts", type=int, default=4500, help="starts (thinned Hoffmann grid)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--optax", type=int, default=0, help="also time optax.lbfgs on this many")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args()

    load_start = os.getloadavg()[0]
    X, y = make_data()
    logX, logy = np.log(X), np.log(y)
    grid = CHINCHILLA.start_grid()
    if args.starts < len(grid):
        grid = grid[np.unique(np.linspace(0, len(grid) - 1, args.starts).round().astype(int))]
    S = len(grid)
    run = partial(
        F.multistart,
        CHINCHILLA,
        logX,
        logy,
        grid,
        delta=DELTA,
        max_iter=MAX_ITER,
        gtol=GTOL,
        ftol=FTOL,
    )
    res, t_cold = timed(run)
    warm = [timed(run)[1] for _ in range(3)]
    t_warm = float(np.median(warm))
    jax_vals = np.where(np.isfinite(res["value"]), res["value"], np.inf)

    sp_vals, sp_x, sp_nit = None, None, None
    t0 = time.perf_counter()
    sp_vals, sp_x, sp_nit = run_scipy(grid, logX, logy)
    t_scipy = time.perf_counter() - t0

    best_j, best_s = jax_vals.min(), sp_vals.min()
    rel = abs(best_j - best_s) / abs(best_s)
    at_best = lambda v, b: int(np.sum(v <= b * (1 + 1e-6)))  # noqa: E731

    fit0 = F.fit_law(CHINCHILLA, X, y, starts=grid)
    t0 = time.perf_counter()
    F.fit_law(CHINCHILLA, X, y, starts=grid, bootstrap=args.bootstrap)
    t_boot_total_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fitb = F.fit_law(CHINCHILLA, X, y, starts=grid, bootstrap=args.bootstrap)
    t_boot_total_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    F.fit_law(CHINCHILLA, X, y, starts=grid)
    t_fit_only = time.perf_counter() - t0

    out = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "jax": jax.__version__,
            "scipy": scipy.__version__,
            "numpy": np.__version__,
            # Other processes share the cores: timings are only comparable within one run.
            "load_avg_1min_start_end": [load_start, os.getloadavg()[0]],
        },
        "n_points": len(y),
        "n_starts": S,
        "jax_cold_s": t_cold,
        "jax_warm_s": t_warm,
        "scipy_s": t_scipy,
        "speedup_warm": t_scipy / t_warm,
        "speedup_cold": t_scipy / t_cold,
        "best_objective_jax": float(best_j),
        "best_objective_scipy": float(best_s),
        "best_objective_rel_diff": float(rel),
        "starts_at_best_jax": at_best(jax_vals, best_s),
        "starts_at_best_scipy": at_best(sp_vals, best_s),
        "jax_iters_median": float(np.median(res["n_iter"])),
        "scipy_iters_median": float(np.median(sp_nit)),
        "param_max_rel_diff": float(
            np.max(
                np.abs(res["x"][np.argmin(jax_vals)] - sp_x[np.argmin(sp_vals)])
                / np.abs(sp_x[np.argmin(sp_vals)])
            )
        ),
        "bootstrap_resamples": args.bootstrap,
        "bootstrap_s_cold": t_boot_total_cold - t_fit_only,
        "bootstrap_s_warm": t_boot_total_warm - t_fit_only,
        "bootstrap_failed": fitb.diagnostics.bootstrap_failed,
        "fit_params": fit0.params,
    }
    if args.optax:
        sub = grid[np.unique(np.linspace(0, S - 1, args.optax).round().astype(int))]
        with jax.enable_x64(True):
            o_args = (jnp.asarray(sub), jnp.asarray(logX), jnp.asarray(logy))
            t0 = time.perf_counter()
            ox, ov = run_optax(*o_args)
            jax.block_until_ready(ov)
            out["optax_cold_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            jax.block_until_ready(run_optax(*o_args))
            out["optax_warm_s"] = time.perf_counter() - t0
        ours = partial(
            F.multistart,
            CHINCHILLA,
            logX,
            logy,
            sub,
            delta=DELTA,
            max_iter=MAX_ITER,
            gtol=GTOL,
            ftol=FTOL,
        )
        timed(ours)  # compile for this shape
        out["ours_same_subset_s"] = timed(ours)[1]
        out["optax_starts"] = len(sub)
        out["optax_best_objective"] = float(np.nanmin(np.asarray(ov)))

    print(report(out))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


def report(r: dict) -> str:
    m = r["machine"]
    rows = [
        f"data: {r['n_points']} runs; {r['n_starts']} starts; {m['cpu_count']} CPU cores "
        f"({m['processor']}); jax {m['jax']}, scipy {m['scipy']}; 1-min load average "
        f"{m['load_avg_1min_start_end'][0]:.1f} at start, "
        f"{m['load_avg_1min_start_end'][1]:.1f} at end",
        "",
        "| | scalinglab (vmapped L-BFGS, jax) | scipy L-BFGS-B (loop) |",
        "| --- | --- | --- |",
        f"| time, {r['n_starts']} starts | {r['jax_warm_s']:.2f} s warm, "
        f"{r['jax_cold_s']:.2f} s incl. compile | {r['scipy_s']:.1f} s |",
        f"| speed-up | {r['speedup_warm']:.1f}x warm, {r['speedup_cold']:.1f}x incl. compile"
        " | 1x |",
        f"| best objective | {r['best_objective_jax']:.12g} | {r['best_objective_scipy']:.12g} |",
        f"| relative difference | {r['best_objective_rel_diff']:.1e} | |",
        f"| starts reaching best (1e-6) | {r['starts_at_best_jax']} |"
        f" {r['starts_at_best_scipy']} |",
        f"| median iterations per start | {r['jax_iters_median']:.0f} | "
        f"{r['scipy_iters_median']:.0f} |",
        f"| bootstrap, {r['bootstrap_resamples']} resamples | {r['bootstrap_s_warm']:.2f} s warm, "
        f"{r['bootstrap_s_cold']:.2f} s incl. compile | |",
    ]
    if "optax_warm_s" in r:
        rows.append(
            f"| optax.lbfgs, {r['optax_starts']} starts | {r['optax_warm_s']:.2f} s warm, "
            f"{r['optax_cold_s']:.2f} s incl. compile (ours, same starts: "
            f"{r['ours_same_subset_s']:.2f} s warm) | |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    main()

"""Sweep overhead: wall time of a sweep over the time its trials spend in pure train steps.

    python benchmarks/sweep_overhead.py [--sweep sweeps/quickstart.yaml] [--workers 2]
        [--threads N] [--max-flops C] [--json out.json]

Runs the sweep twice into fresh directories: cold (empty compilation cache), then warm (a new
run directory, the same cache). The ratio is

    overhead = wall_s * workers / sum_i(steps_i * t_step_i)

where t_step_i is the steady-state time of one jitted train step of trial i's model, timed
after compilation in `workers` concurrent worker-like processes (same thread limits, all cores
busy, as in the sweep). 1.0 means the sweep cost nothing beyond its train steps; the target is
at most 1.15 with 2 workers on 2 cores.

The machine's speed drifts by 10-20% over minutes (a shared VM), so the step times are probed
three times: before the cold sweep, between the sweeps and after the warm one; each phase is
divided by the mean of the two probes around it, and every probe is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path
from typing import Any

from scalinglab.budget import plan_steps
from scalinglab.sweep import load_runs, load_sweep, run_sweep
from scalinglab.sweep.plan import _probe_worker
from scalinglab.sweep.runner import default_workers


def shape_key(trial: Any) -> str:
    """What a train step's time depends on: the model, the sequence length, the batch size."""
    cfg = trial.config.model_dump(mode="json")
    return json.dumps([cfg["model"], cfg["data"]["seq_len"], cfg["train"]["batch_size"]])


def step_times(trials: list, workers: int, threads: int) -> dict[str, float]:
    """Seconds per train step of each distinct model, timed in `workers` processes at once."""
    shapes: dict[str, dict] = {}
    for t in trials:
        shapes.setdefault(shape_key(t), t.config.model_dump(mode="json"))
    cfgs = list(shapes.values())
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        runs = [pool.submit(_probe_worker, cfgs, threads, 200) for _ in range(workers)]
        timed = [r.result() for r in runs]
    return {k: sum(t[i][0] for t in timed) / workers for i, k in enumerate(shapes)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", default="sweeps/quickstart.yaml")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="XLA threads per worker")
    ap.add_argument("--max-flops", type=float, default=None, help="keep budgets <= this")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    sweep, trials = load_sweep(args.sweep)
    if args.max_flops is not None:
        trials = [t for t in trials if t.config.train.budget.flops <= args.max_flops]
    threads = args.threads or max(1, default_workers() // args.workers)
    ex = sweep.executor.model_copy(update={"workers": args.workers, "threads": threads})
    sweep = sweep.model_copy(update={"executor": ex})

    report: dict = {
        "sweep": args.sweep,
        "trials": len(trials),
        "workers": args.workers,
        "threads": threads,
        "cores": default_workers(),
    }

    def pure_seconds() -> float:
        t_step = step_times(trials, args.workers, threads)
        return sum(plan_steps(t.config) * t_step[shape_key(t)] for t in trials)

    probes = [pure_seconds()]
    print("probe", probes[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for phase in ("cold", "warm"):
            out = Path(tmp) / phase
            t0 = time.perf_counter()
            res = run_sweep(sweep, trials, out, cache_dir=cache)
            wall = time.perf_counter() - t0
            runs = load_runs(out)
            report[phase] = {
                "wall_s": wall,
                "trial_wall_s": float(runs["wall_s"].sum()),
                "cache_hits": res.cache_hits,
                "cache_misses": res.cache_misses,
                "steps": int(runs["steps"].sum()),
            }
            print(phase, report[phase], flush=True)
            probes.append(pure_seconds())
            print("probe", probes[-1], flush=True)
    report["pure_step_s_probes"] = probes
    for i, phase in enumerate(("cold", "warm")):
        pure = (probes[i] + probes[i + 1]) / 2
        report[phase]["pure_step_s"] = pure
        report[phase]["overhead"] = report[phase]["wall_s"] * args.workers / pure
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

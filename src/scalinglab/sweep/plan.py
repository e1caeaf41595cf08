"""Planning: the trial table of a sweep (parameters, tokens, FLOPs, steps, estimated time) and
warnings about trials that cannot work, without training anything.

Time per step is modelled as `a + F / R` (F: model FLOPs of one step, "full" counting; a: the
fixed per-step cost that dominates tiny models; R: the FLOP rate). `a` and `R` come from the
sweep directory's finished trials when there are some ("last runs' rates"), otherwise from a
short probe: a few timed steps of the smallest and the largest model, in a worker process with
the same thread limits as the sweep's workers.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scalinglab import runfiles as rf
from scalinglab.budget import Budget
from scalinglab.config import TrialConfig
from scalinglab.errors import TrialError
from scalinglab.flops import model_flops_per_step, param_counts
from scalinglab.rundir import FINISHED, RunDir
from scalinglab.sweep import store
from scalinglab.sweep.expand import Trial


@dataclass
class StepModel:
    """Seconds per training step as `a + flops_per_step / rate`, plus per-trial fixed cost."""

    a: float
    rate: float
    compile_s: float
    source: str  # "probe" | "runs" | "none"

    def step_s(self, flops_per_step: float) -> float:
        return self.a + flops_per_step / self.rate


@dataclass
class PlanRow:
    """One line of the plan table."""

    trial: Trial
    N: int
    N_nonembed: int
    steps: int
    D: float
    C: float
    est_s: float | None
    status: str = "pending"
    warnings: list[str] = field(default_factory=list)


def _step_flops(cfg: TrialConfig) -> float:
    return model_flops_per_step(cfg.model, cfg.data.seq_len, cfg.train.batch_size)


def _data_sizes(trials: list[Trial]) -> dict[str, tuple[int, int] | str]:
    """(train sequences, validation tokens) of each distinct data config, or its load error."""
    from scalinglab.data import build_dataset

    out: dict[str, tuple[int, int] | str] = {}
    for t in trials:
        key = t.config.data.model_dump_json()
        if key in out:
            continue
        try:
            ds = build_dataset(t.config.data)
        except (ValueError, OSError) as e:
            out[key] = str(e)
            continue
        out[key] = (ds.windows_per_epoch, len(ds.val))
    return out


def _probe_worker(configs: list[dict[str, Any]], threads: int | None, steps: int) -> list:
    """In a fresh process: compile and time `steps` train steps of each config."""
    from scalinglab.sweep.executors import setup_worker

    setup_worker(threads, None)
    import jax
    import numpy as np

    from scalinglab.train import build_trainer, init_state

    out = []
    for raw in configs:
        cfg = TrialConfig.model_validate(raw)
        t0 = time.perf_counter()
        trainer = build_trainer(cfg, 1000)
        state = init_state(trainer.task, trainer.tx, jax.random.PRNGKey(0))
        fn = trainer.step_fn
        batch = trainer.task.example_batch(cfg.train.batch_size, np.random.default_rng(0))
        key = jax.random.PRNGKey(1)
        state, m = fn(state, batch, key)
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        n = 0
        while n < steps or time.perf_counter() - t1 < 0.5:
            state, m = fn(state, batch, key)
            float(m["loss"])  # the loop reads each step's loss too
            n += 1
        out.append(((time.perf_counter() - t1) / n, compile_s))
    return out


def probe(trials: list[Trial], threads: int | None, steps: int = 10) -> StepModel:
    """Time the smallest and largest model of the sweep in a worker-like process."""
    if not trials:
        return StepModel(0.0, float("inf"), 0.0, "none")
    ordered = sorted(trials, key=lambda t: _step_flops(t.config))
    picks = [ordered[0], ordered[-1]] if len(ordered) > 1 else [ordered[0]]
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        timed = pool.submit(
            _probe_worker, [t.config.model_dump(mode="json") for t in picks], threads, steps
        ).result()
    f = [_step_flops(t.config) for t in picks]
    s = [x[0] for x in timed]
    compile_s = max(x[1] for x in timed)
    if len(f) == 2 and f[1] > f[0] and s[1] > s[0]:
        rate = (f[1] - f[0]) / (s[1] - s[0])
        a = max(0.0, s[0] - f[0] / rate)
    else:
        a, rate = 0.0, f[-1] / s[-1]
    return StepModel(a, rate, compile_s, "probe")


def from_runs(sweep_dir: str | Path | None) -> StepModel | None:
    """A step-time model fitted to the finished trials of a sweep directory, if any."""
    if sweep_dir is None or not Path(sweep_dir).is_dir():
        return None
    from scalinglab.sweep.store import trial_dirs

    pts = []
    for d in trial_dirs(sweep_dir):
        s = rf.read_json(d / rf.SUMMARY)
        if not s or not s.get("steps") or not s.get("wall_s"):
            continue
        try:
            cfg = TrialConfig.model_validate(_yaml(d))
        except (ValueError, TypeError):
            continue
        pts.append((_step_flops(cfg), s["wall_s"] / s["steps"]))
    if not pts:
        return None
    import numpy as np

    f, tau = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    if len(set(f)) > 1:
        slope, a = np.polyfit(f, tau, 1)
        if slope > 0 and a >= 0:
            return StepModel(float(a), float(1 / slope), 0.0, "runs")
    return StepModel(0.0, float(np.sum(f) / np.sum(tau)), 0.0, "runs")


def _yaml(run_dir: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load((run_dir / rf.CONFIG).read_text())


def estimate_s(cfg: TrialConfig, steps: int, model: StepModel) -> float:
    """Wall seconds of one trial: compile, steps, and evaluations (a forward pass ~ 1/3 step)."""
    step = model.step_s(_step_flops(cfg))
    evals = steps // cfg.train.eval_every + 1
    eval_batches = max(1, cfg.train.eval_tokens // (cfg.train.batch_size * cfg.data.seq_len))
    fixed = model.compile_s if model.source == "probe" else 0.0
    eval_s = evals * eval_batches * step / 3 if model.source == "probe" else 0.0
    return fixed + steps * step + eval_s


def plan(
    trials: list[Trial], sweep_dir: str | Path | None, step_model: StepModel | None
) -> list[PlanRow]:
    """The plan table's rows, with warnings for trials that cannot work."""
    sizes = _data_sizes(trials)
    rows = []
    for t in trials:
        cfg = t.config
        counts = param_counts(cfg.model)
        warnings: list[str] = []
        try:
            budget = Budget.of(cfg)
            steps, tokens, flops = budget.steps, budget.tokens, budget.flops
        except TrialError as e:
            steps, tokens, flops, warnings = 0, 0, 0.0, [str(e)]
        size = sizes[cfg.data.model_dump_json()]
        windows, n_val = size if isinstance(size, tuple) else (-1, -1)
        if isinstance(size, str):
            warnings.append(size)
        elif cfg.train.batch_size > windows:
            warnings.append(
                f"train.batch_size {cfg.train.batch_size} exceeds the {windows} training "
                f"sequences of the data"
            )
        elif steps and steps * cfg.train.batch_size > windows:
            warnings.append(f"repeats data: {steps * cfg.train.batch_size / windows:.1f} epochs")
        if 0 <= n_val < cfg.data.seq_len + 1:
            warnings.append("validation split shorter than one sequence")
        status = "pending"
        if sweep_dir is not None:
            status = RunDir(store.trial_dir(sweep_dir, t, adopt=False)).status()
        est = None
        if step_model is not None and steps and status not in FINISHED:
            est = estimate_s(cfg, steps, step_model)
        rows.append(
            PlanRow(
                t,
                counts["total"],
                counts["non_embedding"],
                steps,
                tokens,
                flops,
                est,
                status,
                warnings,
            )
        )
    return rows

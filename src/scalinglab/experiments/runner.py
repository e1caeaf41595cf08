"""`run_experiment`: a study's sweeps (through `scalinglab.sweep`), then its analysis, then
`findings.json` and the figures in the output directory.

Output layout: `OUT/<sweep name>/` per sweep (trial directories, as `sweep run` writes them),
the analysis's figures and tables, and `OUT/findings.json`. Re-running resumes: finished
trials are skipped and the rest continue from their checkpoints, as for any sweep.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scalinglab import runfiles as rf
from scalinglab.errors import ConfigError
from scalinglab.experiments.study import ANALYSIS_FILE, Study, smoke_sweep
from scalinglab.sweep import SweepConfig, SweepResult, Trial, expand, load_sweep, run_sweep
from scalinglab.sweep.config import EXECUTORS, sweep_from_dict
from scalinglab.sweep.executors import Executor
from scalinglab.sweep.store import SWEEP_COPY
from scalinglab.yamlio import load_yaml

FINDINGS = "findings.json"


@dataclass
class ExperimentResult:
    """What `run_experiment` did: per-sweep results, the findings and where they went."""

    out: Path
    sweeps: dict[str, SweepResult] = field(default_factory=dict)
    findings: dict[str, Any] | None = None
    wall_s: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.count(status) for r in self.sweeps.values())

    @property
    def trained(self) -> int:
        """Trials this call trained or resumed (not skipped as finished)."""
        return sum(not o.get("skipped") for r in self.sweeps.values() for o in r.outcomes.values())


@dataclass(frozen=True)
class PlannedSweep:
    """One sweep of a study as it will run: config, trials, and the YAML it came from."""

    sweep: SweepConfig
    trials: list[Trial]
    file: Path
    data: dict[str, Any] | None  # the smoke sweep's mapping (None: the file as it is)


def default_out(study: Study, smoke: bool) -> Path:
    """`runs/experiments/<name>` (`<name>-smoke` for `--smoke`), relative to the CWD."""
    return Path("runs") / "experiments" / (f"{study.name}-smoke" if smoke else study.name)


def plan_sweeps(
    study: Study, smoke: bool = False, executor: str | None = None
) -> list[PlannedSweep]:
    """Load, (smoke-)adjust and expand every sweep of `study`; errors name the file."""
    if executor is not None and executor not in EXECUTORS:
        raise ConfigError(
            f"--executor: {executor!r} not allowed; expected one of {', '.join(EXECUTORS)}"
        )
    planned = []
    names: dict[str, Path] = {}
    for entry, path in zip(study.spec.sweeps, study.sweep_files(), strict=True):
        data: dict[str, Any] | None = None
        if smoke:
            raw, _ = load_yaml(path)
            source = f"{study.path / 'study.yaml'} (smoke of {entry.file})"
            data = smoke_sweep(raw, entry.smoke, source)
            sweep = sweep_from_dict(data, source)
            trials = expand(sweep, source)
        else:
            sweep, trials = load_sweep(path)
            source = str(path)
        if executor is not None and executor != sweep.executor.name:
            data = (data or sweep.model_dump()) | {"executor": {"name": executor}}
            sweep = sweep_from_dict(data, source)
        if sweep.name in names:
            raise ConfigError(
                f"{path}: name {sweep.name!r} is also the name of {names[sweep.name]}; "
                "the sweeps of a study write to OUT/<name>, so names must differ"
            )
        names[sweep.name] = path
        planned.append(PlannedSweep(sweep, trials, path, data))
    return planned


def load_analysis(study: Study) -> Callable[..., dict[str, Any]]:
    """The study's `analyse(sweeps, out) -> findings` from its `analysis.py`."""
    path = study.path / ANALYSIS_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: missing; a study needs an analysis module")
    spec = importlib.util.spec_from_file_location(f"scalinglab_study_{study.name}", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "analyse", None)
    if not callable(fn):
        raise ConfigError(f"{path}: defines no function analyse(sweeps, out)")
    return fn


def run_experiment(
    study: Study,
    out: str | Path | None = None,
    *,
    smoke: bool = False,
    workers: int | None = None,
    executor: str | None = None,
    retry_failed: bool = False,
    cache_dir: str | Path | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    pool: Executor | None = None,
    planned: list[PlannedSweep] | None = None,
) -> ExperimentResult:
    """Run `study`'s sweeps into `out`, then its analysis; write `out/findings.json`.

    `cache_dir` (default `out/.jax_cache`) is the JAX compilation cache every sweep shares;
    a smoke run uses one local worker unless `workers` says otherwise.
    `pool` is an executor for every sweep instead of each one's own (`run_sweep`'s
    `executor`; the smoke tests share one worker across studies). `planned` is
    `plan_sweeps(study, smoke, executor)` when the caller has it already.
    When a trial failed the analysis is not run (`findings` stays None): the figures would
    silently miss points. Raises SweepInterrupted on Ctrl-C (re-running resumes).
    """
    out = Path(out) if out is not None else default_out(study, smoke)
    if planned is None:
        planned = plan_sweeps(study, smoke, executor)
    if smoke and workers is None:
        workers = 1  # a smoke's few tiny trials: one worker, whose trials share compilations
    analyse = load_analysis(study)
    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else out / ".jax_cache"
    result = ExperimentResult(out)
    (out / FINDINGS).unlink(missing_ok=True)  # no stale findings if this run fails
    for p in planned:
        sweep_dir = out / p.sweep.name
        copy_from: Path | None = p.file
        if p.data is not None:  # keep the sweep that really ran beside its trials
            sweep_dir.mkdir(parents=True, exist_ok=True)
            rf.atomic_write_text(sweep_dir / SWEEP_COPY, yaml.safe_dump(p.data, sort_keys=False))
            copy_from = None
        result.sweeps[p.sweep.name] = run_sweep(
            p.sweep,
            p.trials,
            sweep_dir,
            sweep_yaml=copy_from,
            workers=workers,
            retry_failed=retry_failed,
            cache_dir=cache,
            progress=progress,
            executor=pool,
        )
    if result.count("failed"):
        result.wall_s = time.perf_counter() - t0
        return result
    from scalinglab.analysis.cache import fit_cache

    dirs = {name: out / name for name in result.sweeps}
    with fit_cache():
        findings = analyse(dirs, out)
    if not isinstance(findings, dict):
        raise ConfigError(f"{study.path / ANALYSIS_FILE}: analyse() must return a dict")
    figure = out / f"{study.spec.figure}.png"
    if not figure.is_file():
        raise ConfigError(f"{study.path / ANALYSIS_FILE}: analyse() wrote no {figure}")
    result.wall_s = time.perf_counter() - t0
    result.findings = {
        "experiment": study.name,
        "question": study.question,
        "command": f"scalinglab experiment run {study.name}" + (" --smoke" if smoke else ""),
        "smoke": smoke,
        "trials": {name: _counts(r) for name, r in result.sweeps.items()},
        "wall_s": round(result.wall_s, 1),  # this call: training (what was left) and analysis
        "figure": figure.name,
        "findings": jsonable(findings),
    }
    rf.write_json(out / FINDINGS, result.findings)
    return result


def _counts(result: SweepResult) -> dict[str, Any]:
    """Trial statuses of one sweep, and `trial_s`: the summed training time of the trials this
    call trained (0 when every trial was done already)."""
    counts: dict[str, Any] = {"total": len(result.outcomes)}
    for o in result.outcomes.values():
        counts[o["status"]] = counts.get(o["status"], 0) + 1
    walls = [
        (o.get("summary") or {}).get("wall_s") or 0.0
        for o in result.outcomes.values()
        if not o.get("skipped")
    ]
    counts["trial_s"] = round(sum(walls), 1)
    return counts


def jsonable(obj: Any) -> Any:
    """NumPy scalars and arrays, tuples and Paths as plain JSON values (keys as strings)."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj

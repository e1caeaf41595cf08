"""Sweeps: expand a sweep YAML into trials, plan them, run them on an executor, load results.

`load_sweep(path)` validates a sweep file and expands it; `run_sweep` trains the trials;
`load_runs` / `load_curves` read a sweep directory back as DataFrames.
"""

from __future__ import annotations

from pathlib import Path

from scalinglab.sweep.config import SweepConfig, load_sweep_yaml, sweep_from_dict
from scalinglab.sweep.expand import Trial, expand, trial_id
from scalinglab.sweep.runner import SweepError, SweepInterrupted, SweepResult, run_sweep
from scalinglab.sweep.store import load_curves, load_runs, write_results


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[Trial]]:
    """Read, validate and expand a sweep YAML; errors name the file, line and field."""
    sweep, lines = load_sweep_yaml(path)
    return sweep, expand(sweep, str(path), lines)


__all__ = [
    "SweepConfig",
    "SweepError",
    "SweepInterrupted",
    "SweepResult",
    "Trial",
    "expand",
    "load_curves",
    "load_runs",
    "load_sweep",
    "run_sweep",
    "sweep_from_dict",
    "trial_id",
    "write_results",
]

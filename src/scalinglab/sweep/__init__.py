"""Sweeps: expand a sweep YAML into trials, plan them, run them on an executor, load results.

`load_sweep(path)` validates a sweep file and expands it; `run_sweep` trains the trials;
`load_runs` / `load_curves` read a sweep directory back as DataFrames.

The runner and the results store are imported on first use: they import pandas, whose
pyarrow starts a thread, and a sweep worker or `scalinglab train` must choose its allocator
settings before any thread allocates (`scalinglab.hostmem`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from scalinglab.sweep.config import SweepConfig, load_sweep_yaml, sweep_from_dict
from scalinglab.sweep.expand import Trial, expand, trial_id

_LAZY = {
    "SweepError": "scalinglab.sweep.runner",
    "SweepInterrupted": "scalinglab.sweep.runner",
    "SweepResult": "scalinglab.sweep.runner",
    "run_sweep": "scalinglab.sweep.runner",
    "load_curves": "scalinglab.sweep.store",
    "load_runs": "scalinglab.sweep.store",
    "write_results": "scalinglab.sweep.store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scalinglab.sweep' has no attribute {name!r}")


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

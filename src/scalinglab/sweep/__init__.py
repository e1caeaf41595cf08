"""Sweeps: expand a sweep YAML into trials, plan them, run them on an executor, load results.

`load_sweep(path)` validates a sweep file and expands it; `run_sweep` trains the trials;
`load_runs` / `load_curves` read a sweep directory back as DataFrames. Names are imported on
first use, so importing one submodule (the CLI, the results store) does not load the others.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scalinglab.sweep.config import SweepConfig
    from scalinglab.sweep.expand import Trial

_EXPORTS = {
    "SweepConfig": "scalinglab.sweep.config",
    "sweep_from_dict": "scalinglab.sweep.config",
    "Trial": "scalinglab.sweep.expand",
    "expand": "scalinglab.sweep.expand",
    "trial_id": "scalinglab.sweep.expand",
    "SweepError": "scalinglab.sweep.runner",
    "SweepInterrupted": "scalinglab.sweep.runner",
    "SweepResult": "scalinglab.sweep.runner",
    "run_sweep": "scalinglab.sweep.runner",
    "load_curves": "scalinglab.sweep.store",
    "load_runs": "scalinglab.sweep.store",
    "write_results": "scalinglab.sweep.store",
}


def load_sweep(path: str | Path) -> tuple[SweepConfig, list[Trial]]:
    """Read, validate and expand a sweep YAML; errors name the file, line and field."""
    from scalinglab.sweep.config import load_sweep_yaml
    from scalinglab.sweep.expand import expand

    sweep, lines = load_sweep_yaml(path)
    return sweep, expand(sweep, str(path), lines)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalinglab.sweep' has no attribute {name!r}")


__all__ = [*sorted(_EXPORTS), "load_sweep"]

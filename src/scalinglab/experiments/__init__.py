"""Experiments: the studies of a checkout's `experiments/` folder, each one command from
question to figure (`scalinglab experiment list | run NAME [--out DIR] [--smoke]`).

`study.py` is the format (`study.yaml`, smoke settings) and finds studies; `runner.py` runs a
study's sweeps through `scalinglab.sweep` (resumable), then its `analysis.py`, and writes
`findings.json`; `helpers.py` is what the analyses share (a power law per group, paired
bootstrap differences, the per-group figure). This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Study": "scalinglab.experiments.study",
    "experiments_dir": "scalinglab.experiments.study",
    "find_studies": "scalinglab.experiments.study",
    "find_study": "scalinglab.experiments.study",
    "load_study": "scalinglab.experiments.study",
    "ExperimentResult": "scalinglab.experiments.runner",
    "run_experiment": "scalinglab.experiments.runner",
    "plan_sweeps": "scalinglab.experiments.runner",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalinglab.experiments' has no attribute {name!r}")

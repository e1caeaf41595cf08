"""scalinglab: neural scaling-law experiments in JAX.

The public Python interface (README.md, "Fit scaling laws"): `load_runs`, `load_curves`,
`fit_chinchilla`, `fit_power_law`, `Fit` and `plots`. Names are imported on first use, so
`import scalinglab` stays cheap and the CLI starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_runs": "scalinglab.sweep.store",
    "load_curves": "scalinglab.sweep.store",
    "fit_chinchilla": "scalinglab.analysis.fit",
    "fit_kaplan": "scalinglab.analysis.fit",
    "fit_power_law": "scalinglab.analysis.fit",
    "Fit": "scalinglab.analysis.fit",
    "backtest": "scalinglab.analysis.backtest",
    "compute_optimal": "scalinglab.analysis.optimal",
    "run_trial": "scalinglab.train.loop",
    "load_trial": "scalinglab.config",
}
__all__ = [*_EXPORTS, "plots"]


def __getattr__(name: str) -> Any:
    if name == "plots":
        return importlib.import_module("scalinglab.analysis.plots")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scalinglab' has no attribute {name!r}")

"""Scaling-law analysis: laws, robust fits with bootstrap intervals, compute-optimal allocation.

Needs no training code: any table of runs with N, D and loss will do.
Names are imported on first use (they bring pandas, whose pyarrow starts a thread, and
``scalinglab train`` must choose its allocator settings first: ``scalinglab.hostmem``);
``analysis.plots`` (matplotlib) is imported on demand. The back-test function is
``scalinglab.backtest`` (here ``analysis.backtest`` is its module).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Approach": "optimal",
    "Backtest": "backtest",
    "DataError": "fit",
    "Fit": "fit",
    "approach1": "optimal",
    "approach2": "optimal",
    "approach3": "optimal",
    "compute_optimal": "optimal",
    "fit_chinchilla": "fit",
    "fit_kaplan": "fit",
    "fit_law": "fit",
    "fit_power_law": "fit",
    "load_source": "tables",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"scalinglab.analysis.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'scalinglab.analysis' has no attribute {name!r}")

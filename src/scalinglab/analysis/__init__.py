"""Scaling-law analysis: laws, robust fits with bootstrap intervals, compute-optimal allocation.

Needs no training code: any table of runs with N, D and loss will do.
``analysis.plots`` (matplotlib) is imported on demand.
"""

from scalinglab.analysis.backtest import Backtest, backtest
from scalinglab.analysis.custom import custom_law
from scalinglab.analysis.fit import (
    Fit,
    fit_chinchilla,
    fit_kaplan,
    fit_law,
    fit_power_law,
)
from scalinglab.analysis.optimal import Approach, approach1, approach2, approach3, compute_optimal
from scalinglab.analysis.options import FitOptions
from scalinglab.analysis.tablefit import fit_table
from scalinglab.analysis.tables import load_source

__all__ = [
    "Approach",
    "Backtest",
    "Fit",
    "FitOptions",
    "approach1",
    "approach2",
    "approach3",
    "backtest",
    "compute_optimal",
    "custom_law",
    "fit_chinchilla",
    "fit_kaplan",
    "fit_law",
    "fit_power_law",
    "fit_table",
    "load_source",
]

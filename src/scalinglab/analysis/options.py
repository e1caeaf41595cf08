"""The options of a fit, as one typed object instead of a dozen keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from scalinglab.analysis.multistart import DEFAULT_DELTA
from scalinglab.errors import FitInputError


@dataclass(frozen=True)
class FitOptions:
    """How to fit: solver, start grid, bootstrap, intervals and the extra checks.

    ``starts`` overrides the law's start grid (rows of raw parameters); ``n_starts`` thins
    the grid evenly instead. ``bootstrap`` resamples refit from the ``bootstrap_starts``
    best distinct optima of the full fit. ``profile`` adds a profile-likelihood interval
    for E (laws with an ``E``). ``backtest`` runs the leave-one-budget-out back-test when
    the runs carry budgets (``fit_table`` only). ``outlier_z`` is how many robust standard
    deviations (or evaluation-noise units) a residual must exceed to name its run.
    ``keep_starts``: after the first 16 objective evaluations of every start, only this many
    of the best go on to convergence (None: all of them); on the Chinchilla benchmark table
    it reaches the same optimum as all 4,500 starts with a fifth of the evaluations.
    """

    delta: float = DEFAULT_DELTA
    bootstrap: int = 0
    seed: int = 0
    confidence: float = 0.95
    starts: Any = None
    n_starts: int | None = None
    bootstrap_starts: int = 4
    max_iter: int = 500
    gtol: float = 1e-9
    ftol: float = 1e-13
    profile: bool = True
    backtest: bool = True
    outlier_z: float = 4.0
    keep_starts: int | None = 64

    def with_(self, **changes: Any) -> FitOptions:
        """A copy with ``changes``; an unknown name is a one-line error listing the known ones."""
        known = {f.name for f in fields(self)}
        bad = sorted(set(changes) - known)
        if bad:
            raise FitInputError(
                f"unknown fit option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}"
            )
        return replace(self, **changes)

    def grid(self, law_grid: np.ndarray) -> np.ndarray:
        """The start grid to use: ``starts`` if given, else the law's grid thinned to n_starts."""
        if self.starts is not None:
            return np.asarray(self.starts, dtype=np.float64)
        n = self.n_starts
        if n is None or n >= len(law_grid):
            return law_grid
        if n < 1:
            raise FitInputError(f"n_starts must be at least 1, got {n}")
        return law_grid[np.unique(np.linspace(0, len(law_grid) - 1, n).round().astype(int))]

    def solver(self) -> dict[str, Any]:
        """The keyword arguments of ``multistart``."""
        return {
            "delta": self.delta,
            "max_iter": self.max_iter,
            "gtol": self.gtol,
            "ftol": self.ftol,
        }


def resolve(options: FitOptions | None, **overrides: Any) -> FitOptions:
    """``options`` (default ``FitOptions()``) with keyword overrides applied."""
    return (options or FitOptions()).with_(**overrides)

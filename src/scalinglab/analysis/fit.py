"""Robust multi-start fitting of scaling laws, with bootstrap intervals and diagnostics.

The recipe is Hoffmann et al. (2022, appendix D.2) as replicated by Besiroglu et al.
(2024): minimise the *sum* of Huber losses of residuals in log-loss space, with L-BFGS
from a grid of starts, keep the best (``analysis.multistart``).

Bootstrap: resample the runs with replacement (as integer weights on the rows, so every
resample has the same shape and all refit in one vmapped call), refit from the best
optima of the full fit, report percentile intervals (``analysis.intervals``). Then the
checks of ``analysis.diagnostics`` and, for laws with an E, its profile-likelihood
interval (``analysis.profile``). ``fit_table`` (in ``analysis.tablefit``) adds what needs
the runs themselves: the N that C counts, evaluation noise, outliers by name, a known
floor and the leave-one-budget-out back-test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalinglab.analysis.diagnostics import identifiability, solver_diagnostics
from scalinglab.analysis.intervals import interval, resample_key, resample_rows
from scalinglab.analysis.laws import CHINCHILLA, Law, get_law
from scalinglab.analysis.multistart import (
    CHUNK_PASSES,
    DEFAULT_DELTA,
    distinct_best,
    huber,
    log_predict,
    multistart,
    objective,
    refit_weighted,
)
from scalinglab.analysis.options import FitOptions, resolve
from scalinglab.analysis.profile import profile_E
from scalinglab.analysis.result import Diagnostics, Fit, Samples
from scalinglab.analysis.tables import counted_n
from scalinglab.errors import FitInputError

__all__ = [
    "CHUNK_PASSES",
    "DEFAULT_DELTA",
    "Diagnostics",
    "Fit",
    "FitInputError",
    "FitOptions",
    "check_points",
    "fit_chinchilla",
    "fit_kaplan",
    "fit_law",
    "fit_power_law",
    "huber",
    "multistart",
    "objective",
]


def check_points(
    X: np.ndarray, y: np.ndarray, names: tuple[str, ...], n_params: int, law: str
) -> list[str]:
    """Raise ``FitInputError`` unless the points can determine the law; return warnings.

    Every value must be finite and positive; each input needs two or more distinct values
    (one value leaves its exponent undetermined; two are warned: its offset and exponent
    are then fitted through two points); and there must be at least as many distinct input
    points as parameters (repeating a run adds no new point).
    """
    for j, name in enumerate((*names, "loss")):
        col = y if j == len(names) else X[:, j]
        bad = ~(np.isfinite(col) & (col > 0))
        if bad.any():
            rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
            more = "" if bad.sum() <= 5 else ", ..."
            raise FitInputError(
                f"column {name!r} has {int(bad.sum())} non-positive or non-finite value(s)"
                f" (rows {rows}{more})"
            )
    if len(y) < n_params:
        raise FitInputError(f"law {law} has {n_params} parameters but only {len(y)} data points")
    warnings = []
    for j, name in enumerate(names):
        distinct = np.unique(X[:, j])
        if len(distinct) < 2:
            raise FitInputError(
                f"column {name!r} has one distinct value ({distinct[0]:.4g}) in all {len(y)}"
                f" rows; law {law} needs at least 2 (better 3 or more) to fit how loss depends"
                f" on {name}"
            )
        if len(distinct) == 2:
            warnings.append(
                f"column {name!r} has only 2 distinct values: the dependence on {name} is"
                " fitted through two points; treat its exponent as unconstrained"
            )
    points = len(np.unique(X, axis=0))
    if points < n_params:
        raise FitInputError(
            f"only {points} distinct ({', '.join(names)}) point(s) for the {n_params}"
            f" parameters of law {law}; repeated runs of one point add noise estimates,"
            " not points"
        )
    return warnings


def fit_law(
    law: str | Law,
    X: np.ndarray,
    y: np.ndarray,
    options: FitOptions | None = None,
    **overrides: Any,
) -> Fit:
    """Fit ``law`` to inputs ``X`` (n, k: one column per ``law.inputs``) and losses ``y``.

    ``options`` is a ``FitOptions``; keyword ``overrides`` replace single fields
    (``fit_law(law, X, y, bootstrap=200, seed=1)``).
    """
    opts = resolve(options, **overrides)
    law = get_law(law) if isinstance(law, str) else law
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    input_warnings = check_points(X, y, law.inputs, law.n_params, law.name)
    logX, logy = np.log(X), np.log(y)
    grid = opts.grid(law.start_grid())
    res = multistart(law, logX, logy, grid, keep=opts.keep_starts, **opts.solver())
    values = np.where(np.isfinite(res["value"]), res["value"], np.inf)
    best = int(np.argmin(values))
    raw = res["x"][best]
    refit_from = distinct_best(res["x"], values, opts.bootstrap_starts)

    samples, raw_samples, n_failed = None, None, 0
    if opts.bootstrap > 0:
        raw_samples, n_failed = _bootstrap(law, logX, logy, refit_from, opts)
        nat = np.where(np.asarray(law.logged), np.exp(raw_samples), raw_samples)
        samples = Samples(nat, columns=list(law.param_names))
        samples.attrs["resampled"] = resample_key(len(y), opts.bootstrap, opts.seed)

    resid = log_predict(law, raw, logX) - logy
    params = law.to_natural(raw)
    ci: dict[str, tuple[float, float]] = {}
    if samples is not None:
        for name in law.param_names:
            lo, hi = interval(samples[name].to_numpy(), opts.confidence)
            ci[name] = (float(lo), float(hi))
    diag = solver_diagnostics(law, grid, res, values, best, raw, logX, raw_samples, n_failed)
    prof = None
    if opts.profile and "E" in law.param_names:
        prof = profile_E(law, logX, logy, refit_from, opts.confidence, max_iter=opts.max_iter)
    ident, ident_warn = identifiability(law, params, ci, diag.at_bound, float(y.min()), prof)
    diag.warnings[:0] = input_warnings
    diag.warnings += ident_warn
    return Fit(
        law=law.name,
        params=params,
        ci=ci,
        loss=float(values[best]),
        rmse=float(np.sqrt(np.mean(resid**2))),
        n_points=len(y),
        delta=opts.delta,
        diagnostics=diag,
        raw=raw,
        samples=samples,
        confidence=opts.confidence,
        spec=law,
        identifiability=ident,
    )


def _bootstrap(
    law: Law, logX: np.ndarray, logy: np.ndarray, starts: np.ndarray, opts: FitOptions
) -> tuple[np.ndarray, int]:
    """Refit ``opts.bootstrap`` row resamples at once; raw optima (B, P) and failures."""
    n, n_boot = len(logy), opts.bootstrap
    idx = resample_rows(n, n_boot, opts.seed)
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    raw, ok = refit_weighted(law, logX, logy, starts, counts, **opts.solver())
    return raw, int(np.sum(~ok))


# Convenience entry points -------------------------------------------------------


def column(df: Any, names: tuple[str, ...]) -> np.ndarray:
    """The first of ``names`` that ``df`` has, as float64; a one-line error otherwise."""
    for n in names:
        if n in df:
            return np.asarray(df[n], dtype=np.float64)
    have = ", ".join(map(str, getattr(df, "columns", list(df))))
    raise FitInputError(f"missing column {names[0]!r} (have: {have})")


def fit_chinchilla(
    df: Any, bootstrap: int | None = None, options: FitOptions | None = None, **overrides: Any
) -> Fit:
    """Fit ``L = E + A/N^alpha + B/D^beta`` to a table with N, D and loss columns.

    The loss column may be ``loss`` or, as ``load_runs`` gives it, ``final_eval_loss``. N is
    the N that C counts: for runs counted ``kaplan`` (C = 6 N_nonembed D) with an
    ``N_nonembed`` column, that column, so ``Fit.optimal`` splits C the way the runs spent it.
    Keyword arguments are ``FitOptions`` fields.
    """
    n_col = counted_n(df, {})[0] if hasattr(df, "columns") else "N"
    X = np.stack([column(df, (n_col,)), column(df, ("D",))], axis=1)
    y = column(df, ("loss", "final_eval_loss"))
    return fit_law(CHINCHILLA, X, y, options, **_boot(bootstrap), **overrides)


def fit_kaplan(
    df: Any, bootstrap: int | None = None, options: FitOptions | None = None, **overrides: Any
) -> Fit:
    """Fit Kaplan et al.'s ``L(N, D)`` to a table with N, D and loss columns."""
    X = np.stack([column(df, ("N",)), column(df, ("D",))], axis=1)
    y = column(df, ("loss", "final_eval_loss"))
    return fit_law("kaplan", X, y, options, **_boot(bootstrap), **overrides)


def fit_power_law(
    x: Any,
    y: Any,
    bootstrap: int | None = None,
    offset: bool = True,
    options: FitOptions | None = None,
    **overrides: Any,
) -> Fit:
    """Fit ``L = E + A x^-alpha`` (or ``A x^-alpha`` with ``offset=False``)."""
    law = "power" if offset else "power_no_offset"
    x = np.asarray(x, dtype=np.float64)
    return fit_law(law, x[:, None], np.asarray(y), options, **_boot(bootstrap), **overrides)


def _boot(bootstrap: int | None) -> dict[str, int]:
    """``bootstrap`` as an override only when given, so ``options.bootstrap`` is kept."""
    return {} if bootstrap is None else {"bootstrap": bootstrap}

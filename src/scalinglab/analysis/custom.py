"""User-defined laws: a JAX function of named columns and named parameters, fitted by the
same multi-start L-BFGS, bootstrap and diagnostics as the built-in laws.

    def my_law(cols, p):
        return p["E"] + p["A"] * cols["N"] ** -p["alpha"] + p["B"] * cols["D"] ** -p["beta"]

    law = custom_law("mine", my_law, inputs=("N", "D"),
                     params={"E": (0.5, 3.0), "A": (1.0, 1e4), "B": (1.0, 1e4),
                             "alpha": (0.1, 1.0), "beta": (0.1, 1.0)},
                     positive=("E", "A", "B"))
    fit = fit_table(runs, law)   # or fit_law(law, X, y)

``positive`` parameters are fitted as their logarithms (like E, A, B of Chinchilla), so
they stay positive and their start range is gridded geometrically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from scalinglab.analysis.laws import Law
from scalinglab.errors import FitInputError

LawFn = Callable[[dict[str, jnp.ndarray], dict[str, jnp.ndarray]], jnp.ndarray]


def custom_law(
    name: str,
    fn: LawFn,
    inputs: Sequence[str],
    params: Mapping[str, tuple[float, float] | Sequence[float]],
    *,
    positive: Sequence[str] = (),
    points: int = 4,
    bounds: Mapping[str, tuple[float, float]] | None = None,
) -> Law:
    """A ``Law`` from ``fn(columns, params) -> loss`` (natural scale, positive).

    ``inputs`` name the table columns ``fn`` reads; ``params`` map each parameter to its
    start range: a ``(low, high)`` tuple is gridded with ``points`` values, a list gives
    the values themselves. The start grid is their Cartesian product, so keep it to a few
    thousand starts. ``bounds`` are reported when an optimum reaches them.
    """
    names = tuple(params)
    pos = set(positive)
    unknown = pos - set(names)
    if unknown:
        raise FitInputError(f"law {name}: positive names unknown parameter(s) {sorted(unknown)}")
    grid: dict[str, tuple[float, ...]] = {}
    for p in names:
        values = _start_values(name, p, params[p], points, p in pos)
        grid[_raw(p, p in pos)] = tuple(np.log(values) if p in pos else values)
    logged = tuple(p in pos for p in names)
    cols = tuple(inputs)

    def log_fn(theta: jnp.ndarray, logX: jnp.ndarray) -> jnp.ndarray:
        values = {
            p: jnp.exp(theta[i]) if lg else theta[i]
            for i, (p, lg) in enumerate(zip(names, logged, strict=True))
        }
        columns = {c: jnp.exp(logX[:, j]) for j, c in enumerate(cols)}
        return jnp.log(fn(columns, values))

    return Law(
        name=name,
        raw_names=tuple(_raw(p, p in pos) for p in names),
        param_names=names,
        logged=logged,
        inputs=cols,
        log_fn=log_fn,
        grid=grid,
        bounds=dict(bounds or {}),
    )


def _raw(p: str, positive: bool) -> str:
    return f"log_{p}" if positive else p


def _start_values(
    law: str, p: str, spec: tuple[float, float] | Sequence[float], points: int, positive: bool
) -> list[float]:
    if isinstance(spec, tuple) and len(spec) == 2:
        lo, hi = float(spec[0]), float(spec[1])
        if positive and (lo <= 0 or hi <= 0):
            raise FitInputError(f"law {law}: start range of positive {p} must be > 0")
        space = np.geomspace if positive else np.linspace
        return [float(v) for v in space(lo, hi, points)]
    values = [float(v) for v in spec]
    if not values or (positive and min(values) <= 0):
        raise FitInputError(f"law {law}: give {p} a (low, high) range or positive start values")
    return values

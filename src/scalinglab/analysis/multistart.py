"""The multi-start L-BFGS driver: every start of one law at once, vmapped, in float64.

The objective is Hoffmann et al. (2022, appendix D.2) as replicated by Besiroglu et al.
(2024): the *sum* of Huber losses of residuals in log-loss space. The sum, not the mean,
matters: dividing by the number of points shrinks the objective and its gradient until
tolerance-based stopping rules fire before the optimum.

Everything here runs inside ``jax.enable_x64(True)`` rather than flipping the global flag,
so importing the module leaves the training engine's dtypes alone. The compiled programs
are keyed on the ``Law`` object itself (laws hash by identity), so user-defined laws get
the same machinery as the built-in ones.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.analysis import lbfgs as _lbfgs
from scalinglab.analysis.laws import CHINCHILLA, Law

DEFAULT_DELTA = 1e-3
CHUNK_PASSES = 64  # objective evaluations per start between compactions of the running starts


def huber(r: jax.Array, delta: float) -> jax.Array:
    """Huber loss: quadratic for |r| <= delta, linear beyond."""
    a = jnp.abs(r)
    return jnp.where(a <= delta, 0.5 * r * r, delta * (a - 0.5 * delta))


def objective(
    raw: jax.Array,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    law: Law = CHINCHILLA,
) -> jax.Array:
    """Weighted *sum* of Huber losses of log-loss residuals (weights: bootstrap counts)."""
    r = law.log_fn(raw, logX) - logy
    return jnp.sum(weights * huber(r, delta))


@partial(jax.jit, static_argnames=("law", "batched_data"))
def _init(
    starts: jax.Array,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    gtol: float,
    *,
    law: Law,
    batched_data: bool,
) -> Any:
    """L-BFGS states of every row of ``starts`` (weights batched or shared)."""
    fun = partial(objective, law=law)

    def one(x0, w):
        return _lbfgs.lbfgs_init(fun, x0, logX, logy, w, delta, gtol=gtol)

    return jax.vmap(one, in_axes=(0, 0 if batched_data else None))(starts, weights)


@partial(jax.jit, static_argnames=("law", "batched_data", "max_iter", "max_passes"))
def _advance(
    states: Any,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    gtol: float,
    ftol: float,
    *,
    law: Law,
    batched_data: bool,
    max_iter: int,
    max_passes: int,
) -> Any:
    """Up to ``max_passes`` more L-BFGS passes of every state."""
    fun = partial(objective, law=law)

    def one(state, w):
        return _lbfgs.lbfgs_run(
            fun,
            state,
            logX,
            logy,
            w,
            delta,
            max_iter=max_iter,
            gtol=gtol,
            ftol=ftol,
            max_passes=max_passes,
        )

    return jax.vmap(one, in_axes=(0, 0 if batched_data else None))(states, weights)


def _bucket(n: int, total: int) -> int:
    """Lane count for ``n`` running starts: ``total / 2**k``, so few shapes get compiled."""
    size = total
    while size // 2 >= n and size > 64:
        size = (size + 1) // 2
    return max(size, n)


def multistart(
    law: Law,
    logX: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    delta: float = DEFAULT_DELTA,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
) -> dict[str, np.ndarray]:
    """Minimise the objective from each start; numpy arrays with a leading start axis.

    ``weights`` of shape (n,) are shared by all starts; of shape (S, n) give
    each start its own (bootstrap) data. The starts run vmapped in chunks of
    ``CHUNK_PASSES`` passes; between chunks the finished ones are set aside, so
    the work follows the typical start rather than the slowest. Each start follows the
    same trajectory as in one long loop, up to floating-point rounding (the vectorised
    width changes).
    """
    with jax.enable_x64(True):
        batched = np.ndim(weights) == 2
        w_all = np.ones(len(logy)) if weights is None else np.asarray(weights, np.float64)
        data = (jnp.asarray(logX, jnp.float64), jnp.asarray(logy, jnp.float64))
        static = {"law": law, "batched_data": batched}
        states = _init(
            jnp.asarray(starts, jnp.float64), *data, jnp.asarray(w_all), delta, gtol, **static
        )
        full = jax.tree_util.tree_map(np.array, states)  # host copy, updated per chunk
        total = len(starts)
        active = np.flatnonzero(full.status == _lbfgs.RUNNING)
        while active.size:
            lanes = _bucket(active.size, total)
            idx = np.concatenate([active, np.full(lanes - active.size, active[0])])
            sub = jax.tree_util.tree_map(lambda a, idx=idx: jnp.asarray(a[idx]), full)
            w = jnp.asarray(w_all[idx] if batched else w_all)
            sub = _advance(
                sub,
                *data,
                w,
                delta,
                gtol,
                ftol,
                max_iter=max_iter,
                max_passes=CHUNK_PASSES,
                **static,
            )
            sub = jax.tree_util.tree_map(np.asarray, sub)
            for leaf_full, leaf_sub in zip(
                jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(sub), strict=True
            ):
                leaf_full[active] = leaf_sub[: active.size]
            active = active[full.status[active] == _lbfgs.RUNNING]
        res = _lbfgs.result(jax.tree_util.tree_map(jnp.asarray, full))
        return {k: np.asarray(v) for k, v in res._asdict().items()}


def converged(status: int, grad_norm: float) -> bool:
    """Whether a start's stopping reason counts as converged.

    A failed line search at a tiny gradient is rounding at the optimum, not a failure.
    """
    return status in (_lbfgs.GTOL, _lbfgs.FTOL) or (status == _lbfgs.LS_FAIL and grad_norm < 1e-6)


def distinct_best(xs: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-objective optima whose values differ (relative 1e-6): refit starts."""
    picked: list[int] = []
    for i in np.argsort(values):
        if not np.isfinite(values[i]) or len(picked) == k:
            break
        if all(abs(values[i] - values[j]) > 1e-6 * abs(values[j]) + 1e-15 for j in picked):
            picked.append(int(i))
    return xs[picked]


def refit_weighted(
    law: Law,
    logX: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray,
    weights: np.ndarray,
    *,
    delta: float,
    max_iter: int,
    gtol: float,
    ftol: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Refit once per row of ``weights`` (R, n) from every one of ``starts`` (k, P).

    One vmapped call for all R x k problems; returns the best raw optimum of each row
    (R, P) and whether it converged (R,). Bootstrap resamples (weights = counts) and
    held-out splits (weights 0/1) both run through here.
    """
    n_rows, k = len(weights), len(starts)
    res = multistart(
        law,
        logX,
        logy,
        np.tile(starts, (n_rows, 1)),
        weights=np.repeat(np.asarray(weights, np.float64), k, axis=0),
        delta=delta,
        max_iter=max_iter,
        gtol=gtol,
        ftol=ftol,
    )
    vals = np.where(np.isfinite(res["value"]), res["value"], np.inf).reshape(n_rows, k)
    pick = np.argmin(vals, axis=1)
    rows = np.arange(n_rows)
    raw = res["x"].reshape(n_rows, k, -1)[rows, pick]
    status = res["status"].reshape(n_rows, k)[rows, pick]
    # As before the split: a line-search stop counts as a finished refit.
    ok = np.isin(status, (_lbfgs.GTOL, _lbfgs.FTOL, _lbfgs.LS_FAIL))
    return raw, ok

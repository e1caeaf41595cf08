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
CHUNK_PASSES = 16  # objective evaluations per start between compactions of the running starts


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
    frozen: jax.Array | None = None,
    law: Law = CHINCHILLA,
) -> jax.Array:
    """Weighted *sum* of Huber losses of log-loss residuals (weights: bootstrap counts).

    ``frozen`` (P,) marks raw parameters held at their start value: their gradient is cut,
    and L-BFGS never moves a coordinate whose gradient is always zero (profiles use it).
    """
    if frozen is not None:
        raw = jnp.where(frozen, jax.lax.stop_gradient(raw), raw)
    r = law.log_fn(raw, logX) - logy
    return jnp.sum(weights * huber(r, delta))


# One program per (law, lane width) for each of these two: weights are always per lane and
# the frozen mask is data, so the full fit, the bootstrap, back-test and profile refits of a
# process share them (tracing a vmapped L-BFGS program costs more than running it here).


@partial(jax.jit, static_argnames=("law",))
def _init(
    starts: jax.Array,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    frozen: jax.Array,
    gtol: float,
    *,
    law: Law,
) -> Any:
    """L-BFGS states of every row of ``starts``, each with its row of ``weights``."""
    fun = partial(objective, law=law)

    def one(x0, w):
        return _lbfgs.lbfgs_init(fun, x0, logX, logy, w, delta, frozen, gtol=gtol)

    return jax.vmap(one)(starts, weights)


@partial(jax.jit, static_argnames=("law", "max_iter", "max_passes"))
def _advance(
    states: Any,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    frozen: jax.Array,
    gtol: float,
    ftol: float,
    *,
    law: Law,
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
            frozen,
            max_iter=max_iter,
            gtol=gtol,
            ftol=ftol,
            max_passes=max_passes,
        )

    return jax.vmap(one)(states, weights)


LANES = 512  # widest vmapped batch: bigger problems run as several calls of this width
NARROW = 64  # the one narrower width, for the few starts still running at the end


def _lanes(n: int) -> int:
    """Lane count for ``n`` running starts: ``NARROW`` or ``LANES``.

    Two widths only, so every call of a process reuses the same few shapes: tracing a
    vmapped L-BFGS program costs more than the padding it would save.
    """
    return NARROW if n <= NARROW else LANES


def _pad(idx: np.ndarray, lanes: int) -> np.ndarray:
    return np.concatenate([idx, np.full(lanes - idx.size, idx[0])])


def multistart(
    law: Law,
    logX: np.ndarray,
    logy: np.ndarray,
    starts: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    frozen: np.ndarray | None = None,
    delta: float = DEFAULT_DELTA,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    keep: int | None = None,
) -> dict[str, np.ndarray]:
    """Minimise the objective from each start; numpy arrays with a leading start axis.

    ``weights`` of shape (n,) are shared by all starts; of shape (S, n) give
    each start its own (bootstrap) data. ``frozen`` (P,) booleans hold those raw
    parameters at their start values (a profile). The starts run vmapped, at most ``LANES`` per
    call, in chunks of ``CHUNK_PASSES`` passes; between chunks the finished ones are set
    aside, so the work follows the typical start rather than the slowest. Each start
    follows the same trajectory as in one long loop, up to floating-point rounding (the
    vectorised width changes). The bookkeeping between chunks is numpy on the host.

    ``keep``: after the first chunk, only the ``keep`` running starts with the lowest
    objective go on; the others stop with status ``PRUNED`` (their value is where they
    stopped). L-BFGS only ever lowers a start's objective, so the best start is always one
    that went on. Only for one shared objective (1-D ``weights``): with a row of weights per
    start the values are not comparable.
    """
    with jax.enable_x64(True):
        starts = np.asarray(starts, np.float64)
        total = len(starts)
        w_all = np.ones(len(logy)) if weights is None else np.asarray(weights, np.float64)
        if w_all.ndim == 1:
            w_all = np.broadcast_to(w_all, (total, len(logy)))
        data = (np.asarray(logX, np.float64), np.asarray(logy, np.float64))
        mask = np.zeros(starts.shape[1], bool) if frozen is None else np.asarray(frozen, bool)
        static = {"law": law}
        full = None
        for lo in range(0, total, LANES):
            idx = np.arange(lo, min(lo + LANES, total))
            pad = _pad(idx, _lanes(idx.size))
            part = _init(starts[pad], *data, w_all[pad], delta, mask, gtol, **static)
            part = jax.device_get(part)
            if full is None:
                full = jax.tree_util.tree_map(
                    lambda a: np.empty((total, *a.shape[1:]), a.dtype), part
                )
            for leaf_full, leaf in zip(
                jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(part), strict=True
            ):
                leaf_full[idx] = leaf[: idx.size]
        active = np.flatnonzero(full.status == _lbfgs.RUNNING)
        prune = keep is not None and (weights is None or np.ndim(weights) == 1)
        while active.size:
            for lo in range(0, active.size, LANES):
                idx = active[lo : lo + LANES]
                pad = _pad(idx, _lanes(idx.size))
                sub = jax.tree_util.tree_map(lambda a, pad=pad: a[pad], full)
                sub = _advance(
                    sub,
                    *data,
                    w_all[pad],
                    delta,
                    mask,
                    gtol,
                    ftol,
                    max_iter=max_iter,
                    max_passes=CHUNK_PASSES,
                    **static,
                )
                sub = jax.device_get(sub)
                for leaf_full, leaf_sub in zip(
                    jax.tree_util.tree_leaves(full), jax.tree_util.tree_leaves(sub), strict=True
                ):
                    leaf_full[idx] = leaf_sub[: idx.size]
            active = active[full.status[active] == _lbfgs.RUNNING]
            if prune and active.size > keep:
                order = active[np.argsort(full.f[active], kind="stable")]
                full.status[order[keep:]] = _lbfgs.PRUNED
                active = np.sort(order[:keep])
            prune = False
        return {
            "x": full.x,
            "value": full.f,
            "grad_norm": np.max(np.abs(full.g), axis=-1),
            "n_iter": full.k,
            "n_eval": full.n_eval,
            "status": full.status,
        }


@partial(jax.jit, static_argnames=("law",))
def _log_predict(raw: jax.Array, logX: jax.Array, *, law: Law) -> jax.Array:
    return law.log_fn(raw, logX)


@partial(jax.jit, static_argnames=("law",))
def _log_jacobian(raw: jax.Array, logX: jax.Array, *, law: Law) -> jax.Array:
    return jax.jacfwd(law.log_fn)(raw, logX)


def log_jacobian(law: Law, raw: np.ndarray, logX: np.ndarray) -> np.ndarray:
    """d log loss / d raw parameters at each input row, (n, P) (one jitted program)."""
    with jax.enable_x64(True):
        return np.asarray(
            _log_jacobian(np.asarray(raw, np.float64), np.asarray(logX, np.float64), law=law)
        )


def log_predict(law: Law, raw: np.ndarray, logX: np.ndarray) -> np.ndarray:
    """The law's log loss at raw parameters ``raw`` and inputs ``logX`` (one jitted program)."""
    with jax.enable_x64(True):
        return np.asarray(
            _log_predict(np.asarray(raw, np.float64), np.asarray(logX, np.float64), law=law)
        )


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

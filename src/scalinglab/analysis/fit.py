"""Robust multi-start fitting of scaling laws, with bootstrap intervals and diagnostics.

The recipe is Hoffmann et al. (2022, appendix D.2) as replicated by
Besiroglu et al. (2024): minimise the *sum* of Huber losses of residuals in
log-loss space, with L-BFGS from a grid of starts, keep the best. All starts
run at once (``jax.vmap`` over ``analysis.lbfgs``) in float64. The sum, not
the mean, matters: dividing by the number of points shrinks the objective and
its gradient until tolerance-based stopping rules fire before the optimum.

Bootstrap: resample the runs with replacement (as integer weights on the
rows, so every resample has the same shape and all refit in one vmapped
call), refit from the best optima of the full fit, report percentile intervals.

Everything here runs inside ``jax.enable_x64(True)`` rather than flipping the
global flag, so importing the module leaves the training engine's dtypes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from scalinglab.analysis import lbfgs as _lbfgs
from scalinglab.analysis.laws import CHINCHILLA, Law, chinchilla_allocation, get_law

DEFAULT_DELTA = 1e-3


class DataError(ValueError):
    """Input data cannot be fitted; the message is one line naming the problem."""


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


CHUNK_PASSES = 64  # objective evaluations per start between compactions of the running starts


@partial(jax.jit, static_argnames=("law_name", "batched_data"))
def _init(
    starts: jax.Array,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    gtol: float,
    *,
    law_name: str,
    batched_data: bool,
) -> Any:
    """L-BFGS states of every row of ``starts`` (weights batched or shared)."""
    fun = partial(objective, law=get_law(law_name))

    def one(x0, w):
        return _lbfgs.lbfgs_init(fun, x0, logX, logy, w, delta, gtol=gtol)

    return jax.vmap(one, in_axes=(0, 0 if batched_data else None))(starts, weights)


@partial(jax.jit, static_argnames=("law_name", "batched_data", "max_iter", "max_passes"))
def _advance(
    states: Any,
    logX: jax.Array,
    logy: jax.Array,
    weights: jax.Array,
    delta: float,
    gtol: float,
    ftol: float,
    *,
    law_name: str,
    batched_data: bool,
    max_iter: int,
    max_passes: int,
) -> Any:
    """Up to ``max_passes`` more L-BFGS passes of every state."""
    fun = partial(objective, law=get_law(law_name))

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
        static = {"law_name": law.name, "batched_data": batched}
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


@dataclass
class Diagnostics:
    """How much to trust a fit. ``warnings`` lists everything worth a look."""

    n_starts: int
    n_at_best: int
    converged: bool
    status: str
    n_iter: int
    grad_norm: float
    on_grid_edge: list[str]
    at_bound: list[str]
    correlations: dict[str, dict[str, float]]
    bootstrap_failed: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class Fit:
    """A fitted law: parameters, intervals, goodness of fit and diagnostics.

    ``params`` are the natural parameters (``E, A, B, alpha, beta`` for
    Chinchilla); ``ci`` maps each to its (low, high) percentile interval when
    the fit was bootstrapped; ``loss`` is the summed Huber objective and
    ``rmse`` the root-mean-square residual of log loss.
    """

    law: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    loss: float
    rmse: float
    n_points: int
    delta: float
    diagnostics: Diagnostics
    raw: np.ndarray
    samples: np.ndarray | None = None  # (B, P) bootstrap natural parameters
    confidence: float = 0.95

    @property
    def converged(self) -> bool:
        return self.diagnostics.converged

    @classmethod
    def from_params(cls, law: str, **params: float) -> Fit:
        """A Fit from known parameters (e.g. published ones), for ``predict``/``optimal``.

        ``Fit.from_params("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)``
        """
        spec = get_law(law)
        missing = set(spec.param_names) - set(params)
        if missing:
            raise ValueError(f"law {law} needs parameters {', '.join(spec.param_names)}")
        raw = spec.to_raw(params)
        diag = Diagnostics(0, 0, True, "given, not fitted", 0, 0.0, [], [], {})
        natural = spec.to_natural(raw)
        return cls(law, natural, {}, float("nan"), float("nan"), 0, float("nan"), diag, raw)

    def predict(self, N: Any, D: Any = None) -> np.ndarray:
        """Predicted loss at ``N`` (and ``D`` for two-variable laws; ``N`` is x for power)."""
        law = get_law(self.law)
        cols = [N] if len(law.inputs) == 1 else [N, D]
        if any(c is None for c in cols):
            raise ValueError(f"law {self.law} needs inputs {', '.join(law.inputs)}")
        arrs = np.broadcast_arrays(*[np.asarray(c, dtype=np.float64) for c in cols])
        logX = np.stack([np.log(a).ravel() for a in arrs], axis=1)
        with jax.enable_x64(True):
            out = np.exp(np.asarray(law.log_fn(jnp.asarray(self.raw), jnp.asarray(logX))))
        return out.reshape(arrs[0].shape)

    def exponents(self) -> dict[str, Any]:
        """Approach-3 allocation exponents a, b and coefficient G, with intervals if any."""
        self._need_chinchilla("exponents")
        p = self.params
        a, b, G = chinchilla_allocation(p["A"], p["B"], p["alpha"], p["beta"])
        out: dict[str, Any] = {"a": float(a), "b": float(b), "G": float(G)}
        if self.samples is not None:
            A, B, alpha, beta = (self.samples[:, i] for i in (1, 2, 3, 4))
            sa, sb, sG = chinchilla_allocation(A, B, alpha, beta)
            for name, s in (("a", sa), ("b", sb), ("G", sG)):
                out[f"{name}_ci"] = _interval(s, self.confidence)
        return out

    def optimal(self, compute: float | np.ndarray) -> dict[str, Any]:
        """Compute-optimal N, D and predicted loss at FLOPs ``compute`` (C = 6ND).

        Uses the closed form of Hoffmann et al. (approach 3); with bootstrap
        samples each value comes with an interval (``N_opt_ci`` ...).
        """
        self._need_chinchilla("optimal")
        C = np.asarray(compute, dtype=np.float64)
        p = self.params
        a, b, G = chinchilla_allocation(p["A"], p["B"], p["alpha"], p["beta"])
        N = G * (C / 6.0) ** a
        D = (C / 6.0) ** b / G
        out: dict[str, Any] = {"C": _num(C), "N_opt": _num(N), "D_opt": _num(D)}
        out["loss"] = _num(self.predict(N, D))
        if self.samples is not None:
            E, A, B, alpha, beta = (self.samples[:, i, None] for i in range(5))
            sa, sb, sG = chinchilla_allocation(A, B, alpha, beta)
            sN = sG * (C.ravel()[None] / 6.0) ** sa
            sD = (C.ravel()[None] / 6.0) ** sb / sG
            sL = E + A * sN**-alpha + B * sD**-beta
            for name, s in (("N_opt", sN), ("D_opt", sD), ("loss", sL)):
                lo, hi = np.percentile(s, _pct(self.confidence), axis=0)
                out[f"{name}_ci"] = (_num(lo.reshape(C.shape)), _num(hi.reshape(C.shape)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no bootstrap samples)."""
        d = self.diagnostics
        return {
            "law": self.law,
            "params": self.params,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "confidence": self.confidence,
            "loss": self.loss,
            "rmse_log_loss": self.rmse,
            "n_points": self.n_points,
            "huber_delta": self.delta,
            "n_bootstrap": 0 if self.samples is None else len(self.samples),
            "diagnostics": {
                "converged": d.converged,
                "status": d.status,
                "n_starts": d.n_starts,
                "n_at_best": d.n_at_best,
                "n_iter": d.n_iter,
                "grad_norm": d.grad_norm,
                "on_grid_edge": d.on_grid_edge,
                "at_bound": d.at_bound,
                "bootstrap_failed": d.bootstrap_failed,
                "correlations": d.correlations,
                "warnings": d.warnings,
            },
        }

    def _need_chinchilla(self, what: str) -> None:
        if self.law != "chinchilla":
            raise ValueError(f"Fit.{what}() needs the chinchilla law, this fit is {self.law}")


def _num(x: np.ndarray) -> float | np.ndarray:
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x


def _pct(confidence: float) -> list[float]:
    tail = 50.0 * (1.0 - confidence)
    return [tail, 100.0 - tail]


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.percentile(samples, _pct(confidence))
    return float(lo), float(hi)


def check_points(X: np.ndarray, y: np.ndarray, names: tuple[str, ...], n_params: int, law: str):
    """Raise ``DataError`` unless every value is finite and positive and there are enough."""
    for j, name in enumerate((*names, "loss")):
        col = y if j == len(names) else X[:, j]
        bad = ~(np.isfinite(col) & (col > 0))
        if bad.any():
            rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
            more = "" if bad.sum() <= 5 else ", ..."
            raise DataError(
                f"column {name!r} has {int(bad.sum())} non-positive or non-finite value(s)"
                f" (rows {rows}{more})"
            )
    if len(y) < n_params:
        raise DataError(f"law {law} has {n_params} parameters but only {len(y)} data points")


def fit_law(
    law: str | Law,
    X: np.ndarray,
    y: np.ndarray,
    *,
    delta: float = DEFAULT_DELTA,
    bootstrap: int = 0,
    seed: int = 0,
    starts: np.ndarray | None = None,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    confidence: float = 0.95,
    bootstrap_starts: int = 4,
) -> Fit:
    """Fit ``law`` to inputs ``X`` (n, k: N and D, or x) and losses ``y`` (n,).

    ``starts`` overrides the law's start grid (rows of raw parameters);
    ``bootstrap`` resamples refit from the ``bootstrap_starts`` best distinct
    optima of the full fit.
    """
    law = get_law(law) if isinstance(law, str) else law
    X = np.asarray(X, dtype=np.float64).reshape(len(y), -1)
    y = np.asarray(y, dtype=np.float64)
    check_points(X, y, law.inputs, law.n_params, law.name)
    logX, logy = np.log(X), np.log(y)
    grid = law.start_grid() if starts is None else np.asarray(starts, dtype=np.float64)
    opts = dict(delta=delta, max_iter=max_iter, gtol=gtol, ftol=ftol)
    res = multistart(law, logX, logy, grid, **opts)
    values = np.where(np.isfinite(res["value"]), res["value"], np.inf)
    best = int(np.argmin(values))
    raw = res["x"][best]
    best_val = float(values[best])

    samples, raw_samples, n_failed = None, None, 0
    if bootstrap > 0:
        raw_samples, n_failed = _bootstrap(
            law, logX, logy, res["x"], values, bootstrap, seed, bootstrap_starts, opts
        )
        samples = np.stack([_natural_array(law, r) for r in raw_samples])

    with jax.enable_x64(True):
        resid = np.asarray(law.log_fn(jnp.asarray(raw), jnp.asarray(logX))) - logy
    params = law.to_natural(raw)
    ci = {}
    if samples is not None:
        ci = {n: _interval(samples[:, i], confidence) for i, n in enumerate(law.param_names)}
    diag = _diagnostics(law, grid, res, values, best, raw, logX, logy, raw_samples, n_failed)
    return Fit(
        law=law.name,
        params=params,
        ci=ci,
        loss=best_val,
        rmse=float(np.sqrt(np.mean(resid**2))),
        n_points=len(y),
        delta=delta,
        diagnostics=diag,
        raw=raw,
        samples=samples,
        confidence=confidence,
    )


def _natural_array(law: Law, raw: np.ndarray) -> np.ndarray:
    return np.where(np.asarray(law.logged), np.exp(raw), raw)


def _distinct_best(xs: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k lowest-objective optima whose values differ (relative 1e-6)."""
    picked: list[int] = []
    for i in np.argsort(values):
        if not np.isfinite(values[i]) or len(picked) == k:
            break
        if all(abs(values[i] - values[j]) > 1e-6 * abs(values[j]) + 1e-15 for j in picked):
            picked.append(int(i))
    return xs[picked]


def _bootstrap(law, logX, logy, xs, values, n_boot, seed, n_starts, opts):
    """Refit ``n_boot`` row resamples at once; returns raw optima (B, P) and failures."""
    rng = np.random.default_rng(seed)
    n = len(logy)
    idx = rng.integers(0, n, size=(n_boot, n))
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    starts0 = _distinct_best(xs, values, n_starts)
    k = len(starts0)
    starts = np.tile(starts0, (n_boot, 1))
    weights = np.repeat(counts, k, axis=0)
    res = multistart(law, logX, logy, starts, weights=weights, **opts)
    vals = np.where(np.isfinite(res["value"]), res["value"], np.inf).reshape(n_boot, k)
    pick = np.argmin(vals, axis=1)
    raw = res["x"].reshape(n_boot, k, -1)[np.arange(n_boot), pick]
    status = res["status"].reshape(n_boot, k)[np.arange(n_boot), pick]
    failed = int(np.sum(~np.isin(status, (_lbfgs.GTOL, _lbfgs.FTOL, _lbfgs.LS_FAIL))))
    return raw, failed


def _converged(status: int, grad_norm: float) -> bool:
    # A failed line search at a tiny gradient is rounding at the optimum, not a failure.
    return status in (_lbfgs.GTOL, _lbfgs.FTOL) or (status == _lbfgs.LS_FAIL and grad_norm < 1e-6)


def _diagnostics(law, grid, res, values, best, raw, logX, logy, raw_samples, n_failed):
    best_val = values[best]
    n_at_best = int(np.sum(values <= best_val + 1e-6 * abs(best_val) + 1e-15))
    status, gnorm = int(res["status"][best]), float(res["grad_norm"][best])
    converged = _converged(status, gnorm)
    warnings: list[str] = []
    if not converged:
        warnings.append(f"best start did not converge: {_lbfgs.STATUS_TEXT[status]}")
    if n_at_best == 1 and len(grid) > 1:
        warnings.append("only one start reached the best objective")

    lo, hi = grid.min(axis=0), grid.max(axis=0)
    margin = 0.01 * (hi - lo)
    edge = [
        n
        for n, v, a, b, m in zip(law.raw_names, raw, lo, hi, margin, strict=True)
        if a < b and (v <= a + m or v >= b - m)
    ]
    if edge:
        warnings.append(f"optimum on or outside the start grid for {', '.join(edge)}")
    params = law.to_natural(raw)
    at_bound = [
        n for n, (a, b) in law.bounds.items() if params[n] <= a + 1e-6 or params[n] >= b - 1e-6
    ]
    if at_bound:
        warnings.append(f"optimum at or past a bound for {', '.join(at_bound)}")

    if raw_samples is not None and len(raw_samples) > 2:
        corr = np.corrcoef(raw_samples, rowvar=False)
    else:
        corr = _gauss_newton_corr(law, raw, logX)
    names = law.param_names
    correlations = {
        a: {b: float(np.round(corr[i, j], 6)) for j, b in enumerate(names)}
        for i, a in enumerate(names)
    }
    if n_failed:
        warnings.append(f"{n_failed} bootstrap refits did not converge")
    return Diagnostics(
        n_starts=len(grid),
        n_at_best=n_at_best,
        converged=converged,
        status=_lbfgs.STATUS_TEXT[status],
        n_iter=int(res["n_iter"][best]),
        grad_norm=gnorm,
        on_grid_edge=edge,
        at_bound=at_bound,
        correlations=correlations,
        bootstrap_failed=n_failed,
        warnings=warnings,
    )


def _gauss_newton_corr(law: Law, raw: np.ndarray, logX: np.ndarray) -> np.ndarray:
    """Parameter correlations from the Gauss-Newton covariance (J^T J)^-1 of log residuals."""
    with jax.enable_x64(True):
        J = np.asarray(jax.jacfwd(law.log_fn)(jnp.asarray(raw), jnp.asarray(logX)))
    cov = np.linalg.pinv(J.T @ J)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    return np.clip(cov / np.outer(sd, sd), -1.0, 1.0)


# Convenience entry points -------------------------------------------------------


def _column(df: Any, names: tuple[str, ...]) -> np.ndarray:
    for n in names:
        if n in df:
            return np.asarray(df[n], dtype=np.float64)
    have = ", ".join(map(str, getattr(df, "columns", list(df))))
    raise DataError(f"missing column {names[0]!r} (have: {have})")


def fit_chinchilla(df: Any, bootstrap: int = 0, **kwargs: Any) -> Fit:
    """Fit ``L = E + A/N^alpha + B/D^beta`` to a table with N, D and loss columns.

    The loss column may be ``loss`` or, as ``load_runs`` gives it,
    ``final_eval_loss``. Keyword arguments go to ``fit_law``.
    """
    X = np.stack([_column(df, ("N",)), _column(df, ("D",))], axis=1)
    y = _column(df, ("loss", "final_eval_loss"))
    return fit_law(CHINCHILLA, X, y, bootstrap=bootstrap, **kwargs)


def fit_kaplan(df: Any, bootstrap: int = 0, **kwargs: Any) -> Fit:
    """Fit Kaplan et al.'s ``L(N, D)`` to a table with N, D and loss columns."""
    X = np.stack([_column(df, ("N",)), _column(df, ("D",))], axis=1)
    y = _column(df, ("loss", "final_eval_loss"))
    return fit_law("kaplan", X, y, bootstrap=bootstrap, **kwargs)


def fit_power_law(x: Any, y: Any, bootstrap: int = 0, offset: bool = True, **kwargs: Any) -> Fit:
    """Fit ``L = E + A x^-alpha`` (or ``A x^-alpha`` with ``offset=False``)."""
    law = "power" if offset else "power_no_offset"
    x = np.asarray(x, dtype=np.float64)
    return fit_law(law, x[:, None], np.asarray(y), bootstrap=bootstrap, **kwargs)

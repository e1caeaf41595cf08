"""Scaling laws as pure ``jnp`` functions, plus their log-space forms for fitting.

The natural forms (``chinchilla``, ``kaplan``, ``power_law``) are what users
evaluate. Fitting works on the log-sum-exp parametrisation of Hoffmann et al.
(2022): every positive coefficient is stored as its logarithm and the
predicted *log* loss is a ``logsumexp`` of linear terms in ``log N`` and
``log D``. That keeps the optimiser away from negative coefficients and makes
the objective well scaled across many orders of magnitude of N and D.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray


# Natural forms ---------------------------------------------------------------


def power_law(x: Array, E: float, A: float, alpha: float) -> Array:
    """``L(x) = E + A x^-alpha``: a saturating power law in one variable."""
    return E + A * jnp.power(x, -alpha)


def power_law_no_offset(x: Array, A: float, alpha: float) -> Array:
    """``L(x) = A x^-alpha``: a pure power law (a straight line on log-log axes)."""
    return A * jnp.power(x, -alpha)


def chinchilla(
    N: Array, D: Array, E: float, A: float, B: float, alpha: float, beta: float
) -> Array:
    """``L(N, D) = E + A/N^alpha + B/D^beta`` (Hoffmann et al., 2022, eq. 2)."""
    return E + A * jnp.power(N, -alpha) + B * jnp.power(D, -beta)


def kaplan(N: Array, D: Array, N_c: float, D_c: float, alpha_N: float, alpha_D: float) -> Array:
    """``L(N, D) = ((N_c/N)^(alpha_N/alpha_D) + D_c/D)^alpha_D`` (Kaplan et al., 2020, eq. 1.5)."""
    return jnp.power(jnp.power(N_c / N, alpha_N / alpha_D) + D_c / D, alpha_D)


def overtraining(C: Array, M: Array, E: float, a: float, b: float, eta: float) -> Array:
    """``L(C, M) = E + (a M^eta + b M^-eta) C^-eta`` (Gadre et al., 2024, eq. 4).

    Loss in terms of compute C and the token multiplier M = D/N (tokens per parameter).
    It is the Chinchilla law with equal exponents alpha = beta = 2 eta rewritten with
    C = 6 N D: ``a = A 6^eta``, ``b = B 6^eta``. "Language models scale reliably with
    over-training and on downstream tasks", arXiv:2403.08540.
    """
    return E + (a * jnp.power(M, eta) + b * jnp.power(M, -eta)) * jnp.power(C, -eta)


def data_constrained(
    N: Array,
    D: Array,
    U: Array,
    E: float,
    A: float,
    B: float,
    alpha: float,
    beta: float,
    R_D: float,
) -> Array:
    """``L = E + A/N^alpha + B/D'^beta`` with repeated data discounted (Muennighoff et al., 2023).

    ``D' = U + U R_D (1 - exp(-R/R_D))``, ``R = D/U - 1`` the repeated epochs of the ``U``
    unique tokens and ``R_D`` (R*_D in the paper) how many repetitions are worth keeping
    ("Scaling data-constrained language models", NeurIPS 2023, arXiv:2305.16264, eq. 5).
    The paper's matching discount of excess parameters is left out (N' = N): it is exact
    for models no larger than compute-optimal for their unique data.
    """
    R = jnp.maximum(D / U - 1.0, 0.0)
    Dp = U + U * R_D * (1.0 - jnp.exp(-R / R_D))
    return E + A * jnp.power(N, -alpha) + B * jnp.power(Dp, -beta)


# Log-space forms used by the fitter --------------------------------------------
# Each takes the raw parameter vector ``theta`` and ``logX`` of shape (n, k)
# (k = 2 for N, D; k = 1 for a single variable) and returns log L of shape (n,).


# The log-sum-exp is written out as log(sum(exp)) rather than with the
# max-shifted ``logsumexp``: it is half the cost inside the vmapped fitter, and
# float64 only overflows for terms above ~700, far outside any sensible
# parameters; the fitter's line search rejects the non-finite values a wild
# trial step can produce.


def chinchilla_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (e, a, b, alpha, beta): LSE(a - alpha log N, b - beta log D, e)."""
    e, a, b, alpha, beta = theta
    return jnp.log(jnp.exp(a - alpha * logX[:, 0]) + jnp.exp(b - beta * logX[:, 1]) + jnp.exp(e))


def kaplan_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (log N_c, log D_c, alpha_N, alpha_D)."""
    n_c, d_c, alpha_n, alpha_d = theta
    inner = jnp.exp((alpha_n / alpha_d) * (n_c - logX[:, 0])) + jnp.exp(d_c - logX[:, 1])
    return alpha_d * jnp.log(inner)


def power_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (e, a, alpha): LSE(a - alpha log x, e)."""
    e, a, alpha = theta
    return jnp.log(jnp.exp(a - alpha * logX[:, 0]) + jnp.exp(e))


def power_no_offset_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (a, alpha): a - alpha log x."""
    a, alpha = theta
    return a - alpha * logX[:, 0]


def overtraining_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (e, log a, log b, eta), logX = (log C, log M)."""
    e, a, b, eta = theta
    logC, logM = logX[:, 0], logX[:, 1]
    return jnp.log(
        jnp.exp(a + eta * logM - eta * logC) + jnp.exp(b - eta * logM - eta * logC) + jnp.exp(e)
    )


def data_constrained_log(theta: Array, logX: Array) -> Array:
    """log L for theta = (e, a, b, alpha, beta, log R_D), logX = (log N, log D, log U)."""
    e, a, b, alpha, beta, r = theta
    logN, logD, logU = logX[:, 0], logX[:, 1], logX[:, 2]
    R = jnp.maximum(jnp.exp(logD - logU) - 1.0, 0.0)
    R_D = jnp.exp(r)
    logDp = logU + jnp.log1p(R_D * -jnp.expm1(-R / R_D))
    return jnp.log(jnp.exp(a - alpha * logN) + jnp.exp(b - beta * logDp) + jnp.exp(e))


def chinchilla_allocation(
    A: float, B: float, alpha: float, beta: float
) -> tuple[float, float, float]:
    """Closed-form compute-optimal allocation of the Chinchilla law under C = 6ND.

    Returns (a, b, G) with ``N_opt = G (C/6)^a`` and ``D_opt = G^-1 (C/6)^b``:
    ``a = beta/(alpha+beta)``, ``b = alpha/(alpha+beta)``,
    ``G = (alpha A / (beta B))^(1/(alpha+beta))`` (Hoffmann et al., 2022, eq. 4).
    Works elementwise on arrays too (for bootstrap samples). Undefined (NaN) unless both
    exponents are positive: a loss that does not fall with N or D has no optimal split.
    """
    alpha, beta, A, B = (np.asarray(v, dtype=np.float64) for v in (alpha, beta, A, B))
    ok = (alpha > 0) & (beta > 0) & (A > 0) & (B > 0)
    a_, b_, A_, B_ = (np.where(ok, v, 1.0) for v in (alpha, beta, A, B))
    s = a_ + b_
    G = (a_ * A_ / (b_ * B_)) ** (1.0 / s)
    nan = np.float64(np.nan)
    out = tuple(np.where(ok, v, nan) for v in (b_ / s, a_ / s, G))
    if out[0].ndim == 0:
        return float(out[0]), float(out[1]), float(out[2])
    return out  # type: ignore[return-value]


def _exp_names(raw: np.ndarray, names: tuple[str, ...], logged: tuple[bool, ...]) -> dict:
    with np.errstate(over="ignore"):  # a runaway start: inf, reported as such, not a warning
        pairs = zip(names, raw, logged, strict=True)
        return {n: float(np.exp(v) if lg else v) for n, v, lg in pairs}


@dataclass(frozen=True, eq=False)
class Law:
    """A law ready for fitting: log-space form, parameter names, start grid and bounds.

    ``raw_names`` are the fitted parameters (logs of coefficients, exponents as
    is); ``param_names`` the natural ones users read. ``logged[i]`` says whether
    raw parameter i is the log of natural parameter i. ``bounds`` hold the
    physically meaningful range of each natural parameter; an optimum on or
    past one is reported, not clipped. Laws compare and hash by identity, so one ``Law``
    object is one set of compiled fit programs.
    """

    name: str
    raw_names: tuple[str, ...]
    param_names: tuple[str, ...]
    logged: tuple[bool, ...]
    inputs: tuple[str, ...]
    log_fn: Callable[[Array, Array], Array]
    grid: dict[str, tuple[float, ...]]
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return len(self.raw_names)

    def to_natural(self, raw: np.ndarray) -> dict[str, float]:
        """Natural parameters (``E``, ``A``, ...) from a raw vector."""
        return _exp_names(np.asarray(raw, dtype=np.float64), self.param_names, self.logged)

    def to_raw(self, params: dict[str, float]) -> np.ndarray:
        """Raw vector from natural parameters (inverse of ``to_natural``)."""
        vals = [
            np.log(params[n]) if lg else params[n]
            for n, lg in zip(self.param_names, self.logged, strict=True)
        ]
        return np.asarray(vals, dtype=np.float64)

    def start_grid(self) -> np.ndarray:
        """Cartesian product of the grid values, shape (n_starts, n_params)."""
        axes = [np.asarray(self.grid[n], dtype=np.float64) for n in self.raw_names]
        mesh = np.meshgrid(*axes, indexing="ij")
        return np.stack([m.ravel() for m in mesh], axis=1)


_STEP5 = tuple(float(v) for v in np.arange(0.0, 26.0, 5.0))  # 0, 5, ..., 25
_HALF = (0.0, 0.5, 1.0, 1.5, 2.0)
_E_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)

CHINCHILLA = Law(
    name="chinchilla",
    raw_names=("e", "a", "b", "alpha", "beta"),
    param_names=("E", "A", "B", "alpha", "beta"),
    logged=(True, True, True, False, False),
    inputs=("N", "D"),
    log_fn=chinchilla_log,
    # The grid of Hoffmann et al. as replicated by Besiroglu et al. (2024): 4,500 starts.
    grid={"e": _E_GRID, "a": _STEP5, "b": _STEP5, "alpha": _HALF, "beta": _HALF},
    bounds={"alpha": (0.0, 5.0), "beta": (0.0, 5.0)},
)

KAPLAN = Law(
    name="kaplan",
    raw_names=("n_c", "d_c", "alpha_N", "alpha_D"),
    param_names=("N_c", "D_c", "alpha_N", "alpha_D"),
    logged=(True, True, False, False),
    inputs=("N", "D"),
    log_fn=kaplan_log,
    grid={
        "n_c": (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0),
        "d_c": (10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0),
        "alpha_N": (0.05, 0.1, 0.2, 0.4),
        "alpha_D": (0.05, 0.1, 0.2, 0.4),
    },
    bounds={"alpha_N": (0.0, 5.0), "alpha_D": (1e-3, 5.0)},
)

POWER = Law(
    name="power",
    raw_names=("e", "a", "alpha"),
    param_names=("E", "A", "alpha"),
    logged=(True, True, False),
    inputs=("x",),
    log_fn=power_log,
    grid={"e": _E_GRID, "a": _STEP5, "alpha": _HALF},
    bounds={"alpha": (0.0, 5.0)},
)

POWER_NO_OFFSET = Law(
    name="power_no_offset",
    raw_names=("a", "alpha"),
    param_names=("A", "alpha"),
    logged=(True, False),
    inputs=("x",),
    log_fn=power_no_offset_log,
    grid={"a": _STEP5, "alpha": _HALF},
    bounds={"alpha": (0.0, 5.0)},
)

OVERTRAINING = Law(
    name="overtraining",
    raw_names=("e", "a", "b", "eta"),
    param_names=("E", "a", "b", "eta"),
    logged=(True, True, True, False),
    inputs=("C", "M"),
    log_fn=overtraining_log,
    grid={"e": _E_GRID, "a": _STEP5, "b": _STEP5, "eta": (0.05, 0.1, 0.2, 0.4, 0.8)},
    bounds={"eta": (0.0, 5.0)},
)

DATA_CONSTRAINED = Law(
    name="data_constrained",
    raw_names=("e", "a", "b", "alpha", "beta", "r_d"),
    param_names=("E", "A", "B", "alpha", "beta", "R_D"),
    logged=(True, True, True, False, False, True),
    inputs=("N", "D", "U"),
    log_fn=data_constrained_log,
    grid={
        "e": (-1.0, 0.0, 1.0),
        "a": _STEP5,
        "b": _STEP5,
        "alpha": (0.2, 0.5, 1.0),
        "beta": (0.2, 0.5, 1.0),
        "r_d": tuple(float(np.log(v)) for v in (5.0, 15.0, 50.0)),
    },
    bounds={"alpha": (0.0, 5.0), "beta": (0.0, 5.0)},
)

LAWS: dict[str, Law] = {
    law.name: law
    for law in (CHINCHILLA, KAPLAN, POWER, POWER_NO_OFFSET, OVERTRAINING, DATA_CONSTRAINED)
}


def get_law(name: str) -> Law:
    """The law registered as ``name``; the error lists the known names."""
    try:
        return LAWS[name]
    except KeyError:
        raise ValueError(f"unknown law {name!r}; choose one of {', '.join(LAWS)}") from None

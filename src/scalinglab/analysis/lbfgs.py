"""A small L-BFGS for many tiny problems at once, written to be ``jax.vmap``-ped.

Why not ``optax.lbfgs``: a ``while_loop`` under ``vmap`` runs until its
*slowest* lane is done, and optax's zoom line search is a nested loop, so
every iteration costs as many objective evaluations as the worst of thousands
of starts needs. On our benchmark (4,500 starts) that made it ~10x slower
than scipy (see ``benchmarks/README.md``). Here the line search is flattened
into the main loop: each pass evaluates the objective exactly once per start,
either at a new L-BFGS step or at a shorter trial along the same direction
(quadratic backtracking, Armijo condition). Scaling-law objectives have 2-5
parameters, so the two-loop recursion is unrolled and costs nothing; the work
is evaluating the objective over the data, which vmapping batches.

Each start stops on its own (gradient, relative decrease, line-search failure
or iteration cap) and records why, so a caller can say whether the best start
converged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

RUNNING, GTOL, FTOL, MAX_ITER, LS_FAIL = -1, 0, 1, 2, 3
PRUNED = 4  # set by the multi-start driver: stopped early, not among the best starts
C1, C2 = 1e-4, 0.9  # weak Wolfe: sufficient decrease, curvature
EXTRAPOLATE = 4.0  # step growth while the step is too short and nothing bracketed
STATUS_TEXT = {
    GTOL: "converged (gradient below gtol)",
    FTOL: "converged (relative decrease below ftol)",
    MAX_ITER: "stopped at max_iter",
    LS_FAIL: "stopped: line search made no progress",
    PRUNED: "stopped early: not among the best starts after the first passes",
}


class LbfgsResult(NamedTuple):
    """Per-start outcome; every field has a leading start axis when vmapped."""

    x: jax.Array
    value: jax.Array
    grad_norm: jax.Array  # infinity norm of the gradient at x
    n_iter: jax.Array  # accepted steps
    n_eval: jax.Array  # objective (value and gradient) evaluations
    status: jax.Array  # one of GTOL, FTOL, MAX_ITER, LS_FAIL


class _State(NamedTuple):
    x: jax.Array
    f: jax.Array
    g: jax.Array
    S: jax.Array  # (m, P) past steps, newest last
    Y: jax.Array  # (m, P) past gradient changes
    rho: jax.Array  # (m,) 1 / (s.y); 0 marks an empty slot
    d: jax.Array  # current search direction
    t: jax.Array  # step length to try next along d
    lo: jax.Array  # longest step along d known to be too short (0: none)
    hi: jax.Array  # shortest step along d known to be too long (inf: none)
    f_lo: jax.Array  # objective and gradient at lo, the fallback step
    g_lo: jax.Array
    n_ls: jax.Array  # tries along d so far
    k: jax.Array
    n_eval: jax.Array
    status: jax.Array


def _direction(g: jax.Array, S: jax.Array, Y: jax.Array, rho: jax.Array) -> jax.Array:
    """Two-loop recursion: -H g with H the L-BFGS inverse-Hessian estimate.

    The history is kept newest-last and walked with ``lax.scan`` (static
    slices, no gathers), which keeps the vmapped loop cheap on CPU and the
    compiled program small.
    """

    def newest_first(q, syr):
        s, y, r = syr
        a = r * jnp.dot(s, q)
        return q - a * y, a

    q, alphas = jax.lax.scan(newest_first, g, (S, Y, rho), reverse=True)
    have = rho[-1] > 0
    yy = jnp.where(have, jnp.dot(Y[-1], Y[-1]), 1.0)
    # Without history: a steepest-descent step of unit length.
    unit = 1.0 / jnp.maximum(jnp.linalg.norm(g), 1e-30)
    r0 = jnp.where(have, jnp.dot(S[-1], Y[-1]) / yy, unit) * q

    def oldest_first(r, syra):
        s, y, rh, a = syra
        return r + s * (a - rh * jnp.dot(y, r)), None

    r, _ = jax.lax.scan(oldest_first, r0, (S, Y, rho, alphas))
    d = -r
    # Not a descent direction (numerical trouble): fall back to steepest descent.
    return jnp.where(jnp.dot(d, g) < 0, d, -g * unit)


def lbfgs_init(
    fun: Callable[..., jax.Array], x0: jax.Array, *args, gtol: float = 1e-9, memory: int = 10
) -> _State:
    """The state before the first pass from ``x0`` (one start; vmap it for many)."""
    f0, g0 = jax.value_and_grad(fun)(x0, *args)
    P = x0.shape[0]
    zeros = jnp.zeros((memory, P), x0.dtype)
    rho0 = jnp.zeros(memory, x0.dtype)
    status0 = jnp.where(jnp.max(jnp.abs(g0)) <= gtol, GTOL, RUNNING)
    one = jnp.asarray(1.0, x0.dtype)
    d0 = -g0 / jnp.maximum(jnp.linalg.norm(g0), 1e-30)  # no history yet: unit steepest descent
    i0 = jnp.asarray(0)
    inf = jnp.asarray(jnp.inf, x0.dtype)
    return _State(
        x0, f0, g0, zeros, zeros, rho0, d0, one, 0 * one, inf, f0, g0, i0, i0, i0 + 1, status0
    )


def result(state: _State) -> LbfgsResult:
    """The outcome recorded in a state."""
    return LbfgsResult(
        state.x, state.f, jnp.max(jnp.abs(state.g), axis=-1), state.k, state.n_eval, state.status
    )


def lbfgs(
    fun: Callable[..., jax.Array],
    x0: jax.Array,
    *args,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    memory: int = 10,
    max_linesearch: int = 20,
) -> LbfgsResult:
    """Minimise ``fun(x, *args)`` from ``x0`` (one start; ``jax.vmap`` it for many).

    Stops when the gradient's infinity norm is at most ``gtol``, when an
    accepted step lowers the objective by at most ``ftol`` times its value,
    when ``max_linesearch`` tries along one direction all fail, or after
    ``max_iter`` accepted steps. Non-finite trial values count as failed tries,
    so the objective may overflow far from the optimum.
    """
    state = lbfgs_init(fun, x0, *args, gtol=gtol, memory=memory)
    final = lbfgs_run(
        fun, state, *args, max_iter=max_iter, gtol=gtol, ftol=ftol, max_linesearch=max_linesearch
    )
    return result(final)


def lbfgs_run(
    fun: Callable[..., jax.Array],
    state: _State,
    *args,
    max_iter: int = 500,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    max_linesearch: int = 20,
    max_passes: int | None = None,
) -> _State:
    """Continue from ``state`` until it stops, or for at most ``max_passes`` objective
    evaluations. Running in chunks lets a caller drop finished starts between chunks (a
    vmapped loop otherwise computes every start until the slowest one stops); the trajectory
    is the same either way, up to floating-point rounding."""
    value_and_grad = jax.value_and_grad(fun)
    one = jnp.asarray(1.0, state.x.dtype)

    def step(s: _State) -> _State:
        f_try, g_try = value_and_grad(s.x + s.t * s.d, *args)
        slope = jnp.dot(s.g, s.d)
        finite = jnp.isfinite(f_try) & jnp.all(jnp.isfinite(g_try))
        armijo = finite & (f_try <= s.f + C1 * s.t * slope) & (f_try < s.f)
        curved = jnp.dot(g_try, s.d) >= C2 * slope
        wolfe = armijo & curved

        # Bracket the weak-Wolfe step: too long (no sufficient decrease) -> hi;
        # too short (still steeply descending) -> lo, remembered as a fallback.
        hi = jnp.where(armijo, s.hi, s.t)
        short = armijo & ~curved
        lo = jnp.where(short, s.t, s.lo)
        f_lo = jnp.where(short, f_try, s.f_lo)
        g_lo = jnp.where(short, g_try, s.g_lo)
        n_ls = s.n_ls + 1
        give_up = ~wolfe & (n_ls >= max_linesearch)
        ok = wolfe | (give_up & (lo > 0))

        t_acc = jnp.where(wolfe, s.t, lo)
        step_ = t_acc * s.d
        f_acc = jnp.where(wolfe, f_try, f_lo)
        g_acc = jnp.where(wolfe, g_try, g_lo)
        y = g_acc - s.g
        sy = jnp.dot(step_, y)
        keep = ok & (sy > 1e-10 * jnp.dot(y, y))  # keeps H positive definite
        S = jnp.where(keep, jnp.concatenate([s.S[1:], step_[None]]), s.S)
        Y = jnp.where(keep, jnp.concatenate([s.Y[1:], y[None]]), s.Y)
        rho_new = jnp.concatenate([s.rho[1:], (1.0 / jnp.where(keep, sy, 1.0))[None]])
        rho = jnp.where(keep, rho_new, s.rho)
        x = jnp.where(ok, s.x + step_, s.x)
        f = jnp.where(ok, f_acc, s.f)
        g = jnp.where(ok, g_acc, s.g)
        d = jnp.where(ok, _direction(g, S, Y, rho), s.d)

        # Next trial along d: extrapolate while unbracketed; the first backtrack
        # from lo = 0 uses the minimiser of the quadratic through f, slope and
        # f_try (within [0.1 t, 0.5 t]); otherwise bisect the bracket.
        denom = 2.0 * (f_try - s.f - slope * s.t)
        t_quad = jnp.where(finite & (denom > 0), -slope * s.t**2 / denom, 0.1 * s.t)
        t_quad = jnp.clip(t_quad, 0.1 * s.t, 0.5 * s.t)
        bracketed = jnp.isfinite(hi)
        t_next = jnp.where(bracketed, jnp.where(lo > 0, 0.5 * (lo + hi), t_quad), EXTRAPOLATE * s.t)
        t = jnp.where(ok, one, t_next)
        lo = jnp.where(ok, 0.0, lo)
        hi = jnp.where(ok, jnp.inf, hi)
        n_ls = jnp.where(ok, 0, n_ls)

        k = s.k + ok.astype(s.k.dtype)
        status = jnp.select(
            [
                ok & (jnp.max(jnp.abs(g)) <= gtol),
                ok & ((s.f - f) <= ftol * jnp.abs(f)),
                give_up & ~ok,
                k >= max_iter,
            ],
            [GTOL, FTOL, LS_FAIL, MAX_ITER],
            RUNNING,
        )
        return _State(x, f, g, S, Y, rho, d, t, lo, hi, f_lo, g_lo, n_ls, k, s.n_eval + 1, status)

    if max_passes is None:
        return jax.lax.while_loop(lambda s: s.status == RUNNING, step, state)
    stop_at = state.n_eval + max_passes
    return jax.lax.while_loop(lambda s: (s.status == RUNNING) & (s.n_eval < stop_at), step, state)

"""How far to trust a fit: solver diagnostics and identifiability of each parameter.

Solver: did the best start converge, how many starts reached it, is the optimum on the
start grid's edge or a physical bound, how the parameters correlate.

Identifiability: a parameter is *informative* when its interval pins it down. The rules
(stated in ``docs/analysis.md``): a coefficient (a positive, log-fitted parameter) whose
interval spans more than ``COEF_SPAN`` (a factor of 100), an exponent whose interval is
wider than its own estimate, any parameter whose estimate lies outside its own bootstrap
interval or that sits on a bound, is not informative. E gets a stricter test of its own:
E below ``E_ZERO`` (1%) of the smallest observed loss, or an interval (bootstrap or
profile) reaching down to that level, means *E is not identified*: the data cannot tell
an irreducible loss from a steeper power law.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalinglab.analysis import lbfgs as _lbfgs
from scalinglab.analysis.laws import Law
from scalinglab.analysis.multistart import converged, log_jacobian
from scalinglab.analysis.result import Diagnostics, Identifiability

COEF_SPAN = 100.0  # a coefficient interval wider than this factor says little
E_ZERO = 0.01  # E below this fraction of the smallest loss is indistinguishable from zero
E_ADVICE = (
    "fix E (e.g. at a known entropy rate), fit L(C) with the power law instead,"
    " or add budgets (larger models and more tokens) so the loss visibly flattens"
)


def bounds_reached(law: Law, params: dict[str, float]) -> list[str]:
    """Natural parameters at (within 1e-6) or past their law's physical bounds."""
    return [n for n, (a, b) in law.bounds.items() if params[n] <= a + 1e-6 or params[n] >= b - 1e-6]


def solver_diagnostics(
    law: Law,
    grid: np.ndarray,
    res: dict[str, np.ndarray],
    values: np.ndarray,
    best: int,
    raw: np.ndarray,
    logX: np.ndarray,
    raw_samples: np.ndarray | None,
    n_failed: int,
) -> Diagnostics:
    """Convergence, agreement of starts, grid edges, bounds and parameter correlations."""
    best_val = values[best]
    n_at_best = int(np.sum(values <= best_val + 1e-6 * abs(best_val) + 1e-15))
    status, gnorm = int(res["status"][best]), float(res["grad_norm"][best])
    ok = converged(status, gnorm)
    warnings: list[str] = []
    if not ok:
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
    at_bound = bounds_reached(law, law.to_natural(raw))
    if at_bound:
        warnings.append(f"optimum at or past a bound for {', '.join(at_bound)}")

    if raw_samples is not None and len(raw_samples) > 2:
        corr = sample_corr(raw_samples)
    else:
        corr = gauss_newton_corr(law, raw, logX)
    names = law.param_names
    rounded = [[float(np.round(c, 6)) if np.isfinite(c) else None for c in row] for row in corr]
    correlations = {
        a: dict(zip(names, row, strict=True)) for a, row in zip(names, rounded, strict=True)
    }
    if n_failed:
        warnings.append(f"{n_failed} bootstrap refits did not converge")
    return Diagnostics(
        n_starts=len(grid),
        n_at_best=n_at_best,
        converged=ok,
        status=_lbfgs.STATUS_TEXT[status],
        n_iter=int(res["n_iter"][best]),
        grad_norm=gnorm,
        on_grid_edge=edge,
        at_bound=at_bound,
        correlations=correlations,
        bootstrap_failed=n_failed,
        warnings=warnings,
    )


def sample_corr(samples: np.ndarray) -> np.ndarray:
    """Correlations between the columns of ``samples``; NaN (no warning) where a column is
    constant, as when every resample pins a parameter at the same bound."""
    x = samples - samples.mean(axis=0)
    cov = x.T @ x
    sd = np.sqrt(np.diag(cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.outer(sd, sd)
    return np.where(np.outer(sd, sd) > 0, np.clip(corr, -1.0, 1.0), np.nan)


def gauss_newton_corr(law: Law, raw: np.ndarray, logX: np.ndarray) -> np.ndarray:
    """Parameter correlations from the Gauss-Newton covariance (J^T J)^-1 of log residuals."""
    J = log_jacobian(law, raw, logX)
    cov = np.linalg.pinv(J.T @ J)
    sd = np.sqrt(np.clip(np.diag(cov), 1e-300, None))
    return np.clip(cov / np.outer(sd, sd), -1.0, 1.0)


def identifiability(
    law: Law,
    params: dict[str, float],
    ci: dict[str, tuple[float, float]],
    at_bound: list[str],
    min_loss: float,
    profile: dict[str, Any] | None = None,
) -> tuple[Identifiability, list[str]]:
    """Per-parameter verdicts ``{name: {"informative": bool|None, "why": str}}`` and warnings.

    ``informative`` is None when there is nothing to judge by (no bootstrap interval).
    ``profile`` is E's profile-likelihood interval (``profile_E``), when computed.
    """
    out = Identifiability()
    for name, logged in zip(law.param_names, law.logged, strict=True):
        v = params[name]
        why: list[str] = []
        if name in at_bound:
            why.append("estimate on a bound")
        if name in ci:
            lo, hi = ci[name]
            if not lo <= v <= hi:
                why.append("estimate outside its own interval (unstable optimum)")
            if logged and (lo <= 0 or hi / lo > COEF_SPAN):
                why.append(f"interval spans more than a factor {COEF_SPAN:g}")
            if not logged and hi - lo > abs(v):
                why.append("interval wider than the estimate")
        judged = name in ci or bool(why)
        out[name] = {
            "informative": (not why) if judged else None,
            "why": "; ".join(why) if why else ("" if judged else "no interval (no bootstrap)"),
        }
    warnings: list[str] = []
    if "E" in params:
        e_out, e_warn = _judge_E(params["E"], ci.get("E"), min_loss, profile)
        out["E"].update(e_out)
        warnings += e_warn
    vague = [n for n, v in out.items() if v["informative"] is False and n != "E" and v.get("why")]
    if vague:
        warnings.append(
            "not informative: "
            + "; ".join(f"{n} ({out[n]['why']})" for n in vague)
            + " - treat these values as unconstrained"
        )
    return out, warnings


def _judge_E(
    E: float,
    ci: tuple[float, float] | None,
    min_loss: float,
    profile: dict[str, Any] | None,
) -> tuple[dict[str, Any], list[str]]:
    zero = E_ZERO * min_loss
    reasons = []
    if zero > E:
        reasons.append(f"E = {E:.3g} is below {E_ZERO:.0%} of the smallest loss")
    if ci is not None and ci[0] < zero:
        reasons.append(f"its bootstrap interval reaches {ci[0]:.3g}, effectively zero")
    if profile and profile.get("low") is not None and profile["low"] < zero:
        reasons.append("its profile-likelihood interval reaches zero")
    out: dict[str, Any] = {"identified": not reasons}
    if profile:
        out["profile"] = profile
    if not reasons:
        return out, []
    out["informative"] = False
    out["why"] = "; ".join(reasons)
    return out, [f"E not identified ({'; '.join(reasons)}): {E_ADVICE}"]


def floor_check(E: float, ci: tuple[float, float] | None, floor: float) -> tuple[dict, list[str]]:
    """E against a known floor H (the data's entropy rate): E - H and a warning below it."""
    info: dict[str, Any] = {"H": floor, "E_minus_H": E - floor}
    if ci is not None:
        info["E_minus_H_ci"] = (ci[0] - floor, ci[1] - floor)
    warnings = []
    if floor * (1 - 1e-3) > E:
        warnings.append(
            f"E = {E:.4g} is below the known floor H = {floor:.4g} (entropy rate of the data):"
            " predictions at large budgets will fall below what any model can reach"
        )
    return info, warnings

"""The result of a fit: ``Fit`` (parameters, intervals, checks) and its solver ``Diagnostics``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.intervals import interval
from scalinglab.analysis.laws import Law, chinchilla_allocation, get_law
from scalinglab.analysis.multistart import log_predict
from scalinglab.errors import FitInputError

KAPLAN_K = 6.0  # FLOPs per parameter per token when C = 6 N D


class Samples(pd.DataFrame):
    """Bootstrap draws: one row per resample, one named column per parameter.

    ``samples["alpha"]`` is the way to read them. A tuple key (``samples[:, 3]``) still
    indexes the underlying array positionally, in ``params`` order, for callers written
    before the columns had names.
    """

    @property
    def _constructor(self) -> type[Samples]:
        return Samples

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            return self.to_numpy(np.float64)[key]
        return super().__getitem__(key)


class Identifiability(dict):
    """Per-parameter verdicts ``{name: {"informative", "why", ...}}``; ``lines()`` in words."""

    def lines(self, confidence: float = 0.95) -> list[str]:
        """One plain-English line per finding: E first, then the other parameters."""
        out = []
        e = self.get("E")
        if e:
            prof = e.get("profile") or {}
            span = ""
            if prof.get("low") is not None:
                span = f", profile-likelihood interval [{prof['low']:.4g}, {prof['high']:.4g}]"
            state = "identified" if e.get("identified", True) else "NOT identified"
            out.append(f"E {state}{span}" + (f": {e['why']}" if e.get("why") else ""))
            fl = e.get("floor")
            if fl:
                ci = fl.get("E_minus_H_ci")
                ci_txt = f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else ""
                out.append(
                    f"known floor: entropy rate H = {fl['entropy_rate']:.4g},"
                    f" E - H = {fl['E_minus_H']:.3g}{ci_txt}"
                )
        good = [n for n, v in self.items() if n != "E" and v.get("informative")]
        bad = [n for n, v in self.items() if n != "E" and v.get("informative") is False]
        unknown = [n for n, v in self.items() if n != "E" and v.get("informative") is None]
        if good:
            out.append(f"informative: {', '.join(good)}")
        if bad:
            out.append("not informative: " + "; ".join(f"{n} ({self[n]['why']})" for n in bad))
        if unknown:
            out.append(f"not judged (no bootstrap interval): {', '.join(unknown)}")
        return out


@dataclass
class Diagnostics:
    """How much to trust a fit. ``warnings`` lists everything worth a look, in plain English."""

    n_starts: int
    n_at_best: int
    converged: bool
    status: str
    n_iter: int
    grad_norm: float
    on_grid_edge: list[str]
    at_bound: list[str]
    correlations: dict[str, dict[str, float | None]]  # None: a parameter that never moved
    bootstrap_failed: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass
class Fit:
    """A fitted law: parameters, intervals, goodness of fit and diagnostics.

    ``params`` are the natural parameters (``E, A, B, alpha, beta`` for Chinchilla);
    ``ci`` maps each to its (low, high) percentile interval when the fit was
    bootstrapped; ``samples`` holds the bootstrap draws as a DataFrame with one named
    column per parameter. ``loss`` is the summed Huber objective and ``rmse`` the
    root-mean-square residual of log loss.

    The checks a researcher needs before betting compute on the fit: ``identifiability``
    (per parameter: informative or not, and why; ``E_profile`` the profile-likelihood
    interval of E), ``counting`` (which N the fit used and the FLOPs per parameter-token
    ``k`` with C = k N D), ``misfit`` (RMSE against evaluation noise, residuals by
    tokens/param and size, outlying runs by name), ``backtest`` (leave-one-budget-out) and
    ``floor`` (a known entropy rate). ``warnings`` gathers every plain-English warning.
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
    samples: Samples | None = None
    confidence: float = 0.95
    spec: Law | None = field(default=None, repr=False)
    counting: dict[str, Any] = field(default_factory=lambda: {"N": "N", "k": KAPLAN_K})
    identifiability: Identifiability = field(default_factory=Identifiability)
    misfit: dict[str, Any] = field(default_factory=dict)
    backtest: dict[str, Any] | None = None
    floor: float | None = None

    @property
    def converged(self) -> bool:
        """Whether the best start converged."""
        return self.diagnostics.converged

    @property
    def warnings(self) -> list[str]:
        """Every warning about this fit (solver, identifiability, counting, misfit, floor)."""
        return self.diagnostics.warnings

    @property
    def law_spec(self) -> Law:
        """The ``Law`` this fit used (user-defined laws carry theirs)."""
        return self.spec if self.spec is not None else get_law(self.law)

    @property
    def k(self) -> float:
        """FLOPs per parameter per token the allocation uses (C = k N D)."""
        return float(self.counting.get("k", KAPLAN_K))

    @classmethod
    def from_params(cls, law: str, **params: float) -> Fit:
        """A Fit from known parameters (e.g. published ones), for ``predict``/``optimal``.

        ``Fit.from_params("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)``
        """
        spec = get_law(law)
        missing = set(spec.param_names) - set(params)
        if missing:
            raise FitInputError(f"law {law} needs parameters {', '.join(spec.param_names)}")
        raw = spec.to_raw(params)
        diag = Diagnostics(0, 0, True, "given, not fitted", 0, 0.0, [], [], {})
        natural = spec.to_natural(raw)
        return cls(law, natural, {}, float("nan"), float("nan"), 0, float("nan"), diag, raw)

    def predict(self, *inputs: Any, **named: Any) -> np.ndarray:
        """Predicted loss at the law's inputs, by position or name.

        ``fit.predict(N, D)`` or ``fit.predict(N=..., D=...)`` for Chinchilla; ``x`` for
        the one-variable laws; ``C, M`` for the over-training law.
        """
        law = self.law_spec
        cols = dict(zip(law.inputs, inputs, strict=False))
        cols.update({k: v for k, v in named.items() if k in law.inputs})
        missing = [n for n in law.inputs if cols.get(n) is None]
        if missing or len(inputs) > len(law.inputs):
            raise FitInputError(f"law {self.law} needs inputs {', '.join(law.inputs)}")
        arrs = np.broadcast_arrays(*[np.asarray(cols[n], dtype=np.float64) for n in law.inputs])
        with np.errstate(divide="ignore", invalid="ignore"):  # N or D of 0: -inf, said below
            logX = np.stack([np.log(a).ravel() for a in arrs], axis=1)
        out = np.exp(log_predict(law, self.raw, logX))
        return out.reshape(arrs[0].shape)

    def report_lines(self) -> list[str]:
        """The checks in words, for a printed report: counting, identifiability, misfit,
        back-test (warnings are separate: ``warnings``)."""
        c = self.counting
        lines = [
            f"N counted as {c.get('N', 'N')} (flop counting {c.get('flop_counting', 'unknown')}),"
            f" C = k N D with k = {self.k:.3g}"
        ]
        lines += Identifiability(self.identifiability).lines()
        m = self.misfit
        if m:
            ratio = m.get("rmse_over_noise")
            noise = (
                f"{ratio:.1f}x the evaluation noise {m['noise_log_loss']:.3g} ({m['noise']})"
                if ratio is not None
                else "evaluation noise unknown"
            )
            lines.append(f"RMSE of log loss {m['rmse_log_loss']:.3g}: {noise}")
            if m.get("outliers"):
                lines.append("off the law: " + ", ".join(o["run"] for o in m["outliers"]))
        up = (self.backtest or {}).get("one_budget_up")
        if up:
            lines.append(
                f"back-test (leave one budget out): the largest budget C={up['budget_C']:.3g}"
                f" is predicted within {up['mean_abs_rel_error']:.2%} on average"
                f" (max {up['max_abs_rel_error']:.2%})"
            )
        return lines

    def sample(self, name: str) -> np.ndarray:
        """Bootstrap draws of parameter ``name`` (raises without bootstrap)."""
        if self.samples is None:
            raise FitInputError("this fit has no bootstrap samples; fit with bootstrap=...")
        return self.samples[name].to_numpy(np.float64)

    def exponents(self) -> dict[str, Any]:
        """Approach-3 allocation exponents a, b and coefficient G, with intervals if any."""
        self._need_chinchilla("exponents")
        p = self.params
        a, b, G = chinchilla_allocation(p["A"], p["B"], p["alpha"], p["beta"])
        out: dict[str, Any] = {"a": float(a), "b": float(b), "G": float(G), "k": self.k}
        if self.samples is not None:
            s = self._allocation_samples()
            for name, v in zip(("a", "b", "G"), s, strict=True):
                lo, hi = interval(v, self.confidence)
                out[f"{name}_ci"] = (float(lo), float(hi))
        return out

    def optimal(self, compute: float | np.ndarray) -> dict[str, Any]:
        """Compute-optimal N, D and predicted loss at FLOPs ``compute`` (C = k N D).

        Uses the closed form of Hoffmann et al. (approach 3) with the fit's own FLOPs per
        parameter-token ``k`` (6 under Kaplan counting), so N_opt is in the N the fit used.
        With bootstrap samples each value comes with an interval (``N_opt_ci`` ...). When
        a known floor is set and a predicted loss falls below it, ``warning`` says so.
        """
        self._need_chinchilla("optimal")
        C = np.asarray(compute, dtype=np.float64)
        p, k = self.params, self.k
        a, b, G = chinchilla_allocation(p["A"], p["B"], p["alpha"], p["beta"])
        # A degenerate law (A or B of 0: G is 0 or inf) gives N or D of 0 or inf, which the
        # report prints as such, without numpy's RuntimeWarnings.
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            N = G * (C / k) ** a
            D = (C / k) ** b / G
        out: dict[str, Any] = {"C": _num(C), "N_opt": _num(N), "D_opt": _num(D)}
        loss = self.predict(N, D)
        out["loss"] = _num(loss)
        if self.samples is not None:
            sa, sb, sG = (v[:, None] for v in self._allocation_samples())
            E, A, B = (self.sample(n)[:, None] for n in ("E", "A", "B"))
            alpha, beta = self.sample("alpha")[:, None], self.sample("beta")[:, None]
            c = C.ravel()[None] / k
            sN, sD = sG * c**sa, c**sb / sG
            sL = E + A * sN**-alpha + B * sD**-beta
            for name, s in (("N_opt", sN), ("D_opt", sD), ("loss", sL)):
                lo, hi = interval(s, self.confidence)
                out[f"{name}_ci"] = (_num(lo.reshape(C.shape)), _num(hi.reshape(C.shape)))
        if self.floor is not None and np.any(loss < self.floor):
            out["warning"] = (
                f"predicted loss {np.min(loss):.4g} is below the known floor (entropy rate)"
                f" {self.floor:.4g}: the fit extrapolates past what is possible"
            )
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
            "counting": self.counting,
            "identifiability": self.identifiability,
            "misfit": self.misfit,
            "backtest": self.backtest,
            "floor": self.floor,
            "warnings": list(d.warnings),
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

    def _allocation_samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        A, B = self.sample("A"), self.sample("B")
        return chinchilla_allocation(A, B, self.sample("alpha"), self.sample("beta"))

    def _need_chinchilla(self, what: str) -> None:
        if self.law != "chinchilla":
            raise FitInputError(f"Fit.{what}() needs the chinchilla law, this fit is {self.law}")


def _num(x: np.ndarray) -> float | np.ndarray:
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x

"""One analysis of one SOURCE: the fit, the three approaches, the table and the JSON.

This is what ``scalinglab fit`` and ``scalinglab plot`` call; the CLI only
parses arguments. ``Study.to_dict`` is the JSON contract documented in docs/analysis.md:
``{"law", "params", "ci", "approaches", "n_points", "loss", ...}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.agreement import agreement
from scalinglab.analysis.fit import DEFAULT_DELTA, Fit
from scalinglab.analysis.laws import get_law
from scalinglab.analysis.optimal import Approach, compute_optimal
from scalinglab.analysis.options import FitOptions
from scalinglab.analysis.tablefit import fit_table
from scalinglab.analysis.tables import Source, law_columns, load_source
from scalinglab.errors import FitInputError


@dataclass
class Study:
    """A fitted source: law, approaches side by side, and the budgets to predict at."""

    source: Source
    fit: Fit
    approaches: dict[int, Approach]
    targets: tuple[float, ...]

    @property
    def agreement(self) -> dict[str, Any]:
        return agreement(list(self.approaches.values()))

    def to_dict(self) -> dict[str, Any]:
        """The JSON ``scalinglab fit --json`` writes."""
        f = self.fit.to_dict()
        approaches: dict[str, Any] = {
            str(k): a.to_dict(self.targets) for k, a in self.approaches.items()
        }
        approaches["agreement"] = self.agreement
        out: dict[str, Any] = {
            "law": f.pop("law"),
            "params": f.pop("params"),
            "ci": f.pop("ci"),
            "approaches": approaches,
            "n_points": f.pop("n_points"),
            "loss": f.pop("loss"),
            "source": self.source.name,
            "compute_from": self.source.compute_from,
            "targets_C": list(self.targets),
        }
        if self.fit.law == "chinchilla":
            out["optimal"] = [_jsonable(self.fit.optimal(c)) for c in self.targets]
        out["fit_warnings"] = fit_warnings(self.fit)
        ident = getattr(self.fit, "identifiability", None)
        if ident is not None:
            out["identifiability"] = _plain(ident)
        return {**out, **f}

    def format(self) -> str:
        """The plain-text table ``scalinglab fit`` prints."""
        return "\n".join(_format(self))


def default_targets(C: np.ndarray) -> tuple[float, ...]:
    """The largest observed budget and one and two decades beyond it."""
    top = float(np.max(C))
    return tuple(float(f"{top * 10**k:.2g}") for k in (0, 1, 2))


def run_study(
    source: str | Path,
    *,
    law: str = "chinchilla",
    approaches: tuple[int, ...] = (1, 2, 3),
    bootstrap: int = 200,
    columns: str | dict[str, str] | None = None,
    targets: tuple[float, ...] | None = None,
    delta: float = DEFAULT_DELTA,
    seed: int = 0,
    n_starts: int | None = None,
    method2: str = "akima",
) -> Study:
    """Load ``source``, fit ``law`` and run the chosen compute-optimal approaches.

    ``n_starts`` thins the law's start grid evenly (default: every start);
    ``method2`` is approach 2's method (``"akima"`` or ``"parabola"``).
    """
    spec = get_law(law)
    src = load_source(source, columns)
    runs = src.runs
    try:
        law_columns(runs, spec.inputs)
    except FitInputError:
        missing = [n for n in spec.inputs if n not in ("x", "M", "U") and n not in runs.columns]
        raise FitInputError(
            f"{src.name}: law {spec.name} needs column(s) {', '.join(map(repr, missing))}"
            f" (its inputs: {', '.join(spec.inputs)})"
        ) from None
    curves = matching_curves(src)
    options = FitOptions(
        delta=delta,
        bootstrap=bootstrap,
        seed=seed,
        starts=thin_grid(spec.start_grid(), n_starts),
    )
    notes = runs.attrs.get("notes", [])  # e.g. duplicate rows dropped
    try:
        fit = fit_table(runs, spec, options, curves=curves, n_column=src.n_column)
    except FitInputError as e:
        raise FitInputError(f"{src.name}: {e}" + "".join(f" ({n})" for n in notes)) from None
    fit.diagnostics.warnings[:0] = notes
    chosen = tuple(a for a in approaches if a != 3 or fit.law == "chinchilla")
    aps = compute_optimal(
        runs,
        fit,
        approaches=chosen,
        bootstrap=bootstrap,
        seed=seed,
        curves=curves,
        method2=method2,
    )
    if 3 in approaches and 3 not in aps:
        from scalinglab.analysis.optimal import approach3

        aps[3] = approach3(fit)  # records why approach 3 is unavailable for this law
    tg = targets or default_targets(runs["C"].to_numpy(float))
    return Study(src, fit, aps, tuple(tg))


def matching_curves(src: Source) -> pd.DataFrame | None:
    """The learning curves with N taken from the same column as the runs' N (else None).

    Approach 1 and the misfit noise read the curves; their N must be the N the fit and
    approaches 2-3 use (``N_nonembed`` under Kaplan counting), whatever the curves record.
    """
    curves = src.curves
    if curves is None or curves.attrs.get("n_column", "N") == src.n_column:
        return curves
    if src.n_column not in curves.columns:
        return None
    n = pd.to_numeric(curves[src.n_column], errors="coerce")
    curves = curves.assign(N=n)[n > 0].reset_index(drop=True)
    curves.attrs["n_column"] = src.n_column
    return curves if len(curves) else None


def thin_grid(grid: np.ndarray, n: int | None) -> np.ndarray:
    """About ``n`` rows spread evenly through ``grid`` (all of it when n is None or larger)."""
    if n is None or n >= len(grid):
        return grid
    if n < 1:
        raise ValueError(f"--starts must be at least 1, got {n}")
    return grid[np.unique(np.linspace(0, len(grid) - 1, n).round().astype(int))]


def parse_approaches(spec: str) -> tuple[int, ...]:
    """``"1,3"`` -> (1, 3); anything but 1, 2, 3 is an error naming the bad entry."""
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part not in ("1", "2", "3"):
            raise ValueError(f"bad --approach entry {part!r}; use a comma list of 1, 2, 3")
        out.append(int(part))
    return tuple(sorted(set(out)))


def parse_compute(spec: str | None) -> tuple[float, ...] | None:
    """``"1e21,1e23"`` -> (1e21, 1e23); each budget must be a positive number."""
    if not spec:
        return None
    try:
        vals = tuple(float(v) for v in spec.split(","))
    except ValueError:
        raise ValueError(
            f"bad --compute {spec!r}; use a comma list of FLOPs like 1e21,1e23"
        ) from None
    if not all(np.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"bad --compute {spec!r}; budgets must be positive")
    return vals


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def fit_warnings(fit: Fit) -> list[str]:
    """Every warning the fit carries: its own ``warnings`` and its diagnostics', once each."""
    seen: list[str] = []
    own = list(getattr(fit, "warnings", None) or [])
    for w in [*own, *getattr(fit.diagnostics, "warnings", [])]:
        if str(w) not in seen:
            seen.append(str(w))
    return seen


def _plain(x: Any) -> Any:
    """A JSON-ready copy of ``x`` (dataclasses, mappings, sequences, numpy scalars)."""
    if hasattr(x, "to_dict"):
        return _plain(x.to_dict())
    if hasattr(x, "__dataclass_fields__"):
        return {k: _plain(getattr(x, k)) for k in x.__dataclass_fields__}
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def _ival(ci: tuple[float, float] | None, fmt: str = ".4g") -> str:
    return "" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def _format(s: Study) -> list[str]:
    f, d = s.fit, s.fit.diagnostics
    pct = f"{100 * f.confidence:.0f}%"
    n_boot = 0 if f.samples is None else len(f.samples)
    lines = [
        f"{s.source.name}: {f.n_points} runs, law {f.law}, Huber delta {f.delta:g},"
        f" {n_boot} bootstrap resamples (C from {s.source.compute_from}, N = {s.source.n_column})",
        "",
        f"{'parameter':<10} {'estimate':>12}  {pct + ' interval':<28}",
    ]
    for name, v in f.params.items():
        lines.append(f"{name:<10} {v:>12.5g}  {_ival(f.ci.get(name)):<28}")
    state = d.status if d.converged else f"NOT CONVERGED ({d.status})"
    lines += [
        "",
        f"fit: {state}, objective {f.loss:.4g};"
        f" {d.n_at_best}/{d.n_starts} starts reached the best objective",
    ]
    lines += f.report_lines()
    lines += [f"warning: {w}" for w in fit_warnings(f)]
    n_col = s.source.n_column
    lines += [
        "",
        f"compute-optimal allocation: N_opt = k_N C^a, D_opt = k_D C^b ({pct});"
        f" N is {n_col}, C = {f.k:.3g} N D",
    ]
    lines.append(f"{'approach':<16} {'a':>8} {'interval':<22} {'b':>8} {'interval':<22} unusable")
    for ap in s.approaches.values():
        share = f"{100 * ap.unusable_share:.0f}%" + ("" if ap.reliable else " UNRELIABLE")
        if ap.ok:
            lines.append(
                f"{ap.name:<16} {ap.a:>8.4f} {_ival(ap.ci('a'), '.4f'):<22}"
                f" {ap.b:>8.4f} {_ival(ap.ci('b'), '.4f'):<22} {share}"
            )
        else:
            lines.append(f"{ap.name:<16} {'n/a':>8}")
        for key in ("method", "budgets_from", "noise_from"):
            if key in ap.extra:
                lines.append(f"  {key.replace('_', ' ')}: {ap.extra[key]}")
        lines += [f"  note: {flag}" for flag in ap.flags]
    lines += _agreement_lines(s.agreement)
    lines += ["", f"{'C (FLOPs)':>10} {'approach':<16} {'N_opt':>10} {'D_opt':>10} {'loss':>8}"]
    lines[-1] += f"  (N_opt in {n_col})"
    for c in s.targets:
        for ap in s.approaches.values():
            if not ap.ok:
                continue
            p = ap.predict(c)
            opt = f.optimal(c) if ap.name.startswith("3") else {}
            loss = opt.get("loss")
            lines.append(
                f"{c:>10.3g} {ap.name:<16} {p['N_opt']:>10.3g} {p['D_opt']:>10.3g}"
                f" {'' if loss is None else f'{loss:.4g}':>8}"
                f"  N {_ival(p.get('N_opt_ci'), '.3g')} D {_ival(p.get('D_opt_ci'), '.3g')}"
            )
            if "warning" in opt:
                lines.append(f"  warning: {opt['warning']}")
    return lines


def _agreement_lines(ag: dict[str, Any]) -> list[str]:
    """The verdict and, for every pair that is not plainly agreeing, why."""
    if ag["verdict"] == "not compared":
        return ["agreement: fewer than two approaches with bootstrap samples to compare"]
    head = {
        "agree": "AGREE",
        "disagree": "DISAGREE",
        "inconclusive": "INCONCLUSIVE (too wide or unreliable to tell)",
    }[ag["verdict"]]
    pct = f"{100 * ag['confidence']:.0f}%"
    lines = [
        f"agreement: {head}: judged from the {pct} interval of the bootstrap difference of"
        f" exponents between approaches (agree: contains 0 and at most {ag['max_width']:g} wide)"
    ]
    for pr in ag["pairs"]:
        p, q = pr["approaches"]
        lines.append(
            f"  {pr['exponent']}: {p} - {q} = {pr['difference']:+.3f}"
            f" [{pr['ci'][0]:+.3f}, {pr['ci'][1]:+.3f}]: {pr['verdict']}"
        )
    lines += [f"  not compared: {n}" for n in ag["not_compared"]]
    return lines

"""Build the report of one SOURCE: run the same study as ``scalinglab fit``, draw the same
figures as ``scalinglab plot``, and write one self-contained HTML file.

The page is a rendering of the fit JSON (embedded in it as ``<script id="fit-json">``), the
trials (failed ones too, for a sweep directory), the sweep YAML and the learning curves. When
the runs load but the law cannot be fitted to them (too few finished trials, say), the page
still shows the trials and curves and says why there is no fit.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalinglab.analysis.study import Study, run_study
from scalinglab.analysis.tables import Source, load_source
from scalinglab.errors import FitInputError, ScalinglabError
from scalinglab.report import figures as figs
from scalinglab.report import sections
from scalinglab.report.html import esc, page, script_json

REPORT_NAME = "report.html"
SWEEP_YAML = "sweep.yaml"  # the copy `scalinglab sweep run` keeps in the sweep directory
USER_ERRORS = (ScalinglabError, ValueError, OSError)  # what the CLI prints as one line


@dataclass
class Report:
    """A built report: the HTML, the fit JSON it shows (None without a fit), and why not."""

    html: str
    fit: dict[str, Any] | None
    fit_error: str | None = None


def default_out(source: Path) -> Path:
    """``DIR/report.html`` for a sweep directory, ``TABLE_report.html`` beside a table."""
    return (
        source / REPORT_NAME if source.is_dir() else source.with_name(f"{source.stem}_report.html")
    )


def build_report(source: str | Path, allow_no_fit: bool = False, **study_options: Any) -> Report:
    """The report of ``source``; ``study_options`` are ``run_study``'s (law, bootstrap, ...).

    A law that cannot be fitted to the runs raises ``FitInputError`` like ``scalinglab fit``,
    unless ``allow_no_fit`` (after a sweep): then the page shows the trials and why no fit.
    """
    path = Path(source)
    src = load_source(path, study_options.get("columns"))  # bad input: one line, no file
    trials = _all_trials(path, src)
    study, error = None, None
    try:
        study = run_study(path, **study_options)
    except FitInputError as e:
        if not allow_no_fit:
            raise
        error = str(e)
    doc = None if study is None else json.loads(json.dumps(study.to_dict(), default=float))
    html = render(path, src, trials, study, doc, error)
    return Report(html, doc, error)


def write_report(
    source: str | Path, out: Path | None = None, allow_no_fit: bool = False, **study_options: Any
) -> Report:
    """Build the report and write it to ``out`` (default ``default_out``), atomically."""
    out = default_out(Path(source)) if out is None else out
    rep = build_report(source, allow_no_fit, **study_options)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # a reader never sees half a page
    try:
        tmp.write_text(rep.html, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rep


def sweep_report_line(sweep_dir: Path) -> str:
    """Write ``DIR/report.html`` after a sweep; the one line to print, never an exception."""
    from scalinglab.analysis.cache import fit_cache

    out = Path(sweep_dir) / REPORT_NAME
    try:
        with fit_cache(None):
            rep = write_report(sweep_dir, out, allow_no_fit=True)
    except Exception as e:  # noqa: BLE001 - the sweep is done; a report problem is one line
        why = str(e) if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {e}"
        return f"warning: report not written: {why}".replace("\n", " ")
    return f"report: {out}" + (f" (no fit: {rep.fit_error})" if rep.fit_error else "")


def _all_trials(path: Path, src: Source) -> pd.DataFrame:
    """Every trial of a sweep directory, unfinished and failed ones too; a table's rows."""
    if not path.is_dir():
        return src.runs
    from scalinglab.sweep.store import load_runs

    runs = load_runs(path)
    order = {"failed": 0, "corrupt": 0, "diverged": 1}
    key = runs["status"].map(lambda s: order.get(s, 2)) if "status" in runs else None
    if key is not None:
        runs = runs.assign(_k=key).sort_values(["_k", "C"]).drop(columns="_k")
    return runs


def render(
    path: Path,
    src: Source,
    trials: pd.DataFrame,
    study: Study | None,
    doc: dict[str, Any] | None,
    error: str | None,
) -> str:
    """The HTML of the report (see the module docstring)."""
    title = f"Scaling report: {src.name}"
    nav = [("glance", "At a glance"), ("law", "Fitted law"), ("approaches", "Approaches")]
    nav += [("backtest", "Back-test"), ("frontier", "Frontier"), ("curves", "Learning curves")]
    nav += [("trials", "Trials"), ("sweep", "Sweep YAML"), ("printed", "Printed fit")]
    if study is None:
        nav = [n for n in nav if n[0] in ("glance", "frontier", "curves", "trials", "sweep")]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (
        f"<h1>{esc(title)}</h1>"
        f'<div class="muted">{esc(_source_line(path, src, study))}; generated {stamp}</div>'
        "<nav>" + "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in nav) + "</nav>"
    )
    counts = _trial_counts(trials)
    if study is None or doc is None:
        body = (
            '<section id="glance"><div class="glance">'
            + sections.card("Fit", "NO FIT", esc(error or ""), "bad")
            + (sections.card("Trials", counts, "", "warn") if counts else "")
            + "</div></section>"
            + _frontier(src, None)
            + _curves(src)
            + sections.trials_section(trials, set())
            + _sweep_yaml(path)
        )
        return page(title, header, body)
    outliers = {o["run"] for o in (doc.get("misfit") or {}).get("outliers", [])}
    body = (
        sections.glance(doc, counts)
        + sections.law_section(doc, study.fit.report_lines(), _observed(src, study))
        + sections.approaches_section(doc, _isoflop(src, study))
        + sections.backtest_section(doc)
        + _frontier(src, study)
        + _curves(src)
        + sections.trials_section(trials, outliers)
        + _sweep_yaml(path)
        + '<section id="printed"><h2>As printed by scalinglab fit</h2><details>'
        f"<summary>show</summary><pre>{esc(study.format())}</pre></details></section>"
    )
    return page(title, header, body, script_json("fit-json", doc))


def _source_line(path: Path, src: Source, study: Study | None) -> str:
    kind = "sweep directory" if path.is_dir() else "table"
    line = f"{kind} {src.name}: {len(src.runs)} finished runs"
    if study is not None:
        f = study.fit
        n_boot = 0 if f.samples is None else len(f.samples)
        line += f", law {f.law}, Huber delta {f.delta:g}, {n_boot} bootstrap resamples"
    return line + f" (C from {src.compute_from}, N = {src.n_column})"


def _trial_counts(trials: pd.DataFrame) -> str:
    if "status" not in trials:
        return ""
    counts = trials["status"].value_counts()
    done = int(counts.get("done", 0))
    rest = ", ".join(f"{n} {s}" for s, n in counts.items() if s != "done")
    return f"{done} of {len(trials)} done" + (f"; {rest}" if rest else "")


def _observed(src: Source, study: Study) -> str:
    from scalinglab.analysis import plots

    return figs.figure(
        "observed_vs_predicted",
        "Observed vs predicted",
        "Each run's final loss against the fitted law's prediction, coloured by N; the"
        " dashed line is y = x.",
        lambda: plots.observed_vs_predicted(src.runs, study.fit),
    )


def _isoflop(src: Source, study: Study) -> str:
    from scalinglab.analysis import plots
    from scalinglab.analysis.approach2 import isoflop_minima

    ap2 = study.approaches.get(2)
    method = ap2.extra.get("method", "akima") if ap2 is not None else "akima"

    def draw() -> Any:
        minima = isoflop_minima(src.runs, method)
        return plots.isoflop(src.runs, minima, method) if len(minima) else None

    return figs.figure(
        "isoflop",
        "IsoFLOP profiles (approach 2)",
        "Loss against N per compute budget, the interpolated profile and its minimum (star);"
        " a dropped budget is dashed with its lowest run marked x.",
        draw,
    )


def _frontier(src: Source, study: Study | None) -> str:
    from scalinglab.analysis import plots
    from scalinglab.analysis.optimal import envelope

    runs, curves = src.runs, src.curves
    fit = None if study is None else study.fit
    out = figs.figure(
        "loss_vs_compute",
        "Loss vs compute and the compute-optimal frontier",
        "Learning curves and final runs coloured by N; dashed: the lower envelope of loss"
        " over compute (approach 1's frontier)"
        + (
            "; red: the fitted law at the compute-optimal N and D, one decade past the data,"
            " with its interval band."
            if fit is not None
            else "."
        ),
        lambda: plots.loss_vs_compute(
            runs, fit, curves=curves, frontier=envelope(curves if curves is not None else runs)
        ),
    )
    if study is not None and any(a.ok for a in study.approaches.values()):
        cmax = float(np.max(runs["C"])) * 100
        out += figs.figure(
            "optimal_allocation",
            "Compute-optimal N and D",
            "N_opt(C) and D_opt(C) of each approach with its bootstrap band, from the"
            " smallest budget to two decades past the largest.",
            lambda: plots.optimal_allocation(study.approaches, (float(runs["C"].min()), cmax)),
        )
    return (
        '<section id="frontier"><h2>Compute-optimal frontier</h2>'
        f'<div class="figs">{out}</div></section>'
    )


def _curves(src: Source) -> str:
    curves = src.curves
    if curves is None or curves.empty or "trial_id" not in curves:
        body = '<p class="note">No learning curves: the source is a table of final results.</p>'
    else:
        body = figs.figure(
            "learning_curves",
            "Learning curves per size",
            "Evaluation loss against tokens seen during training, one panel per model size,"
            " one line per trial coloured by its compute budget (dot: last evaluation).",
            lambda: figs.learning_curves(curves, curves.attrs.get("n_column", src.n_column)),
        )
    return f'<section id="curves"><h2>Learning curves</h2>{body}</section>'


def _sweep_yaml(path: Path) -> str:
    yaml_file = path / SWEEP_YAML if path.is_dir() else None
    if yaml_file is None:
        body = '<p class="note">The source is a table: no sweep YAML.</p>'
    elif not yaml_file.is_file():
        body = f'<p class="note">No {SWEEP_YAML} in {esc(path.name)}.</p>'
    else:
        body = f"<pre>{esc(yaml_file.read_text(encoding='utf-8', errors='replace'))}</pre>"
    return f'<section id="sweep"><h2>Sweep YAML</h2>{body}</section>'

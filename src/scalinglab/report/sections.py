"""The report's sections, rendered from the fit JSON (``Study.to_dict``, what ``scalinglab fit
--json`` writes): nothing here fits or recomputes, it shows what the fit found, with numbers
printed as ``scalinglab fit`` prints them."""

from __future__ import annotations

from typing import Any

import pandas as pd

from scalinglab.report.html import (
    Cell,
    card,
    esc,
    fmt,
    keyed,
    num,
    table,
    tagged,
    text,
    ul,
    value,
)

LAW_FORMULAS = {
    "chinchilla": "L(N, D) = E + A / N^alpha + B / D^beta",
    "kaplan": "L(N, D) = ((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D",
    "power": "L(C) = E + A C^-alpha",
    "power_no_offset": "L(C) = A C^-alpha",
    "overtraining": "L(C, M) = E + (a M^eta + b M^-eta) C^-eta,  M = D / N",
    "data_constrained": "L(N, D, U) = E + A / N^alpha + B / D'^beta,"
    "  D' = U + U R_D (1 - exp(-R / R_D)),  R = D / U - 1",
}
VERDICTS = {
    "agree": ("AGREE", "ok"),
    "disagree": ("DISAGREE", "bad"),
    "inconclusive": ("INCONCLUSIVE", "warn"),
    "not compared": ("NOT COMPARED", "warn"),
}


def pct(doc: dict[str, Any]) -> str:
    """The confidence level as ``fit`` prints it, e.g. "95%"."""
    return f"{100 * doc.get('confidence', 0.95):.0f}%"


def glance(doc: dict[str, Any], trials: str | None) -> str:
    """The verdicts a reader needs first: convergence, E, agreement, back-test, misfit."""
    d = doc["diagnostics"]
    warnings = doc.get("fit_warnings", [])
    cards = [
        card(
            "Fit",
            "converged" if d["converged"] else "NOT CONVERGED",
            f"{esc(d['status'])}; {value(doc, 'diagnostics.n_at_best')}/"
            f"{value(doc, 'diagnostics.n_starts')} starts reached the best objective"
            f" {value(doc, 'loss', '.4g')}",
            "ok" if d["converged"] else "bad",
        ),
        _e_card(doc),
        _agreement_card(doc),
        _backtest_card(doc, warnings),
    ]
    m = doc.get("misfit") or {}
    if m:
        ratio = m.get("rmse_over_noise")
        noise = (
            f"{value(doc, 'misfit.rmse_over_noise', '.1f')}x the evaluation noise"
            f" {value(doc, 'misfit.noise_log_loss', '.3g')} ({esc(m.get('noise'))})"
            if ratio is not None
            else "evaluation noise unknown"
        )
        bad = any(w.startswith("misfit") for w in warnings)
        cards.append(
            card(
                "Misfit",
                f"RMSE of log loss {value(doc, 'misfit.rmse_log_loss', '.3g')}",
                noise,
                "warn" if bad or m.get("outliers") else "ok",
            )
        )
    if trials:
        cards.append(card("Trials", trials, "", "ok" if "failed" not in trials else "warn"))
    out = f'<section id="glance"><div class="glance">{"".join(cards)}</div>'
    if warnings:
        items = [f"{esc(w)}" for w in warnings]
        out += f"<h3>Warnings ({len(warnings)})</h3>" + ul(items, "warnings")
    return out + "</section>"


def _e_card(doc: dict[str, Any]) -> str:
    e = (doc.get("identifiability") or {}).get("E")
    if "E" not in doc["params"] or e is None:
        return card("Irreducible loss E", "no E in this law", f"law {esc(doc['law'])}", "ok")
    prof = e.get("profile") or {}
    profile = (
        f"; profile-likelihood interval [{value(doc, 'identifiability.E.profile.low', '.3g')},"
        f" {value(doc, 'identifiability.E.profile.high', '.3g')}]"
        if "low" in prof
        else ""
    )
    est = f"E = {value(doc, 'params.E', '.5g')} {value(doc, 'ci.E', '.4g')}"
    if e.get("identified") is False:
        return card(
            "Irreducible loss E",
            tagged(doc, "identifiability.E.identified", "E NOT identified"),
            f"{est}{profile}: {esc(e.get('why', ''))}. Fix E (e.g. at a known entropy rate),"
            " fit L(C) with the power law instead, or add budgets so the loss visibly flattens.",
            "bad",
        )
    return card(
        "Irreducible loss E",
        tagged(doc, "identifiability.E.identified", "E identified"),
        f"{est}{profile}",
        "ok",
    )


def _agreement_card(doc: dict[str, Any]) -> str:
    ag = doc["approaches"].get("agreement") or {"verdict": "not compared"}
    head, level = VERDICTS.get(ag["verdict"], (ag["verdict"].upper(), "warn"))
    shown = [
        f"{esc(k)}: a = {value(doc, f'approaches.{k}.a', '.4f')}"
        for k in ("1", "2", "3")
        if (doc["approaches"].get(k) or {}).get("a") is not None
    ]
    return card(
        "Approaches 1 / 2 / 3",
        tagged(doc, "approaches.agreement.verdict", esc(head)),
        "; ".join(shown),
        level,
    )


def _backtest_card(doc: dict[str, Any], warnings: list[str]) -> str:
    up = (doc.get("backtest") or {}).get("one_budget_up")
    if not up:
        return card("Back-test", "none", "fewer than three budgets to hold one out", "warn")
    bad = any(w.startswith("back-test") for w in warnings)
    key = "backtest.one_budget_up"
    return card(
        "Back-test (largest budget held out)",
        f"{value(doc, key + '.mean_abs_rel_error', '.2%')} mean error",
        f"fitted without C = {value(doc, key + '.budget_C', '.3g')}, the law predicts its loss"
        f" within {value(doc, key + '.mean_abs_rel_error', '.2%')} on average"
        f" (max {value(doc, key + '.max_abs_rel_error', '.2%')})",
        "warn" if bad else "ok",
    )


def law_section(doc: dict[str, Any], report_lines: list[str], figures: str) -> str:
    """The fitted law: parameters with intervals, the checks in words, solver diagnostics."""
    ident = doc.get("identifiability") or {}
    rows = []
    for name in doc["params"]:
        info = ident.get(name) or {}
        judged = info.get("informative")
        rows.append(
            [
                text(name),
                keyed(doc, f"params.{name}", ".5g"),
                keyed(doc, f"ci.{name}", ".4g"),
                text({True: "yes", False: "no", None: "not judged"}.get(judged, "")),
                text(info.get("why", "")),
            ]
        )
    cols = [("param", "parameter"), ("estimate", "estimate")]
    cols += [("ci", f"{pct(doc)} interval"), ("informative", "informative"), ("why", "why")]
    d = doc["diagnostics"]
    diag = [
        ("status", esc(d["status"])),
        ("objective (sum of Huber terms)", value(doc, "loss", ".4g")),
        ("RMSE of log loss", value(doc, "rmse_log_loss", ".3g")),
        ("starts at the best objective", f"{d['n_at_best']} of {d['n_starts']}"),
        ("on the start grid's edge", esc(", ".join(d["on_grid_edge"]) or "none")),
        ("at a physical bound", esc(", ".join(d["at_bound"]) or "none")),
        ("bootstrap refits that failed", f"{d['bootstrap_failed']} of {doc['n_bootstrap']}"),
        ("Huber delta", value(doc, "huber_delta", "g")),
    ]
    diag_rows = [[text(k), Cell(v)] for k, v in diag]
    formula = LAW_FORMULAS.get(doc["law"], doc["law"])
    return (
        '<section id="law"><h2>Fitted law</h2>'
        f'<p class="law">{esc(formula)}</p>'
        f"<p>{value(doc, 'n_points')} runs, law <b>{esc(doc['law'])}</b>,"
        f" {doc['n_bootstrap']} bootstrap resamples, {pct(doc)} percentile intervals.</p>"
        + table("params", cols, rows)
        + "<h3>Checks</h3>"
        + ul([esc(line) for line in report_lines])
        + "<h3>Solver diagnostics</h3>"
        + table("diagnostics", [("what", "check"), ("value", "value")], diag_rows, sortable=False)
        + _correlations(d.get("correlations") or {})
        + _misfit_tables(doc.get("misfit") or {})
        + f'<div class="figs">{figures}</div></section>'
    )


def _correlations(corr: dict[str, dict[str, float | None]]) -> str:
    if not corr:
        return ""
    names = list(corr)
    rows = [[text(a)] + [num(corr[a].get(b), ".2f") for b in names] for a in names]
    cols = [("param", "")] + [(b, b) for b in names]
    return "<h3>Parameter correlations</h3>" + table("correlations", cols, rows, sortable=False)


def _misfit_tables(m: dict[str, Any]) -> str:
    if not m:
        return ""
    out = ""
    for key, label in (("by_tokens_per_param", "tokens/param"), ("by_size", "size")):
        groups = m.get(key) or []
        if groups:
            rows = [
                [text(g.get(label)), num(g.get("n"), "d"), num(g.get("mean_residual"), "+.2%")]
                for g in groups
            ]
            cols = [("group", label), ("n", "runs"), ("resid", "mean residual (log loss)")]
            out += f"<h3>Residuals by {esc(label)}</h3>" + table(f"resid-{key}", cols, rows)
    outliers = m.get("outliers") or []
    if outliers:
        rows = [
            [
                text(o["run"]),
                num(o["N"], ".3g"),
                num(o["D"], ".3g"),
                num(o["loss"], ".4f"),
                num(-o["residual"], "+.1%"),
            ]
            for o in outliers
        ]
        cols = [("run", "run"), ("N", "N"), ("D", "D"), ("loss", "loss"), ("off", "off by")]
        out += "<h3>Runs off the law</h3>" + table("outliers", cols, rows)
    return out


def approaches_section(doc: dict[str, Any], figures: str) -> str:
    """Approaches 1, 2 and 3 side by side, their agreement, and their predictions."""
    aps = {k: v for k, v in doc["approaches"].items() if k != "agreement"}
    rows = []
    for k, ap in aps.items():
        notes = [
            f"{key.replace('_', ' ')}: {ap[key]}"
            for key in ("method", "budgets_from", "noise_from")
            if ap.get(key)
        ]
        notes += [f"note: {f}" for f in ap.get("flags", [])]
        share = f"{100 * ap['unusable_share']:.0f}%" + ("" if ap["reliable"] else " UNRELIABLE")
        rows.append(
            [
                text(ap["name"]),
                keyed(doc, f"approaches.{k}.a", ".4f"),
                keyed(doc, f"approaches.{k}.a_ci", ".4f"),
                keyed(doc, f"approaches.{k}.b", ".4f"),
                keyed(doc, f"approaches.{k}.b_ci", ".4f"),
                num(ap.get("k_N"), ".3g"),
                num(ap.get("k_D"), ".3g"),
                Cell(esc(share), sort=ap["unusable_share"], cls="num"),
                Cell("<br>".join(esc(n) for n in notes)),
            ]
        )
    cols = [("approach", "approach"), ("a", "a"), ("a_ci", "interval"), ("b", "b")]
    cols += [("b_ci", "interval"), ("k_N", "k_N"), ("k_D", "k_D"), ("unusable", "unusable")]
    cols += [("notes", "notes")]
    n_col = (doc.get("counting") or {}).get("N", "N")
    k = (doc.get("counting") or {}).get("k", 6.0)
    return (
        '<section id="approaches"><h2>Compute-optimal allocation: approaches 1, 2, 3</h2>'
        f"<p>N_opt = k_N C^a, D_opt = k_D C^b ({pct(doc)}); N is {esc(n_col)},"
        f" C = {fmt(k, '.3g')} N D.</p>"
        + table("approaches-table", cols, rows)
        + _agreement(doc)
        + _predictions(doc, aps, n_col)
        + _minima(aps.get("2") or {})
        + f'<div class="figs">{figures}</div></section>'
    )


def _agreement(doc: dict[str, Any]) -> str:
    ag = doc["approaches"].get("agreement")
    if not ag or ag["verdict"] == "not compared":
        return (
            "<h3>Agreement: NOT COMPARED</h3><p>fewer than two approaches with bootstrap"
            " samples to compare</p>"
        )
    head, _ = VERDICTS.get(ag["verdict"], (ag["verdict"].upper(), "warn"))
    if ag["verdict"] == "inconclusive":
        head += " (too wide or unreliable to tell)"
    rows = [
        [
            text(p["exponent"]),
            text(" - ".join(p["approaches"])),
            keyed(doc, f"approaches.agreement.pairs.{i}.difference", "+.3f"),
            keyed(doc, f"approaches.agreement.pairs.{i}.ci", "+.3f"),
            text(p["verdict"]),
            text(p.get("reason", "")),
        ]
        for i, p in enumerate(ag["pairs"])
    ]
    cols = [("exponent", "exponent"), ("pair", "pair"), ("diff", "difference")]
    cols += [("ci", f"{pct(doc)} interval"), ("verdict", "verdict"), ("reason", "reason")]
    return (
        f'<h3 id="agreement">Agreement: {esc(head)}</h3>'
        f"<p>Judged from the {pct(doc)} interval of the bootstrap difference of exponents"
        " between approaches (agree: contains 0 and at most"
        f" {fmt(ag['max_width'], 'g')} wide).</p>"
        + table("agreement-pairs", cols, rows)
        + ul([f"not compared: {esc(n)}" for n in ag.get("not_compared", [])])
    )


def _predictions(doc: dict[str, Any], aps: dict[str, Any], n_col: str) -> str:
    losses = {o["C"]: (i, o) for i, o in enumerate(doc.get("optimal") or [])}
    rows = []
    for k, ap in aps.items():
        for i, p in enumerate(ap.get("predictions") or []):
            j, opt = losses.get(p["C"], (None, {}))
            loss = (
                keyed(doc, f"optimal.{j}.loss", ".4g")
                if k == "3" and j is not None
                else Cell("", cls="num")
            )
            base = f"approaches.{k}.predictions.{i}"
            rows.append(
                [
                    keyed(doc, f"{base}.C", ".3g"),
                    text(ap["name"]),
                    keyed(doc, f"{base}.N_opt", ".3g"),
                    keyed(doc, f"{base}.D_opt", ".3g"),
                    loss,
                    keyed(doc, f"{base}.N_opt_ci", ".3g"),
                    keyed(doc, f"{base}.D_opt_ci", ".3g"),
                ]
            )
            if k == "3" and opt.get("warning"):
                rows.append([text(""), text(f"warning: {opt['warning']}")] + [text("")] * 5)
    if not rows:
        return ""
    cols = [("C", "C (FLOPs)"), ("approach", "approach"), ("N_opt", f"N_opt ({n_col})")]
    cols += [("D_opt", "D_opt"), ("loss", "loss"), ("N_ci", "N interval"), ("D_ci", "D interval")]
    return "<h3>Predictions at target budgets</h3>" + table("predictions", cols, rows)


def _minima(ap2: dict[str, Any]) -> str:
    minima = ap2.get("minima") or []
    if not minima:
        return ""
    rows = [
        [
            num(m["C"], ".3g"),
            num(m["n_runs"], "d"),
            num(m["N_opt"], ".3g"),
            num(m["D_opt"], ".3g"),
            num(m["loss_opt"], ".4g"),
            num(m.get("edge_share"), ".0%"),
            text(m.get("flag") or "used"),
        ]
        for m in minima
    ]
    cols = [("C", "budget C"), ("runs", "runs"), ("N_opt", "N at minimum"), ("D_opt", "D")]
    cols += [("loss", "loss at minimum"), ("edge", "edge share"), ("flag", "used / why dropped")]
    return "<h3>Approach 2: IsoFLOP minima per budget</h3>" + table("isoflop-minima", cols, rows)


def backtest_section(doc: dict[str, Any]) -> str:
    """Leave-one-budget-out: each budget predicted by a refit on the others."""
    bt = doc.get("backtest")
    if not bt or not bt.get("budgets"):
        return (
            '<section id="backtest"><h2>Back-test</h2><p class="note">No back-test: fewer than'
            " three budgets (a budget is held out and predicted from the others).</p></section>"
        )
    up = (bt.get("one_budget_up") or {}).get("budget_C")
    rows, hl = [], set()
    for i, b in enumerate(bt["budgets"]):
        if b["budget_C"] == up:
            hl.add(i)
        key = f"backtest.budgets.{i}"
        rows.append(
            [
                keyed(doc, f"{key}.budget_C", ".3g"),
                num(b.get("n_test"), "d"),
                keyed(doc, f"{key}.mean_abs_rel_error", ".2%"),
                keyed(doc, f"{key}.max_abs_rel_error", ".2%"),
                keyed(doc, f"{key}.mean_rel_error", "+.2%"),
                text("yes" if b.get("converged") else "NO"),
            ]
        )
    cols = [("C", "held-out budget C"), ("n", "runs held out"), ("mean", "mean |error|")]
    cols += [("max", "max |error|"), ("bias", "mean error"), ("converged", "refit converged")]
    warn = [w for w in doc.get("fit_warnings", []) if w.startswith("back-test")]
    return (
        f'<section id="backtest"><h2>Back-test ({esc(bt.get("method", ""))})</h2>'
        "<p>Each budget is held out in turn and its runs' loss predicted by a refit on the"
        " others; the highlighted row is the largest budget (one budget up).</p>"
        + table("backtest-table", cols, rows, highlight=hl)
        + ul([esc(w) for w in warn], "warnings")
        + "</section>"
    )


def trials_section(runs: pd.DataFrame, outliers: set[str]) -> str:
    """Every trial (failed ones too) or every row of the table: status, N, D, C, loss, time."""
    cols: list[tuple[str, str]] = []
    spec = [
        ("trial_id", "trial", None),
        ("status", "status", None),
        ("N", "N", ",.0f"),
        ("N_nonembed", "N non-embedding", ",.0f"),
        ("D", "D", ".3g"),
        ("C", "C", ".3g"),
        ("isoflop_C", "budget", ".3g"),
        ("loss", "loss", ".4f"),
        ("steps", "steps", ".0f"),
        ("wall_s", "wall time (s)", ".1f"),
        ("error", "error", None),
    ]
    present = [(c, h, f) for c, h, f in spec if c in runs.columns and runs[c].notna().any()]
    cols = [(c, h) for c, h, _ in present]
    rows = []
    for i, r in runs.reset_index(drop=True).iterrows():
        row = [
            (text(_str(r[c]), "err" if c == "error" else "") if f is None else num(r[c], f))
            for c, _, f in present
        ]
        name = str(r.get("trial_id", i))
        if outliers:
            row.append(text("off the law" if name in outliers else ""))
        rows.append(row)
    if outliers:
        cols.append(("note", "note"))
    if "trial_id" not in runs.columns:
        cols.insert(0, ("row", "row"))
        rows = [[num(i, "d")] + row for i, row in enumerate(rows)]
    return (
        '<section id="trials"><h2>Trials</h2>'
        "<p>Click a column header to sort.</p>" + table("trials-table", cols, rows) + "</section>"
    )


def _str(x: Any) -> str:
    """A table value as text; missing (None, NaN) as empty."""
    return "" if x is None or (isinstance(x, float) and x != x) else str(x)

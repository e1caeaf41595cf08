"""`scalinglab report`: one self-contained HTML page (inline SVG, inline scripts, no URL) whose
numbers are the fit JSON's, checked as text and in a real headless browser (chromium): the
page loads without console errors, renders non-blank, and its exponents equal `fit --json`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scalinglab.cli import build_app

runner = CliRunner()
app = build_app(full=False)  # fit, plot, report: the light command group the console script uses
FAST = ["--bootstrap", "20", "--starts", "300"]  # as tests/test_analysis_cli.py
E, A, B, ALPHA, BETA = 1.8, 406.4, 410.7, 0.34, 0.28
BUDGETS = (1e17, 1e18, 1e19, 1e20)
RUN_FIGURES = {
    "observed_vs_predicted",
    "isoflop",
    "loss_vs_compute",
    "optimal_allocation",
    "learning_curves",
}


def sizes(C: float) -> np.ndarray:
    """Five sizes around the compute-optimal one, so each budget's minimum is bracketed."""
    return 0.6 * (C / 6) ** 0.45 * np.geomspace(0.15, 6, 5)


def law(N: float, D: float) -> float:
    return E + A / N**ALPHA + B / D**BETA


def make_sweep(root: Path, n_failed: int = 1, budgets: tuple[float, ...] = BUDGETS) -> Path:
    """A sweep directory as `sweep run` leaves it, without training: per trial config.yaml,
    status.json, summary.json and metrics.jsonl (learning curves) from a known law with
    noise, 5 sizes per budget, plus `n_failed` failed trials and the sweep.yaml copy."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "sweep.yaml").write_text("name: planted\n# fabricated for tests/test_report.py\n")
    i = 0
    for C in budgets:
        for N in sizes(C):
            D = C / (6 * N)
            d = root / f"t{i:02d}"
            d.mkdir()
            (d / "config.yaml").write_text(f"seed: {i}\ntrain:\n  budget:\n    flops: {C}\n")
            (d / "status.json").write_text(json.dumps({"status": "done", "attempts": 1}))
            points = []
            for k, f in enumerate(np.geomspace(0.05, 1.0, 8)):
                loss = law(N, f * D) * np.exp(0.003 * rng.normal())
                points.append(
                    {"step": k, "tokens": f * D, "flops": f * C, "eval_loss": loss, "lr": 1e-3}
                )
            (d / "metrics.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
            summary = {
                "status": "done",
                "N": N,
                "D": D,
                "C": C,
                "final_eval_loss": points[-1]["eval_loss"],
                "final_eval_loss_se": 0.004,
                "steps": 100,
                "wall_s": 1.0 + i,
            }
            (d / "summary.json").write_text(json.dumps(summary))
            i += 1
    for j in range(n_failed):
        d = root / f"x{j}"
        d.mkdir()
        (d / "config.yaml").write_text(f"seed: {100 + j}\n")
        error = "RuntimeError: planted failure <at step 3> & stop"  # escaped on the page
        (d / "status.json").write_text(
            json.dumps({"status": "failed", "attempts": 1, "error": error})
        )
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Any]:
    """One fabricated sweep, its `fit --json` and its report (same options)."""
    tmp = tmp_path_factory.mktemp("report")
    sweep = make_sweep(tmp / "sweep")
    fit_json = tmp / "fit.json"
    res = runner.invoke(app, ["fit", str(sweep), *FAST, "--json", str(fit_json)])
    assert res.exit_code == 0, res.output
    out = tmp / "out" / "report.html"
    res = runner.invoke(app, ["report", str(sweep), *FAST, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"wrote {out}"
    return {"sweep": sweep, "fit": json.loads(fit_json.read_text()), "html": out.read_text()}


# --- checks on the HTML text (also run on mutated pages below, to show they can fail) ---


def external_refs(html: str) -> list[str]:
    """Everything that would make the page load something: src/href that is not an in-page
    anchor or an inline data: URI (colour bars are embedded PNGs), CSS url() or @import,
    http(s) URLs anywhere, tags that embed other files."""
    bad = re.findall(r"""\b(?:src|href)\s*=\s*(?!["']?(?:#|data:))["']?[^"'\s>]*""", html)
    bad += re.findall(r"url\(\s*['\"]?(?!#)[^)]*\)", html)
    bad += re.findall(r"@import[^;]*", html)
    bad += re.findall(r"https?://[^\s\"'<>]*", html)
    bad += re.findall(r"<(?:img|link|iframe|object|embed)\b[^>]*>", html, re.I)
    return bad


def plain(html: str) -> str:
    """The page's text: tags dropped, entities decoded."""
    return unescape(re.sub(r"<[^>]+>", "", html))


def figures(html: str) -> dict[str, str]:
    """{name: body} of every <figure> of the page."""
    found = re.findall(r'<figure id="fig-(\w+)" data-figure="\1">(.*?)</figure>', html, re.S)
    return dict(found)


def figure_problems(html: str, expected: set[str]) -> list[str]:
    figs = figures(html)
    problems = [f"missing figure {n}" for n in sorted(expected - set(figs))]
    for name, body in figs.items():
        if not (body.lstrip().startswith("<svg") and body.count("<svg") == 1 and "</svg>" in body):
            problems.append(f"figure {name} is not one inline <svg>")
        elif len(re.findall(r"<(?:path|use|text)\b", body)) < 20:
            problems.append(f"figure {name} is empty")
    return problems


class KeyedValues(HTMLParser):
    """Collects (data-key, data-value, data-fmt, text) of every element carrying a data-key."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[dict[str, Any]] = []
        self.stack: list[dict[str, Any] | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        item = None
        if "data-key" in a:
            item = {"key": a["data-key"], "value": a["data-value"], "fmt": a.get("data-fmt")}
            item["text"] = ""
            self.found.append(item)
        if tag not in ("br", "meta"):
            self.stack.append(item)

    def handle_endtag(self, tag: str) -> None:
        if self.stack and tag not in ("br", "meta"):
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        for item in self.stack:
            if item is not None:
                item["text"] += data


def keyed_values(html: str) -> list[dict[str, Any]]:
    p = KeyedValues()
    p.feed(html)
    return p.found


def lookup(doc: Any, key: str) -> Any:
    for part in key.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def shown(v: Any, spec: str) -> str:
    if isinstance(v, list):
        return "[" + ", ".join(shown(x, spec) for x in v) + "]"
    return "n/a" if v is None else format(v, spec)


def number_problems(html: str, fit: dict[str, Any]) -> list[str]:
    """Every number on the page marked with a JSON path must equal the fit JSON's value
    exactly and be printed as `scalinglab fit` prints it; the exponents must be there."""
    problems = []
    items = keyed_values(html)
    for it in items:
        try:
            want = lookup(fit, it["key"])
        except (KeyError, IndexError):
            problems.append(f"{it['key']}: not in the fit JSON")
            continue
        if json.loads(it["value"]) != want:
            problems.append(f"{it['key']}: page has {it['value']}, fit JSON {want!r}")
        if it["fmt"] and it["text"].strip() != shown(want, it["fmt"]):
            problems.append(
                f"{it['key']}: printed {it['text']!r}, fit prints {shown(want, it['fmt'])!r}"
            )
    keys = {it["key"]: it for it in items}
    required = {"params.alpha": ".5g", "params.beta": ".5g"}
    required |= {f"approaches.{k}.{e}": ".4f" for k in "123" for e in "ab"}
    for key, spec in required.items():
        if key not in keys:
            problems.append(f"{key}: not on the page")
        elif keys[key]["fmt"] != spec:
            problems.append(f"{key}: printed with {keys[key]['fmt']!r}, fit prints {spec!r}")
    return problems


def test_report_is_self_contained_with_every_figure_inline(built):
    html = built["html"]
    assert external_refs(html) == []
    assert figure_problems(html, RUN_FIGURES) == []
    assert "<script src" not in html and html.count("<svg") == len(RUN_FIGURES)
    assert "name: planted" in html  # the sweep YAML
    # the failed trial is listed with its error, escaped
    assert "planted failure &lt;at step 3&gt; &amp; stop" in html
    assert "20 of 21 done; 1 failed" in html
    # the page carries the fit JSON it renders
    embedded = re.search(
        r'<script type="application/json" id="fit-json">(.*?)</script>', html, re.S
    )
    assert json.loads(embedded.group(1).replace("<\\/", "</")) == built["fit"]


def test_report_numbers_equal_fit_json(built):
    html, fit = built["html"], built["fit"]
    assert number_problems(html, fit) == []
    assert len(keyed_values(html)) > 60
    # the verdicts the fit reached are stated, in the fit's words
    verdict = fit["approaches"]["agreement"]["verdict"]
    assert f'data-key="approaches.agreement.verdict" data-value="&quot;{verdict}&quot;"' in html
    identified = fit["identifiability"]["E"]["identified"]
    assert ("E NOT identified" in html) is (identified is False)
    up = fit["backtest"]["one_budget_up"]
    words = plain(html)
    assert f"{up['mean_abs_rel_error']:.2%} mean error" in words
    assert f"max {up['max_abs_rel_error']:.2%}" in words
    for w in fit["fit_warnings"]:
        assert w in words


def test_checks_catch_a_rounded_or_stale_exponent_a_missing_figure_and_a_url(built):
    html, fit = built["html"], built["fit"]
    alpha = fit["params"]["alpha"]
    a1 = fit["approaches"]["1"]["a"]
    rounded = html.replace(f">{a1:.4f}</span>", f">{a1:.2f}</span>", 1)
    assert any("approaches.1.a: printed" in p for p in number_problems(rounded, fit))
    stale = html.replace(f'data-value="{json.dumps(alpha)}"', f'data-value="{alpha + 1e-9!r}"')
    assert any(p.startswith("params.alpha: page has") for p in number_problems(stale, fit))
    no_fig = re.sub(r'<figure id="fig-isoflop".*?</figure>', "", html, flags=re.S)
    assert figure_problems(no_fig, RUN_FIGURES) == ["missing figure isoflop"]
    remote = html.replace("</head>", '<script src="https://cdn.example/x.js"></script></head>')
    assert external_refs(remote)


def test_report_of_a_table_and_bad_input_in_one_line(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for C in BUDGETS:
        for N in sizes(C):
            D = C / (6 * N)
            rows.append({"params": N, "tokens": D, "val": law(N, D) * np.exp(0.003 * rng.normal())})
    table = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    cols = ["--columns", "N=params,D=tokens,loss=val"]
    res = runner.invoke(app, ["report", str(table), *cols, *FAST])
    assert res.exit_code == 0, res.output
    html = (tmp_path / "runs_report.html").read_text()  # the default beside the table
    assert external_refs(html) == []
    assert figure_problems(html, RUN_FIGURES - {"learning_curves"}) == []
    assert "No learning curves" in html and "no sweep YAML" in html
    assert 'id="trials-table"' in html and html.count("<tr>") > 20

    for args, msg in [
        ([str(tmp_path / "nope.csv")], "nope.csv: no such file or directory"),
        ([str(table), *cols, "--out", str(tmp_path)], "--out"),
        ([str(table), *cols, "--law", "nosuch"], "nosuch"),
        ([str(table), "--approach", "4"], "--approach"),
    ]:
        res = runner.invoke(app, ["report", *args, *FAST])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error:") and msg in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs.csv", "runs_report.html"]


def test_sweep_run_report_flag(tmp_path, monkeypatch):
    """`sweep run --report` writes DIR/report.html after the run, also when some trials
    failed; with nothing finished it is one warning line, never a traceback."""
    import scalinglab.sweep
    from scalinglab.cli import app as full_app
    from scalinglab.report import page
    from scalinglab.sweep.runner import SweepResult

    quickstart = Path(__file__).parents[1] / "sweeps" / "quickstart.yaml"
    n_failed = {"value": 1}

    def fake_run_sweep(sweep, trials, sweep_dir, **kw):  # the trials "ran": a finished sweep
        if n_failed["value"] < 0:  # nothing finished
            make_sweep(Path(sweep_dir), n_failed=2, budgets=())
        else:
            make_sweep(Path(sweep_dir), n_failed=n_failed["value"])  # same shapes: no recompile
        outcomes = {
            d.name: {"status": "failed" if d.name[0] == "x" else "done"}
            for d in Path(sweep_dir).iterdir()
            if d.is_dir()
        }
        return SweepResult(Path(sweep_dir), outcomes, 1.0)

    monkeypatch.setattr(scalinglab.sweep, "run_sweep", fake_run_sweep)
    fast = page.write_report  # the default 200 resamples x 4,500 starts are the CLI's business

    def write_fast(src, out=None, allow_no_fit=False, **kw):
        return fast(src, out, allow_no_fit, bootstrap=20, n_starts=300)

    monkeypatch.setattr(page, "write_report", write_fast)
    out = tmp_path / "s1"
    res = runner.invoke(full_app, ["sweep", "run", str(quickstart), "--out", str(out), "--report"])
    assert res.exit_code == 1, res.output  # one trial failed
    assert f"report: {out / 'report.html'}" in res.output
    assert "planted failure" in (out / "report.html").read_text()

    n_failed["value"] = -1
    out = tmp_path / "s2"
    res = runner.invoke(full_app, ["sweep", "run", str(quickstart), "--out", str(out), "--report"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith(("report", "warning: rep"))]
    assert lines == [f"warning: report not written: {out}: no finished trials to fit (2 failed)"]
    assert not (out / "report.html").exists()

    def broken(*args, **kw):  # a bug in the report: still one line, and the sweep's status
        raise KeyError("planted")

    monkeypatch.setattr(page, "write_report", broken)
    n_failed["value"] = 0
    res = runner.invoke(
        full_app, ["sweep", "run", str(quickstart), "--out", str(tmp_path / "s3"), "--report"]
    )
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert "warning: report not written: KeyError: 'planted'" in res.output.splitlines()


def test_too_few_runs_after_a_sweep_still_shows_the_trials(tmp_path):
    from scalinglab.report.page import sweep_report_line

    sweep = make_sweep(tmp_path / "s", n_failed=3, budgets=(1e17,))  # 5 runs, one budget
    shutil.rmtree(sweep / "t04")
    shutil.rmtree(sweep / "t03")
    line = sweep_report_line(sweep)
    assert line.startswith(f"report: {sweep / 'report.html'} (no fit: ")
    html = (sweep / "report.html").read_text()
    assert "NO FIT" in html and "3 of 6 done; 3 failed" in html
    assert external_refs(html) == [] and "learning_curves" in figures(html)
    res = runner.invoke(app, ["report", str(sweep), *FAST, "--out", str(tmp_path / "r.html")])
    assert res.exit_code == 2 and res.output.startswith("error:")  # the command: bad input


# --- a real headless browser ---


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None,
    reason="no chromium/chromium-browser/google-chrome on PATH (.ci/setup-chromium.sh installs"
    " it on Debian)",
)


def load_in_browser(page: Path, tmp: Path, fragment: str = "") -> dict[str, Any]:
    """Open ``page`` in headless chromium: the DOM after its scripts ran, the console
    messages it logged, and a screenshot."""
    shot = tmp / f"{page.stem}.png"
    cmd = [
        BROWSER,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,1600",
        f"--screenshot={shot}",
        "--dump-dom",
        page.resolve().as_uri() + fragment,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]
    return {"dom": proc.stdout, "console": console, "shot": shot}


def page_errors(result: dict[str, Any]) -> list[str]:
    """Console messages, and what the page's own error catcher recorded (#js-errors)."""
    m = re.search(r'<div id="js-errors" data-count="(\d+)"[^>]*>(.*?)</div>', result["dom"], re.S)
    caught = [] if m is None or m.group(1) == "0" else [m.group(2)]
    missing = [] if 'data-ready="1"' in result["dom"] else ["the page's scripts did not finish"]
    return result["console"] + caught + missing


def table_rows(html: str, table_id: str) -> list[dict[str, Any]]:
    """The rows of a table as {column: sort value (or text)}, in page order."""
    table = re.search(rf'<table id="{table_id}".*?</table>', html, re.S).group(0)
    cols = re.findall(r'<th data-col="([^"]+)"', table)
    out = []
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], re.S):
        cells = re.findall(r"<td([^>]*)>(.*?)</td>", row, re.S)
        values = []
        for attrs, text in cells:
            m = re.search(r'data-sort="([^"]+)"', attrs)
            values.append(float(m.group(1)) if m else (text or None))
        out.append(dict(zip(cols, values, strict=True)))
    return out


def non_blank(png: Path) -> bool:
    """More than one colour, and more than 1% of the pixels not the background's."""
    from PIL import Image  # matplotlib's own dependency

    img = Image.open(png).convert("RGB")
    colours = img.getcolors(maxcolors=img.width * img.height)  # [(count, rgb)], in C
    return len(colours) > 1 and max(colours)[0] < 0.99 * img.width * img.height


@needs_browser
def test_report_in_a_headless_browser(built, tmp_path):
    page = tmp_path / "report.html"
    page.write_text(built["html"])
    res = load_in_browser(page, tmp_path, "#sort=trials-table:loss:desc")
    assert page_errors(res) == []
    assert non_blank(res["shot"])
    assert number_problems(res["dom"], built["fit"]) == []  # after the scripts ran
    # the sort script ran (the #sort= link): losses descending, the failed trial last
    rows = table_rows(res["dom"], "trials-table")
    losses = [r["loss"] for r in rows]
    assert len(rows) == 21 and rows[-1]["status"] == "failed" and losses[-1] is None
    assert losses[:-1] == sorted(losses[:-1], reverse=True)
    assert 'aria-sort="descending"' in res["dom"]


@needs_browser
def test_browser_checks_fail_on_a_script_error_and_a_blank_page(built, tmp_path):
    """The same checks on the report with a planted script error and nothing visible."""
    broken = tmp_path / "broken.html"
    planted = "<style>html { visibility: hidden; }</style><script>plantedError();</script>"
    broken.write_text(built["html"].replace("</main>", f"</main>{planted}"))
    res = load_in_browser(broken, tmp_path)
    errors = page_errors(res)
    # seen both on the browser's console and by the page's own catcher (#js-errors)
    assert len(errors) == 2 and all("plantedError is not defined" in e for e in errors), errors
    assert not non_blank(res["shot"])

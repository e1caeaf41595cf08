"""`fit` and `plot` commands: tables, JSON, figures, and one-line errors that write nothing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from scalinglab.analysis_cli import fit_cmd, plot_cmd

app = typer.Typer()
app.command("fit")(fit_cmd)
app.command("plot")(plot_cmd)
runner = CliRunner()


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for C in np.logspace(17, 20, 4):
        for N in 0.6 * (C / 6) ** 0.45 * np.geomspace(0.15, 6, 6):
            D = C / (6 * N)
            loss = (1.69 + 406.4 / N**0.34 + 410.7 / D**0.28) * np.exp(0.005 * rng.normal())
            rows.append({"params": N, "tokens": D, "val_loss": loss})
    path = tmp_path_factory.mktemp("src") / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


MAP = "N=params,D=tokens,loss=val_loss"
FAST = ["--bootstrap", "20", "--starts", "300"]  # the full 4,500-start grid is benchmarked


def test_fit_prints_table_and_writes_json(table, tmp_path):
    out = tmp_path / "fit.json"
    res = runner.invoke(app, ["fit", str(table), "--columns", MAP, *FAST, "--json", str(out)])
    assert res.exit_code == 0, res.output
    for text in ("alpha", "1: envelope", "2: IsoFLOP", "3: parametric", "agreement", "N_opt"):
        assert text in res.output
    doc = json.loads(out.read_text())
    assert {"law", "params", "ci", "approaches", "n_points", "loss"} <= set(doc)
    assert doc["law"] == "chinchilla" and doc["n_points"] == 24
    assert set(doc["params"]) == {"E", "A", "B", "alpha", "beta"}
    assert {"1", "2", "3", "agreement"} <= set(doc["approaches"])
    assert doc["approaches"]["3"]["a_ci"] is not None
    assert "nan" not in res.output.lower().replace(",", " ").split()  # every note in words
    ag = doc["approaches"]["agreement"]
    assert ag["verdict"] in {"agree", "disagree", "inconclusive"}
    assert f"agreement: {ag['verdict'].upper()}" in res.output
    assert len(ag["pairs"]) == 6  # 3 pairs x (a, b)
    two = doc["approaches"]["2"]
    assert two["method"] == "akima" and len(two["minima"]) == 4
    assert two["unusable_share"] == 0.0 and two["reliable"] is True
    assert "unusable" in res.output and "noise from: residual scale" in res.output
    assert isinstance(doc["fit_warnings"], list)


def test_plot_writes_figures(table, tmp_path):
    res = runner.invoke(app, ["plot", str(table), "--columns", MAP, *FAST, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "loss_vs_compute.png").exists()
    assert (tmp_path / "isoflop.svg").exists()


def test_study_prints_whatever_the_fit_says_about_identifiability():
    from types import SimpleNamespace

    from scalinglab.analysis.fit import Fit
    from scalinglab.analysis.study import _identifiability_lines, fit_warnings

    fit = Fit.from_params("chinchilla", E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
    assert _identifiability_lines(fit) == [] and fit_warnings(fit) == []
    fit.diagnostics.warnings.append("optimum on the start grid's edge for e")
    fit.warnings = [
        "E not identified: its interval touches 0",
        "optimum on the start grid's edge for e",
    ]
    assert fit_warnings(fit) == [
        "E not identified: its interval touches 0",
        "optimum on the start grid's edge for e",
    ]
    fit.identifiability = {"E": {"identified": False, "advice": "fix E"}}
    assert _identifiability_lines(fit) == ["identifiability: E: identified False, advice fix E"]
    fit.identifiability = SimpleNamespace(lines=lambda: ["E: not identified (fix E, add budgets)"])
    assert _identifiability_lines(fit) == ["E: not identified (fix E, add budgets)"]


def bad_tables(table: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    df = pd.read_csv(table).rename(columns={"params": "N", "tokens": "D", "val_loss": "loss"})
    cases = {
        "missing": (df.drop(columns="D"), "missing column 'D'"),
        "negative": (df.assign(loss=-df.loss), "'loss' has 24 non-positive"),
        "nan": (df.assign(N=df.N.where(df.index > 0)), "'N' has 1 non-positive"),
        "few": (df.head(3), "5 parameters but only 3"),
    }
    out = {}
    for name, (frame, msg) in cases.items():
        path = tmp / f"{name}.csv"
        frame.to_csv(path, index=False)
        out[name] = (path, msg)
    return out


def test_bad_input_is_one_line_and_writes_nothing(table, tmp_path):
    for path, msg in bad_tables(table, tmp_path).values():
        out = tmp_path / "out" / "fit.json"
        res = runner.invoke(app, ["fit", str(path), "--json", str(out)])
        assert res.exit_code == 2, res.output
        assert msg in res.output and res.output.strip().count("\n") == 0
        assert not out.exists() and not out.parent.exists()
        figs = tmp_path / "figs"
        res = runner.invoke(app, ["plot", str(path), "--out", str(figs)])
        assert res.exit_code == 2 and not figs.exists()


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        (["--columns", "N=params,X=y"], "bad --columns entry"),
        (["--columns", "N=nope,D=tokens,loss=val_loss"], "not a column"),
        (["--approach", "1,4"], "bad --approach entry '4'"),
        (["--law", "hoffmann"], "unknown law"),
        (["--compute", "1e21,abc"], "bad --compute"),
    ],
)
def test_bad_options_are_one_line_errors(table, args, msg):
    res = runner.invoke(app, ["fit", str(table), *args])
    assert res.exit_code == 2 and msg in res.output


def test_missing_source_and_unknown_format(tmp_path):
    res = runner.invoke(app, ["fit", str(tmp_path / "nope.csv")])
    assert res.exit_code == 2 and "no such file" in res.output
    (tmp_path / "t.txt").write_text("N,D,loss\n")
    res = runner.invoke(app, ["fit", str(tmp_path / "t.txt")])
    assert res.exit_code == 2 and "unknown table format" in res.output


def test_parquet_source_with_power_law(table, tmp_path):
    path = tmp_path / "runs.parquet"
    df = pd.read_csv(table).rename(columns={"params": "N", "tokens": "D", "val_loss": "loss"})
    df.to_parquet(path)
    res = runner.invoke(app, ["fit", str(path), "--law", "power", "--approach", "2,3", *FAST])
    assert res.exit_code == 0, res.output
    assert "needs the chinchilla law" in res.output and "2: IsoFLOP" in res.output


@pytest.mark.skipif(
    shutil.which("scalinglab") is None
    and not Path(sys.executable).with_name("scalinglab").exists(),
    reason="console script not installed",
)
def test_console_script_reports_bad_input(tmp_path):
    exe = shutil.which("scalinglab") or str(Path(sys.executable).with_name("scalinglab"))
    path = tmp_path / "bad.csv"
    path.write_text("N,D\n1,2\n")
    res = subprocess.run([exe, "fit", str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "missing column 'loss'" in res.stderr

"""`fit` and `plot` commands: tables, JSON, figures, and one-line errors that write nothing."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from scalinglab.cli import app  # the real command group: it turns user errors into one line

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


@pytest.fixture(scope="module")
def run_table(tmp_path_factory) -> tuple[Path, str, float]:
    """A sparse run-like table under Kaplan counting (C = 6 N_nonembed D; N is the total,
    embeddings included), evaluation noise per run, a known entropy rate, and one run
    planted 15% off the law."""
    rng = np.random.default_rng(0)
    rows = []
    for C in (3e10, 1e11, 3e11):
        for i, n in enumerate((C / 6) ** 0.5 * 0.05 * np.geomspace(0.3, 3, 4)):
            D = C / (6 * n)
            loss = (1.8 + 406.4 / n**0.34 + 410.7 / D**0.28) * np.exp(0.002 * rng.normal())
            rows.append(
                {
                    "trial_id": f"run-{C:.0e}-{i}",
                    "N": n + 32_000,
                    "N_nonembed": n,
                    "D": D,
                    "C": C,
                    "flop_counting": "kaplan",
                    "final_eval_loss": loss,
                    "final_eval_loss_se": 0.002 * loss,
                    "entropy_rate": 1.8,
                }
            )
    df = pd.DataFrame(rows)
    df.loc[5, "final_eval_loss"] *= 1.15
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    df.to_csv(path, index=False)
    return path, str(df.loc[5, "trial_id"]), float(df.loc[5, "N_nonembed"])


def test_fit_on_runs_names_the_N_E_not_identified_and_the_outlier(run_table, tmp_path):
    path, planted, planted_n = run_table
    out = tmp_path / "fit.json"
    fast = ["--bootstrap", "10", "--starts", "100"]
    res = runner.invoke(app, ["fit", str(path), *fast, "--json", str(out)])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "N counted as N_nonembed (flop counting kaplan)" in text
    assert "N is N_nonembed, C = 6 N D" in text and "(N_opt in N_nonembed)" in text
    assert "E not identified" in text and "profile-likelihood interval" in text
    assert f"off the law: {planted}" in text and "x the evaluation noise" in text
    assert "back-test (leave one budget out)" in text
    assert "known floor: entropy rate H = 1.8, E - H = " in text
    doc = json.loads(out.read_text())
    assert {"law", "params", "ci", "approaches", "n_points", "loss"} <= set(doc)
    assert doc["counting"]["N"] == "N_nonembed" and doc["counting"]["k"] == pytest.approx(6.0)
    assert doc["identifiability"]["E"]["identified"] is False
    assert any(w.startswith("E not identified") for w in doc["fit_warnings"])
    # the planted run, by id, with the N the fit used (non-embedding, as C counts it)
    [bad] = doc["misfit"]["outliers"]
    assert bad["run"] == planted and bad["N"] == pytest.approx(planted_n, rel=1e-9)
    assert doc["misfit"]["noise"].startswith("final_eval_loss_se")
    assert doc["backtest"]["one_budget_up"]["budget_C"] == pytest.approx(3e11)
    e_minus_h = doc["identifiability"]["E"]["floor"]["E_minus_H"]
    assert doc["floor"] == 1.8 and e_minus_h == pytest.approx(doc["params"]["E"] - 1.8)
    for key in ("1", "2", "3"):
        assert doc["approaches"][key]["N"] == "N_nonembed"
    # approach 3 spends the runs' compute as they counted it: C = 6 N_nonembed D
    for pred in doc["approaches"]["3"]["predictions"]:
        assert 6 * pred["N_opt"] * pred["D_opt"] == pytest.approx(pred["C"], rel=1e-9)


def test_law_without_its_columns_is_one_line(table, monkeypatch):
    from scalinglab.analysis import laws
    from scalinglab.analysis.custom import custom_law

    law = custom_law(
        "needs_q",
        lambda c, p: p["E"] + p["A"] * c["q"] ** -p["alpha"],
        inputs=("q",),
        params={"E": (0.5, 2.0), "A": (1.0, 100.0), "alpha": (0.1, 0.9)},
    )
    monkeypatch.setitem(laws.LAWS, "needs_q", law)
    res = runner.invoke(app, ["fit", str(table), "--columns", MAP, "--law", "needs_q"])
    assert res.exit_code == 2, res.output
    assert "runs.csv: law needs_q needs column(s) 'q'" in res.output
    assert res.output.strip().count("\n") == 0


def bad_tables(table: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    df = pd.read_csv(table).rename(columns={"params": "N", "tokens": "D", "val_loss": "loss"})
    cases = {
        "missing": (df.drop(columns="D"), "missing column 'D'"),
        "negative": (df.assign(loss=-df.loss), "'loss' has 24 non-positive"),
        "nan": (df.assign(N=df.N.where(df.index > 0)), "'N' has 1 non-positive"),
        "few": (df.head(3), "5 parameters but only 3"),
        "one N": (df.assign(N=1e6), "column 'N' has one distinct value (1e+06) in all 24 rows"),
        # three runs listed five times each: three points, however many rows
        "repeated": (
            pd.concat([df.head(3)] * 5),
            "5 parameters but only 3 data points (12 of 15 rows repeat another row exactly",
        ),
        "4 points": (
            pd.concat([df.head(4).assign(loss=df.loss.head(4) * f) for f in (1.0, 1.01)]),
            "only 4 distinct (N, D) point(s) for the 5 parameters",
        ),
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


def test_curves_take_N_from_the_runs_column():
    """Approach 1 reads the curves: their N must be the column the runs' N came from."""
    from scalinglab.analysis.study import matching_curves
    from scalinglab.analysis.tables import Source, standardise

    raw = pd.DataFrame(
        {"N": [5e4, 9e4], "N_nonembed": [1e4, 5e4], "tokens": [1e6, 2e6], "loss": [3.0, 2.5]}
    )
    runs = standardise(raw.assign(flop_counting="kaplan"), {}, "runs")
    curves = standardise(raw, {}, "curves")  # no counting column: N is the total there
    assert runs.attrs["n_column"] == "N_nonembed" and curves.attrs["n_column"] == "N"
    src = Source(runs, curves, "t", "6ND", "N_nonembed", "kaplan")
    got = matching_curves(src)
    np.testing.assert_array_equal(got["N"], raw["N_nonembed"])
    assert (
        matching_curves(
            Source(runs, curves.drop(columns="N_nonembed"), "t", "6ND", "N_nonembed", "kaplan")
        )
        is None
    )


def test_duplicate_rows_are_dropped_and_said(table, tmp_path):
    """A table listed twice fits exactly like the table once (not narrower intervals)."""
    df = pd.read_csv(table)
    twice = tmp_path / "twice.csv"
    pd.concat([df, df]).to_csv(twice, index=False)
    out1, out2 = tmp_path / "once.json", tmp_path / "twice.json"
    runner.invoke(app, ["fit", str(table), "--columns", MAP, *FAST, "--json", str(out1)])
    res = runner.invoke(app, ["fit", str(twice), "--columns", MAP, *FAST, "--json", str(out2)])
    assert res.exit_code == 0, res.output
    assert "24 of 48 rows repeat another row exactly" in res.output
    once, dup = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert dup["n_points"] == once["n_points"] == 24
    assert dup["ci"] == once["ci"] and dup["params"] == once["params"]


def test_unwritable_json_is_refused_before_fitting(table, tmp_path):
    (tmp_path / "afile").write_text("")
    res = runner.invoke(app, ["fit", str(table), "--columns", MAP, "--json", f"{tmp_path}/afile/x"])
    assert res.exit_code == 2
    assert res.output.startswith("error: --json") and "afile is not a writable folder" in res.output


def test_all_failed_sweep_says_why(tmp_path):
    for i, status in enumerate(["failed", "failed", "diverged"]):
        d = tmp_path / "sweep" / f"t{i}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"seed: {i}\n")
        (d / "status.json").write_text(json.dumps({"status": status, "error": "boom"}))
    res = runner.invoke(app, ["fit", str(tmp_path / "sweep")])
    assert res.exit_code == 2, res.output
    assert "no finished trials to fit (2 failed, 1 diverged)" in res.output


def test_a_corrupt_trial_is_left_out_and_named(tmp_path):
    from scalinglab.analysis.tables import load_source

    for i in range(6):
        d = tmp_path / "sweep" / f"t{i}"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text(f"seed: {i}\n")
        N, D = 1e6 * (i + 1), 1e8
        summary = {
            "status": "done",
            "N": N,
            "D": D,
            "C": 6 * N * D,
            "final_eval_loss": 3.0 - i / 10,
        }
        (d / "summary.json").write_text(json.dumps(summary))
    bad = tmp_path / "sweep" / "t6"
    bad.mkdir()
    (bad / "config.yaml").write_text("seed: 0\n")
    (bad / "summary.json").write_text('{"status": "done", "N": ')  # torn by a crash
    src = load_source(tmp_path / "sweep")
    assert len(src.runs) == 6 and "t6" not in set(src.runs["trial_id"])
    notes = src.runs.attrs["notes"]
    assert notes[0] == "1 of 7 trials not fitted (1 corrupt)"
    assert "t6/summary.json: not valid JSON" in notes[1]

"""fit_table: the N that C counts, misfit against evaluation noise, outliers by name,
a known floor, and the leave-one-budget-out back-test."""

import json

import numpy as np
import pandas as pd
import pytest

from scalinglab.analysis import fit_table, laws
from scalinglab.analysis.backtest import backtest, budget_labels
from scalinglab.analysis.tables import _with_data_info, standardise

TRUE = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
GRID = laws.CHINCHILLA.start_grid()[::37]
FAST = {"starts": GRID, "profile": False}


def chinchilla(N, D):
    """The law written out by hand, independent of the package."""
    return TRUE["E"] + TRUE["A"] * N ** -TRUE["alpha"] + TRUE["B"] * D ** -TRUE["beta"]


def isoflop(noise=0.0, seed=0, k=6.0, budgets=(1e18, 1e19, 1e20, 1e21)):
    rng = np.random.default_rng(seed)
    rows = []
    for C in budgets:
        n_opt = 0.6 * (C / k) ** 0.45
        for N in n_opt * np.geomspace(0.2, 5, 6):
            D = C / (k * N)
            loss = chinchilla(N, D) * np.exp(noise * rng.standard_normal())
            rows.append({"trial_id": f"t{len(rows):02d}", "N": N, "D": D, "C": C, "loss": loss})
    return pd.DataFrame(rows)


def test_kaplan_counting_fits_non_embedding_parameters():
    df = isoflop()
    df = df.rename(columns={"N": "N_nonembed"})
    df["N"] = df["N_nonembed"] + 3e6  # embeddings C does not count
    df["flop_counting"] = "kaplan"
    runs = standardise(df, {}, "runs")
    assert runs.attrs["n_column"] == "N_nonembed" and runs.attrs["counting"] == "kaplan"
    np.testing.assert_array_equal(runs["N"], df["N_nonembed"])
    np.testing.assert_array_equal(runs["N_total"], df["N_nonembed"] + 3e6)
    fit = fit_table(runs, backtest=False, **FAST)
    assert fit.counting["N"] == "N_nonembed" and fit.counting["k"] == pytest.approx(6.0)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=1e-3)  # the law's own N
    assert not any("C/(N D)" in w for w in fit.warnings)
    assert fit.report_lines()[0].startswith("N counted as N_nonembed (flop counting kaplan)")
    # --columns N=... still wins
    assert standardise(df, {"N": "N"}, "runs").attrs["n_column"] == "N"


def test_full_counting_derives_k_and_optimal_spends_the_budget():
    df = isoflop(k=7.2)
    df["C"] = 7.2 * df["N"] * df["D"]  # hand-computed: 7.2 FLOPs per parameter-token
    df["flop_counting"] = "full"
    runs = standardise(df, {}, "runs")
    assert runs.attrs["n_column"] == "N"
    fit = fit_table(runs, backtest=False, **FAST)
    assert fit.counting["k"] == pytest.approx(7.2) and fit.k == pytest.approx(7.2)
    opt = fit.optimal(1e22)
    assert 7.2 * opt["N_opt"] * opt["D_opt"] == pytest.approx(1e22)
    N = opt["N_opt"] * np.array([0.8, 1.25])  # and it is the minimum along C = 7.2 N D
    assert np.all(chinchilla(N, 1e22 / (7.2 * N)) > chinchilla(opt["N_opt"], opt["D_opt"]))


def test_varying_flops_per_parameter_token_is_warned():
    df = isoflop()
    df["C"] = df["C"] * np.linspace(1.0, 1.5, len(df))
    fit = fit_table(df, backtest=False, **FAST)
    assert any("C/(N D) ranges 6-9" in w for w in fit.warnings)


def test_planted_off_law_run_is_named():
    df = isoflop(noise=0.003, seed=0)
    df.loc[7, "loss"] *= 1.08
    fit = fit_table(df, backtest=False, **FAST)
    assert [o["run"] for o in fit.misfit["outliers"]] == ["t07"]
    assert any("t07" in w and "far off the law" in w for w in fit.warnings)
    assert "off the law: t07" in fit.report_lines()
    clean = fit_table(isoflop(noise=0.003, seed=0), backtest=False, **FAST)
    assert clean.misfit["outliers"] == []


def test_rmse_compared_with_evaluation_noise():
    df = isoflop(noise=0.01, seed=2)
    df["final_eval_loss_se"] = 0.001 * df["loss"]  # noise far below the scatter: misfit
    fit = fit_table(df, backtest=False, **FAST)
    assert fit.misfit["noise_log_loss"] == pytest.approx(0.001)
    assert fit.misfit["rmse_over_noise"] > 3
    assert any(w.startswith("misfit: RMSE") for w in fit.warnings)
    df["final_eval_loss_se"] = 0.012 * df["loss"]  # the scatter is the noise: no misfit
    assert not any(w.startswith("misfit") for w in fit_table(df, backtest=False, **FAST).warnings)
    unknown = fit_table(df.drop(columns="final_eval_loss_se"), backtest=False, **FAST)
    assert unknown.misfit["noise"] == "unknown" and unknown.misfit["rmse_over_noise"] is None


def test_noise_from_learning_curve_spread():
    df = isoflop(noise=0.01, seed=2)
    rng = np.random.default_rng(5)
    curves = pd.DataFrame(
        [
            {"trial_id": t, "loss": L * (1 + 0.05 / (s + 1)) * np.exp(0.002 * rng.normal())}
            for t, L in zip(df["trial_id"], df["loss"], strict=True)
            for s in range(40, 48)
        ]
    )
    fit = fit_table(df, curves=curves, backtest=False, **FAST)
    assert fit.misfit["noise"].startswith("spread of the last")
    assert 0.001 < fit.misfit["noise_log_loss"] < 0.004


def test_residuals_by_tokens_per_param_point_at_the_biased_group():
    df = isoflop(noise=0.002, seed=1)
    tpp = df["D"] / df["N"]
    df.loc[tpp < 10, "loss"] *= 1.04  # under-trained runs sit above the law
    fit = fit_table(df, backtest=False, **FAST)
    groups = {g["tokens/param"]: g for g in fit.misfit["by_tokens_per_param"]}
    assert sum(g["n"] for g in groups.values()) == len(df)
    assert any("tokens/param 0-5" in w or "tokens/param 5-10" in w for w in fit.warnings)


def test_known_floor_reports_E_minus_H_and_warns_below_it():
    df = isoflop(noise=0.002, seed=1)
    df["entropy_rate"] = 1.60
    fit = fit_table(df, backtest=False, **FAST)
    floor = fit.identifiability["E"]["floor"]
    assert floor["E_minus_H"] == pytest.approx(fit.params["E"] - 1.60)
    assert not any("below the known floor" in w for w in fit.warnings)
    df["entropy_rate"] = 1.80  # a floor above the fitted E
    high = fit_table(df, backtest=False, **FAST)
    assert any("below the known floor H = 1.8" in w for w in high.warnings)
    assert "below the known floor" in high.optimal(1e30)["warning"]


def test_leave_one_budget_out_by_default_exact_without_noise():
    fit = fit_table(isoflop(), **FAST)
    bt = fit.backtest
    assert [b["budget_C"] for b in bt["budgets"]] == [1e18, 1e19, 1e20, 1e21]
    assert bt["one_budget_up"]["budget_C"] == 1e21
    assert all(b["max_abs_rel_error"] < 1e-4 for b in bt["budgets"])
    json.dumps(fit.to_dict())  # every new field is JSON-ready


def test_budget_labels_prefer_nominal_budgets_and_never_chain():
    df = pd.DataFrame({"C": [1.0, 1.5, 2.2, 3.3, 5.0, 7.4]})
    labels = budget_labels(df)  # spans of at most 2x: {1, 1.5}, {2.2, 3.3}, {5, 7.4}
    assert len(np.unique(labels)) == 3
    df["isoflop_C"] = [1, 1, 1, 5, 5, 5]
    assert list(budget_labels(df)) == [1, 1, 1, 5, 5, 5]


@pytest.mark.parametrize(("by", "threshold"), [("tokens_per_param", 30.0), ("N", 3e8)])
def test_backtest_on_other_splits(by, threshold):
    df = isoflop()
    bt = backtest(df, threshold, by=by, starts=GRID)
    values = df["D"] / df["N"] if by == "tokens_per_param" else df["N"]
    assert bt.metrics["n_test"] == int((values >= threshold).sum()) > 0
    assert bt.metrics["max_abs_rel_error"] < 1e-4
    assert bt.to_dict()["split"] == by


def test_data_info_read_from_trial_summaries(tmp_path):
    for tid, H in (("a", 1.83), ("b", 1.83)):
        (tmp_path / tid).mkdir()
        data = {"entropy_rate_nats": H, "loss_floor_nats": 1.9, "n_train_tokens": 1000}
        (tmp_path / tid / "summary.json").write_text(json.dumps({"data": data}))
    runs = _with_data_info(tmp_path, pd.DataFrame({"trial_id": ["a", "b"]}))
    assert list(runs["entropy_rate"]) == [1.83, 1.83]
    assert list(runs["unique_tokens"]) == [1000, 1000]


def test_outliers_are_measured_from_the_median_residual():
    """A law that is off by 5% everywhere (median residual 0.05) names only the run that is
    far from that shared offset, not every run (the threshold here is the 1% floor)."""
    from scalinglab.analysis.misfit import misfit_report

    runs = pd.DataFrame({"N": [1e6, 2e6, 4e6, 8e6, 16e6, 32e6], "D": [1e8] * 6, "loss": [3.0] * 6})
    runs["trial_id"] = [f"t{i}" for i in range(6)]
    resid = np.array([0.05, 0.051, 0.049, 0.052, 0.048, 0.25])
    out, warnings = misfit_report(runs, resid, None, "none", {})
    assert [o["run"] for o in out["outliers"]] == ["t5"]
    assert out["outlier_threshold"] == pytest.approx(0.01)
    assert any("1 run(s) far off the law" in w and "t5" in w for w in warnings)

"""`scalinglab experiment list | run`: every study's smoke run end to end, resume, errors.

The smoke runs share one worker process (`pool`) and one JAX compilation cache, and the
studies' smoke settings reuse each other's models (the GPT of activations and optimizers, the
MLP of convolution and regularisation), so all of them together take about half a minute.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from scalinglab.analysis.fit import Fit
from scalinglab.analysis.result import Samples
from scalinglab.cli import app
from scalinglab.experiments import find_study, run_experiment
from scalinglab.experiments.helpers import paired_difference
from scalinglab.sweep.config import LocalExecutorConfig
from scalinglab.sweep.executors import LocalExecutor

ROOT = Path(__file__).parents[1] / "experiments"
STUDIES = sorted(p.name for p in ROOT.iterdir() if (p / "study.yaml").is_file())
runner = CliRunner()

# Per study: the findings keys its README quotes, and how to recompute its exponents from the
# trial directories alone: (exponent, group columns, x, y, group label).
EXPECTED: dict[str, set[str]] = {
    "activations": {
        "alpha",
        "against",
        "gelu_minus_relu_alpha",
        "final_eval_loss",
        "best_at_largest",
        "dead_units",
    },
    "optimizers": {"alpha", "against_adamw", "lr_sensitivity", "schedules", "state_memory"},
    "convolution": {"alpha", "resnet_minus_mlp_alpha", "frontier", "resnet_minus_mlp_loss"},
    "regularisation": {"beta", "weight_decay_effect", "mean_loss"},
    "backprop": {"gradient_checks", "depth_slopes"},
    "depth-and-residuals": {"trials", "residual_vs_plain"},
    "adversarial": {"clean_check", "trend", "accuracy", "epsilons"},
    "quantization": {"clean_check", "trend", "memory"},
    "pruning": {"clean_check", "sparsity_check", "fine_tune", "loss_change", "max_sparsity"},
    "kv-cache": {"equal_outputs", "sizes", "speedup_vs_size", "load"},
    "distillation": {
        "teacher_check",
        "unigram_loss",
        "teacher_loss",
        "student_loss",
        "distill_gain",
        "fraction_kept",
        "keep_97",
    },
    "interpretability": {"clean_check", "ig_completeness", "probes", "saliency", "settings"},
    "mup-transfer": {"optimum", "drift", "base_width_check", "widths", "lrs"},
    "hallucination": {"clean_check", "recall_by_exposure", "held_out", "calibration", "data"},
    "distribution-shift": {"clean_check", "images", "text", "per_size"},
    "shortcut-learning": {"clean_check", "strength", "fixes"},
    "attention": {
        "loss_vs_heads",
        "in_context_loss",
        "specialised_heads",
        "entropy_rate_nats",
        "trials",
    },
    "universal-approximation": {
        "alpha",
        "curves",
        "relu_vs_tanh",
        "steps_check",
        "target_variance",
        "relative_mse_at_largest_width",
    },
}
SLOPES: dict[str, tuple[str, list[str], str, str, str]] = {
    # The GPT trials only: the dead-unit MLPs have no n_head, so groupby drops them.
    "activations": ("alpha", ["model.activation", "model.n_head"], "C", "final_eval_loss", "{}"),
    "optimizers": ("alpha", ["optimizer.name", "optimizer.lr"], "C", "final_eval_loss", "{}@{:g}"),
    "convolution": ("alpha", ["model.family"], "C", "final_eval_loss", "{}"),
    "regularisation": (
        "beta",
        ["model.dropout", "optimizer.weight_decay"],
        "data.train_subset",
        "best_eval_loss",
        "dropout={:g},wd={:g}",
    ),
    "universal-approximation": (
        "alpha",
        ["data.functions.name", "model.activation"],
        "model.width",
        "final_eval_mse",
        "{}@{}",
    ),
}


class _SharedPool(LocalExecutor):
    """One local worker for every smoke run here: `run_sweep` closes its executor after each
    sweep, so this one ignores that and is closed once, after the last test."""

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def pool() -> Any:
    shared = _SharedPool(LocalExecutorConfig(workers=1))
    yield shared
    LocalExecutor.close(shared)


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "jax_cache"


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _trials(sweep_dir: Path) -> pd.DataFrame:
    """Each trial's config and summary, read straight from its files (not via load_runs)."""
    rows = []
    for d in sorted(sweep_dir.iterdir()):
        if (d / "summary.json").is_file():
            cfg = _flat(yaml.safe_load((d / "config.yaml").read_text()))
            rows.append({**cfg, **json.loads((d / "summary.json").read_text()), "dir": d})
    return pd.DataFrame(rows)


def _smoke_size(study: str) -> int:
    """Trials of a study's smoke settings: isoflop budgets x grid x zip groups, counted from
    the YAML files (the smoke's sections replace the sweep's own)."""
    spec = yaml.safe_load((ROOT / study / "study.yaml").read_text())
    total = 0
    for entry in spec["sweeps"]:
        sweep = yaml.safe_load((ROOT / study / entry["file"]).read_text())
        sweep.update({k: v for k, v in entry["smoke"].items() if k != "base"})
        n = len((sweep.get("isoflop") or {}).get("flops", [None]))
        n *= math.prod(len(v) for v in (sweep.get("grid") or {}).values())
        n *= math.prod(len(next(iter(g.values()))) for g in sweep.get("zip") or [])
        total += n
    return total


@pytest.mark.parametrize("name", STUDIES)
def test_smoke_run(name: str, tmp_path: Path, pool: Any, cache: Path) -> None:
    study = find_study(ROOT, name)
    out = tmp_path / name
    result = run_experiment(study, out, smoke=True, cache_dir=cache, pool=pool)
    n = _smoke_size(name)
    assert 2 <= n <= 6 and result.trained == n and result.count("failed") == 0

    doc = json.loads((out / "findings.json").read_text())
    assert doc["experiment"] == name and doc["smoke"] is True
    assert doc["question"] == yaml.safe_load((ROOT / name / "study.yaml").read_text())["question"]
    findings = doc["findings"]
    assert EXPECTED.get(name, set()) | {"answer"} <= set(findings)
    assert isinstance(findings["answer"], str) and findings["answer"]
    if name == "backprop":  # the smoke's trained 2-layer net: the gradient checks hold there
        for check in findings["gradient_checks"].values():
            assert check["hand_chain_rule_max_relative_error"] < 1e-5
            assert check["finite_difference_max_error_over_grad_norm"] < 1e-3
    if name == "adversarial":  # the attacks' model at epsilon 0 is the trained one
        assert findings["clean_check"]["max_abs_loss_diff"] < 1e-6
    if name == "quantization":  # and so is the quantisation's at float32
        assert findings["clean_check"]["max_abs_diff_from_recorded"] < 1e-6
    if name == "pruning":  # sparsity 0 is the trained model, and the sparsity is as asked
        assert findings["clean_check"]["max_abs_diff_from_recorded"] < 1e-6
        assert findings["sparsity_check"]["max_weights_off"] <= 0.5 + 1e-9
    if name == "shortcut-learning":  # the unmarked validation is what the trial evaluated
        assert findings["clean_check"]["max_abs_diff_from_recorded"] < 1e-6
    if name == "distribution-shift":  # the unshifted sets are what the trials evaluated
        assert findings["clean_check"]["max_abs_diff"] < 1e-6
    if name == "hallucination":  # the recall/calibration pass scores what the trainer recorded
        assert findings["clean_check"]["max_abs_diff_from_recorded"] < 1e-6
    if name == "interpretability":  # saliency's logits are the trained model's; IG complete
        assert findings["clean_check"]["max_abs_loss_diff"] < 1e-6
        assert findings["ig_completeness"]["max_rel_gap_32_steps"] < 1e-2
    if name == "distillation":  # the restored teacher is the one its trial evaluated
        assert findings["teacher_check"]["max_abs_diff_from_recorded"] < 1e-6
    if name == "mup-transfer":  # muP at its base width is the standard trial, bit for bit
        assert findings["base_width_check"]["max_abs_loss_diff"] == 0.0
    if name == "kv-cache":  # the cached and the full forward pass generate the same tokens
        assert findings["equal_outputs"]["all_same"]
        assert findings["equal_outputs"]["max_abs_logit_diff"] < 1e-5
    if name == "depth-and-residuals":  # every trial, with the loss its summary recorded
        got = {t["trial_id"]: t["final_eval_loss"] for t in findings["trials"]}
        want = {
            d.name: json.loads((d / "summary.json").read_text())["final_eval_loss"]
            for d in (out / "depth_digits").iterdir()
            if (d / "summary.json").is_file()
        }
        assert got == pytest.approx(want)
    figure = yaml.safe_load((ROOT / name / "study.yaml").read_text())["figure"]
    assert (out / f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Two points per group: the offset-free power law runs exactly through both, so each
    # exponent is the log-log slope between them, computed here from the trial files.
    if name in SLOPES:
        param, by, x, y, fmt = SLOPES[name]
        sweep_dirs = [d for d in out.iterdir() if d.is_dir() and not d.name.startswith(".")]
        trials = pd.concat([_trials(d) for d in sweep_dirs])
        assert len(trials) == n
        for values, g in trials.groupby(by):
            assert len(g) == 2
            g = g.sort_values(x)
            slope = -np.diff(np.log(g[y].to_numpy(float))) / np.diff(np.log(g[x].to_numpy(float)))
            key = fmt.format(*(values if isinstance(values, tuple) else (values,)))
            assert findings[param][key][param] == pytest.approx(slope[0], abs=1e-6), key

    if name != STUDIES[0]:
        return  # re-running is the runner's behaviour, the same for every study: checked once
    # Re-running trains nothing (the trials' files are untouched) and rewrites the findings.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")}
    (out / "findings.json").unlink()
    res = runner.invoke(
        app, ["experiment", "run", name, "--smoke", "--out", str(out), "--dir", str(ROOT)]
    )
    assert res.exit_code == 0, res.output
    assert f"{n} trials (0 trained this time, 0 failed)" in res.output
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*/summary.json")} == stamps
    assert json.loads((out / "findings.json").read_text())["findings"] == findings


def test_list_prints_every_study_with_question_and_runtime() -> None:
    res = runner.invoke(app, ["experiment", "list", "--dir", str(ROOT)])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == STUDIES
    for line, name in zip(lines, STUDIES, strict=True):
        spec = yaml.safe_load((ROOT / name / "study.yaml").read_text())
        s = spec["runtime_s"]
        assert line.endswith(spec["question"])
        assert (f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s") in line


def test_unknown_study_is_one_line_listing_the_known_ones() -> None:
    res = runner.invoke(app, ["experiment", "run", "activatons", "--dir", str(ROOT)])
    assert res.exit_code == 2
    assert len(res.output.strip().splitlines()) == 1
    assert "unknown experiment 'activatons'" in res.output
    assert all(name in res.output for name in STUDIES)


def _study(root: Path, study: str, sweep: str = "name: s\nbase: {}\n") -> Path:
    (root / "x").mkdir(parents=True)
    (root / "x" / "study.yaml").write_text(study)
    (root / "x" / "s.yaml").write_text(sweep)
    (root / "x" / "analysis.py").write_text("def analyse(sweeps, out):\n    return {}\n")
    return root


GOOD = "question: q?\nruntime_s: 10\nfigure: f\nsweeps:\n  - file: s.yaml\n    smoke: {}\n"


@pytest.mark.parametrize(
    ("study", "args", "message"),
    [
        (
            GOOD.replace("question", "questoin"),
            ["list"],
            "study.yaml:1: questoin: unknown field (did you mean 'question'?)",
        ),
        (GOOD.replace("s.yaml", "t.yaml"), ["list"], "sweeps.0.file: 't.yaml' not found"),
        (GOOD.replace("10", "-1"), ["list"], "study.yaml:2: runtime_s: Input should be greater"),
        (
            GOOD.replace("smoke: {}", "smoke: {base: {seed.x: 1}}"),
            ["run", "x", "--smoke"],
            "(smoke of s.yaml): smoke.base.seed.x: 'seed' is not a mapping",
        ),
        (GOOD, ["run", "x", "--executor", "mpi"], "--executor: 'mpi' not allowed"),
    ],
)
def test_bad_study_files_are_one_line(
    tmp_path: Path, study: str, args: list[str], message: str
) -> None:
    root = _study(tmp_path / "studies", study, "name: s\nbase: {seed: 0}\n")
    res = runner.invoke(app, ["experiment", *args, "--dir", str(root)])
    assert res.exit_code == 2, res.output
    assert len(res.output.strip().splitlines()) == 1 and message in res.output, res.output


def test_missing_dir_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(app, ["experiment", "list", "--dir", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--dir" in res.output and "no such directory" in res.output


def test_failed_trial_skips_the_analysis(tmp_path: Path, pool: Any, cache: Path) -> None:
    sweep = (
        "name: s\nbase:\n  model: {family: mlp, width: 4, depth: 1}\n  data: {source: digits}\n"
        "  train: {batch_size: 64, budget: {tokens: 10}}\n"  # under one step: the trial fails
    )
    root = _study(tmp_path / "studies", GOOD, sweep)
    out = tmp_path / "out"
    out.mkdir()
    (out / "findings.json").write_text("{}")  # an earlier run's: it must not outlive this one
    result = run_experiment(find_study(root, "x"), out, smoke=True, cache_dir=cache, pool=pool)
    assert result.count("failed") == 1 and result.findings is None
    assert not (out / "findings.json").exists()


def _fit(alpha: np.ndarray, n_points: int = 4, key: str = "runs n=4 count=5 seed=0") -> Fit:
    """A Fit whose bootstrap draws of alpha are `alpha` (resample key `key`)."""
    fit = Fit.from_params("power_no_offset", A=1.0, alpha=float(np.median(alpha)))
    samples = Samples(np.stack([np.ones_like(alpha), alpha], axis=1), columns=["A", "alpha"])
    samples.attrs["resampled"] = key
    fit.samples, fit.n_points = samples, n_points
    return fit


def test_paired_difference_pairs_resamples() -> None:
    # Both groups move together across resamples: paired, the difference is exactly 0.2 in
    # every resample, though each group alone spreads over 0.1-0.9 (unpaired: no effect).
    b = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    d = paired_difference(_fit(b + 0.2), _fit(b))
    assert d["value"] == pytest.approx(0.2)
    assert d["ci"] == pytest.approx([0.2, 0.2]) and d["resolved"] is True
    flat = paired_difference(_fit(b + np.array([-0.1, 0.1, 0.0, 0.05, -0.05])), _fit(b))
    assert flat["ci"][0] < 0 < flat["ci"][1] and flat["resolved"] is False
    for a, why in [
        (_fit(b, n_points=2), "2 points per group"),
        (_fit(b, key="runs n=5 count=5 seed=0"), "cannot be paired"),
    ]:
        d = paired_difference(a, _fit(b))
        assert d["ci"] is None and d["resolved"] is None and why in d["why"]


def test_every_expected_study_exists() -> None:
    assert set(EXPECTED) <= set(STUDIES) and set(SLOPES) <= set(STUDIES)

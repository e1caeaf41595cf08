"""The benchmarks run end to end at a tiny size (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str = "train_step"):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_runs(tmp_path: Path) -> None:
    bench = _load()
    torch_half = bench.torch_available()  # torch is in the `bench` extra, not `dev`
    out = tmp_path / "bench.json"
    argv = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--seq-len", "16"]
    argv += ["--batch-size", "2", "--steps", "2", "--rounds", "1", "--peak-size", "128"]
    argv += ["--json", str(out)] + ([] if torch_half else ["--no-torch"])
    (result,) = bench.main(argv)
    for key in ("tokens_per_s", "mfu", "compile_s"):
        assert result[key] > 0
    assert ("ratio" in result) == torch_half
    assert json.loads(out.read_text())["results"][0]["d_model"] == 32


# The fit command end to end is covered by test_analysis_cli and test_fit_cache, the benchmark's
# scipy objective by the finite-difference test below; this whole-script run is the slow extra.
@pytest.mark.slow
def test_fit_benchmark_runs(tmp_path: Path) -> None:
    bench = _load("fit")
    out = tmp_path / "fit.json"
    result = bench.main(["--quick", "--json", str(out)])
    # The command and scipy minimise the same objective from the same starts.
    assert result["objective_rel_diff"] < 1e-6
    assert result["cache_entries"] > 0
    for key in ("speedup_warm", "speedup_cold"):
        assert result[key] > 0
    saved = json.loads(out.read_text())
    assert saved["n_points"] == 24 and saved["n_starts"] == 20


def test_fit_benchmark_scipy_objective_matches_finite_differences() -> None:
    bench = _load("fit")
    X, y = bench.make_data(3, 5)
    logN, logD, logy = np.log(X[:, 0]), np.log(X[:, 1]), np.log(y)
    raw = np.array([0.5, 6.0, 6.0, 0.34, 0.28])
    f, g = bench.numpy_objective(raw, logN, logD, logy)
    h = 1e-6
    fd = [
        (
            bench.numpy_objective(raw + h * e, logN, logD, logy)[0]
            - bench.numpy_objective(raw - h * e, logN, logD, logy)[0]
        )
        / (2 * h)
        for e in np.eye(5)
    ]
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-9)


def test_calibration_benchmark_runs(tmp_path: Path) -> None:
    bench = _load("calibration")
    out = tmp_path / "cal.json"
    result = bench.main(["--quick", "--json", str(out)])
    (d,) = result["designs"]
    assert d["design"] == "sparse" and d["n_runs"] == 12 and d["replicates"] == 2
    assert set(d["params"]) >= {"E", "A", "B", "alpha", "beta", "a", "b"}
    for row in d["params"].values():
        assert 0.0 <= row["coverage"] <= 1.0
    assert json.loads(out.read_text())["settings"]["replicates"] == 2


def test_calibration_designs_match_their_description() -> None:
    bench = _load("calibration")
    t = bench.truth()
    assert abs(t["a"] + t["b"] - 1) < 1e-12
    N, D = bench.design("sparse")
    # d_model 16..48, n_layer 2: 12 * 2 * d^2 non-embedding parameters; C = 6 N D.
    assert sorted(set(N)) == [24 * d * d for d in (16, 24, 32, 48)]
    np.testing.assert_allclose(sorted(set(np.round(6 * N * D, -6))), [1e11, 3e11, 1e12])
    N, D = bench.design("good")
    C = 6 * N * D
    # Each budget's middle size is the true compute-optimal N (closed form of the law).
    G = (t["alpha"] * t["A"] / (t["beta"] * t["B"])) ** (1 / (t["alpha"] + t["beta"]))
    mid = N.reshape(8, 9)[:, 4]
    np.testing.assert_allclose(mid, G * (C.reshape(8, 9)[:, 4] / 6) ** t["a"], rtol=1e-9)
    N, D = bench.design("overtrain")
    np.testing.assert_allclose(sorted(set(np.round(D / N))), [10, 20, 40, 80, 160, 320])

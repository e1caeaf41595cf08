"""The train-step benchmark runs end to end at a tiny size (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train_step", BENCH)
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

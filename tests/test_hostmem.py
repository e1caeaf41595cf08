"""The trainer keeps XLA's large per-call host buffers in warm memory (`scalinglab.hostmem`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from scalinglab.config import ModelConfig, T5Config
from scalinglab.hostmem import (
    ENV,
    EXEC_MARK,
    RETAIN_ABOVE_BYTES,
    configure_host_memory,
    estimated_step_temp_bytes,
    worker_env,
)

# A jitted function whose two dot operands (sin x, cos x) are 32 MB temporaries: glibc's
# defaults serve blocks that large with mmap and unmap them on free, so every call faults them
# in again; retained, a call reuses the previous call's pages once the heap has grown.
_PROBE = """
import json, resource
from scalinglab.hostmem import configure_host_memory
done = configure_host_memory(temp_bytes=64 * 2**20)  # before JAX starts, as run_trial does
import jax, jax.numpy as jnp

f = jax.jit(lambda x: jnp.sin(x).T @ jnp.cos(x))
x = jnp.ones((8192, 512), jnp.float32)
temp = f.lower(x).compile().memory_analysis().temp_size_in_bytes
faults = []
for _ in range(6):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(4):
        f(x).block_until_ready()
    faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4)
late = configure_host_memory(temp_bytes=64 * 2**20)
print(json.dumps({"done": done, "late": late, "temp_pages": temp / 4096, "faults": faults}))
"""


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_step.py"
    spec = importlib.util.spec_from_file_location("bench_train_step_hostmem", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _probe(setting: str) -> dict:
    env = {**os.environ, ENV: setting, "XLA_FLAGS": ""}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_retain_stops_per_call_page_faults() -> None:
    retained, system = _probe("auto"), _probe("system")
    assert (retained["done"], system["done"]) == ("retain", "system")
    assert retained["late"] == system["late"] == "unchanged"  # JAX was running by then
    assert retained["temp_pages"] >= 8192  # the probe really has a large temporary buffer
    # System defaults: each call faults (most of) the temporaries in again.
    assert min(system["faults"][2:]) > 0.5 * system["temp_pages"]
    # Retained: after the heap has grown, calls fault (almost) nothing.
    assert min(retained["faults"][2:]) < 0.05 * retained["temp_pages"]


@pytest.mark.parametrize(
    ("d_model", "n_layer", "seq_len"),
    [pytest.param(128, 4, 128, marks=pytest.mark.slow), (64, 2, 64)],  # the larger: -m slow
)
def test_estimate_matches_xla_for_gpt_train_steps(d_model: int, n_layer: int, seq_len: int):
    bench = _load_benchmark()
    cfg = ModelConfig(n_layer=n_layer, d_model=d_model, n_head=4, max_seq_len=seq_len)
    step, init = bench.make_jax_step(cfg)
    params, opt_state = init(jax.random.key(0))
    batch = jnp.zeros((16, seq_len + 1), jnp.int32)
    xla = step.lower(params, opt_state, batch).compile().memory_analysis().temp_size_in_bytes
    assert estimated_step_temp_bytes(cfg, 16, seq_len) == pytest.approx(xla, rel=0.1)


def test_estimate_counts_both_t5_stacks() -> None:
    t5 = T5Config(n_layer=2, d_model=64, n_head=2, max_seq_len=64)
    deeper = T5Config(n_layer=2, n_decoder_layer=4, d_model=64, n_head=2, max_seq_len=64)
    assert estimated_step_temp_bytes(t5, 8, 64) < estimated_step_temp_bytes(deeper, 8, 64)


def test_auto_leaves_small_steps_and_a_running_jax_alone() -> None:
    assert configure_host_memory(RETAIN_ABOVE_BYTES - 1, {ENV: "auto"}) in ("system", "unchanged")
    assert configure_host_memory(RETAIN_ABOVE_BYTES, {ENV: "system"}) in ("system", "unchanged")
    jnp.ones(2).block_until_ready()  # JAX runs in this process now
    assert configure_host_memory(RETAIN_ABOVE_BYTES, {ENV: "retain"}) == "unchanged"


def test_bad_setting_names_the_variable_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"SCALINGLAB_HOST_MEMORY='fast'.*auto, retain, system"):
        configure_host_memory(0, {ENV: "fast"})


def test_worker_env_carries_the_choice_to_processes_started_elsewhere() -> None:
    env = worker_env(RETAIN_ABOVE_BYTES, {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    tunables = env["GLIBC_TUNABLES"].split(":")
    assert tunables[0] == "glibc.malloc.tcache_count=0"  # the user's own tunables are kept
    assert {"glibc.malloc.arena_max=1", "glibc.malloc.mmap_max=0"} <= set(tunables)
    assert worker_env(RETAIN_ABOVE_BYTES - 1, {}) == {ENV: "auto"}
    assert worker_env(RETAIN_ABOVE_BYTES, {ENV: "system"}) == {ENV: "system"}


def test_local_sweep_workers_start_with_the_choice_for_the_largest_trial(tmp_path: Path):
    from scalinglab.sweep.config import LocalExecutorConfig
    from scalinglab.sweep.executors import LocalExecutor, _environ

    big = {
        "model": {"n_layer": 4, "d_model": 128, "n_head": 4},
        "data": {"source": "text", "path": str(tmp_path / "missing.txt"), "seq_len": 128},
        "train": {"batch_size": 16, "budget": {"steps": 1}},
    }
    spec = {"trial_id": "big", "config": big, "run_dir": str(tmp_path / "run")}
    ex = LocalExecutor(LocalExecutorConfig(workers=1))
    try:
        ex.submit([spec])
        (outcome,) = _poll_all(ex)
    finally:
        ex.close()
    assert "arena_max=1" in ex._env["GLIBC_TUNABLES"]
    assert outcome["status"] == "failed" and "missing.txt" in outcome["error"]  # ran, failed fast
    before = dict(os.environ)
    with _environ({"SCALINGLAB_TEST_ONLY": "1"}):
        assert os.environ["SCALINGLAB_TEST_ONLY"] == "1"
    assert dict(os.environ) == before


def _poll_all(ex) -> list:
    out = []
    while ex.pending():
        out += ex.poll(timeout=5.0)
    return out


_RESTART = """
import json, os, sys
import pandas  # starts pyarrow's thread before the choice: harmless once restarted
from scalinglab.hostmem import restart_with_choice
print("start", os.getpid(), flush=True)
done = restart_with_choice(int(sys.argv[1]))
print(json.dumps({"done": done, "pid": os.getpid(),
                  "tunables": os.environ.get("GLIBC_TUNABLES", "")}))
"""


@pytest.mark.parametrize(
    ("setting", "temp_bytes", "restarts"),
    [
        ("auto", RETAIN_ABOVE_BYTES, True),
        ("auto", RETAIN_ABOVE_BYTES - 1, False),
        ("system", RETAIN_ABOVE_BYTES, False),
        ("retain", 0, True),
    ],
)
def test_entry_point_restarts_the_process_with_the_tunables(
    setting: str, temp_bytes: int, restarts: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", EXEC_MARK)}
    out = subprocess.run(
        [sys.executable, "-c", _RESTART, str(temp_bytes)],
        env={**env, ENV: setting},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    starts = [line.split()[1] for line in out if line.startswith("start")]
    result = json.loads(out[-1])
    assert len(starts) == (2 if restarts else 1)
    assert set(starts) == {str(result["pid"])}  # exec keeps the pid: signals still reach it
    assert ("glibc.malloc.arena_max=1" in result["tunables"]) == restarts
    assert result["done"] == ("retain" if restarts else setting)


def test_train_command_applies_the_choice_at_process_start(tmp_path: Path) -> None:
    # The console entry point (python -m scalinglab.cli runs the same main()) restarts once
    # with the tunables and trains; an in-process CliRunner call never restarts.
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", EXEC_MARK)}
    args = [
        "train",
        "--out",
        str(tmp_path / "run"),
        "--set",
        "model.n_layer=1",
        "--set",
        "model.d_model=16",
        "--set",
        "train.budget={steps: 3}",
        "--set",
        "data.source=synthetic",
        "--set",
        "train.eval_tokens=256",
    ]
    res = subprocess.run(
        [sys.executable, "-m", "scalinglab.cli", *args],
        env={**env, ENV: "retain"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stderr.count("host memory: retained") == 1
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 3

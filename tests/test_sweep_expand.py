"""Sweep schema, expansion (grid, zip, isoflop) against hand-computed tables, and trial ids."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scalinglab.config import ConfigError, TrialConfig
from scalinglab.sweep import expand, load_sweep, sweep_from_dict, trial_id
from scalinglab.sweep.plan import plan
from scalinglab.sweep.store import flatten

BASE: dict[str, Any] = {
    "model": {"n_layer": 1, "d_model": 32, "n_head": 2},
    "data": {
        "source": "synthetic",
        "seq_len": 32,
        "synthetic": {"vocab_size": 32, "n_tokens": 60_000, "branching": 4},
    },
    "train": {"batch_size": 8, "budget": {"steps": 10}},
}


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_and_zip_expand_in_documented_order() -> None:
    sweep = sweep_from_dict(
        {
            "name": "g",
            "base": BASE,
            "grid": {"model.d_model": [32, 64], "seed": [0, 1]},
            "zip": [{"model.n_layer": [1, 2], "optimizer.lr": [0.01, 0.003]}],
        }
    )
    trials = expand(sweep)
    got = [
        (t.config.model.d_model, t.config.seed, t.config.model.n_layer, t.config.optimizer.lr)
        for t in trials
    ]
    assert got == [
        (32, 0, 1, 0.01),
        (32, 0, 2, 0.003),
        (32, 1, 1, 0.01),
        (32, 1, 2, 0.003),
        (64, 0, 1, 0.01),
        (64, 0, 2, 0.003),
        (64, 1, 1, 0.01),
        (64, 1, 2, 0.003),
    ]
    assert trials[1].swept == {
        "model.d_model": 32,
        "seed": 0,
        "model.n_layer": 2,
        "optimizer.lr": 0.003,
    }
    assert len({t.trial_id for t in trials}) == 8


def test_isoflop_table_matches_hand_computation() -> None:
    # Kaplan counting, 6 * N_nonembed per token. N_nonembed by hand (flops.py formula):
    # d=32, f=128: norms 128 + attn 4224 + mlp 8352 + final norm 64 = 12,768
    # d=48, f=192: norms 192 + attn 9408 + mlp 18672 + final norm 96 = 28,368
    # One step = 8 x 32 = 256 tokens; steps = floor(C / (6 N_ne) / 256).
    sweep = sweep_from_dict(
        {
            "name": "iso",
            "base": BASE,
            "grid": {"model.d_model": [32, 48]},
            "isoflop": {"flops": [1e9, 2e9]},
        }
    )
    rows = plan(expand(sweep), None, None)
    table = [
        (r.trial.swept["train.budget.flops"], r.trial.config.model.d_model, r.N_nonembed, r.steps)
        for r in rows
    ]
    assert table == [
        (1e9, 32, 12768, 50),  # 1e9 / 76608 = 13053.6 tokens -> 50 steps
        (1e9, 48, 28368, 22),  # 1e9 / 170208 = 5875.1 -> 22
        (2e9, 32, 12768, 101),  # 26107.2 -> 101
        (2e9, 48, 28368, 45),  # 11750.3 -> 45
    ]
    for r in rows:
        assert r.trial.config.train.budget.flops == r.trial.swept["train.budget.flops"]
        assert r.steps * 256 == r.D
        assert pytest.approx(6 * r.N_nonembed * r.D) == r.C
        assert r.trial.swept["train.budget.flops"] >= r.C


def test_plan_warns_about_trials_that_cannot_work() -> None:
    sweep = sweep_from_dict(
        {
            "name": "w",
            "base": BASE,
            "grid": {"train.batch_size": [8, 4096]},
            "isoflop": {"flops": [1e6, 1e9]},
        }
    )
    rows = plan(expand(sweep), None, None)
    warn = {
        (r.trial.swept["train.budget.flops"], r.trial.config.train.batch_size): r.warnings
        for r in rows
    }
    assert any("smaller than one step" in w for w in warn[(1e6, 8)])
    assert any("exceeds the" in w and "training sequences" in w for w in warn[(1e9, 4096)])
    assert not warn[(1e9, 8)]


def test_trial_id_is_stable_across_processes() -> None:
    cfg = TrialConfig.model_validate(BASE)
    code = (
        "import json,sys; from scalinglab.config import TrialConfig; "
        "from scalinglab.sweep import trial_id; "
        "print(trial_id(TrialConfig.model_validate(json.loads(sys.argv[1]))))"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, json.dumps(BASE)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == trial_id(cfg) == trial_id(TrialConfig.model_validate(BASE))
    assert len(other) == 12 and int(other, 16) >= 0


def _perturb(value: Any, allowed: tuple | None) -> list[Any]:
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value * 2]
    if isinstance(value, float):
        return [value * 0.5, value + 0.01]
    if allowed:
        return [a for a in allowed if a != value]
    if value is None:
        return [1, 0.5, "x"]
    return [f"{value}x"]


def test_any_config_change_changes_the_id() -> None:
    from scalinglab.config import set_dotted
    from scalinglab.identity import CADENCE_FIELDS, identity_dump

    base = TrialConfig.model_validate(BASE)
    base_id = trial_id(base)
    changed = 0
    for key, value in flatten(base.model_dump(mode="json")).items():
        for new in _perturb(value, None) + ["swiglu", "rotary", "full", "wsd", "sgd"]:
            data = base.model_dump(mode="json")
            set_dotted(data, key, list(new) if isinstance(new, tuple) else new)
            try:
                cfg = TrialConfig.model_validate(data)
            except ValueError:
                continue
            if cfg == base:
                continue
            if key.split(".")[-1] in (*CADENCE_FIELDS, "trackers"):  # left out on purpose
                assert identity_dump(cfg) == identity_dump(base) and trial_id(cfg) == base_id
                continue
            assert trial_id(cfg) != base_id, key
            changed += 1
            break
    assert changed > 30  # nearly every field could be changed and each changed the id


def test_located_schema_errors(tmp_path: Path) -> None:
    cases = {
        "name: s\ngrids: {seed: [0]}\n": (
            "sweep.yaml:2: grids: unknown field; allowed: name, base, grid, zip, isoflop, executor"
        ),
        "name: s\nexecutor: {name: k8s}\n": "sweep.yaml:2: executor: not allowed; expected one "
        "of local, ray, slurm",
        "name: s\nexecutor:\n  name: local\n  worker: 2\n": "sweep.yaml:4: executor.worker: "
        "unknown field; allowed: name, workers, threads",
        "name: s\nbase:\n  model:\n    dmodel: 3\n": "sweep.yaml:4: model.dmodel: not a field of "
        "model.family 'gpt'; allowed: activation",
        "name: s\ngrid:\n  seed: [0]\n  model.activation: [gelu, gelux]\n": "sweep.yaml:4: "
        "model.activation: not allowed; expected 'sigmoid'",
        "name: s\nzip:\n  - {seed: [0, 1], model.d_model: [32]}\n": "sweep.yaml:2: zip: zip group "
        "0: lists must be non-empty and of equal length",
        "name: s\ngrid: {train.budget.tokens: [1.0e6]}\nisoflop: {flops: [1.0e9]}\n": (
            "sweep.yaml:2: grid.train.budget.tokens: isoflop sets train.budget"
        ),
        "name: a/b\n": "sweep.yaml:1: name: must be letters, digits",
        "name: s\ngrid:\n  seed: [0, 1]\nzip:\n  - {seed: [2, 3], model.d_model: [32, 48]}\n": (
            "seed: swept twice (in grid and a zip group)"
        ),
        "name: s\ngrid:\n  seed: [0, 1]\n  seed: [2]\n": "sweep.yaml:4: duplicate key 'seed'",
    }
    for text, expected in cases.items():
        path = _write(tmp_path, text)
        with pytest.raises(ConfigError) as e:
            load_sweep(path)
        assert expected in str(e.value), (text, str(e.value))
        assert str(path) in str(e.value)


def test_duplicate_trials_collapse_and_quickstart_loads() -> None:
    sweep = sweep_from_dict({"name": "d", "base": BASE, "grid": {"seed": [0, 0, 1]}})
    assert [t.config.seed for t in expand(sweep)] == [0, 1]
    root = Path(__file__).resolve().parents[1]
    sweep, trials = load_sweep(root / "sweeps" / "quickstart.yaml")
    assert len({t.config.train.budget.flops for t in trials}) >= 3
    sizes = {t.config.model.d_model for t in trials}
    assert len(sizes) >= 4 and len(trials) >= 12
    rows = plan(trials, None, None)
    assert all(not r.warnings for r in rows), [r.warnings for r in rows]

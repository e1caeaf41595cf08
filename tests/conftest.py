"""Shared fixtures: tiny trial configs that train in seconds on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from scalinglab.config import TrialConfig, trial_from_dict

# The base trial of the small test sweeps: 200 steps of a tiny GPT on a synthetic language.
SWEEP_BASE: dict[str, Any] = {
    "model": {"n_layer": 1, "d_model": 32, "n_head": 2},
    "data": {
        "source": "synthetic",
        "seq_len": 32,
        "synthetic": {"vocab_size": 32, "n_tokens": 60000, "branching": 4},
    },
    "optimizer": {"lr": 0.01},
    "train": {
        "batch_size": 8,
        "budget": {"steps": 200},
        "eval_every": 50,
        "log_every": 10,
        "eval_tokens": 1024,
        "checkpoint_every": 25,
    },
}


def tiny_trial(**overrides: Any) -> TrialConfig:
    """A 1-layer, 32-wide GPT on a small synthetic language; `overrides` are dotted keys."""
    base: dict[str, Any] = {
        "seed": 0,
        "model": {"n_layer": 1, "d_model": 32, "n_head": 2, "vocab_size": 256},
        "data": {
            "source": "synthetic",
            "seq_len": 32,
            "synthetic": {"vocab_size": 32, "n_tokens": 60_000, "branching": 4},
        },
        "optimizer": {"name": "adamw", "lr": 1.0e-2},
        "train": {
            "batch_size": 8,
            "budget": {"steps": 40},
            "eval_every": 10,
            "log_every": 5,
            "eval_tokens": 2048,
            "checkpoint_every": 10,
        },
    }
    return trial_from_dict(base, overrides=[f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One JAX compilation cache per test process, shared by the sweep tests."""
    return tmp_path_factory.getbasetemp() / "jax_cache"


@pytest.fixture
def tiny() -> Any:
    return tiny_trial


@pytest.fixture(autouse=True, scope="session")
def _fit_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The fit commands' compilation cache goes to a test directory, not the user's cache."""
    import os

    old = os.environ.get("SCALINGLAB_FIT_CACHE")
    os.environ["SCALINGLAB_FIT_CACHE"] = str(tmp_path_factory.mktemp("fit_cache"))
    yield
    if old is None:
        os.environ.pop("SCALINGLAB_FIT_CACHE", None)
    else:
        os.environ["SCALINGLAB_FIT_CACHE"] = old

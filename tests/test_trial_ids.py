"""Trial ids: what a sweep directory's names mean. A change to any pinned id is a deliberate,
documented change of the id scheme, never a side effect: every existing sweep would retrain.

Scheme 2 (current) hashes `identity_dump`: the results-determining config without the
log/eval/checkpoint cadence. Scheme 1 (pinned at commit f290a0a, before round 2) hashed the
whole config but the trackers; its ids must stay computable so old directories are adopted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import tiny_trial
from scalinglab import runfiles as rf
from scalinglab.config import trial_from_dict
from scalinglab.families import REGISTRY
from scalinglab.identity import ADDED_FIELDS, results_dump
from scalinglab.sweep.expand import legacy_trial_id, trial_id
from scalinglab.sweep.store import flatten
from scalinglab.train import run_trial

TEXT: dict[str, Any] = {
    "source": "synthetic",
    "seq_len": 32,
    "synthetic": {"vocab_size": 32, "n_tokens": 60000, "branching": 4},
}
TRAIN: dict[str, Any] = {
    "batch_size": 8,
    "budget": {"steps": 40},
    "eval_every": 10,
    "log_every": 5,
    "eval_tokens": 2048,
    "checkpoint_every": 10,
}
IMAGE_MODEL: dict[str, Any] = {"image_size": 8, "in_channels": 1, "n_classes": 10}

# (config, scheme-1 id computed by the code at commit f290a0a, scheme-2 id)
PINNED: dict[str, tuple[dict[str, Any], str, str]] = {
    "gpt": (
        {
            "seed": 0,
            "model": {"family": "gpt", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "2522a6c11359",
        "ef0fdba78f12",
    ),
    "gpt_rotary_untied": (
        {
            "seed": 3,
            "model": {
                "family": "gpt",
                "n_layer": 2,
                "d_model": 64,
                "n_head": 4,
                "positions": "rotary",
                "tie_embeddings": False,
                "activation": "swiglu",
            },
            "data": TEXT,
            # weight_decay given: the pins were computed when 0.1 was every optimiser's default
            "optimizer": {"name": "adam", "lr": 1e-3, "weight_decay": 0.1},
            "train": {**TRAIN, "budget": {"flops": 1e11}},
        },
        "85966b4a4aa6",
        "3ff7d07dfd7f",
    ),
    "bert": (
        {
            "seed": 0,
            "model": {"family": "bert", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "fbe58906dcf3",
        "a4010138b8d0",
    ),
    "t5": (
        {
            "seed": 0,
            "model": {"family": "t5", "n_layer": 1, "d_model": 32, "n_head": 2},
            "data": TEXT,
            "train": TRAIN,
        },
        "db67ffd88ea7",
        "81a93bff7af8",
    ),
    "mlp": (
        {
            "seed": 0,
            "model": {"family": "mlp", "width": 32, "depth": 2, **IMAGE_MODEL},
            "data": {"source": "digits"},
            "train": {**TRAIN, "budget": {"tokens": 5000}},
        },
        "f6e22d1bdca0",
        "771d11ea4d80",
    ),
    "resnet": (
        {
            "seed": 1,
            "model": {"family": "resnet", **IMAGE_MODEL},
            "data": {"source": "digits"},
            "optimizer": {"name": "sgd", "lr": 0.1, "weight_decay": 0.1},
            "train": {**TRAIN, "budget": {"tokens": 5000}},
        },
        "22c32fc2fab0",
        "e4a5ec2810da",
    ),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_trial_ids_are_pinned(name: str) -> None:
    cfg, first, second = PINNED[name]
    assert legacy_trial_id(trial_from_dict(cfg)) == first
    assert trial_id(trial_from_dict(cfg)) == second


def test_cadence_leaves_the_id_and_results_do_not() -> None:
    base = trial_id(tiny_trial())
    for key, value in [
        ("train.checkpoint_every", 7),
        ("train.keep_checkpoints", 5),
        ("train.log_every", 3),
        ("train.eval_every", 20),
        ("train.trackers", "[tensorboard]"),
    ]:
        assert trial_id(tiny_trial(**{key: value})) == base, key
    for key, value in [("optimizer.lr", 0.02), ("train.eval_tokens", 1024), ("seed", 1)]:
        assert trial_id(tiny_trial(**{key: value})) != base, key
    # With early stopping, evaluations decide when training ends: their cadence counts.
    stop = tiny_trial(**{"train.early_stopping": "{patience: 2}"})
    assert trial_id(stop.model_copy(deep=True)) != trial_id(
        tiny_trial(**{"train.early_stopping": "{patience: 2}", "train.eval_every": 20})
    )


def test_cadence_does_not_change_the_losses(tmp_path: Path) -> None:
    """Why cadence may leave the id: the same trial logged, evaluated and checkpointed at
    other steps computes the same losses, bit for bit."""
    a = run_trial(tiny_trial(), tmp_path / "a")
    b = run_trial(
        tiny_trial(**{"train.log_every": 3, "train.eval_every": 20, "train.checkpoint_every": 7}),
        tmp_path / "b",
    )
    # (final_train_loss is the mean since the last log, so its window is the cadence's.)
    assert a["final_eval_loss"] == b["final_eval_loss"]

    def evals(d: Path) -> dict[int, float]:
        records = rf.read_jsonl(d / rf.METRICS)
        return {r["step"]: r["eval_loss"] for r in records if r.get("eval_loss") is not None}

    ea, eb = evals(tmp_path / "a"), evals(tmp_path / "b")
    assert set(eb) == {20, 40} and all(ea[s] == eb[s] for s in eb)


IMAGE_FAMILIES = ("mlp", "resnet")


def schema_fields() -> set[str]:
    """Every results-determining field path of every family ("family:model.x" for models)."""
    out: set[str] = set()
    for fam in REGISTRY:
        doc: dict[str, Any] = {"model": {"family": fam}, "train": {"early_stopping": {}}}
        if fam in IMAGE_FAMILIES:
            doc["model"].update(IMAGE_MODEL)
            doc["data"] = {"source": "digits"}
        for key in flatten(results_dump(trial_from_dict(doc))):
            out.add(f"{fam}:{key}" if key.startswith("model.") else key)
    return out


def test_new_fields_are_registered_with_a_neutral_value() -> None:
    """A field added to the schema changes every id unless `ADDED_FIELDS` names the value at
    which it computes what configs computed before it existed; a removed one changes the ids
    of configs that set it. Either needs a deliberate decision, so both fail here."""
    frozen = set(Path(__file__).with_name("data").joinpath("id_fields_v2.txt").read_text().split())
    now = schema_fields()
    added = {f.split(":")[-1] for f in now - frozen}
    assert not (frozen - now), f"fields removed from the schema: {sorted(frozen - now)}"

    def registered(field: str) -> bool:  # the field, or a sub-config holding it
        parts = field.split(".")
        return any(".".join(parts[:k]) in ADDED_FIELDS for k in range(1, len(parts) + 1))

    unregistered = {f for f in added if not registered(f)}
    assert not unregistered, f"add to identity.ADDED_FIELDS: {sorted(unregistered)}"
    # The file stays the v2 record; a field added since is guarded by its ADDED_FIELDS entry,
    # which must name a field the schema still has (removing it changes ids of configs using it).
    leaves = {f.split(":")[-1] for f in now}
    stale = {k for k in ADDED_FIELDS if not any(f == k or f.startswith(k + ".") for f in leaves)}
    assert not stale, f"ADDED_FIELDS names fields removed from the schema: {sorted(stale)}"


def test_added_fields_keep_ids_and_a_set_one_changes_them() -> None:
    """Every id of a config from before the regression source is unchanged (the pins above);
    setting an added field to anything but its neutral value is a different trial."""
    cfg, _, second = PINNED["mlp"]
    assert trial_id(trial_from_dict(cfg)) == second
    noisy = {**cfg, "data": {"source": "digits", "functions": {"noise": 0.1}}}
    assert trial_id(trial_from_dict(noisy)) != second

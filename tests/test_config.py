"""Config schema: defaults, size table, overrides and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from scalinglab.config import GPT_SIZES, ConfigError, dump_trial, load_trial, trial_from_dict


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "trial.yaml"
    p.write_text(text)
    return p


def test_default_config_loads() -> None:
    cfg = load_trial()
    assert cfg.model.family == "gpt"
    assert cfg.data.source == "stdlib"
    assert cfg.model.max_seq_len == cfg.data.seq_len


def test_size_table_sets_dimensions() -> None:
    cfg = trial_from_dict({"model": {"size": "small"}})
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head) == (
        GPT_SIZES["small"]["n_layer"],
        GPT_SIZES["small"]["d_model"],
        GPT_SIZES["small"]["n_head"],
    )


def test_overrides_are_yaml_scalars() -> None:
    cfg = load_trial(overrides=["optimizer.lr=1.0e-4", "train.budget={steps: 7}", "seed=3"])
    assert cfg.optimizer.lr == 1e-4
    assert cfg.train.budget.steps == 7 and cfg.train.budget.tokens is None
    assert cfg.seed == 3


def test_round_trip_through_yaml(tmp_path: Path) -> None:
    cfg = load_trial(overrides=["model.activation=swiglu"])
    again = load_trial(_write(tmp_path, dump_trial(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model:\n  activation: gelux\n", ["trial.yaml:2", "model.activation", "swiglu"]),
        ("optimizer:\n  name: adamx\n", ["trial.yaml:2", "optimizer.name", "adafactor"]),
        ("data:\n  source: web\n", ["trial.yaml:2", "data.source", "synthetic"]),
        ("model:\n  n_layer: 2\n  widht: 3\n", ["trial.yaml:3", "model.widht", "d_model"]),
        ("train:\n  budget: {tokens: 1, steps: 2}\n", ["trial.yaml:2", "exactly one"]),
        ("model:\n  size: enormous\n", ["trial.yaml:2", "unknown size", "small"]),
        ("data:\n  source: text\n", ["data.path is required"]),
        ("model:\n  d_model: 65\n  n_head: 2\n", ["divisible by n_head"]),
        (
            "model:\n  family: bert\n  parametrization: mup\n",
            [
                "trial.yaml:3: model.parametrization: 'mup' is implemented for the gpt and mlp "
                "families, not 'bert'; allowed for bert: standard"
            ],
        ),
    ],
)
def test_bad_config_names_file_line_field(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_trial(_write(tmp_path, text))
    for part in expected:
        assert part in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_trial(tmp_path / "nope.yaml")


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_trial(overrides=["optimizer.lr"])


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        (
            {"family": "gpt", "width": 3},
            {},
            ["model.width", "not a field of model.family 'gpt'", "d_model"],
        ),
        ({"family": "rnn"}, {}, ["model.family", "unknown family 'rnn'", "resnet"]),
        ({"family": "resnet", "width": 8}, {}, ["cannot train on data.source 'stdlib'"]),
        (
            {"family": "mlp", "image_size": 8, "in_channels": 1, "n_classes": 10},
            {},
            ["cannot train on data.source 'stdlib'"],
        ),
    ],
)
def test_family_fields_are_checked(model: dict, data: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        trial_from_dict({"model": model, "data": data})
    for part in expected:
        assert part in str(info.value)


def test_duplicate_keys_are_located_errors(tmp_path: Path) -> None:
    text = "seed: 0\ntrain:\n  batch_size: 8\n  eval_every: 10\n  batch_size: 16\n"
    with pytest.raises(
        ConfigError, match=r"trial\.yaml:5: duplicate key 'batch_size' \(first at line 3\)"
    ):
        load_trial(_write(tmp_path, text))


def test_sweep_with_a_duplicated_grid_key_is_refused(tmp_path: Path) -> None:
    from scalinglab.sweep import load_sweep

    path = tmp_path / "s.yaml"
    path.write_text("name: s\ngrid:\n  seed: [0, 1]\n  seed: [2]\n")
    with pytest.raises(ConfigError, match=r"s\.yaml:4: duplicate key 'seed' \(first at line 3\)"):
        load_sweep(path)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        (
            "model.n_layer=true",
            "--set model.n_layer=true: model.n_layer: Input should be a valid integer"
            " (got true, a boolean",
        ),
        (
            "optimizer.lr=false",
            "--set optimizer.lr=false: optimizer.lr: Input should be a valid number",
        ),
        (
            "optimizer.lr=.inf",
            "--set optimizer.lr=.inf: optimizer.lr: Input should be a finite number",
        ),
        (
            "train.budget={tokens: 1.0e+308}",
            "train.budget.tokens: Input should be less than or equal to",
        ),
        ("model.n_layer=[1", "--set 'model.n_layer=[1': the value is not valid YAML"),
    ],
)
def test_bad_overrides_blame_the_flag(flag: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_trial(overrides=[flag])
    assert expected in str(err.value) and "trial.yaml" not in str(err.value)
    assert "\n" not in str(err.value)


def test_booleans_still_set_boolean_fields() -> None:
    cfg = load_trial(overrides=["model.tie_embeddings=false"])
    assert cfg.model.tie_embeddings is False


def _readme_trial_config() -> dict:
    """The annotated trial config in README.md ("Trial config"): the documented defaults."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = text.split("### Trial config")[1].split("```yaml\n")[1].split("```")[0]
    return yaml.safe_load(block)


def _subset_mismatches(documented: dict, actual: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in documented.items():
        if isinstance(value, dict):
            out += _subset_mismatches(value, actual[key], f"{prefix}{key}.")
        elif actual[key] != value and not (  # YAML 1.1 reads 1.0e6 as a string
            isinstance(value, str)
            and isinstance(actual[key], float)
            and float(value) == actual[key]
        ):
            out.append(f"{prefix}{key}: README {value!r}, schema {actual[key]!r}")
    return out


def test_readme_trial_config_is_the_schema_defaults() -> None:
    """A field left out of a YAML takes the default README.md documents (not the shipped
    trial.yaml's choices): a config built from nothing has every documented value."""
    documented = _readme_trial_config()
    assert not _subset_mismatches(documented, trial_from_dict({}).model_dump(mode="json"))


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ({"vocab_size": 1}, "vocab_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"n_layer": 0}, "n_layer"),
        ({"family": "mlp", "n_classes": 1}, "n_classes"),
    ],
)
def test_degenerate_model_fields_are_refused(model: dict, field: str) -> None:
    """One token, one class, a layer-free model or dropout of everything cannot train."""
    data = {"source": "digits"} if model.get("family") == "mlp" else {}
    with pytest.raises(ConfigError, match=f"model.{field}"):
        trial_from_dict({"model": model, "data": data})


def test_smallest_sound_model_fields_are_accepted() -> None:
    cfg = trial_from_dict({"model": {"vocab_size": 2, "dropout": 0.99, "n_layer": 1}})
    assert (cfg.model.vocab_size, cfg.model.dropout, cfg.model.n_layer) == (2, 0.99, 1)
    mlp = trial_from_dict(
        {
            "model": {"family": "mlp", "n_classes": 2},
            "data": {"source": "shapes", "shapes": {"n_classes": 2}},
        }
    )
    assert mlp.model.n_classes == 2


def test_assignments_are_validated() -> None:
    """Code that edits a config after loading (resolve, --set) meets the same checks."""
    cfg = trial_from_dict({})
    with pytest.raises(ValueError):
        cfg.model.dropout = 1.5


def test_a_registered_family_cannot_be_edited_in_place() -> None:
    """The registry is shared by every trial in a process: a plug-in's record is frozen."""
    from dataclasses import FrozenInstanceError

    from scalinglab.families import REGISTRY

    with pytest.raises(FrozenInstanceError):
        REGISTRY["gpt"].name = "other"  # type: ignore[misc]

"""Config schema: defaults, size table, overrides and located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

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
                "trial.yaml:3: model.parametrization: "
                "'mup' is not implemented yet; allowed: standard"
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

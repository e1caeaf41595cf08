"""Property-based input checks: any `--set` string, trial YAML or results table either works
or fails with one located line (a ScalinglabError or the CLI's exit code 2), never with a
traceback or an exception of another kind."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from scalinglab.cli import app
from scalinglab.config import load_trial
from scalinglab.errors import ScalinglabError

KEYS = [
    "seed",
    "model.n_layer",
    "model.d_model",
    "model.activation",
    "model.dropout",
    "model.family",
    "optimizer.lr",
    "optimizer.name",
    "optimizer.schedule",
    "train.batch_size",
    "train.budget",
    "train.budget.steps",
    "data.seq_len",
    "data.source",
    "nope.field",
    "model",
    "",
]
VALUES = st.one_of(
    st.sampled_from(
        ["1", "0", "-3", "1e308", ".inf", ".nan", "true", "null", "[1, 2]", "{steps: 3}",
         "{tokens: 1e308}", "gelu", "[1", "{a: ", "'x", "- a", "1.0e-3", "''", "{}", "[]"]
    ),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)  # fmt: skip
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _one_line(e: Exception) -> None:
    text = str(e)
    assert text and "Traceback" not in text
    # Validation may report several fields, one located line each; none is blank.
    assert all(line.strip() for line in text.splitlines()), text


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_set_flag_validates_or_says_which_flag(pairs: list[tuple[str, str]]) -> None:
    flags = [f"{k}={v}" for k, v in pairs]
    try:
        load_trial(overrides=flags)
    except ScalinglabError as e:
        _one_line(e)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["seed", "model", "optimizer", "train", "data", "bogus"]),
        st.one_of(
            st.integers(-3, 10**6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.text(max_size=8),
            st.none(),
            st.booleans(),
            st.dictionaries(st.sampled_from(KEYS[1:8] + ["steps", "lr", "name"]), VALUES),
        ),
        max_size=4,
    )
)
def test_any_trial_yaml_validates_or_fails_located(doc: dict) -> None:
    import tempfile

    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trial.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            load_trial(path)
        except ScalinglabError as e:
            _one_line(e)
            assert str(path) in str(e)


NUM = st.one_of(
    st.floats(min_value=-10, max_value=1e25),
    st.sampled_from([1e6, 1e6, 2e9, 3.0, 0.0, float("nan"), float("inf"), -float("inf")]),
)


VALID = st.tuples(  # positive, finite, plausible: these reach the fit itself
    st.sampled_from([1e6, 3e6, 1e7, 3e7, 1e8, 1e9]),
    st.sampled_from([1e8, 1e9, 1e10, 1e11]),
    st.floats(min_value=1.5, max_value=5.0),
)


@pytest.mark.filterwarnings("error::RuntimeWarning")  # degenerate data: words, not numpy noise
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(st.tuples(NUM, NUM, NUM), min_size=0, max_size=12),
        st.lists(VALID, min_size=5, max_size=14),
    )
)
@example(  # once a complex-number traceback: a negative exponent in the closed-form optimum
    [(1e6, 1e8, 2.0), (1e6, 1e9, 2.0), (1e6, 1e10, 2.0), (3e6, 1e8, 2.0), (1e7, 1e8, 3.0)]
)
@example([(1e6, 1e8, 2.5), (3e6, 1e9, 2.4), (1e7, 1e10, 2.3)] * 5)  # three points, repeated
def test_any_results_table_fits_or_refuses_in_one_line(rows: list[tuple]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        pd.DataFrame(rows, columns=["N", "D", "loss"]).to_csv(path, index=False)
        res = CliRunner().invoke(
            app, ["fit", str(path), "--bootstrap", "0", "--starts", "20", "--approach", "1,3"]
        )
    assert res.exit_code in (0, 2), res.output + repr(res.exception)
    if res.exit_code == 2:
        lines = res.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output


SWEEP_VALUES = st.one_of(
    st.integers(-2, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.none(),
    st.booleans(),
    st.lists(st.one_of(st.integers(-2, 100), st.floats(-1, 1e12), st.text(max_size=4)), max_size=3),
    st.dictionaries(st.sampled_from(KEYS[:-1] + ["flops", "name", "workers"]), VALUES, max_size=3),
)


@SETTINGS
@given(
    st.dictionaries(
        st.sampled_from(["name", "base", "grid", "zip", "isoflop", "executor", "bogus"]),
        SWEEP_VALUES,
        max_size=5,
    )
)
@example({"name": "s", "grid": {"seed": [0, 1], "model.d_model": [16, "x"]}})
@example({"name": "s", "isoflop": {"flops": [1e308]}, "grid": {"model.d_model": [8]}})
@example({"name": "s", "zip": [{"seed": [0, 1], "optimizer.lr": [0.1]}]})
def test_any_sweep_yaml_expands_or_fails_located(doc: dict) -> None:
    import tempfile

    import yaml

    from scalinglab.sweep import load_sweep

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.yaml"
        path.write_text(yaml.safe_dump(doc))
        try:
            load_sweep(path)
        except ScalinglabError as e:
            _one_line(e)
            assert str(path) in str(e)

"""The `facts` data source and the hallucination study's recall and calibration metrics."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from scalinglab.config import ConfigError, FactsConfig, load_trial, trial_from_dict
from scalinglab.data import DataError, build_dataset
from scalinglab.data.facts import fact_table, generate, layout, query_prompts
from scalinglab.experiments import facts_eval as fe

SMALL = FactsConfig(
    filler_vocab=6,
    entity_pieces=5,
    entity_tokens=2,
    n_attributes=4,
    facts_per_group=3,
    exposures=(0, 1, 3, 7),
    n_tokens=2000,
    seed=3,
)


def _count_facts(tokens: np.ndarray, cfg: FactsConfig) -> Counter:
    """(entity pieces..., attribute) -> occurrences, read off the stream at every REL."""
    rel, k = layout(cfg).rel, cfg.entity_tokens
    found: Counter = Counter()
    for i in np.flatnonzero(tokens == rel):
        found[(*(int(t) for t in tokens[i - k : i]), int(tokens[i + 1]))] += 1
    return found


def test_every_fact_occurs_in_the_train_split_exactly_as_often_as_its_group_says() -> None:
    cfg = trial_from_dict(
        {"data": {"source": "facts", "seq_len": 8, "val_frac": 0.1, "facts": SMALL.model_dump()}}
    ).data
    ds = build_dataset(cfg)
    lay, table = layout(SMALL), fact_table(SMALL)
    found = _count_facts(np.asarray(ds.train), SMALL)
    want = {}
    for i in range(len(table.attributes)):  # the table lists the groups in config order
        c = SMALL.exposures[i // SMALL.facts_per_group]
        if c:
            want[(*table.entities[i].tolist(), int(table.attributes[i]))] = c
    assert dict(found) == want
    # Nothing but facts holds a piece, an attribute or REL; the rest is filler.
    train = np.asarray(ds.train)
    occurrences = sum(want.values())
    assert np.sum(train == lay.rel) == occurrences
    assert np.sum((train >= lay.pieces) & (train < lay.attributes)) == 2 * occurrences
    assert np.sum((train >= lay.attributes) & (train < lay.rel)) == occurrences
    assert ds.vocab_size == lay.vocab_size == 6 + 5 + 4 + 1
    assert len(train) == 2000 - 200 and ds.info["train_fact_occurrences"] == occurrences
    # Entities are distinct names; every attribute is one of the A values.
    assert len({tuple(e) for e in table.entities.tolist()}) == len(table.entities)
    assert set(table.attributes.tolist()) <= set(range(lay.attributes, lay.rel))
    # The validation stream asks facts of every group, held-out ones included, truthfully.
    truth = {
        (*e, a) for e, a in zip(table.entities.tolist(), table.attributes.tolist(), strict=True)
    }
    val = _count_facts(np.asarray(ds.val), SMALL)
    assert set(val) <= truth and sum(val.values()) == ds.info["val_fact_occurrences"] > 0


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a, b = generate(SMALL, 0.1), generate(SMALL, 0.1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = generate(SMALL.model_copy(update={"seed": 4}), 0.1)
    assert not np.array_equal(a.train, c.train)


def test_query_prompts_end_with_each_entity_and_rel() -> None:
    prompts, table = query_prompts(SMALL, 8), fact_table(SMALL)
    assert prompts.shape == (len(table.attributes), 8)
    np.testing.assert_array_equal(prompts[:, -3:-1], table.entities)
    assert (prompts[:, -1] == layout(SMALL).rel).all() and (prompts[:, :-3] < 6).all()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"entity_pieces": 3, "facts_per_group": 4}, "need entity_pieces ** entity_tokens >= 16"),
        ({"n_tokens": 1024, "exposures": [100]}, "data.facts.n_tokens: the 300 fact occurrences"),
    ],
)
def test_inconsistent_fields_are_one_line_data_errors(fields: dict, message: str) -> None:
    facts = {**SMALL.model_dump(), **fields}
    cfg = trial_from_dict({"data": {"source": "facts", "seq_len": 8, "facts": facts}}).data
    with pytest.raises(DataError) as info:
        build_dataset(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_field_is_a_located_config_error(tmp_path: Path) -> None:
    path = tmp_path / "trial.yaml"
    path.write_text("data:\n  source: facts\n  facts:\n    exposures: [1, -2]\n")
    with pytest.raises(ConfigError) as info:
        load_trial(path)
    assert "data.facts.exposures" in str(info.value)


# --- recall and calibration -------------------------------------------------------------------


def _oracle(cfg: FactsConfig, known: np.ndarray, shift: int = 0) -> fe.LogitsFn:
    """Logits of a model that knows the fact table: at REL, a logit of 20 on the attribute
    (shifted by `shift` values) of a `known` fact, uniform over attributes for the others."""
    lay, table = layout(cfg), fact_table(cfg)
    k, a = cfg.entity_tokens, cfg.n_attributes
    lookup = {tuple(e): i for i, e in enumerate(table.entities.tolist())}

    def logits(tokens: np.ndarray) -> np.ndarray:
        out = np.zeros((*tokens.shape, lay.vocab_size), np.float32)
        out[..., : lay.attributes] = -30.0  # only attributes are plausible after REL
        out[..., lay.rel] = -30.0
        for b, t in zip(*np.nonzero(tokens == lay.rel), strict=True):
            i = lookup[tuple(tokens[b, t - k : t].tolist())]
            if known[i]:
                out[b, t, lay.attributes + (table.attributes[i] - lay.attributes + shift) % a] = 20
        return out

    return logits


def test_an_oracle_of_the_seen_facts_recalls_them_all_and_is_unsure_of_the_rest() -> None:
    table, lay = fact_table(SMALL), layout(SMALL)
    prompts = query_prompts(SMALL, 8)
    seen = table.exposures > 0
    metrics = fe.recall(_oracle(SMALL, seen), prompts, table.attributes, batch=5)
    out = fe.by_exposure(table.exposures, metrics, (lay.attributes, lay.rel))
    assert set(out) == {0, 1, 3, 7}
    top = 1.0 / (1.0 + 3.0 * math.exp(-20.0) + 12.0 * math.exp(-50.0))
    for c in (1, 3, 7):
        assert out[c]["accuracy"] == 1.0 and out[c]["confident_wrong"] == 0.0
        assert out[c]["mean_top_prob"] == pytest.approx(top, rel=1e-6)
    # Held out: the attribute prior (1/A each), never confident; argmax a tie, the first.
    assert out[0]["mean_top_prob"] == pytest.approx(0.25, rel=1e-6)
    assert out[0]["mean_p_true"] == pytest.approx(0.25, rel=1e-6)
    assert out[0]["confident"] == 0.0 and out[0]["answers_attribute"] == 1.0
    # A confidently wrong oracle: every answer confident, none right.
    wrong = fe.recall(_oracle(SMALL, np.ones_like(seen), shift=1), prompts, table.attributes)
    for v in fe.by_exposure(table.exposures, wrong, (lay.attributes, lay.rel)).values():
        assert v["accuracy"] == 0.0 and v["confident_wrong"] == 1.0


def test_calibration_error_of_a_hand_computed_example() -> None:
    # Top probabilities 0.9 (right), 0.9 (wrong), 0.6 (right), 0.45 (wrong), 1.0 (right, in
    # the last bin) and a masked token: 10 bins -> bin 9 holds three (2 right, confidences
    # summing to 2.8), bin 6 one, bin 4 one: ECE = (|2 - 2.8| + |1 - 0.6| + |0 - 0.45|) / 5.
    rows = [
        [0.9, 0.05, 0.05],
        [0.9, 0.05, 0.05],
        [0.6, 0.3, 0.1],
        [0.3, 0.25, 0.45],
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.0],
    ]
    probs = np.array(rows)
    targets = np.array([[0, 1, 0, 1, 0, 2]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], bool)
    logits = np.log(np.maximum(probs, 1e-30))[None]
    got = fe.calibration_bins(logits, targets, mask, n_bins=10)
    count = np.asarray(got["count"])
    np.testing.assert_array_equal(count, [0, 0, 0, 0, 1, 0, 1, 0, 0, 3])
    np.testing.assert_allclose(np.asarray(got["confidence"])[[4, 6, 9]], [0.45, 0.6, 2.8], 1e-6)
    np.testing.assert_array_equal(np.asarray(got["correct"])[[4, 6, 9]], [0, 1, 2])
    ece = fe.expected_calibration_error(count, got["confidence"], got["correct"])
    assert ece == pytest.approx((0.8 + 0.4 + 0.45) / 5, abs=1e-6)
    want_nll = -np.log([0.9, 0.05, 0.6, 0.25, 1.0]).sum()
    assert float(got["nll"]) == pytest.approx(want_nll, rel=1e-6)

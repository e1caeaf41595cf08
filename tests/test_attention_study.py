"""The `induction` data source and the attention-map extraction of the attention study.

The source is checked against a parser written here (every episode's structure, token by
token), against an enumeration of all episodes of a tiny setting (the exact conditional law of
every token and the entropy rate), per seed, and for one-line errors. The attention maps are
checked against a numpy forward pass of the GPT written here from the raw parameter arrays.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jax
import numpy as np
import pytest

from scalinglab.config import ConfigError, InductionConfig, load_trial, trial_from_dict
from scalinglab.data import DataError, build_dataset
from scalinglab.data.induction import COPY, END, FRESH, INDUCTION, entropy_rate_nats, sample
from scalinglab.experiments import attention_maps as am
from scalinglab.models import build_model

TINY = InductionConfig(vocab_size=6, min_run=1, max_run=3, echo_prob=0.4, n_tokens=2048)


def _episodes(tokens: np.ndarray, bos: int) -> list[list[int]]:
    """The stream cut at every BOS (each piece starts with one), the last one dropped (cut)."""
    starts = np.flatnonzero(tokens == bos).tolist()
    return [tokens[a:b].tolist() for a, b in itertools.pairwise(starts)]


def test_every_episode_has_its_structure_token_by_token() -> None:
    cfg = InductionConfig(vocab_size=12, min_run=2, max_run=5, echo_prob=0.3, n_tokens=4096)
    tokens, kinds, _ = sample(cfg, 4000, np.random.default_rng(0))
    bos, echo = 10, 11
    assert tokens[0] == bos and tokens.dtype == np.uint16 and len(tokens) == 4000
    pos, lengths, echoes = 0, [], 0
    for ep in _episodes(tokens, bos):
        want_kinds = [END]
        i, run = 1, []
        while True:  # the run: new distinct tokens, each maybe followed by ECHO and itself
            tok = ep[i]
            if run and tok == run[0]:
                break  # the repeat starts
            assert tok < bos and tok not in run
            run.append(tok)
            want_kinds.append(FRESH)
            i += 1
            if ep[i] == echo:
                assert ep[i + 1] == tok  # the token after ECHO is the one before it
                want_kinds += [FRESH, COPY]
                echoes += 1
                i += 2
        assert ep[i:] == run  # the repeat: the run once more, then the next BOS
        want_kinds += [FRESH] + [INDUCTION] * (len(run) - 1)
        assert kinds[pos : pos + len(ep)].tolist() == want_kinds
        lengths.append(len(run))
        pos += len(ep)
    assert set(lengths) == {2, 3, 4, 5}
    assert 0.2 < echoes / sum(lengths) < 0.4


def _all_episodes(cfg: InductionConfig) -> list[tuple[list[int], float]]:
    """Every episode (BOS, body, the next BOS) of the setting with its probability."""
    c, bos, echo = cfg.vocab_size - 2, cfg.vocab_size - 2, cfg.vocab_size - 1
    p_m = 1.0 / (cfg.max_run - cfg.min_run + 1)
    out = []
    for m in range(cfg.min_run, cfg.max_run + 1):
        p_run = p_m / math.perm(c, m)
        for run in itertools.permutations(range(c), m):
            for flags in itertools.product([False, True], repeat=m):
                body = []
                for tok, f in zip(run, flags, strict=True):
                    body += [tok, echo, tok] if f else [tok]
                k = sum(flags)
                p = p_run * cfg.echo_prob**k * (1 - cfg.echo_prob) ** (m - k)
                out.append(([bos, *body, *run, bos], p))
    return out


def test_entropy_rate_is_the_enumerated_one() -> None:
    episodes = _all_episodes(TINY)
    assert sum(p for _, p in episodes) == pytest.approx(1.0)
    h = -sum(p * math.log(p) for _, p in episodes)
    mean_len = sum(p * (len(e) - 1) for e, p in episodes)  # the next BOS belongs to the next
    assert entropy_rate_nats(TINY) == pytest.approx(h / mean_len, rel=1e-12)


def test_nll_is_the_exact_conditional_of_every_token() -> None:
    episodes = _all_episodes(TINY)
    tokens, _, nll = sample(TINY, 600, np.random.default_rng(3))
    bos = TINY.vocab_size - 2
    start = 0
    for i in range(1, len(tokens)):
        if tokens[i - 1] == bos:
            start = i - 1  # each BOS opens an episode, independent of the ones before
        prefix = tokens[start:i].tolist()
        num = sum(p for e, p in episodes if e[: len(prefix) + 1] == [*prefix, int(tokens[i])])
        den = sum(p for e, p in episodes if e[: len(prefix)] == prefix)
        assert nll[i] == pytest.approx(-math.log(num / den), abs=1e-9), i
    # The sample's mean -ln p estimates the entropy rate.
    _, _, long = sample(TINY, 200_000, np.random.default_rng(4))
    assert long[1:].mean() == pytest.approx(entropy_rate_nats(TINY), rel=0.02)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    cfg = trial_from_dict(
        {"data": {"source": "induction", "seq_len": 16, "induction": {"n_tokens": 5000}}}
    ).data
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert np.array_equal(a.train, b.train) and a.info["sha256"] == b.info["sha256"]
    other = build_dataset(
        cfg.model_copy(update={"induction": InductionConfig(n_tokens=5000, seed=1)})
    )
    assert not np.array_equal(a.train, other.train)
    assert a.vocab_size == 32 and a.info["entropy_rate_nats"] == entropy_rate_nats(cfg.induction)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"min_run": 5, "max_run": 4},
            "data.induction.min_run: 5 exceeds data.induction.max_run 4",
        ),
        ({"vocab_size": 8, "max_run": 7}, "data.induction.max_run: a run of 7 distinct tokens"),
    ],
)
def test_inconsistent_fields_are_one_line_data_errors(fields: dict, message: str) -> None:
    cfg = trial_from_dict({"data": {"source": "induction", "induction": fields}}).data
    with pytest.raises(DataError) as info:
        build_dataset(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_field_is_a_located_config_error(tmp_path: Path) -> None:
    path = tmp_path / "trial.yaml"
    path.write_text("data:\n  source: induction\n  induction:\n    echo_prob: 1.5\n")
    with pytest.raises(ConfigError) as info:
        load_trial(path)
    assert "trial.yaml:4" in str(info.value) and "data.induction.echo_prob" in str(info.value)


# --- attention maps -------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, p: dict) -> np.ndarray:
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def _dense(x: np.ndarray, p: dict) -> np.ndarray:
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _rotate(x: np.ndarray) -> np.ndarray:
    """GPT-NeoX rotary positions on (H, T, Dh): pairs (i, i + Dh/2) turned by t / 1e4^(2i/Dh)."""
    t, dh = x.shape[1], x.shape[2]
    angle = np.arange(t)[:, None] / 10000.0 ** (np.arange(0, dh, 2) / dh)[None, :]
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    cos, sin = np.cos(angle), np.sin(angle)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _hand_forward(cfg, params, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits (T, V), probs (L, H, T, T)) of one sequence, in float64 numpy."""
    n_head = cfg.model.n_head
    emb = np.asarray(params["token_embed"]["embedding"], np.float64)
    x = emb[tokens]
    if cfg.model.positions == "learned":
        x = x + np.asarray(params["pos_embed"]["embedding"], np.float64)[: len(tokens)]
    t, d = x.shape
    maps = []
    for i in range(cfg.model.n_layer):
        blk = params[f"block_{i}"]
        q, k, v = np.split(_dense(_layer_norm(x, blk["norm_1"]), blk["attn"]["qkv"]), 3, axis=-1)
        q, k, v = (a.reshape(t, n_head, d // n_head).transpose(1, 0, 2) for a in (q, k, v))
        if cfg.model.positions == "rotary":
            q, k = _rotate(q), _rotate(k)
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d // n_head)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        maps.append(p)
        y = (p @ v).transpose(1, 0, 2).reshape(t, d)
        x = x + _dense(y, blk["attn"]["proj"])
        u = _dense(_layer_norm(x, blk["norm_2"]), blk["mlp"]["up"])
        gelu = 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        x = x + _dense(gelu, blk["mlp"]["down"])
    logits = _layer_norm(x, params["norm_f"]) @ emb.T
    return logits, np.stack(maps)


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_attention_maps_are_the_hand_softmax_of_the_raw_parameters(positions: str) -> None:
    model_cfg = {"n_layer": 2, "d_model": 8, "n_head": 2, "vocab_size": 8, "positions": positions}
    cfg = trial_from_dict({"model": model_cfg, "data": {"seq_len": 8}})
    model = build_model(cfg.model)
    # The parameter tree's shapes only (no init run), filled with weights far larger than the
    # init's 0.02, so the maps are far from uniform.
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 8), np.int32))
    leaves, tree = jax.tree_util.tree_flatten(shapes["params"])
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_unflatten(
        tree, [np.asarray(rng.normal(0, 0.7, p.shape), np.float32) for p in leaves]
    )
    tokens = rng.integers(0, 8, (3, 8)).astype(np.int32)
    logits, probs = am.attention_probs(cfg, params, tokens)
    assert probs.shape == (2, 3, 2, 8, 8)
    for b in range(3):
        want_logits, want = _hand_forward(cfg, params, tokens[b])
        np.testing.assert_allclose(probs[:, b], want, atol=2e-5)
        np.testing.assert_allclose(logits[b], want_logits, atol=2e-4, rtol=1e-4)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert np.all(probs[..., np.triu_indices(8, 1)[0], np.triu_indices(8, 1)[1]] == 0)
    assert probs.max() > 0.9  # peaked: a wrong key would show


def test_head_scores_of_hand_made_maps() -> None:
    # One window: BOS a b ECHO b c | a b c (the repeat); query positions 0..8.
    bos, echo = 30, 31
    inputs = np.array([[bos, 0, 1, echo, 1, 2, 0, 1, 2]])
    targets = np.array([[0, 1, echo, 1, 2, 0, 1, 2, bos]])
    kinds = np.array([[FRESH, FRESH, FRESH, COPY, FRESH, FRESH, INDUCTION, INDUCTION, END]])
    pr = am.Probe(inputs, targets, kinds, np.zeros((1, 9)), np.ones((1, 9), bool))
    np.testing.assert_array_equal(am.induction_sources(inputs), [[-1, -1, -1, -1, 3, -1, 2, 5, 6]])
    t = 9
    probs = np.zeros((1, 1, 3, t, t))
    probs[0, 0, 0, 0, 0] = 1
    probs[0, 0, 0, np.arange(1, t), np.arange(t - 1)] = 1  # head 0: the previous token
    probs[0, 0, 1] = np.tril(np.ones((t, t))) / np.arange(1, t + 1)[:, None]  # head 1: uniform
    probs[0, 0, 2] = probs[0, 0, 1]
    probs[0, 0, 2, 6], probs[0, 0, 2, 7] = 0, 0
    probs[0, 0, 2, 6, 2], probs[0, 0, 2, 7, 5] = 1, 1  # head 2: induction at the two queries
    s = am.head_scores(probs, pr)
    assert s["previous"][0, 0] == 1 and s["copy"][0, 0] == 1 and s["induction"][0, 0] == 0
    assert s["previous"][0, 1] == pytest.approx(np.mean(1 / np.arange(2, t + 1)))
    assert s["induction"][0, 2] == 1 and s["induction"][0, 1] == pytest.approx((1 / 7 + 1 / 8) / 2)
    assert s["copy"][0, 1] == pytest.approx(1 / 4)


def test_bootstrap_means_interval_and_difference() -> None:
    out = am.bootstrap_means({1: [2.0, 2.0, 2.0], 2: [1.0, 1.2, 1.4]}, reference=1)
    assert out[1]["ci"] == [2.0, 2.0] and "minus_reference" not in out[1]
    d = out[2]["minus_reference"]
    assert d["value"] == pytest.approx(-0.8) and d["resolved"] is True
    assert -1.0 - 1e-12 <= d["ci"][0] <= d["ci"][1] <= -0.6 + 1e-12

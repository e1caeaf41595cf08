"""BERT and T5: shapes, attention masks, relative positions, masking and span corruption,
parameter and FLOP counts, training through the real train step, and an end-to-end pulse."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_trial
from scalinglab import runfiles as rf
from scalinglab.config import ACTIVATIONS, BertConfig, ConfigError, T5Config
from scalinglab.families.bert import MaskedLM, mask_token_id, mlm_mask
from scalinglab.families.t5 import SpanCorruption, noise_spans, span_corrupt, span_layout, t5_vocab
from scalinglab.flops import flops_per_token, param_counts
from scalinglab.models import build_model
from scalinglab.models.attention import relative_position_bucket
from scalinglab.models.blocks import Mlp
from scalinglab.models.t5 import T5
from scalinglab.train import run_trial

B, T = 2, 8
S, U = 7, 5  # T5 encoder and decoder lengths in the model tests


def bert_cfg(**kw) -> BertConfig:
    base = dict(n_layer=2, d_model=32, n_head=4, vocab_size=64, max_seq_len=T)
    return BertConfig(**{**base, **kw})


def t5_cfg(**kw) -> T5Config:
    base = dict(n_layer=2, n_decoder_layer=2, d_model=32, n_head=4, vocab_size=64, max_seq_len=T)
    return T5Config(**{**base, **kw})


def tokens(shape: tuple[int, ...], seed: int = 1, high: int = 64) -> jax.Array:
    return jax.random.randint(jax.random.key(seed), shape, 0, high)


@functools.cache
def bert(**kw):
    cfg = bert_cfg(**kw)
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0), tokens((B, T)))["params"]
    return cfg, model, params, jax.jit(lambda p, x: model.apply({"params": p}, x))


@functools.cache
def t5(**kw):
    cfg = t5_cfg(**kw)
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(0), tokens((B, S)), tokens((B, U)))["params"]
    fwd = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    return cfg, model, params, fwd


# --- shapes and attention masks --------------------------------------------------------------


@pytest.mark.parametrize("positions", ["learned", "rotary"])
def test_bert_is_bidirectional(positions: str) -> None:
    cfg, _, params, fwd = bert() if positions == "learned" else bert(positions=positions)
    x = tokens((B, T))
    logits = fwd(params, x)
    assert logits.shape == (B, T, cfg.vocab_size) and logits.dtype == jnp.float32
    # Changing the last token changes the logits at every position, earlier ones included.
    changed = fwd(params, x.at[:, T - 1].set((x[:, T - 1] + 1) % 64))
    diff_T = np.abs(np.asarray(changed - logits)).max(axis=(0, 2))
    assert np.all(diff_T > 0), diff_T
    # [MASK] (id vocab_size) is a valid input, never an output class.
    assert fwd(params, x.at[:, 0].set(mask_token_id(cfg))).shape == (B, T, cfg.vocab_size)


def test_bert_every_position_depends_on_every_position_embedding() -> None:
    cfg, model, params, _ = bert()
    x = tokens((B, T))

    def logits_per_position(pos_TxD):
        p = {**params, "pos_embed": {"embedding": pos_TxD}}
        return model.apply({"params": p}, x).sum(axis=(0, 2))

    jac_TxTxD = jax.jit(jax.jacrev(logits_per_position))(params["pos_embed"]["embedding"])
    assert np.all(np.linalg.norm(np.asarray(jac_TxTxD), axis=-1) > 0.0)


@pytest.mark.parametrize("positions", ["relative", "learned"])
def test_t5_decoder_is_causal(positions: str) -> None:
    cfg, _, params, fwd = t5() if positions == "relative" else t5(positions=positions)
    vocab = t5_vocab(cfg)
    enc, dec = tokens((B, S), 2, vocab.embed_rows), tokens((B, U), 3, vocab.embed_rows)
    logits = fwd(params, enc, dec)
    assert logits.shape == (B, U, vocab.out_size) and logits.dtype == jnp.float32
    # A decoder token influences its own and later positions only.
    i = 2
    changed = fwd(params, enc, dec.at[:, i].set((dec[:, i] + 1) % vocab.embed_rows))
    np.testing.assert_array_equal(np.asarray(changed[:, :i]), np.asarray(logits[:, :i]))
    assert np.all(np.abs(np.asarray(changed - logits))[:, i:].max(axis=(0, 2)) > 0)
    # Every encoder token reaches every decoder position (bidirectional encoder, cross-attention).
    for j in (0, S - 1):
        moved = fwd(params, enc.at[:, j].set((enc[:, j] + 1) % vocab.embed_rows), dec)
        assert np.all(np.abs(np.asarray(moved - logits)).max(axis=(0, 2)) > 0), j


def test_t5_every_decoder_position_attends_to_every_encoder_state() -> None:
    cfg, model, params, _ = t5()
    enc_BxSxD = jax.random.normal(jax.random.key(4), (B, S, cfg.d_model))
    dec = tokens((B, U), 3)

    def per_position(e):
        return model.apply({"params": params}, e, dec, method=T5.decode).sum(axis=(0, 2))

    jac_UxBxSxD = jax.jit(jax.jacrev(per_position))(enc_BxSxD)
    assert np.all(np.linalg.norm(np.asarray(jac_UxBxSxD), axis=(1, 3)) > 0.0)


# --- relative positions ----------------------------------------------------------------------


def test_relative_position_buckets() -> None:
    rel = np.array([0, -1, -7, -8, -20, -127, -128, -10_000, 1, 3, 100_000])
    both = relative_position_bucket(rel, bidirectional=True)
    # 16 buckets per direction: exact below 8, then log-spaced to distance 128, then clipped.
    assert both.tolist()[:4] == [0, 1, 7, 8]
    assert 8 < both[4] < 15 and both[5] == 15 and both[6] == 15 and both[7] == 15
    assert both.tolist()[8:] == [17, 19, 31]
    causal = relative_position_bucket(rel, bidirectional=False)
    assert causal.tolist()[:4] == [0, 1, 7, 8] and causal[6] == 31
    assert causal.tolist()[8:] == [0, 0, 0]  # future keys share bucket 0 (masked anyway)


def _reference_bucket(rel: int, bidirectional: bool, num_buckets: int = 32) -> int:
    """Mesh-tf's `_relative_position_bucket` (as Hugging Face ports it), one scalar at a time,
    with T5's constants: 32 buckets, max distance 128."""
    ret, n = 0, -rel
    if bidirectional:
        num_buckets //= 2
        ret += num_buckets if n < 0 else 0
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    val = max_exact + int(
        math.log(n / max_exact) / math.log(128 / max_exact) * (num_buckets - max_exact)
    )
    return ret + min(val, num_buckets - 1)


def test_relative_position_buckets_equal_the_reference_and_the_bias_reads_them() -> None:
    """Every offset from -300 to 300 (past T5's max distance of 128) in both directions; the
    bias module, at its defaults, reads the table at those buckets for 140 positions."""
    rel = np.arange(-300, 301)
    for bidirectional in (True, False):
        want = [_reference_bucket(int(r), bidirectional) for r in rel]
        assert relative_position_bucket(rel, bidirectional=bidirectional).tolist() == want
    from scalinglab.models.attention import RelativePositionBias

    table = np.random.default_rng(0).normal(size=(32, 2)).astype(np.float32)
    rpb = RelativePositionBias(n_head=2, bidirectional=True)
    bias_HxTxS = np.asarray(rpb.apply({"params": {"embedding": table}}, 140, 140))
    offsets = np.arange(140)[None, :] - np.arange(140)[:, None]
    buckets = np.vectorize(lambda r: _reference_bucket(int(r), True))(offsets)
    np.testing.assert_array_equal(bias_HxTxS, np.transpose(table[buckets], (2, 0, 1)))


def test_relative_bias_is_one_table_per_stack_and_depends_on_offset_only() -> None:
    cfg, model, params, _ = t5()
    assert params["encoder"]["relpos_embed"]["embedding"].shape == (32, cfg.n_head)
    assert params["decoder"]["relpos_embed"]["embedding"].shape == (32, cfg.n_head)
    for stack in ("encoder", "decoder"):  # shared by the layers: none has its own table
        assert all("relpos_embed" not in params[stack][f"block_{i}"] for i in range(2))
    from scalinglab.models.attention import RelativePositionBias

    table = params["encoder"]["relpos_embed"]
    rpb = RelativePositionBias(n_head=cfg.n_head, bidirectional=True)
    bias_HxTxT = np.asarray(rpb.apply({"params": table}, 6, 6))
    for h in range(cfg.n_head):
        for off in range(-5, 6):
            diag = np.diagonal(bias_HxTxT[h], offset=off)
            np.testing.assert_array_equal(diag, np.full_like(diag, diag[0]))
    assert not np.allclose(bias_HxTxT[:, 0, 1], bias_HxTxT[:, 1, 0])  # direction matters


# --- masking and span corruption -------------------------------------------------------------


def test_mlm_mask_rules() -> None:
    x = tokens((256, 40), high=50)
    key = jax.random.key(5)
    mask_fn = jax.jit(functools.partial(mlm_mask, mask_rate=0.15, mask_id=64, random_vocab=50))
    inputs, pos, tgt = mask_fn(key, x)
    inputs, pos, tgt, x = map(np.asarray, (inputs, pos, tgt, x))
    assert pos.shape == tgt.shape == (256, 6)  # round(0.15 * 40)
    assert all(len(set(row)) == 6 for row in pos)  # distinct positions
    np.testing.assert_array_equal(tgt, np.take_along_axis(x, pos, axis=1))
    selected = np.zeros(x.shape, bool)
    np.put_along_axis(selected, pos, True, axis=1)
    np.testing.assert_array_equal(inputs[~selected], x[~selected])  # the rest untouched
    at = np.take_along_axis(inputs, pos, axis=1)
    masked, kept = np.mean(at == 64), np.mean(at == tgt)
    random = 1.0 - masked - kept  # replaced by another token
    assert abs(masked - 0.8) < 0.04 and abs(random - 0.1 * 49 / 50) < 0.03
    assert at.max() <= 64 and np.all((at == 64) | (at < 50))
    # Another key, other positions.
    other = mask_fn(jax.random.key(6), jnp.asarray(x))[1]
    assert not np.array_equal(np.asarray(other), pos)


def _uncorrupt(enc: np.ndarray, target: np.ndarray, data_vocab: int) -> list[int]:
    """Rebuild the original sequence: each encoder sentinel k expands to target span k."""
    spans: dict[int, list[int]] = {}
    for t in target:
        if t >= data_vocab:
            k = int(t) - data_vocab
            spans[k] = []
        else:
            spans[k].append(int(t))
    out: list[int] = []
    for e in enc:
        out += spans[int(e) - data_vocab] if e >= data_vocab else [int(e)]
    return out


@pytest.mark.parametrize(("seq_len", "density", "mean_len"), [(40, 0.15, 3.0), (20, 0.5, 1.0)])
def test_span_corruption_round_trips(seq_len: int, density: float, mean_len: float) -> None:
    layout = span_layout(seq_len, density, mean_len)
    cfg = t5_cfg(max_seq_len=seq_len, noise_density=density, mean_span_length=mean_len)
    vocab = t5_vocab(cfg)
    assert vocab.sentinels == layout.num_spans and vocab.start_id == 64 + layout.num_spans
    corrupt = jax.jit(jax.vmap(lambda k, x: span_corrupt(k, x, layout, vocab)))
    x = tokens((16, seq_len), 4)
    keys = jax.random.split(jax.random.key(0), 16)
    enc, dec_in, tgt = map(np.asarray, corrupt(keys, x))
    assert enc.shape == (16, layout.enc_len) and tgt.shape == (16, layout.dec_len)
    assert layout.enc_len == seq_len - layout.num_noise + layout.num_spans
    np.testing.assert_array_equal(dec_in[:, 0], vocab.start_id)
    np.testing.assert_array_equal(dec_in[:, 1:], tgt[:, :-1])  # teacher forcing
    sentinels = 64 + np.arange(layout.num_spans)
    for row in range(16):
        assert _uncorrupt(enc[row], tgt[row], 64) == np.asarray(x[row]).tolist()
        np.testing.assert_array_equal(enc[row][enc[row] >= 64], sentinels)
        np.testing.assert_array_equal(tgt[row][tgt[row] >= 64], sentinels)
    # Different keys place spans differently; the same key reproduces them.
    assert len({tuple(r) for r in enc}) > 1
    np.testing.assert_array_equal(np.asarray(corrupt(keys, x)[0]), enc)


def test_spans_can_start_and_end_anywhere() -> None:
    # T5's original layout always ends in a span (one span: the last token, every time).
    layout = span_layout(8, 0.15, 3.0)  # one noise token
    spans_KxT = jax.jit(jax.vmap(lambda k: noise_spans(k, layout)))(
        jax.random.split(jax.random.key(0), 64)
    )
    assert np.all(np.sum(np.asarray(spans_KxT) >= 0, axis=1) == 1)
    assert np.all(np.any(np.asarray(spans_KxT) >= 0, axis=0))  # every position gets masked


def test_span_layout_limits() -> None:
    assert span_layout(64, 0.15, 3.0) == span_layout(64, 0.15, 3.0)
    lay = span_layout(64, 0.15, 3.0)
    assert (lay.num_noise, lay.num_spans, lay.enc_len, lay.dec_len) == (10, 3, 57, 13)
    assert span_layout(2, 0.9, 1.0).num_noise == 1  # at least one token stays visible
    with pytest.raises(ValueError, match="seq_len >= 2"):
        span_layout(1, 0.5, 1.0)


# --- activations, dropout, dtypes ------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_each_activation_in_the_feed_forward_block(activation: str) -> None:
    ff = Mlp(d_ff=16, activation=activation)
    x = jax.random.normal(jax.random.key(0), (2, 3, 8))
    params = ff.init(jax.random.key(1), x)["params"]
    assert ("gate" in params) == (activation == "swiglu")
    y = ff.apply({"params": params}, x)
    assert y.shape == x.shape and np.all(np.isfinite(np.asarray(y)))


def test_swiglu_and_untied_heads_build_in_both_families() -> None:
    cfg = bert_cfg(activation="swiglu", tie_embeddings=False)
    out = jax.eval_shape(build_model(cfg).init, jax.random.key(0), jnp.zeros((1, T), int))
    params = out["params"]
    assert "gate" in params["block_0"]["mlp"] and params["lm_head"]["kernel"].shape == (32, 64)
    cfg = t5_cfg(activation="swiglu", tie_embeddings=False)
    enc, dec = jnp.zeros((1, S), int), jnp.zeros((1, U), int)
    params = jax.eval_shape(build_model(cfg).init, jax.random.key(0), enc, dec)["params"]
    assert "gate" in params["decoder"]["block_1"]["mlp"]
    assert params["lm_head"]["kernel"].shape == (32, t5_vocab(cfg).out_size)


def test_dropout_only_when_not_deterministic() -> None:
    _, _, params, fwd = bert()  # dropout adds no parameters: reuse them
    model = build_model(bert_cfg(dropout=0.3))
    x = tokens((B, T))

    @functools.partial(jax.jit, static_argnums=1)
    def apply(key, deterministic):
        rngs = {"dropout": key}
        return model.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)

    base = np.asarray(fwd(params, x))
    off_1, off_2 = (
        np.asarray(apply(jax.random.key(1), True)),
        np.asarray(apply(jax.random.key(2), True)),
    )
    np.testing.assert_array_equal(off_1, off_2)
    np.testing.assert_allclose(off_1, base, rtol=1e-5, atol=1e-6)  # another compilation
    d1, d2 = (
        np.asarray(apply(jax.random.key(1), False)),
        np.asarray(apply(jax.random.key(2), False)),
    )
    assert not np.allclose(d1, base) and not np.allclose(d1, d2)
    np.testing.assert_array_equal(np.asarray(apply(jax.random.key(1), False)), d1)


def test_bfloat16_compute_keeps_float32_params_and_logits() -> None:
    _, _, params, fwd = bert()
    model = build_model(bert_cfg(dtype="bfloat16"))
    logits = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, tokens((B, T)))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(logits), np.asarray(fwd(params, tokens((B, T)))), atol=5e-2
    )
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, T), int))
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(shapes))


# --- counts ----------------------------------------------------------------------------------


def test_param_counts_by_hand() -> None:
    d, f, v = 32, 128, 64
    layer = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)
    assert param_counts(bert_cfg()) == {
        "total": (v + 1) * d + T * d + 2 * layer + 2 * d,
        "embedding": (v + 1) * d + T * d,  # tokens + [MASK], positions
        "non_embedding": 2 * layer + 2 * d,
    }
    cross = 2 * d + (d * d + d) + (d * 2 * d + 2 * d) + (d * d + d)  # norm_3, q, kv, proj
    spans = span_layout(T, 0.15, 3.0).num_spans
    assert spans == 1
    assert param_counts(t5_cfg(n_decoder_layer=1)) == {
        "total": (v + 2) * d + 2 * 32 * 4 + 2 * layer + 2 * d + (layer + cross) + 2 * d,
        "embedding": (v + 1 + 1) * d + 2 * 32 * 4,  # tokens, sentinel, start; 2 bias tables
        "non_embedding": 2 * layer + 2 * d + (layer + cross) + 2 * d,
    }


def test_a_family_rejects_fields_it_does_not_use() -> None:
    with pytest.raises(ConfigError, match="not a field of model.family 'bert'.*mask_rate"):
        tiny_trial(**{"model.family": "bert", "model.noise_density": 0.2})
    with pytest.raises(ConfigError, match="positions"):
        tiny_trial(**{"model.family": "t5", "model.positions": "rotary"})


# --- training --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_eval_loss_is_deterministic(family: str) -> None:
    # Evaluation (key None) masks with a fixed key folded with the batch: the same batch gives
    # the same loss at every eval; training masks vary with the key (tested on the masking
    # functions above, which is all the train key reaches besides dropout).
    _, model, params, _ = bert() if family == "bert" else t5()
    task = MaskedLM(model, T, 64) if family == "bert" else SpanCorruption(model, T, 64)
    loss = jax.jit(lambda batch: task.loss(params, {}, batch, None, jnp.int32(0))[1][0])
    batch = jnp.asarray(task.example_batch(4, np.random.default_rng(0)))
    first, again = loss(batch), loss(batch)
    assert set(first) == {"loss", "accuracy"}
    assert float(first["loss"]) == float(again["loss"])
    other = jnp.asarray(task.example_batch(4, np.random.default_rng(1)))
    assert float(loss(other)["loss"]) != float(first["loss"])


@pytest.mark.parametrize("family", ["bert", "t5"])
def test_run_trial_pulse(family: str, tmp_path: Path) -> None:
    # Ten steps through the real train step (run_trial -> build_trainer -> train_step), with
    # dropout; the train and eval losses must fall and the run directory be complete.
    cfg = tiny_trial(
        **{
            "model.family": family,
            "model.dropout": 0.1,
            "data.seq_len": 16,
            "train.budget": "{steps: 10}",
            "train.eval_every": 5,
            "train.checkpoint_every": 10,
        }
    )
    summary = run_trial(cfg, tmp_path)
    for name in (rf.CONFIG, rf.STATUS, rf.METRICS, rf.SUMMARY, rf.CHECKPOINTS):
        assert (tmp_path / name).exists(), name
    assert summary["status"] == "done"
    assert summary["N"] == param_counts(cfg.model)["total"]
    assert summary["N_nonembed"] == param_counts(cfg.model)["non_embedding"]
    assert summary["D"] == 10 * 8 * 16
    assert summary["C"] == pytest.approx(flops_per_token(cfg.model, 16, "kaplan") * summary["D"])
    assert 0.0 <= summary["final_eval_accuracy"] <= 1.0
    recs = rf.read_jsonl(tmp_path / rf.METRICS)
    assert [r["step"] for r in recs] == [5, 10]
    assert recs[1]["train_loss"] < recs[0]["train_loss"] - 0.3
    assert recs[1]["eval_loss"] < recs[0]["eval_loss"]

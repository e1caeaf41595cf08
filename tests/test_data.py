"""Data sources, the exact entropy of the synthetic language, determinism, and bad input."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from scalinglab.config import DataConfig, SyntheticConfig
from scalinglab.data import (
    Corpus,
    DataError,
    Dataset,
    build_dataset,
    decode,
    encode,
    make_language,
    text,
)
from scalinglab.data.batches import split


def _stream(n: int, seq_len: int, val_frac: float = 0.1) -> Dataset:
    """A dataset whose token values are their own positions, to read off where a row came from."""
    return split(Corpus(np.arange(n, dtype=np.int32), n, {}), seq_len, val_frac)


def _plugin_conditional_entropy(tokens: np.ndarray, vocab: int, order: int) -> float:
    """Miller-Madow corrected plug-in estimate of H(Y | previous `order` tokens), in nats."""
    t = tokens.astype(np.int64)
    ctx = np.zeros(len(t) - order, dtype=np.int64)
    for j in range(order):
        ctx = ctx * vocab + t[j : len(t) - order + j]
    joint = np.bincount(ctx * vocab + t[order:])
    marg = np.bincount(ctx)

    def h(counts: np.ndarray) -> float:
        c = counts[counts > 0]
        n = c.sum()
        return float(-(c / n * np.log(c / n)).sum() + (len(c) - 1) / (2 * n))

    return h(joint) - h(marg)


# --- synthetic language -----------------------------------------------------------------------


def test_stationary_distribution_is_invariant_and_rate_matches_definition():
    lang = make_language(SyntheticConfig(vocab_size=8, order=2, branching=3, seed=1))
    p = lang.transition_matrix()
    pi = lang.stationary
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(pi @ p, pi, atol=1e-14)
    assert pi.min() > 0 and math.isclose(pi.sum(), 1.0, abs_tol=1e-12)
    rows = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1)
    assert math.isclose(lang.entropy_rate_nats, float(pi @ rows), rel_tol=1e-12)
    # The matrix-free step used for large chains agrees with the dense matrix.
    q = np.random.default_rng(0).dirichlet(np.ones(len(pi)))
    np.testing.assert_allclose(lang._step(q), q @ p, atol=1e-15)


def test_power_iteration_stationary_for_large_chain():
    lang = make_language(SyntheticConfig(vocab_size=16, order=3, branching=4))  # 4096 contexts
    pi = lang.stationary
    assert np.abs(lang._step(pi) - pi).sum() < 1e-12


def test_sample_reaches_the_exact_entropy_rate():
    lang = make_language(SyntheticConfig())  # the default language
    tokens = lang.sample(1_000_000, np.random.default_rng(0))
    nll = lang.nll(tokens)
    # The true model's mean log-loss is an unbiased estimate of H; 5 standard errors.
    assert abs(nll.mean() - lang.entropy_rate_nats) < 5 * nll.std() / math.sqrt(len(nll))
    # Model-free: the empirical conditional entropy of the stream.
    empirical = _plugin_conditional_entropy(tokens, 64, 1)
    assert abs(empirical - lang.entropy_rate_nats) < 0.005


def test_higher_order_rate_and_short_context_floor():
    lang = make_language(SyntheticConfig(vocab_size=8, order=2, branching=3, seed=3))
    tokens = lang.sample(400_000, np.random.default_rng(1))
    rate = lang.entropy_rate_nats
    assert abs(_plugin_conditional_entropy(tokens, 8, 2) - rate) < 0.01
    h1, h2 = lang.block_entropy_nats(1), lang.block_entropy_nats(2)
    assert abs(_plugin_conditional_entropy(tokens, 8, 1) - (h2 - h1)) < 0.01
    assert math.isclose(lang.loss_floor_nats(1), h2 - h1)
    assert math.isclose(lang.loss_floor_nats(10), ((h2 - h1) + 9 * rate) / 10)
    assert h2 - h1 > rate  # one token of context is not enough for an order-2 language


def test_synthetic_dataset_reports_entropy_and_is_deterministic():
    cfg = DataConfig(source="synthetic", seq_len=32, synthetic=SyntheticConfig(n_tokens=50_000))
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert a.vocab_size == 64 and a.info["entropy_rate_nats"] == pytest.approx(1.8311841686)
    assert a.info["loss_floor_nats"] == a.info["entropy_rate_nats"]  # order 1
    assert a.info["sha256"] == b.info["sha256"]
    json.dumps(a.info)  # goes into the run summary
    np.testing.assert_array_equal(a.train, b.train)
    np.testing.assert_array_equal(a.train_batch(7, 4, seed=3), b.train_batch(7, 4, seed=3))
    other = build_dataset(cfg.model_copy(update={"synthetic": SyntheticConfig(seed=1)}))
    assert other.info["sha256"] != a.info["sha256"]


def test_synthetic_bad_sizes():
    with pytest.raises(DataError, match=r"^data\.synthetic\.branching: "):
        make_language(SyntheticConfig(vocab_size=4, branching=8))
    with pytest.raises(DataError, match=r"^data\.synthetic\.order: "):
        make_language(SyntheticConfig(vocab_size=65535, order=2))


# --- batches ----------------------------------------------------------------------------------


def test_each_window_seen_exactly_once_per_epoch():
    ds = _stream(1000, seq_len=9)  # windows of 10 tokens
    n, batch = ds.windows_per_epoch, 7  # 7 does not divide n: batches straddle epochs
    rows = np.concatenate([ds.train_batch(s, batch, seed=5) for s in range(2 * n // batch + 1)])
    np.testing.assert_array_equal(rows[:, 1:] - rows[:, :-1], 1)  # contiguous windows
    for epoch in (rows[:n], rows[n : 2 * n]):
        starts = epoch[:, 0]
        assert len(np.unique(starts)) == n
        assert len(np.unique(starts % ds.window)) == 1  # one offset per epoch
        assert starts.max() + ds.window <= len(ds.train)  # never reaches into val
    assert not np.array_equal(rows[:n, 0], rows[n : 2 * n, 0])  # epochs differ in order


def test_batches_are_a_pure_function_of_step():
    ds = _stream(5000, seq_len=15)
    in_order = [ds.train_batch(s, 8, seed=0) for s in range(60)]
    fresh = _stream(5000, seq_len=15)
    for s in (59, 3, 41, 0):  # resumed anywhere, in any order
        np.testing.assert_array_equal(fresh.train_batch(s, 8, seed=0), in_order[s])
    assert in_order[0].dtype == np.int32 and in_order[0].shape == (8, 16)
    assert not np.array_equal(ds.train_batch(0, 8, seed=1), in_order[0])
    it = ds.iter_train(8, seed=0, start_step=41)
    np.testing.assert_array_equal(next(it), in_order[41])


def test_val_batches_fixed_consecutive_full():
    ds = _stream(10_000, seq_len=9, val_frac=0.1)  # val: 1000 tokens, 100 windows
    batches = ds.val_batches(batch_size=4, n_tokens=100)  # 36 targets per batch -> 3 batches
    assert len(batches) == 3 and all(b.shape == (4, 10) for b in batches)
    flat = np.concatenate(batches).ravel()
    np.testing.assert_array_equal(flat, np.arange(9000, 9000 + flat.size))
    again = ds.val_batches(batch_size=4, n_tokens=100)
    assert all(np.array_equal(x, y) for x, y in zip(batches, again, strict=True))
    assert len(ds.val_batches(4, 10**9)) == 25  # capped by the 100 windows of val
    assert ds.val_batches(128, 10)[0].shape == (100, 10)  # fewer windows than a batch: one


def test_val_shorter_than_a_window():
    ds = Dataset(np.arange(100), np.arange(5), 100, seq_len=8, info={})
    with pytest.raises(DataError, match=r"^data\.val_frac: .*data\.seq_len"):
        ds.val_batches(4, 100)


# --- byte corpora -----------------------------------------------------------------------------


def test_byte_tokenizer_roundtrip():
    assert decode(encode("naïve ∑")) == "naïve ∑"
    assert encode(b"ab").dtype == np.uint8


def test_stdlib_corpus_sorted_and_hashed():
    cfg = DataConfig(source="stdlib", max_tokens=300_000)
    a, b = build_dataset(cfg), build_dataset(cfg)
    assert a.vocab_size == 256 and a.info["n_tokens"] == 300_000
    assert a.info["sha256"] == b.info["sha256"] and a.info["files"] > 1
    json.dumps(a.info)  # goes into the run summary
    files = text._walk(text.stdlib_dir(), ".py", text._INSTALLED)
    expected = b"\n".join(p.read_bytes() for p in files[: a.info["files"]])[:300_000]
    assert np.concatenate([a.train, a.val]).tobytes() == expected
    rels = [p.relative_to(text.stdlib_dir()).as_posix() for p in files]
    assert rels == sorted(rels) and not any("site-packages" in r for r in rels)


def test_stdlib_without_sources_names_synthetic(tmp_path, monkeypatch):
    monkeypatch.setattr(text, "stdlib_dir", lambda: tmp_path)
    with pytest.raises(
        DataError, match=r"^data\.source: stdlib found no .*data\.source: synthetic"
    ):
        build_dataset(DataConfig(source="stdlib"))


def test_text_folder_sorted_skipping_hidden_and_binary(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B" * 50)
    (tmp_path / "sub" / "c.txt").write_text("C" * 50)
    (tmp_path / "a.txt").write_text("A" * 50)
    (tmp_path / ".hidden").write_text("H" * 50)
    (tmp_path / "img.bin").write_bytes(b"\x89PNG\0\0" * 10)
    ds = build_dataset(DataConfig(source="text", path=str(tmp_path), seq_len=4, val_frac=0.1))
    assert decode(np.concatenate([ds.train, ds.val])) == "\n".join(["A" * 50, "B" * 50, "C" * 50])
    assert ds.info["files"] == 3 and ds.info["binary_files_skipped"] == 1
    one = build_dataset(
        DataConfig(source="text", path=str(tmp_path / "a.txt"), seq_len=4, val_frac=0.2)
    )
    assert one.info["n_tokens"] == 50
    with pytest.raises(DataError, match=r"data.path: .*img.bin looks binary"):
        build_dataset(DataConfig(source="text", path=str(tmp_path / "img.bin"), seq_len=4))


def test_tokens_bin_and_npy(tmp_path):
    toks = np.random.default_rng(0).integers(0, 50_000, 3000).astype(np.uint16)
    toks.tofile(tmp_path / "t.bin")
    np.save(tmp_path / "t.npy", toks.astype(np.int64))
    for name in ("t.bin", "t.npy"):
        ds = build_dataset(DataConfig(source="tokens", path=str(tmp_path / name), seq_len=16))
        assert isinstance(ds.train, np.memmap)
        assert ds.vocab_size == int(toks.max()) + 1
        np.testing.assert_array_equal(np.concatenate([ds.train, ds.val]), toks)
        assert ds.train_batch(0, 2, 0).dtype == np.int32


# --- bad input: each a one-line error naming the field ----------------------------------------


def _error(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as info:
        build_dataset(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_bad_paths(tmp_path):
    missing = str(tmp_path / "nope.txt")
    assert _error(DataConfig(source="text", path=missing)).startswith("data.path: ")
    os.symlink(tmp_path / "gone", tmp_path / "broken")
    msg = _error(DataConfig(source="text", path=str(tmp_path / "broken")))
    assert msg.startswith("data.path: ") and "does not exist" in msg
    (tmp_path / "empty").mkdir()
    msg = _error(DataConfig(source="text", path=str(tmp_path / "empty")))
    assert msg.startswith("data.path: ") and "no readable text files" in msg
    assert _error(DataConfig(source="tokens", path=missing)).startswith("data.path: ")


def test_corpus_shorter_than_seq_len(tmp_path):
    (tmp_path / "short.txt").write_text("x" * 100)
    msg = _error(DataConfig(source="text", path=str(tmp_path / "short.txt"), seq_len=64))
    assert msg.startswith("data.seq_len: ") and "100 tokens" in msg
    msg = _error(DataConfig(source="text", path=str(tmp_path / "short.txt"), seq_len=16))
    assert msg.startswith("data.val_frac: ")  # 2% of 100 tokens is no validation window


def test_unknown_source_lists_allowed():
    cfg = DataConfig().model_copy(update={"source": "wiki"})  # skips pydantic's own check
    msg = _error(cfg)
    assert msg.startswith("data.source: ") and "stdlib, text, tokens, synthetic" in msg


def test_bad_token_files(tmp_path):
    np.save(tmp_path / "big.npy", np.array([1, 2, 70_000] * 100, dtype=np.int32))
    np.save(tmp_path / "neg.npy", np.array([1, -1] * 100, dtype=np.int64))
    np.save(tmp_path / "float.npy", np.ones(300, dtype=np.float32))
    (tmp_path / "odd.bin").write_bytes(b"\0" * 301)
    (tmp_path / "t.txt").write_text("abc")
    for name, words in [
        ("big.npy", "[0, 65535]"),
        ("neg.npy", "[0, 65535]"),
        ("float.npy", "must be integers"),
        ("odd.bin", "odd byte count"),
        ("t.txt", ".bin (uint16) or .npy"),
    ]:
        msg = _error(DataConfig(source="tokens", path=str(tmp_path / name), seq_len=4))
        assert msg.startswith("data.path: ") and words in msg, msg

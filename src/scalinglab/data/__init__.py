"""Token data for training: a registry of sources, each giving a deterministic, resumable Dataset.

`build_dataset(cfg)` maps `cfg.source` to a builder (STYLE.md #8); every builder returns the
whole token stream, which is split into train and a fixed validation tail the same way for all.
"""

from __future__ import annotations

from collections.abc import Callable

from scalinglab.config import DataConfig
from scalinglab.data.batches import Corpus, DataError, Dataset, sha256_of, split
from scalinglab.data.synthetic import MarkovLanguage, make_language, synthetic_corpus
from scalinglab.data.text import decode, encode, stdlib_corpus, text_corpus, token_corpus

SOURCES: dict[str, Callable[[DataConfig], Corpus]] = {
    "stdlib": stdlib_corpus,
    "text": text_corpus,
    "tokens": token_corpus,
    "synthetic": synthetic_corpus,
}


def build_dataset(cfg: DataConfig) -> Dataset:
    """The Dataset a data config describes; bad input raises a one-line DataError."""
    builder = SOURCES.get(cfg.source)
    if builder is None:
        raise DataError(
            f"data.source: unknown source {cfg.source!r}; allowed: {', '.join(SOURCES)}"
        )
    return split(builder(cfg), cfg.seq_len, cfg.val_frac)


__all__ = [
    "SOURCES",
    "Corpus",
    "DataError",
    "Dataset",
    "MarkovLanguage",
    "build_dataset",
    "decode",
    "encode",
    "make_language",
    "sha256_of",
]

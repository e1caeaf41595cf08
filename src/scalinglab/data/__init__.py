"""Training data: a registry of sources, each giving a deterministic, resumable Dataset.

`build_dataset(cfg)` maps `cfg.source` to a builder; an unknown name lists the allowed ones.
Every text builder returns the whole token stream, which is split into train and a fixed
validation tail the same way for all; image builders (`IMAGE_BUILDERS`) return an
`ImageDataset` and regression builders (`REGRESSION_BUILDERS`) a `FunctionDataset`, both
`ExampleDataset`s with the same batch interface.
"""

from __future__ import annotations

from collections.abc import Callable

from scalinglab.config import DataConfig
from scalinglab.data.batches import Corpus, DataError, Dataset, sha256_of, split
from scalinglab.data.examples import ExampleDataset
from scalinglab.data.facts import facts_corpus
from scalinglab.data.functions import FunctionDataset, function_values, functions_dataset
from scalinglab.data.images import ImageDataset, digits_dataset, shapes_dataset
from scalinglab.data.induction import induction_corpus
from scalinglab.data.synthetic import MarkovLanguage, make_language, synthetic_corpus
from scalinglab.data.text import decode, encode, stdlib_corpus, text_corpus, token_corpus

SOURCES: dict[str, Callable[[DataConfig], Corpus]] = {
    "stdlib": stdlib_corpus,
    "text": text_corpus,
    "tokens": token_corpus,
    "synthetic": synthetic_corpus,
    "induction": induction_corpus,
    "facts": facts_corpus,
}
IMAGE_BUILDERS: dict[str, Callable[[DataConfig], ImageDataset]] = {
    "digits": digits_dataset,
    "shapes": shapes_dataset,
}
REGRESSION_BUILDERS: dict[str, Callable[[DataConfig], FunctionDataset]] = {
    "functions": functions_dataset,
}


def build_dataset(cfg: DataConfig) -> Dataset | ExampleDataset:
    """The Dataset a data config describes; bad input raises a one-line DataError."""
    examples = {**IMAGE_BUILDERS, **REGRESSION_BUILDERS}
    if cfg.source in examples:
        return examples[cfg.source](cfg)
    builder = SOURCES.get(cfg.source)
    if builder is None:
        allowed = ", ".join([*SOURCES, *examples])
        raise DataError(f"data.source: unknown source {cfg.source!r}; allowed: {allowed}")
    return split(builder(cfg), cfg.seq_len, cfg.val_frac)


__all__ = [
    "IMAGE_BUILDERS",
    "REGRESSION_BUILDERS",
    "SOURCES",
    "Corpus",
    "DataError",
    "Dataset",
    "ExampleDataset",
    "FunctionDataset",
    "ImageDataset",
    "MarkovLanguage",
    "build_dataset",
    "decode",
    "encode",
    "function_values",
    "make_language",
    "sha256_of",
]

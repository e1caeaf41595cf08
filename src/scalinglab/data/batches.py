"""The Dataset contract: a token stream split into train/val, cut into resumable batches.

Batches are a pure function of (step, batch_size, seed), so the data iterator's whole state is
the step number that the checkpoint already stores: resuming at step s sees exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from scalinglab.errors import DataError  # noqa: F401  (re-exported)

# Epoch orders kept per Dataset; two cover a batch that straddles an epoch boundary.
_EPOCH_CACHE_SIZE = 4


class Corpus(NamedTuple):
    """What a source builder returns: the whole token stream, before the split."""

    tokens: np.ndarray
    vocab_size: int
    info: dict[str, Any]


def _rng(*ints: int) -> np.random.Generator:
    """A Generator seeded by a tuple of ints; negative seeds are folded into uint64."""
    return np.random.default_rng([int(i) % 2**64 for i in ints])


def sha256_of(tokens: np.ndarray, chunk: int = 1 << 24) -> str:
    """sha256 of an array's raw bytes, read in chunks so a large memmap is never copied whole."""
    h = hashlib.sha256()
    flat = tokens.reshape(-1)
    step = max(1, chunk // max(1, flat.itemsize))
    for i in range(0, flat.size, step):
        h.update(np.ascontiguousarray(flat[i : i + step]).data)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train stream, a fixed validation stream, and the batch functions over them.

    `train` and `val` are 1-D token arrays (memmaps where the source is a file); `val` is the
    last `val_frac` of the corpus and is never sampled by `train_batch`.
    """

    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    seq_len: int
    info: dict[str, Any]
    _epochs: dict[tuple[int, int], tuple[int, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )
    _val_cache: dict[tuple[int, int], list[np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    @property
    def window(self) -> int:
        """Tokens per training row: seq_len inputs plus the one-step-shifted target."""
        return self.seq_len + 1

    @property
    def windows_per_epoch(self) -> int:
        """Non-overlapping windows per epoch; the same for every epoch's random offset."""
        return max(1, (len(self.train) - self.window + 1) // self.window)

    def epoch(self, step: int, batch_size: int) -> float:
        """Epochs of training data consumed after `step` batches of `batch_size` rows."""
        return step * batch_size / self.windows_per_epoch

    def _epoch_order(self, epoch: int, seed: int) -> tuple[int, np.ndarray]:
        """(offset, window permutation) of one epoch; cached, since every step needs it."""
        key = (seed, epoch)
        hit = self._epochs.get(key)
        if hit is None:
            n = self.windows_per_epoch
            max_offset = min(self.window - 1, len(self.train) - n * self.window)
            rng = _rng(seed, epoch)
            offset = int(rng.integers(0, max_offset + 1))
            hit = (offset, rng.permutation(n))
            if len(self._epochs) >= _EPOCH_CACHE_SIZE:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = hit
        return hit

    def train_batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """int32 (batch_size, seq_len + 1) rows: inputs are [:, :-1], targets [:, 1:].

        Row i of step s is window number s * batch_size + i of an endless sequence of epochs;
        each epoch cuts the train stream into non-overlapping windows at a random offset and
        visits them in a random order drawn from default_rng((seed, epoch)), so every window
        is seen exactly once per epoch and the result depends on nothing but the arguments.
        """
        n = self.windows_per_epoch
        first = step * batch_size
        if first // n == (first + batch_size - 1) // n:  # the common case: one epoch
            offset, perm = self._epoch_order(first // n, seed)
            j = first % n
            starts = offset + perm[j : j + batch_size].astype(np.int64) * self.window
        else:
            epoch, j = np.divmod(np.arange(first, first + batch_size, dtype=np.int64), n)
            starts = np.empty(batch_size, np.int64)
            for e in np.unique(epoch):
                offset, perm = self._epoch_order(int(e), seed)
                rows = epoch == e
                starts[rows] = offset + perm[j[rows]] * self.window
        idx = starts[:, None] + np.arange(self.window, dtype=np.int64)
        return np.asarray(self.train[idx], dtype=np.int32)

    def iter_train(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
        """Endless `train_batch` stream from `start_step` (resume by passing the saved step)."""
        step = start_step
        while True:
            yield self.train_batch(step, batch_size, seed)
            step += 1

    def val_batches(self, batch_size: int, n_tokens: int) -> list[np.ndarray]:
        """The same validation batches every call: int32 (batch_size, seq_len + 1) each.

        Consecutive non-overlapping windows from the start of `val`, in as many full batches as
        cover `n_tokens` target tokens (rounded up), fewer if `val` runs out. Only full batches
        are returned, so evaluation compiles one shape; the exception is a `val` too short for
        one full batch, which gives a single smaller batch of all its windows. Arrays are
        read-only and shared between calls.
        """
        key = (batch_size, n_tokens)
        if key not in self._val_cache:
            w = self.window
            n_win = len(self.val) // w
            if n_win == 0:
                raise DataError(
                    f"data.val_frac: the validation split holds {len(self.val)} tokens, fewer "
                    f"than data.seq_len + 1 = {w}; raise data.val_frac or lower data.seq_len"
                )
            if n_win < batch_size:
                rows = np.asarray(self.val[: n_win * w], dtype=np.int32).reshape(1, n_win, w)
            else:
                want = max(1, math.ceil(n_tokens / (batch_size * self.seq_len)))
                k = min(want, n_win // batch_size)
                rows = np.asarray(self.val[: k * batch_size * w], dtype=np.int32)
                rows = rows.reshape(k, batch_size, w)
            rows.setflags(write=False)
            self._val_cache[key] = list(rows)
        return list(self._val_cache[key])


def split(corpus: Corpus, seq_len: int, val_frac: float) -> Dataset:
    """Split a corpus into train and the last `val_frac` as validation, checking both fit."""
    tokens, w = corpus.tokens, seq_len + 1
    n = len(tokens)
    if n < 2 * w:
        raise DataError(
            f"data.seq_len: the corpus holds {n} tokens; a train and a validation window of "
            f"data.seq_len + 1 = {w} tokens need at least {2 * w}"
        )
    n_val = round(n * val_frac)
    if n_val < w:
        raise DataError(
            f"data.val_frac: {val_frac} of {n} tokens is {n_val}, fewer than data.seq_len + 1 "
            f"= {w}; raise data.val_frac or lower data.seq_len"
        )
    n_train = n - n_val
    if n_train < w:
        raise DataError(
            f"data.seq_len: the train split holds {n_train} tokens, fewer than data.seq_len + 1 "
            f"= {w}; lower data.val_frac or data.seq_len"
        )
    info = {
        **corpus.info,
        "vocab_size": corpus.vocab_size,
        "seq_len": seq_len,
        "val_frac": val_frac,
        "dtype": str(tokens.dtype),
        "n_tokens": n,
        "n_train_tokens": n_train,
        "n_val_tokens": n_val,
        "sha256": sha256_of(tokens),
    }
    info.setdefault("entropy_rate_nats", None)
    return Dataset(tokens[:n_train], tokens[n_train:], corpus.vocab_size, seq_len, info)

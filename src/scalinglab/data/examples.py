"""Datasets of fixed examples (images, regression pairs): a train and a validation split, and
batches that are a pure function of (step, batch_size, seed).

Every example is seen once per epoch, in an order drawn per epoch from the seed, so a resumed
run sees exactly the batches an uninterrupted one would. One example is one unit of D
(`data.seq_len` is 1). A subclass names the batch keys of its inputs and targets.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from scalinglab.data.batches import _rng

# Epoch permutations kept per dataset; two cover a batch that straddles an epoch boundary.
_EPOCH_CACHE_SIZE = 4


def arrays_sha256(*arrays: np.ndarray) -> str:
    """sha256 over the raw bytes of the arrays, in order (inputs, then targets)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


@dataclass(frozen=True, eq=False)
class ExampleDataset:
    """Train and validation examples with resumable batch functions (the `Dataset` contract).

    Batches are `{INPUT_KEY: inputs, TARGET_KEY: targets}` (validation batches add `weight`).
    """

    train_inputs: np.ndarray  # (N_train, ...)
    train_targets: np.ndarray  # (N_train,)
    val_inputs: np.ndarray  # (N_val, ...)
    val_targets: np.ndarray  # (N_val,)
    info: dict[str, Any]
    _epochs: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, init=False, repr=False)
    _val_cache: dict[tuple[int, int], list[dict[str, np.ndarray]]] = field(
        default_factory=dict, init=False, repr=False
    )

    INPUT_KEY: ClassVar[str] = "x"
    TARGET_KEY: ClassVar[str] = "y"

    @property
    def train(self) -> np.ndarray:
        return self.train_inputs

    @property
    def val(self) -> np.ndarray:
        return self.val_inputs

    @property
    def windows_per_epoch(self) -> int:
        """Training examples per epoch (the planner's name for it, shared with text data)."""
        return len(self.train_targets)

    def epoch(self, step: int, batch_size: int) -> float:
        """Epochs of training data consumed after `step` batches of `batch_size` examples."""
        return step * batch_size / self.windows_per_epoch

    def _perm(self, epoch: int, seed: int) -> np.ndarray:
        key = (seed, epoch)
        perm = self._epochs.get(key)
        if perm is None:
            perm = _rng(seed, epoch).permutation(self.windows_per_epoch)
            if len(self._epochs) >= _EPOCH_CACHE_SIZE:
                self._epochs.pop(next(iter(self._epochs)))
            self._epochs[key] = perm
        return perm

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        """`{INPUT_KEY: (B, ...), TARGET_KEY: (B,)}`.

        Row i of step s is example number s * batch_size + i of an endless sequence of epochs,
        each a permutation of the training set drawn from default_rng((seed, epoch)): every
        example is seen once per epoch and the batch depends on nothing but the arguments.
        """
        n = self.windows_per_epoch
        flat = np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int64)
        epoch, j = np.divmod(flat, n)
        idx = np.empty(batch_size, np.int64)
        for e in np.unique(epoch):
            rows = epoch == e
            idx[rows] = self._perm(int(e), seed)[j[rows]]
        return {self.INPUT_KEY: self.train_inputs[idx], self.TARGET_KEY: self.train_targets[idx]}

    def val_batches(self, batch_size: int, n_examples: int) -> list[dict[str, np.ndarray]]:
        """The same validation batches every call, from the start of the validation split.

        As many batches as cover `n_examples` (rounded up), at most as many as cover the whole
        split; each holds `weight` (1 for an example, 0 for padding), and a short last batch is
        padded with the split's first examples at weight 0, so every example is scored once
        and evaluation compiles one shape. Arrays are read-only and shared between calls.
        """
        key = (batch_size, n_examples)
        if key not in self._val_cache:
            n_val = len(self.val_targets)
            size = min(batch_size, n_val)
            n = min(n_examples, n_val)
            batches = []
            for i in range(math.ceil(n / size)):
                idx = np.arange(i * size, (i + 1) * size)
                real = idx < n
                idx = np.where(real, idx, idx % size)  # padding: copies at weight 0
                batch = {
                    self.INPUT_KEY: self.val_inputs[idx],
                    self.TARGET_KEY: self.val_targets[idx],
                    "weight": real.astype(np.float32),
                }
                for arr in batch.values():
                    arr.setflags(write=False)
                batches.append(batch)
            self._val_cache[key] = batches
        return list(self._val_cache[key])

"""Regression on known functions (`data.source: functions`): how well can a model of a given
size approximate f?

Inputs are drawn uniformly on [-1, 1]^d, d fixed by the function (`config.FUNCTION_DIMS`);
targets are f(x) in float32. The training targets get Gaussian noise of std
`data.functions.noise`; the validation targets are exact, so the eval MSE is the error against
the function itself. Training and validation inputs come from separate streams of
`data.functions.seed` (nothing is downloaded), so the validation set does not change with
`n_train`, and `data.train_subset` keeps the first n training examples.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scalinglab.config import FUNCTION_DIMS, DataConfig
from scalinglab.data.batches import DataError, _rng
from scalinglab.data.examples import ExampleDataset, arrays_sha256

DOMAIN = (-1.0, 1.0)  # every input coordinate is uniform on this interval
HIGH_FREQUENCY = 4.0  # `high_freq` is sin(HIGH_FREQUENCY * pi * x): 4 periods on [-1, 1]


def _norm(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.sum(x * x, axis=1))


# Each takes float64 inputs (n, d) and returns (n,) targets.
FUNCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sine": lambda x: np.sin(np.pi * x[:, 0]),
    "abs": lambda x: np.abs(x[:, 0]),
    "high_freq": lambda x: np.sin(HIGH_FREQUENCY * np.pi * x[:, 0]),
    "product_2d": lambda x: x[:, 0] * x[:, 1],
    "gaussian_bump_2d": lambda x: np.exp(-4.0 * np.sum(x * x, axis=1)),
    "kink_2d": _norm,
}
if set(FUNCTIONS) != set(FUNCTION_DIMS):  # the schema's names and these formulas go together
    raise RuntimeError(f"functions {sorted(FUNCTIONS)} != config {sorted(FUNCTION_DIMS)}")


class FunctionDataset(ExampleDataset):
    """Inputs float32 (N, d) and targets float32 (N,); batches `{"x", "y"}`."""


def function_values(name: str, x: np.ndarray) -> np.ndarray:
    """f(x) of the function `name` at inputs `x` (n, d), computed in float64."""
    if name not in FUNCTIONS:
        raise DataError(f"data.functions.name: unknown {name!r}; allowed: {', '.join(FUNCTIONS)}")
    return FUNCTIONS[name](np.asarray(x, np.float64))


def sample_inputs(d: int, n: int, seed: int, stream: int) -> np.ndarray:
    """`n` inputs uniform on [-1, 1]^d (float32) from stream `stream` (0 train, 1 validation)."""
    return _rng(seed, stream).uniform(*DOMAIN, (n, d)).astype(np.float32)


def functions_dataset(cfg: DataConfig) -> FunctionDataset:
    """The `functions` source: `n_train` noisy and `n_val` exact examples of one function."""
    fc = cfg.functions
    d = FUNCTION_DIMS[fc.name]
    n_train = fc.n_train
    if cfg.train_subset is not None:
        if cfg.train_subset > fc.n_train:
            raise DataError(
                f"data.train_subset: {cfg.train_subset} is more than the {fc.n_train} training "
                f"examples of data.functions.n_train"
            )
        n_train = cfg.train_subset
    x_train = sample_inputs(d, fc.n_train, fc.seed, 0)
    x_val = sample_inputs(d, fc.n_val, fc.seed, 1)
    noise = fc.noise * _rng(fc.seed, 2).standard_normal(fc.n_train)
    y_train = (function_values(fc.name, x_train) + noise).astype(np.float32)
    y_val = function_values(fc.name, x_val).astype(np.float32)
    arrays = [x_train[:n_train], y_train[:n_train], x_val, y_val]
    for a in arrays:
        a.setflags(write=False)
    info = {
        "source": cfg.source,
        "function": fc.name,
        "n_inputs": d,
        "domain": list(DOMAIN),
        "n_train": n_train,
        "n_val": fc.n_val,
        "noise": fc.noise,
        "seed": fc.seed,
        # The MSE of the best constant prediction on the validation split.
        "target_var": float(np.var(y_val.astype(np.float64))),
        "sha256": arrays_sha256(*arrays),
    }
    return FunctionDataset(*arrays, info)

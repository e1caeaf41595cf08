"""Device placement: a 1-D data-parallel mesh over the local devices.

The state is replicated and each batch is split along its first axis, so the same code runs on
one CPU, one GPU or several; XLA inserts the gradient all-reduce. With one device every
placement is a no-op.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh(batch_size: int, devices: list[Any] | None = None) -> Mesh:
    """A ("data",) mesh over the largest number of devices that divides the batch."""
    devices = list(devices if devices is not None else jax.devices())
    n = max(k for k in range(1, len(devices) + 1) if batch_size % k == 0)
    return Mesh(np.array(devices[:n]), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a (batch, ...) array: split along the batch axis."""
    return NamedSharding(mesh, P("data"))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of a (n_batches, batch, ...) stack: each batch split along its batch axis."""
    return NamedSharding(mesh, P(None, "data"))


def with_sharding(abstract: Any, sharding: NamedSharding) -> Any:
    """Attach `sharding` to every ShapeDtypeStruct of an abstract pytree (orbax's restore
    target must say where each array goes)."""
    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
    )

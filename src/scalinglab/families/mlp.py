"""The MLP family: a fully connected classifier on flattened images.

Counts are per training EXAMPLE (the `seq_len` argument is ignored); there are no embedding
parameters. Dense layers have a bias, or batch norm's scale and shift instead. ``kaplan`` is
``6 * N`` as for the GPT (every weight is used once per example); ``full`` is ``3 * 2 *
sum(fan_in * fan_out)`` over the dense layers (no biases or norms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from scalinglab.families.base import Family, ImageConfig, no_step_temp_bytes
from scalinglab.families.common import classification_task

if TYPE_CHECKING:
    import flax.linen as nn


class MLPConfig(ImageConfig):
    """A fully connected classifier on flattened images; `residual` adds skip connections."""

    family: Literal["mlp"] = "mlp"
    width: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)  # hidden layers
    residual: bool = False
    batch_norm: bool = False


def build_model(cfg: MLPConfig) -> nn.Module:
    """The Flax `MLP` module."""
    from scalinglab.models.mlp import MLP

    return MLP(cfg)


def n_outputs(n_classes: int) -> int:
    """Logits of the head: one (sigmoid) for a binary task, else one per class (softmax)."""
    return 1 if n_classes == 2 else n_classes


def gate_factor(activation: str) -> int:
    """Output width factor of a layer feeding the activation: 2 for swiglu (gate and value)."""
    return 2 if activation == "swiglu" else 1


def layer_count(fan_in: int, fan_out: int, norm: bool, taps: int = 1) -> int:
    """Weights, plus a bias, or a norm's scale and shift instead of the bias."""
    return taps * fan_in * fan_out + (2 * fan_out if norm else fan_out)


def _layers(cfg: MLPConfig) -> list[tuple[int, int, bool]]:
    """(fan_in, fan_out, followed_by_norm) of each dense layer of the MLP, head last."""
    g = gate_factor(cfg.activation)
    fan_ins = [cfg.image_size**2 * cfg.in_channels] + [cfg.width] * (cfg.depth - 1)
    hidden = [(f, g * cfg.width, cfg.batch_norm) for f in fan_ins]
    return [*hidden, (cfg.width, n_outputs(cfg.n_classes), False)]


def param_counts(cfg: MLPConfig) -> dict[str, int]:
    """Dense layers (biases, or batch-norm scale and shift), no embedding parameters."""
    n = sum(layer_count(*layer) for layer in _layers(cfg))
    return {"total": n, "embedding": 0, "non_embedding": n}


def flops_per_token(cfg: MLPConfig, seq_len: int, counting: str) -> float:
    """Training FLOPs per example under `counting` (see the module docstring)."""
    if counting == "kaplan":
        return 6.0 * param_counts(cfg)["non_embedding"]
    return 3.0 * sum(2.0 * f_in * f_out for f_in, f_out, _ in _layers(cfg))


FAMILY = Family(
    name="mlp",
    config=MLPConfig,
    build_model=build_model,
    build_task=classification_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=no_step_temp_bytes,
    data_kinds=("image",),
)

"""The ResNet family: a convolutional image classifier.

Counts are per training EXAMPLE and there are no embedding parameters. ``6 * N`` would be
wrong by the number of positions a kernel slides over, so both conventions count each 3x3
convolution as ``2 * 9 * C_in * C_out * H * W`` (SAME padding: output size = input size) plus
the head's ``2 * C * n_out``, times 3; biases, norms, activations, pooling and residual sums
are not counted. Compute is then comparable across families, which is what an IsoFLOP sweep
over families needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from scalinglab.families.base import Family, ImageConfig, no_step_temp_bytes
from scalinglab.families.common import classification_task
from scalinglab.families.mlp import gate_factor, layer_count, n_outputs

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import DataConfig


class ResNetConfig(ImageConfig):
    """A convolutional classifier: 3x3 convolutions, batch norm, residual blocks, pooling."""

    family: Literal["resnet"] = "resnet"
    width: int = Field(16, ge=1)  # channels of the first stage; doubled at every later stage
    depth: int = Field(1, ge=1)  # residual blocks per stage
    stages: int = Field(2, ge=1)
    pool: Literal["max", "avg"] = "avg"
    batch_norm: bool = True

    def resolve(self, data: DataConfig) -> None:
        """The image shapes must match the data, and every stage keep at least one pixel."""
        super().resolve(data)
        if self.image_size >> (self.stages - 1) < 1:
            raise ValueError(
                f"model.stages: {self.stages} stages halve model.image_size "
                f"({self.image_size}) {self.stages - 1} times, below one pixel"
            )


def build_model(cfg: ResNetConfig) -> nn.Module:
    """The Flax `ResNet` module."""
    from scalinglab.models.resnet import ResNet

    return ResNet(cfg)


def _convs(cfg: ResNetConfig) -> list[tuple[int, int, int]]:
    """(C_in, C_out, side) of each 3x3 convolution of the ResNet, in order."""
    g = gate_factor(cfg.activation)
    convs = []
    c_prev = cfg.in_channels
    for s in range(cfg.stages):
        c, side = cfg.width * 2**s, cfg.image_size >> s
        convs.append((c_prev, g * c, side))  # stem, or the stage transition after its pool
        for _ in range(cfg.depth):
            convs += [(c, g * c, side), (c, c, side)]
        c_prev = c
    return convs


def param_counts(cfg: ResNetConfig) -> dict[str, int]:
    """3x3 convolutions (a bias, or batch-norm scale and shift) and a dense head."""
    c_last = cfg.width * 2 ** (cfg.stages - 1)
    n = sum(layer_count(c_in, c_out, cfg.batch_norm, 9) for c_in, c_out, _ in _convs(cfg))
    n += layer_count(c_last, n_outputs(cfg.n_classes), False)
    return {"total": n, "embedding": 0, "non_embedding": n}


def flops_per_token(cfg: ResNetConfig, seq_len: int, counting: str) -> float:
    """Training FLOPs per example, the same under both countings (see the module docstring)."""
    c_last = cfg.width * 2 ** (cfg.stages - 1)
    forward = sum(2.0 * 9 * c_in * c_out * side**2 for c_in, c_out, side in _convs(cfg))
    return 3.0 * (forward + 2.0 * c_last * n_outputs(cfg.n_classes))


FAMILY = Family(
    name="resnet",
    config=ResNetConfig,
    build_model=build_model,
    build_task=classification_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=no_step_temp_bytes,
    data_kinds=("image",),
)

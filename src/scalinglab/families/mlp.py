"""The MLP family: a fully connected network on flattened images (classification) or on the
d-dimensional inputs of a regression source (`data.source: functions`, one output, MSE).

Counts are per training EXAMPLE (the `seq_len` argument is ignored); there are no embedding
parameters. Dense layers have a bias, or batch norm's scale and shift instead. ``kaplan`` is
``6 * N`` as for the GPT (every weight is used once per example); ``full`` is ``3 * 2 *
sum(fan_in * fan_out)`` over the dense layers (no biases or norms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from scalinglab.families.base import Family, ImageConfig, no_step_temp_bytes
from scalinglab.families.common import classification_task, regression_task

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import DataConfig, TrialConfig

IMAGE_FIELDS = ("image_size", "in_channels", "n_classes")


class MLPConfig(ImageConfig):
    """A fully connected network on flattened inputs; `residual` adds skip connections.

    On an image source it classifies (`image_size`, `in_channels`, `n_classes` from the data);
    on a regression source it has `n_inputs` inputs (from the data) and one output.
    """

    family: Literal["mlp"] = "mlp"
    MUP_WIDTH: ClassVar[str | None] = "width"  # muP scales with this width
    width: int = Field(128, ge=1)
    depth: int = Field(2, ge=1)  # hidden layers
    residual: bool = False
    batch_norm: bool = False
    # Regression sources: the input features (the function's d), taken from the data when left
    # out; None on image sources, whose input is image_size^2 * in_channels.
    n_inputs: int | None = Field(None, ge=1)

    @property
    def input_size(self) -> int:
        """Features of the flattened input."""
        if self.n_inputs is not None:
            return self.n_inputs
        assert self.image_size is not None and self.in_channels is not None  # resolved
        return self.image_size**2 * self.in_channels

    @property
    def output_size(self) -> int:
        """Units of the head: 1 for regression, else the classifier's logits."""
        return 1 if self.n_classes is None else n_outputs(self.n_classes)

    def resolve(self, data: DataConfig) -> None:
        """Image sources: the image shapes (`ImageConfig.resolve`). Regression sources:
        `n_inputs` from the data (a given one must match) and no image fields."""
        want = data.n_inputs()
        if want is None:
            if self.n_inputs is not None:
                raise ValueError(
                    f"model.n_inputs applies to regression sources only; data.source "
                    f"{data.source!r} gives images of image_size^2 x in_channels inputs; remove it"
                )
            super().resolve(data)
            return
        for name in IMAGE_FIELDS:
            if getattr(self, name) is not None:
                raise ValueError(
                    f"model.{name} applies to image sources only; data.source {data.source!r} "
                    f"is a regression source (inputs: model.n_inputs, one output); remove it"
                )
        if self.n_inputs is None:
            object.__setattr__(self, "n_inputs", want)
        elif self.n_inputs != want:
            raise ValueError(
                f"model.n_inputs ({self.n_inputs}) does not match data.functions.name "
                f"{data.functions.name!r} ({want} inputs); set model.n_inputs: {want}"
            )


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
    fan_ins = [cfg.input_size] + [cfg.width] * (cfg.depth - 1)
    hidden = [(f, g * cfg.width, cfg.batch_norm) for f in fan_ins]
    return [*hidden, (cfg.width, cfg.output_size, False)]


def param_counts(cfg: MLPConfig) -> dict[str, int]:
    """Dense layers (biases, or batch-norm scale and shift), no embedding parameters."""
    n = sum(layer_count(*layer) for layer in _layers(cfg))
    return {"total": n, "embedding": 0, "non_embedding": n}


def flops_per_token(cfg: MLPConfig, seq_len: int, counting: str) -> float:
    """Training FLOPs per example under `counting` (see the module docstring)."""
    if counting == "kaplan":
        return 6.0 * param_counts(cfg)["non_embedding"]
    return 3.0 * sum(2.0 * f_in * f_out for f_in, f_out, _ in _layers(cfg))


def build_task(cfg: TrialConfig, model: nn.Module) -> Any:
    """The objective the data kind asks for: `Regression` (MSE) on a regression source,
    `Classification` on an image source."""
    if cfg.data.kind == "regression":
        return regression_task(cfg, model)
    return classification_task(cfg, model)


FAMILY = Family(
    name="mlp",
    config=MLPConfig,
    build_model=build_model,
    build_task=build_task,
    param_counts=param_counts,
    flops_per_token=flops_per_token,
    step_temp_bytes=no_step_temp_bytes,
    data_kinds=("image", "regression"),
)

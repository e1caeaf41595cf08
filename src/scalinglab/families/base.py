"""What every model family shares: the config base classes and the `Family` record.

A family's config class derives from `FamilyConfig` (through `TransformerConfig` or
`ImageConfig`), names itself in a `family: Literal[...]` field (the tag of the discriminated
union in `scalinglab.config`) and resolves itself against the trial's data (`resolve`).
This module imports no JAX, so the config schema loads without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

if TYPE_CHECKING:
    import flax.linen as nn

    from scalinglab.config import DataConfig, TrialConfig

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "swiglu"]
ACTIVATIONS: tuple[str, ...] = Activation.__args__  # type: ignore[attr-defined]

# One size table: a transformer config may name a size instead of its dimensions.
# Widths double every two steps; depth grows slowly; from "tiny" on every head is 64 wide.
# docs/model_zoo.md ("Size presets") lists the table with each preset's N_nonembed.
GPT_SIZES: dict[str, dict[str, int]] = {
    "nano": {"n_layer": 2, "d_model": 64, "n_head": 2},
    "micro": {"n_layer": 2, "d_model": 96, "n_head": 2},
    "tiny": {"n_layer": 3, "d_model": 128, "n_head": 2},
    "mini": {"n_layer": 4, "d_model": 192, "n_head": 3},
    "small": {"n_layer": 4, "d_model": 256, "n_head": 4},
    "medium": {"n_layer": 6, "d_model": 384, "n_head": 6},
    "base": {"n_layer": 8, "d_model": 512, "n_head": 8},
    "large": {"n_layer": 12, "d_model": 768, "n_head": 12},
    "xl": {"n_layer": 24, "d_model": 1024, "n_head": 16},
}


class Strict(BaseModel):
    """A config model that rejects unknown keys, non-finite numbers (an infinite learning
    rate) and booleans where a number is due (`--set model.n_layer=true` is not 1), and
    validates assignments."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            bad = {
                name: _Boolean(value)
                for name, value in data.items()
                if isinstance(value, bool)
                and name in cls.model_fields
                and _numeric(cls.model_fields[name].annotation)
            }
            if bad:
                data = {**data, **bad}  # each fails its own field's validation, located there
        return data


class _Boolean:
    """A boolean given where a number is due; no number validator accepts it."""

    def __init__(self, value: bool) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"{str(self.value).lower()}, a boolean, not a number"


def _numeric(annotation: Any) -> bool:
    """Whether a field's type is a number (int or float, optionally None) and not a bool."""
    args = get_args(annotation) or (annotation,)
    kinds = {a for a in args if a is not type(None)}
    return bool(kinds) and kinds <= {int, float} and bool not in kinds


class FamilyConfig(Strict):
    """Fields every model family has; the base type of every family's config.

    Each subclass adds its own `family: Literal["name"] = "name"` after its dimensions, so the
    field order of a dumped config (and so every trial id) is what it was.
    """

    activation: Activation = "gelu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    parametrization: Literal["standard", "mup"] = "standard"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    # muP (Yang et al. 2022): the width whose hyperparameters were tuned. The model and the
    # optimiser scale relative to it (`width_mult`); at that width muP equals standard.
    mup_base_width: int | None = Field(None, ge=1)

    # The field that holds a family's width under muP; None: the family has no muP rules.
    MUP_WIDTH: ClassVar[str | None] = None

    @model_validator(mode="after")
    def _check_mup(self) -> Any:
        family = getattr(self, "family", "?")
        if self.parametrization == "mup":
            if self.MUP_WIDTH is None:
                raise ValueError(
                    f"model.parametrization: 'mup' is implemented for the gpt and mlp families, "
                    f"not {family!r}; allowed for {family}: standard"
                )
            if self.mup_base_width is None:
                raise ValueError(
                    "model.mup_base_width is required with parametrization mup: the width "
                    f"(model.{self.MUP_WIDTH}) at which the learning rate was tuned"
                )
        elif self.mup_base_width is not None:
            raise ValueError("model.mup_base_width applies only with parametrization: mup")
        return self

    @property
    def width_mult(self) -> float:
        """muP's width / base width (1.0 under the standard parametrisation)."""
        if self.parametrization != "mup" or self.MUP_WIDTH is None:
            return 1.0
        assert self.mup_base_width is not None  # checked above
        return getattr(self, self.MUP_WIDTH) / self.mup_base_width

    def at_base_width(self) -> FamilyConfig:
        """This config at its muP base width (same everything else): the reference shapes."""
        assert self.MUP_WIDTH is not None and self.mup_base_width is not None
        return self.model_copy(update={self.MUP_WIDTH: self.mup_base_width})

    def resolve(self, data: DataConfig) -> None:
        """Fill data-dependent fields and check them against the trial's data (ValueError)."""


class TransformerConfig(FamilyConfig):
    """Transformer dimensions; `size` (from GPT_SIZES) overrides n_layer/d_model/n_head."""

    size: str | None = None
    n_layer: int = Field(2, ge=1)
    d_model: int = Field(64, ge=1)
    n_head: int = Field(2, ge=1)
    d_ff: int | None = Field(None, ge=1)
    vocab_size: int = Field(256, ge=2)
    # Rows of the learned position table; None: the trial's data.seq_len (TrialConfig fills it).
    max_seq_len: int | None = Field(None, ge=1)
    tie_embeddings: bool = True

    @model_validator(mode="before")
    @classmethod
    def _expand_size(cls, data: Any) -> Any:
        # Unknown names are reported by the field validator below, located at model.size.
        if isinstance(data, dict) and data.get("size") in GPT_SIZES:
            data = {**data, **GPT_SIZES[data["size"]]}
        return data

    @field_validator("size")
    @classmethod
    def _known_size(cls, size: str | None) -> str | None:
        if size is not None and size not in GPT_SIZES:
            raise ValueError(f"unknown size {size!r}; allowed: {', '.join(GPT_SIZES)}")
        return size

    @model_validator(mode="after")
    def _check_heads(self) -> Any:
        if self.d_model % self.n_head:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if getattr(self, "positions", None) == "rotary" and (self.d_model // self.n_head) % 2:
            raise ValueError("rotary positions need an even head dimension (d_model / n_head)")
        return self

    @property
    def ff_dim(self) -> int:
        """Hidden width of the feed-forward block."""
        return self.d_ff if self.d_ff is not None else 4 * self.d_model

    def position_rows(self, seq_len: int | None = None) -> int:
        """`max_seq_len`, checked for every user (models, counts, vocabularies): set, and at
        least `seq_len` when given. A ValueError naming model.max_seq_len otherwise."""
        if self.max_seq_len is None:
            raise ValueError(
                "model.max_seq_len must be set (TrialConfig fills it from data.seq_len)"
            )
        if seq_len is not None and seq_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds model.max_seq_len {self.max_seq_len}"
            )
        return self.max_seq_len

    def resolve(self, data: DataConfig) -> None:
        """The learned position table is sized to the data unless the config says otherwise."""
        if self.max_seq_len is None:
            self.max_seq_len = data.seq_len
        elif data.seq_len > self.max_seq_len:
            raise ValueError(
                f"data.seq_len ({data.seq_len}) exceeds model.max_seq_len ({self.max_seq_len})"
            )


class ImageConfig(FamilyConfig):
    """Image classifiers: the input and output shapes come from the data when left out, and
    must match it when given."""

    # None: taken from an image source by `resolve` (the resolved config of an image trial
    # always holds them; an MLP on a regression source keeps them None).
    image_size: int | None = Field(None, ge=1)  # height = width
    in_channels: int | None = Field(None, ge=1)
    n_classes: int | None = Field(None, ge=2)

    def resolve(self, data: DataConfig) -> None:
        """Fill the shapes the config left out from the data; a given one must equal the
        data's (checked before any compile)."""
        spec = data.image_spec()
        assert spec is not None  # family/source compatibility is checked first
        fields = ("image_size", "in_channels", "n_classes")
        data_fields = ("image_size", "channels", "n_classes")
        for field, data_field, want in zip(fields, data_fields, spec, strict=True):
            got = getattr(self, field)
            if got is None:
                object.__setattr__(self, field, want)
            elif got != want:
                where = (
                    f"data.shapes.{data_field}"
                    if data.source == "shapes"
                    else f"data.source {data.source!r}"
                )
                raise ValueError(
                    f"model.{field} ({got}) does not match {where} ({want}); set model.{field}: "
                    f"{want}"
                )


def block_params(cfg: TransformerConfig) -> int:
    """Parameters of one pre-LayerNorm transformer block: two norms, fused qkv and output
    projections, and the feed-forward block (gate and up projections for swiglu)."""
    d, f = cfg.d_model, cfg.ff_dim
    norms = 2 * (2 * d)  # norm_1, norm_2: scale and bias
    attn = (d * 3 * d + 3 * d) + (d * d + d)  # fused qkv, output projection
    n_in = 2 if cfg.activation == "swiglu" else 1  # swiglu: gate and up projections
    mlp = n_in * (d * f + f) + (f * d + d)
    return norms + attn + mlp


def stack_param_counts(cfg: TransformerConfig, token_rows: int) -> dict[str, int]:
    """Counts of a single-stack transformer (GPT, BERT): a `token_rows` x d_model token table,
    learned positions, an untied head when not tied, `n_layer` blocks and the final norm."""
    d = cfg.d_model
    embedding = token_rows * d
    if cfg.positions == "learned":
        embedding += cfg.position_rows() * d
    if not cfg.tie_embeddings:
        embedding += d * cfg.vocab_size
    non_embedding = cfg.n_layer * block_params(cfg) + 2 * d  # + norm_f
    return {
        "total": embedding + non_embedding,
        "embedding": embedding,
        "non_embedding": non_embedding,
    }


def stack_flops_per_token(
    cfg: TransformerConfig, non_embedding: int, seq_len: int, counting: str, attention: float
) -> float:
    """Training FLOPs per token of a single-stack transformer: `kaplan` 6 N_nonembed; `full`
    3 x (2 N_nonembed + 2 V d + `attention` L T d), `attention` being 2 for causal scores and
    values (half the pairs) and 4 for bidirectional."""
    if counting == "kaplan":
        return 6.0 * non_embedding
    d = cfg.d_model
    forward = 2.0 * non_embedding + 2.0 * cfg.vocab_size * d + attention * cfg.n_layer * seq_len * d
    return 3.0 * forward


def transformer_step_temp_bytes(
    cfg: TransformerConfig, layers: int, batch_size: int, seq_len: int
) -> int:
    """Rough size of a transformer train step's temporary buffer (activations kept for the
    backward, float32): per token and layer 16 d_model floats plus 2 n_head seq_len for the
    attention probabilities, plus 2 vocab floats per token for the logits. Within 10% of XLA's
    figure for the benchmark GPT (tested in test_hostmem)."""
    per_token = layers * (16 * cfg.d_model + 2 * cfg.n_head * seq_len) + 2 * cfg.vocab_size
    return 4 * batch_size * seq_len * per_token


def no_step_temp_bytes(cfg: FamilyConfig, batch_size: int, seq_len: int) -> int:
    """Image families: 0 (their inputs here are small images)."""
    return 0


DataKind = Literal["text", "image", "regression"]


@dataclass(frozen=True)
class Family:
    """Everything the rest of scalinglab needs from a model family, in one record.

    - `config`: the pydantic config class (its `family` literal is `name`).
    - `build_model(cfg) -> nn.Module`: the Flax module.
    - `build_task(trial_cfg, model) -> task`: the objective (see `scalinglab.families.common`).
    - `param_counts(cfg) -> {"total", "embedding", "non_embedding"}`: from the config alone,
      equal to `scalinglab.models.count_params` of the initialised model.
    - `flops_per_token(cfg, seq_len, counting) -> float`: training FLOPs per unit of D,
      `counting` is "kaplan" or "full" (already checked).
    - `step_temp_bytes(cfg, batch_size, seq_len) -> int`: a train step's temporaries
      (`scalinglab.hostmem`).
    - `data_kinds`: the kinds of data source it trains on ("text", "image", "regression";
      `scalinglab.config.DATA_KIND_SOURCES`).
    """

    name: str
    config: type[FamilyConfig]
    build_model: Callable[[Any], nn.Module]
    build_task: Callable[[TrialConfig, nn.Module], Any]
    param_counts: Callable[[Any], dict[str, int]]
    flops_per_token: Callable[[Any, int, str], float]
    step_temp_bytes: Callable[[Any, int, int], int]
    data_kinds: tuple[DataKind, ...]

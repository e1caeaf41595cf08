"""Typed configuration: the trial schema, validated once at the edge (YAML, CLI, Python).

Every model is strict (`extra="forbid"`), so a misspelt key is an error that names the
file, the line and the field, and lists what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

# Re-exported: the family configs and their shared pieces live in scalinglab.families.
from scalinglab.config_errors import format_validation_error  # noqa: F401  (re-exported)

# Re-exported: the data sources' settings live in scalinglab.data_config.
from scalinglab.data_config import (  # noqa: F401
    DATA_KIND_SOURCES,
    DIGITS_SPEC,
    EXAMPLE_SOURCES,
    FUNCTION_DIMS,
    IMAGE_SOURCES,
    REGRESSION_SOURCES,
    TEXT_SOURCES,
    AugmentConfig,
    DataConfig,
    FactsConfig,
    FunctionName,
    FunctionsConfig,
    InductionConfig,
    ShapesConfig,
    ShortcutConfig,
    SyntheticConfig,
)
from scalinglab.errors import ConfigError  # noqa: F401
from scalinglab.families import DEFAULT_FAMILY, FAMILY_NAMES, REGISTRY
from scalinglab.families.base import ACTIVATIONS, GPT_SIZES, Activation, FamilyConfig, Strict  # noqa: F401
from scalinglab.families.bert import BertConfig  # noqa: F401
from scalinglab.families.gpt import GPTConfig
from scalinglab.families.mlp import MLPConfig  # noqa: F401
from scalinglab.families.resnet import ResNetConfig  # noqa: F401
from scalinglab.families.t5 import T5Config  # noqa: F401
from scalinglab.yamlio import load_yaml, parse_overrides, set_dotted  # noqa: F401  (re-exported)

ModelConfig = GPTConfig  # the GPT config, under its historical name

# The `model:` field: a union of every registered family's config, told apart by `family`.
AnyModelConfig = Annotated[
    Union[tuple(f.config for f in REGISTRY.values())],  # noqa: UP007
    Field(discriminator="family"),
]
_MODEL_ADAPTER: TypeAdapter[Any] = TypeAdapter(AnyModelConfig)

# Optimisers with a muP rule (`scalinglab.mup`): Adam's and SGD's (Yang et al. 2022, table 3).
MUP_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")


def parse_model_config(data: dict[str, Any]) -> FamilyConfig:
    """Validate a `model:` mapping into the config class of its family (default gpt)."""
    return _MODEL_ADAPTER.validate_python({"family": DEFAULT_FAMILY, **data})


class ScheduleConfig(Strict):
    """Learning-rate schedule; fractions are of the total number of steps."""

    name: Literal["constant", "warmup_cosine", "wsd"] = "warmup_cosine"
    warmup_frac: float = Field(0.05, ge=0.0, le=1.0)
    final_lr_frac: float = Field(0.1, ge=0.0, le=1.0)
    decay_frac: float = Field(0.2, ge=0.0, le=1.0)  # wsd: the share of steps spent decaying


class OptimizerConfig(Strict):
    """An optax chain: clipping, the update rule, decoupled weight decay, schedule."""

    name: Literal["sgd", "momentum", "adam", "adamw", "adafactor"] = "adamw"
    lr: float = Field(3.0e-3, gt=0.0)
    # Left out: what users of each optimiser expect (DEFAULT_WEIGHT_DECAY), written into the
    # resolved config so a decay that is on shows in config.yaml and `sweep plan`.
    weight_decay: float = Field(None, ge=0.0)  # type: ignore[assignment]
    clip_norm: float | None = Field(1.0, gt=0.0)
    b1: float = Field(0.9, ge=0.0, lt=1.0)
    b2: float = Field(0.95, ge=0.0, lt=1.0)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    # Parameter kinds that weight decay skips unless removed from this list.
    decay_exclude: list[Literal["norm", "bias", "embedding"]] = ["norm", "bias", "embedding"]
    schedule: ScheduleConfig = ScheduleConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_decay(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("weight_decay") is None:
            name = data.get("name", "adamw")
            data = {**data, "weight_decay": DEFAULT_WEIGHT_DECAY.get(name, 0.0)}
        return data


# Weight decay when `optimizer.weight_decay` is not given: decoupled 0.1 for AdamW (the
# GPT-3/Chinchilla recipe); none for the others, as torch and optax default (for sgd, momentum
# and adam a decay would be coupled L2, which stalls adaptive optimisers at this size).
DEFAULT_WEIGHT_DECAY: dict[str, float] = {"adamw": 0.1}


class BudgetConfig(Strict):
    """How long to train: exactly one of tokens, steps or FLOPs."""

    # Upper bounds far past any real run, so a typo (1e308 tokens) is an error, not an
    # endless trial whose cosine schedule never leaves its first step.
    tokens: float | None = Field(None, gt=0, le=1e16)
    steps: int | None = Field(None, ge=1, le=10**10)
    flops: float | None = Field(None, gt=0, le=1e30)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetConfig:
        given = [k for k in ("tokens", "steps", "flops") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"exactly one of tokens | steps | flops must be set (got {given or 'none'})"
            )
        return self


class EarlyStoppingConfig(Strict):
    """Stop when eval loss has not improved by min_delta for `patience` evaluations."""

    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)


class DistillConfig(Strict):
    """Knowledge distillation (Hinton et al. 2015; `scalinglab.train.distill`): train on
    (1 - weight) * cross-entropy + weight * temperature^2 * KL(teacher_T || student_T).

    The teacher is named by its config, not by a path, so the student's trial id depends on
    the teacher's: the teacher's config is this trial's without `train.distill`, with the
    dotted overrides of `teacher` set (`{model.d_model: 64}`), and its run directory is
    `<teacher_dir>/<its trial id>`, `teacher_dir` relative to the folder that holds this trial's
    run directory (a sweep's output folder: `../teachers` names a sibling sweep's).
    """

    teacher: dict[str, Any] = Field(min_length=1)
    teacher_dir: str  # where the teacher's run directory is; not part of the trial id
    temperature: float = Field(2.0, gt=0.0)
    weight: float = Field(0.5, ge=0.0, le=1.0)


class TrainConfig(Strict):
    """Batching, budget, evaluation, checkpointing and divergence rules."""

    batch_size: int = Field(16, ge=1)
    budget: BudgetConfig = BudgetConfig(tokens=1.0e6)
    eval_every: int = Field(50, ge=1)
    eval_tokens: int = Field(65536, ge=1)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    flop_counting: Literal["kaplan", "full"] = "kaplan"
    # A train loss above divergence_factor * (initial loss) counts as a blow-up.
    divergence_factor: float = Field(3.0, gt=1.0)
    # Train on a finished teacher's soft targets too (None: the data alone); GPT only.
    distill: DistillConfig | None = None
    # Where metrics go besides metrics.jsonl (always written); observation only, so trial ids
    # leave it out (see `scalinglab.identity.OBSERVATION_FIELDS`).
    trackers: list[str] = ["jsonl"]

    @field_validator("trackers")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        allowed = ("jsonl", "tensorboard", "mlflow")
        for name in names:
            if name not in allowed:
                raise ValueError(f"unknown tracker {name!r}; allowed: {', '.join(allowed)}")
        return list(dict.fromkeys(["jsonl", *names]))  # jsonl is always on


class TrialConfig(Strict):
    """One fully resolved training run."""

    seed: int = 0
    model: AnyModelConfig = GPTConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_family(cls, data: Any) -> Any:
        # The discriminated union needs the tag; a model mapping without one is a GPT.
        if isinstance(data, dict) and isinstance(data.get("model"), dict):
            if "family" not in data["model"]:
                data = {**data, "model": {"family": DEFAULT_FAMILY, **data["model"]}}
            family = data["model"]["family"]
            if isinstance(family, str) and family not in REGISTRY:
                raise ValueError(
                    f"model.family: unknown family {family!r}; allowed: {', '.join(FAMILY_NAMES)}"
                )
        return data

    @model_validator(mode="after")
    def _resolve_model(self) -> TrialConfig:
        """Pair the family with a data source it can consume, then let the model config fill
        and check its data-dependent fields (`FamilyConfig.resolve`)."""
        fam = self.model.family
        allowed = [s for kind in REGISTRY[fam].data_kinds for s in DATA_KIND_SOURCES[kind]]
        if self.data.source not in allowed:
            raise ValueError(
                f"model.family {fam!r} cannot train on data.source {self.data.source!r}; "
                f"allowed sources: {', '.join(allowed)}"
            )
        if self.data.source == "tokens" and "vocab_size" in type(self.model).model_fields:
            _vocab_from_tokens(self)
        self.model.resolve(self.data)
        if self.model.parametrization == "mup" and self.optimizer.name not in MUP_OPTIMIZERS:
            raise ValueError(
                f"optimizer.name: {self.optimizer.name!r} has no muP learning-rate rule; "
                f"allowed with model.parametrization mup: {', '.join(MUP_OPTIMIZERS)}"
            )
        return self


def _vocab_from_tokens(cfg: TrialConfig) -> None:
    """`model.vocab_size` from a tokens folder's metadata (`scalinglab data tokenize`) when the
    config leaves it out; a smaller one is an error. Plain .bin/.npy files change nothing."""
    from scalinglab.data.text import TOKENS_META, token_meta  # scalinglab.data imports us

    meta = token_meta(cfg.data.path)
    model: Any = cfg.model
    given = "vocab_size" in model.model_fields_set
    path = Path(cfg.data.path or "").expanduser()
    folder = path.suffix.lower() not in (".bin", ".npy")
    if meta is None and not given and folder and not path.exists():
        # Else the id and counts would use the default 256 until the folder is written.
        raise ValueError(
            f"data.path: {cfg.data.path} does not exist, and model.vocab_size comes from its "
            f"{TOKENS_META}; write it first (scalinglab data tokenize INPUT... --out "
            f"{cfg.data.path} --train-bpe VOCAB_SIZE) or set model.vocab_size"
        )
    if meta is None:
        return
    if not given:
        model.vocab_size = meta.vocab_size
    elif model.vocab_size < meta.vocab_size:
        raise ValueError(
            f"model.vocab_size ({model.vocab_size}) is smaller than the vocabulary of data.path "
            f"{cfg.data.path} ({meta.vocab_size}, from its {TOKENS_META}); leave "
            "model.vocab_size out to take it from the data"
        )


def trial_from_dict(
    data: dict[str, Any],
    source: str = "<config>",
    lines: dict[tuple[str, ...], int] | None = None,
    overrides: list[str] | None = None,
) -> TrialConfig:
    """Validate a mapping (plus `--set` overrides) into a TrialConfig, with located errors."""
    data = copy.deepcopy(data)
    flags: dict[tuple[str, ...], str] = {}
    for item, (key, value) in zip(overrides or [], parse_overrides(overrides or []), strict=True):
        set_dotted(data, key, value)
        flags[tuple(key.split("."))] = f"--set {item.strip()}"
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source, lines, flags)) from None


def load_trial(path: str | Path | None = None, overrides: list[str] | None = None) -> TrialConfig:
    """Load a trial YAML (or the shipped default when `path` is None) and apply overrides."""
    if path is None:
        path = default_config_path()
    data, lines = load_yaml(path)
    return trial_from_dict(data, str(path), lines, overrides)


def default_config_path() -> Path:
    """The trial config shipped with the package (`scalinglab train` with no file)."""
    return Path(__file__).parent / "defaults" / "trial.yaml"


def dump_trial(cfg: TrialConfig) -> str:
    """The fully resolved config as YAML (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)

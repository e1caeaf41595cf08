"""Typed configuration: the trial schema, validated once at the edge (YAML, CLI, Python).

Every model is strict (`extra="forbid"`), so a misspelt key is an error that names the
file, the line and the field, and lists what is allowed.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

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

# The data sources each data kind (`Family.data_kinds`) covers.
TEXT_SOURCES = ("stdlib", "text", "tokens", "synthetic", "induction", "facts")
IMAGE_SOURCES: tuple[str, ...] = ("digits", "shapes")
REGRESSION_SOURCES: tuple[str, ...] = ("functions",)
DATA_KIND_SOURCES: dict[str, tuple[str, ...]] = {
    "text": TEXT_SOURCES,
    "image": IMAGE_SOURCES,
    "regression": REGRESSION_SOURCES,
}
# Sources whose unit of D is one example (`data.seq_len` 1), with a fixed train split that
# `data.train_subset` can cut.
EXAMPLE_SOURCES = IMAGE_SOURCES + REGRESSION_SOURCES

# The target functions of `data.source: functions` and their input dimension d; the formulas
# are in `scalinglab.data.functions` (which checks it has exactly these names).
FUNCTION_DIMS: dict[str, int] = {
    "sine": 1,  # sin(pi x): smooth, one period on [-1, 1]
    "abs": 1,  # |x|: one kink at 0
    "high_freq": 1,  # sin(4 pi x): smooth, four periods
    "product_2d": 2,  # x1 * x2: a smooth saddle
    "gaussian_bump_2d": 2,  # exp(-4 |x|^2): smooth
    "kink_2d": 2,  # |x| = sqrt(x1^2 + x2^2): a cone, kinked at the origin
}
FunctionName = Literal["sine", "abs", "high_freq", "product_2d", "gaussian_bump_2d", "kink_2d"]
assert set(FUNCTION_DIMS) == set(get_args(FunctionName))


def parse_model_config(data: dict[str, Any]) -> FamilyConfig:
    """Validate a `model:` mapping into the config class of its family (default gpt)."""
    return _MODEL_ADAPTER.validate_python({"family": DEFAULT_FAMILY, **data})


class SyntheticConfig(Strict):
    """A generated Markov language whose exact entropy rate is known in advance."""

    vocab_size: int = Field(64, ge=2, le=65535)
    order: int = Field(1, ge=1, le=3)  # tokens of context that determine the next-token law
    branching: int = Field(8, ge=1)  # non-zero next-token choices per context
    zipf_exponent: float = Field(1.1, gt=0.0)  # how skewed those choices are
    n_tokens: int = Field(2_000_000, ge=1024)
    seed: int = 0  # the language (its transition table); the trial seed only orders batches


class InductionConfig(Strict):
    """Episodes of distinct random tokens, echoes and a repeat (`scalinglab.data.induction`)."""

    vocab_size: int = Field(32, ge=4, le=65535)  # content tokens + the BOS and ECHO markers
    min_run: int = Field(4, ge=1)  # run length m, uniform on [min_run, max_run]
    max_run: int = Field(8, ge=1)
    echo_prob: float = Field(0.25, ge=0.0, le=1.0)  # a run token followed by ECHO and itself
    n_tokens: int = Field(2_000_000, ge=1024)
    seed: int = 0


class FactsConfig(Strict):
    """Entity -> attribute facts, each group seen a set number of times in the train stream,
    in Markov filler text (`scalinglab.data.facts`)."""

    filler_vocab: int = Field(32, ge=2)  # filler tokens (an order-1 Markov language)
    entity_pieces: int = Field(24, ge=2)  # the tokens entity names are spelt with
    entity_tokens: int = Field(2, ge=1, le=8)  # pieces per entity name
    n_attributes: int = Field(16, ge=2)  # attribute values; one uniform draw per entity
    facts_per_group: int = Field(64, ge=1)
    # One group of `facts_per_group` facts per entry, each fact in the train stream that many
    # times (0: never, the held-out facts).
    exposures: tuple[Annotated[int, Field(ge=0)], ...] = Field(
        (0, 1, 2, 4, 8, 16, 32), min_length=1
    )
    n_tokens: int = Field(50_000, ge=1024)  # train + validation stream; the rest is filler
    seed: int = 0


class AugmentConfig(Strict):
    """Image augmentation, drawn on the fly from the trial's key in training (never in eval)."""

    crop_pad: int = Field(0, ge=0)  # zero-pad by this many pixels, crop back at a random offset
    flip: bool = False  # horizontal flip with probability 1/2
    brightness: float = Field(0.0, ge=0.0)  # add U(-b, b) to every pixel of an image
    contrast: float = Field(0.0, ge=0.0, lt=1.0)  # scale deviations from the mean by U(1-c, 1+c)


class ShortcutConfig(Strict):
    """A planted spurious feature in the training images only (`scalinglab.data.shortcut`): a
    one-pixel marker whose position names a class, agreeing with the label with probability
    `strength` (else another class, uniformly); 0 plants nothing (the neutral value)."""

    strength: float = Field(0.0, ge=0.0, le=1.0)  # P(marker class == label); 0: no marker
    value: float = Field(1.0, gt=0.0)  # the lit marker pixel's value (every channel)
    remove_prob: float = Field(0.0, ge=0.0, le=1.0)  # erase the marker of a drawn example
    seed: int = 0  # which examples disagree; the trial seed does not change the data


class ShapesConfig(Strict):
    """The generated image task: one noisy bar per image whose orientation is the class.

    Difficulty grows with `noise` (pixel noise std; the bar's peak is about 1), with `n_classes`
    (orientations pi/n_classes apart) and shrinks with `image_size`. `n_classes: 2` is a binary
    task (horizontal vs vertical). Deterministic given `seed`.
    """

    image_size: int = Field(16, ge=4)
    channels: int = Field(1, ge=1)
    n_classes: int = Field(4, ge=2, le=32)
    noise: float = Field(0.5, ge=0.0)
    n_train: int = Field(4096, ge=1)
    n_val: int = Field(1024, ge=1)
    seed: int = 0


class FunctionsConfig(Strict):
    """A regression task on a known function: inputs uniform on [-1, 1]^d (d from `name`),
    targets the function's values, Gaussian noise of std `noise` on the training targets only
    (validation targets are exact, so the eval MSE is the error against the function).
    Deterministic given `seed`."""

    name: FunctionName = "sine"
    n_train: int = Field(1024, ge=1)
    n_val: int = Field(1024, ge=1)
    noise: float = Field(0.0, ge=0.0)
    seed: int = 0


# (image_size, channels, n_classes) of scikit-learn's bundled handwritten digits.
DIGITS_SPEC = (8, 1, 10)


class DataConfig(Strict):
    """Where tokens (or images, or regression examples) come from, and how they are cut.

    For image and regression sources one example is one unit of D: `seq_len` is 1 (the default
    there; any other value is an error), so `batch_size * seq_len` counts examples everywhere.
    """

    source: Literal[
        "stdlib",
        "text",
        "tokens",
        "synthetic",
        "induction",
        "facts",
        "digits",
        "shapes",
        "functions",
    ] = "stdlib"
    seq_len: int = Field(64, ge=1)
    path: str | None = None
    val_frac: float = Field(0.02, gt=0.0, lt=0.5)
    max_tokens: int | None = Field(None, ge=1)  # cap on the corpus read (stdlib/text)
    synthetic: SyntheticConfig = SyntheticConfig()
    induction: InductionConfig = InductionConfig()
    facts: FactsConfig = FactsConfig()
    augment: AugmentConfig = AugmentConfig()
    shortcut: ShortcutConfig = ShortcutConfig()
    shapes: ShapesConfig = ShapesConfig()
    # Image and regression sources: train on only the first n examples of the fixed train
    # split (data-scaling sweeps); the validation split is unchanged.
    train_subset: int | None = Field(None, ge=1)
    functions: FunctionsConfig = FunctionsConfig()

    @model_validator(mode="before")
    @classmethod
    def _image_seq_len(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("source") in EXAMPLE_SOURCES:
            data = {"seq_len": 1, **data}
        return data

    @model_validator(mode="after")
    def _check_path(self) -> DataConfig:
        if self.source in ("text", "tokens") and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.source in EXAMPLE_SOURCES and self.seq_len != 1:
            raise ValueError(
                f"data.seq_len must be 1 for {self.kind} source {self.source!r} (one example "
                f"is one unit of D); remove it"
            )
        # Compared with the defaults, not the fields set: a dumped text config holds them too.
        only = {
            "augment": (self.augment != AugmentConfig(), IMAGE_SOURCES, "image"),
            "shortcut": (self.shortcut != ShortcutConfig(), IMAGE_SOURCES, "image"),
            "train_subset": (self.train_subset, EXAMPLE_SOURCES, "image and regression"),
        }
        for name, (used, sources, what) in only.items():
            if used and self.source not in sources:
                raise ValueError(
                    f"data.{name} applies to {what} sources only ({', '.join(sources)}); "
                    f"data.source is {self.source!r}"
                )
        return self

    @property
    def kind(self) -> str:
        """The data kind of the source: "text", "image" or "regression" (DATA_KIND_SOURCES)."""
        return next(k for k, sources in DATA_KIND_SOURCES.items() if self.source in sources)

    def image_spec(self) -> tuple[int, int, int] | None:
        """(image_size, channels, n_classes) of an image source; None for text sources."""
        if self.source == "digits":
            return DIGITS_SPEC
        if self.source == "shapes":
            return (self.shapes.image_size, self.shapes.channels, self.shapes.n_classes)
        return None

    def n_inputs(self) -> int | None:
        """Input features of a regression source (the function's d); None for the others."""
        if self.source == "functions":
            return FUNCTION_DIMS[self.functions.name]
        return None


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

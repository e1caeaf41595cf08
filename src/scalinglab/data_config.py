"""The `data:` part of the trial schema: every data source's settings and `DataConfig`.

Split from `scalinglab.config` (which re-exports every name here) so the trial schema's
modules stay one concern each; strict like the rest (`Strict`: a misspelt key is an error).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import Field, model_validator

from scalinglab.families.base import Strict

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

"""Knowledge distillation (`train.distill`): a student trained on a finished teacher's soft
targets as well as on the data (Hinton et al. 2015).

The objective is `(1 - a) * CE(data) + a * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`;
the T^2 keeps the soft term's gradient on the scale of the hard one's as T changes. The
teacher's parameters are restored once per trial (`load_teacher`) and passed to the jitted
train step as an argument that is not trained (not a compiled constant), so students of the
same shape share one compiled step whatever their teacher. Evaluation is the student task's
own (plain cross-entropy), so distilled students and data-only baselines compare directly.

The teacher is named by its config (`DistillConfig`): its trial id, and so the student's, is
known before any teacher has trained, which lets a study's static sweeps name the teachers its
first sweep trains.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax

from scalinglab import runfiles as rf
from scalinglab.errors import TrialError

if TYPE_CHECKING:
    from scalinglab.config import TrialConfig

FIELD = "train.distill.teacher"


def soft_kl(
    student_logits: jax.Array, teacher_logits: jax.Array, temperature: float | jax.Array
) -> jax.Array:
    """Mean over positions of KL(softmax(teacher / T) || softmax(student / T)), in nats."""
    log_p_t = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p_s = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1).mean()


def distill_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    targets: jax.Array,
    temperature: float | jax.Array,
    weight: float | jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`(1 - weight) * CE(student, targets) + weight * T^2 * soft_kl`, and its two parts.

    Logits are (..., V) and targets the matching integer labels (...); the teacher's logits
    carry no gradient.
    """
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        student_logits.astype(jnp.float32), targets
    ).mean()
    kl = soft_kl(student_logits, teacher_logits, temperature)
    loss = (1.0 - weight) * ce + weight * temperature**2 * kl
    return loss, {"ce": ce, "kl": kl}


@dataclass(frozen=True)
class Distill:
    """A GPT next-token task trained against a teacher: `loss(..., teacher=(params, state))`
    is the distillation objective; without a teacher (evaluation) it is the student's own."""

    student: Any  # scalinglab.families.gpt.NextToken
    teacher_model: Any  # the teacher's flax module
    temperature: float
    weight: float

    @property
    def units_per_example(self) -> int:
        return self.student.units_per_example

    @property
    def model(self) -> Any:
        return self.student.model

    def example_batch(self, batch_size: int, rng: Any) -> Any:
        return self.student.example_batch(batch_size, rng)

    def init(self, key: jax.Array) -> tuple[Any, dict[str, Any]]:
        return self.student.init(key)

    def loss(
        self,
        params: Any,
        model_state: dict[str, Any],
        batch_BxT1: jax.Array,
        key: jax.Array | None,
        step: jax.Array,
        teacher: tuple[Any, dict[str, Any]] | None = None,
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
        if teacher is None:
            return self.student.loss(params, model_state, batch_BxT1, key, step)
        inputs_BxT, targets_BxT = batch_BxT1[:, :-1], batch_BxT1[:, 1:]
        rngs = {"dropout": key} if key is not None else None
        logits_BxTxV = self.student.model.apply(
            {"params": params, **model_state}, inputs_BxT, deterministic=key is None, rngs=rngs
        )
        t_params, t_state = teacher
        teacher_BxTxV = self.teacher_model.apply(
            {"params": t_params, **t_state}, inputs_BxT, deterministic=True
        )
        loss, parts = distill_loss(
            logits_BxTxV, teacher_BxTxV, targets_BxT, self.temperature, self.weight
        )
        return loss, ({"loss": loss, **parts}, model_state)


def wrap_task(cfg: TrialConfig, task: Any) -> Any:
    """`task` itself without `train.distill`; else the `Distill` objective around it."""
    d = cfg.train.distill
    if d is None:
        return task
    if cfg.model.family != "gpt":
        raise TrialError(
            f"train.distill: only the gpt family can be distilled, not {cfg.model.family!r}"
        )
    from scalinglab.models import build_model

    teacher_model = build_model(teacher_config(cfg).model)
    return Distill(task, teacher_model, d.temperature, d.weight)


def teacher_config(cfg: TrialConfig) -> TrialConfig:
    """The teacher's config: `cfg` without `train.distill`, with the teacher's overrides set.

    Raises TrialError naming `train.distill.teacher` when the result is not a valid trial, is
    not a GPT, or does not match the student's vocabulary and sequence length.
    """
    from pydantic import ValidationError

    from scalinglab.config import TrialConfig
    from scalinglab.yamlio import set_dotted

    d = cfg.train.distill
    if d is None:
        raise TrialError("train.distill: not set")
    data = cfg.model_dump(mode="json")
    data["train"]["distill"] = None
    for key, value in d.teacher.items():
        set_dotted(data, key, copy.deepcopy(value))
    try:
        teacher = TrialConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise TrialError(
            f"{FIELD}: the teacher's config is invalid: {where + ': ' if where else ''}{err['msg']}"
        ) from None
    if teacher.train.distill is not None:
        raise TrialError(f"{FIELD}: a teacher cannot itself be distilled")
    if teacher.model.family != "gpt":
        raise TrialError(f"{FIELD}: the teacher must be a gpt, not {teacher.model.family!r}")
    for name, mine, theirs in (
        ("model.vocab_size", cfg.model.vocab_size, teacher.model.vocab_size),
        ("data.seq_len", cfg.data.seq_len, teacher.data.seq_len),
    ):
        if mine != theirs:
            raise TrialError(
                f"{FIELD}: the teacher's {name} ({theirs}) differs from the student's ({mine})"
            )
    return teacher


def teacher_run_dir(cfg: TrialConfig, run_dir: str | Path) -> Path:
    """`<teacher_dir>/<teacher trial id>`, a relative `teacher_dir` taken from the folder that
    holds `run_dir` (a sweep's output folder)."""
    from scalinglab.sweep.expand import trial_id

    d = cfg.train.distill
    if d is None:
        raise TrialError("train.distill: not set")
    base = Path(d.teacher_dir).expanduser()
    if not base.is_absolute():
        base = (Path(run_dir).resolve().parent / base).resolve()
    return base / trial_id(teacher_config(cfg))


def load_teacher(cfg: TrialConfig, run_dir: str | Path) -> tuple[Any, dict[str, Any]]:
    """The finished teacher's (params, model_state), restored as its trainer wrote them.

    Raises TrialError (naming `train.distill.teacher`) when its run directory is missing or
    the teacher has not finished.
    """
    from scalinglab.train.trainer import load_state

    teacher = teacher_config(cfg)
    path = teacher_run_dir(cfg, run_dir)
    if not (path / rf.CONFIG).is_file():
        raise TrialError(f"{FIELD}: no teacher run directory {path}; train the teacher first")
    summary = rf.read_json(path / rf.SUMMARY) if (path / rf.SUMMARY).is_file() else None
    if summary is None or summary.get("status") != "done":
        status = "not finished" if summary is None else f"status {summary.get('status')!r}"
        raise TrialError(f"{FIELD}: the teacher at {path} is {status}; it must be done")
    state = load_state(teacher, path)
    if state is None:
        raise TrialError(f"{FIELD}: the teacher at {path} has no checkpoint")
    return state.params, state.model_state

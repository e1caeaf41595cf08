"""A trial's identity: which config fields decide its results, and so its id.

Trial ids (`scalinglab.sweep.expand.trial_id`) hash `identity_dump`, and a run directory
whose config.yaml has an equal `identity_dump` holds the same trial (`scalinglab.rundir`).
Observation (trackers) and cadence (checkpoint, log and eval steps) fields are left out, and
so are fields added to the schema since the id scheme was fixed, while they hold the value
that computes what the config computed before they existed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scalinglab.config import FactsConfig, FunctionsConfig, InductionConfig, ShortcutConfig

if TYPE_CHECKING:
    from scalinglab.config import TrialConfig

# Config fields that change how a run is observed, never what it computes: trial ids and the
# "same trial?" check of a run directory leave them out.
OBSERVATION_FIELDS: dict[str, Any] = {"train": {"trackers"}}


# How often a run logs, evaluates and checkpoints, and how many checkpoints it keeps: the steps
# are the same jitted steps on the same batches whatever these are, so the losses are equal
# (tests/test_trial_ids.py trains both ways). Evaluation cadence counts only with early
# stopping, which decides at evaluations when training ends.
CADENCE_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every", "eval_every")

# Fields added to the trial schema after the id scheme (v2) was fixed, each with the value that
# computes exactly what the config computed before the field existed. A config at that value
# leaves the field out of its identity, so adding a field never changes existing ids. Adding a
# field without an entry here fails tests/test_trial_ids.py. A whole sub-config may be one entry,
# its neutral value the sub-config's default dump.
ADDED_FIELDS: dict[str, Any] = {
    "data.functions": FunctionsConfig().model_dump(mode="json"),  # the regression source
    "model.n_inputs": None,  # mlp: input features of a regression source
    "data.induction": InductionConfig().model_dump(mode="json"),  # the induction source
    "train.distill": None,  # knowledge distillation from a teacher trial
    "data.facts": FactsConfig().model_dump(mode="json"),  # the facts source
    "data.shortcut": ShortcutConfig().model_dump(mode="json"),  # a planted spurious marker
    "model.mup_base_width": None,  # muP's base width (parametrization mup only)
}


def results_dump(cfg: TrialConfig) -> dict[str, Any]:
    """The config as JSON without OBSERVATION_FIELDS: what determines a trial's results."""
    return cfg.model_dump(mode="json", exclude=OBSERVATION_FIELDS)


def identity_dump(cfg: TrialConfig) -> dict[str, Any]:
    """What makes two configs the same trial: `results_dump` without the cadence fields and
    without ADDED_FIELDS left at their neutral value. Trial ids hash it, and a run directory
    whose config differs only outside it is the same trial."""
    out = without_added_fields(results_dump(cfg))
    train = out["train"]
    if train.get("distill"):  # the teacher is named by its config; where it lives is no part
        train["distill"].pop("teacher_dir", None)
    for name in CADENCE_FIELDS:
        if name != "eval_every" or train.get("early_stopping") is None:
            train.pop(name, None)
    return out


def without_added_fields(dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` (a config as JSON) without the ADDED_FIELDS that hold their neutral value: what
    the config was before those fields existed, so every id scheme hashes it unchanged."""
    for dotted, neutral in ADDED_FIELDS.items():
        *parents, leaf = dotted.split(".")
        node: Any = dump
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == neutral:
            del node[leaf]
    return dump

"""Training engine: pure train/eval steps, orbax checkpoints, hooks, trackers and `run_trial`."""

from scalinglab.budget import Budget, plan_steps
from scalinglab.errors import TrialError
from scalinglab.train.hooks import TrialInterrupted
from scalinglab.train.loop import WALL_CLOCK_FIELDS, run_trial
from scalinglab.train.state import init_state
from scalinglab.train.trainer import Trainer, build_trainer, load_state

__all__ = [
    "WALL_CLOCK_FIELDS",
    "Budget",
    "Trainer",
    "TrialError",
    "TrialInterrupted",
    "build_trainer",
    "init_state",
    "load_state",
    "run_trial",
    "plan_steps",
]

"""Training engine: pure train/eval steps, orbax checkpoints and `run_trial`."""

from scalinglab.train.loop import TrialError, TrialInterrupted, plan_steps, run_trial

__all__ = ["TrialError", "TrialInterrupted", "plan_steps", "run_trial"]

"""One trial's budget: optimiser steps, units of D (tokens, or examples for image models) and
training FLOPs, computed once from its config.

The loop trains `steps`, the runner orders and weighs trials by it, the planner prints it; all
three read the same `Budget`, so steps -> tokens -> FLOPs is written here only. A budget given
in tokens or FLOPs buys whole steps, never more than the budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from scalinglab import flops as flops_mod
from scalinglab.config import TrialConfig
from scalinglab.errors import TrialError


@dataclass(frozen=True)
class Budget:
    """Steps a trial trains and what they amount to in units of D and in FLOPs."""

    steps: int
    units_per_step: int  # batch_size * data.seq_len: tokens, or examples (seq_len 1) for images
    flops_per_token: float  # training FLOPs per unit of D, in the config's flop counting

    @classmethod
    def of(cls, cfg: TrialConfig) -> Budget:
        """The budget of `cfg`; TrialError when it buys less than one step."""
        units = cfg.train.batch_size * cfg.data.seq_len
        fpt = flops_mod.flops_per_token(cfg.model, cfg.data.seq_len, cfg.train.flop_counting)
        return cls(_plan_steps(cfg, units, fpt), units, fpt)

    @classmethod
    def of_or_none(cls, cfg: TrialConfig) -> Budget | None:
        """`of(cfg)`, or None for a trial that cannot run (the planner warns about those)."""
        try:
            return cls.of(cfg)
        except TrialError:
            return None

    @property
    def tokens(self) -> int:
        """D of the whole budget (tokens; examples for image models)."""
        return self.tokens_at(self.steps)

    @property
    def flops(self) -> float:
        """C of the whole budget."""
        return self.flops_at(self.steps)

    def tokens_at(self, step: int) -> int:
        """D after `step` optimiser steps."""
        return step * self.units_per_step

    def flops_at(self, step: int) -> float:
        """C after `step` optimiser steps."""
        return self.flops_per_token * self.tokens_at(step)


def _plan_steps(cfg: TrialConfig, units_per_step: int, fpt: float) -> int:
    budget = cfg.train.budget
    if budget.steps is not None:
        return budget.steps
    if budget.tokens is not None:
        tokens, what = budget.tokens, f"train.budget.tokens ({budget.tokens:g})"
    else:
        tokens, what = budget.flops / fpt, f"train.budget.flops ({budget.flops:g})"
    steps = int(tokens // units_per_step)
    if steps < 1:
        raise TrialError(
            f"{what} is smaller than one step: one step of train.batch_size "
            f"{cfg.train.batch_size} x data.seq_len {cfg.data.seq_len} is "
            f"{units_per_step} tokens"
            + (f" ({units_per_step * fpt:.3g} FLOPs)" if budget.flops is not None else "")
        )
    return steps


def plan_steps(cfg: TrialConfig) -> int:
    """Number of optimiser steps the budget buys (whole steps, never more than the budget)."""
    return Budget.of(cfg).steps

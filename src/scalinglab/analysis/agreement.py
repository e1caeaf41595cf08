"""Do the compute-optimal approaches agree? Judged from the bootstrap DIFFERENCE of exponents.

For each pair of approaches and each exponent (a of N_opt ~ C^a, b of
D_opt ~ C^b), the bootstrap draws of the two are subtracted: resample by resample
when both come from the same resamples of the runs (approaches 1 and 3), else
(approach 2 resamples noise) paired at random. The central interval of that
difference decides:

- **disagree**: the interval excludes 0;
- **inconclusive**: it contains 0 but is wider than ``MAX_WIDTH`` (too wide to
  tell), or one of the two approaches is unreliable (too many unusable resamples);
- **agree**: it contains 0 and is at most ``MAX_WIDTH`` wide.

Overlapping intervals are not used: wide intervals always overlap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scalinglab.analysis.approach import Approach
from scalinglab.analysis.intervals import interval

MAX_WIDTH = 0.2  # widest interval of a difference of exponents that can still count as agreement
EXPONENTS = ("a", "b")


def difference(p: Approach, q: Approach, name: str, seed: int = 0) -> np.ndarray | None:
    """Draws of ``p``'s exponent ``name`` minus ``q``'s.

    Resample by resample when both come from the same resamples of the runs (equal
    ``resampled`` keys: the fit's bootstrap and approach 1): the bootstrap distribution of
    the difference itself. Otherwise (approach 2 resamples noise, not runs) their draws
    are independent and are paired at random.
    """
    sp, sq = p.column(name), q.column(name)
    if sp is None or sq is None:
        return None
    if p.resampled is not None and p.resampled == q.resampled and len(sp) == len(sq):
        both = np.isfinite(sp) & np.isfinite(sq)
        return (sp - sq)[both] if both.sum() >= 2 else None
    sp, sq = sp[np.isfinite(sp)], sq[np.isfinite(sq)]
    if len(sp) < 2 or len(sq) < 2:
        return None
    rng = np.random.default_rng(seed)
    m = max(len(sp), len(sq))
    return sp[rng.integers(0, len(sp), m)] - sq[rng.integers(0, len(sq), m)]


def judge(
    p: Approach,
    q: Approach,
    name: str,
    confidence: float,
    max_width: float = MAX_WIDTH,
    seed: int = 0,
) -> dict[str, Any]:
    """The verdict on one exponent for one pair, with the difference's interval and why."""
    d = difference(p, q, name, seed)
    out: dict[str, Any] = {"approaches": [p.name, q.name], "exponent": name}
    point = float(getattr(p, name) - getattr(q, name))
    lo, hi = (float(v) for v in interval(d, confidence))  # type: ignore[arg-type]
    width = hi - lo
    paired = p.resampled is not None and p.resampled == q.resampled
    out.update(difference=point, ci=[lo, hi], width=width, paired=paired)
    pct = f"{100 * confidence:.0f}%"
    if lo > 0 or hi < 0:
        verdict = "disagree"
        reason = f"the {pct} interval of the difference [{lo:.3f}, {hi:.3f}] excludes 0"
    elif width > max_width:
        verdict = "inconclusive"
        reason = (
            f"the {pct} interval of the difference [{lo:.3f}, {hi:.3f}] contains 0 but is"
            f" {width:.3f} wide, over the {max_width:g} needed to tell"
        )
    else:
        verdict = "agree"
        reason = (
            f"the {pct} interval of the difference [{lo:.3f}, {hi:.3f}] contains 0 and is"
            f" {width:.3f} wide (at most {max_width:g})"
        )
    shaky = [a.name for a in (p, q) if not a.reliable]
    if shaky:
        verdict = "inconclusive"
        reason += (
            f"; but approach {' and '.join(shaky)} is unreliable (too many unusable resamples)"
        )
    out.update(verdict=verdict, reason=reason)
    return out


def agreement(
    approaches: list[Approach],
    confidence: float | None = None,
    max_width: float = MAX_WIDTH,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairwise verdicts on a and b and the overall one (any disagree wins, then inconclusive)."""
    usable = [a for a in approaches if a.ok and a.column("a") is not None]
    skipped = [
        f"{a.name}: {'no estimate' if not a.ok else 'no bootstrap samples'}"
        for a in approaches
        if a not in usable
    ]
    conf = confidence if confidence is not None else (usable[0].confidence if usable else 0.95)
    pairs = [
        judge(p, q, e, conf, max_width, seed)
        for i, p in enumerate(usable)
        for q in usable[i + 1 :]
        for e in EXPONENTS
    ]
    verdicts = {pr["verdict"] for pr in pairs}
    if not pairs:
        overall = "not compared"
    elif "disagree" in verdicts:
        overall = "disagree"
    elif "inconclusive" in verdicts:
        overall = "inconclusive"
    else:
        overall = "agree"

    def said(v: str) -> list[str]:
        return [
            f"{pr['exponent']}: {pr['approaches'][0]} vs {pr['approaches'][1]}: {pr['reason']}"
            for pr in pairs
            if pr["verdict"] == v
        ]

    return {
        "verdict": overall,
        "agree": overall == "agree",
        "compared": [a.name for a in usable],
        "not_compared": skipped,
        "confidence": conf,
        "max_width": max_width,
        "pairs": pairs,
        "disagreements": said("disagree"),
        "inconclusive": said("inconclusive"),
    }

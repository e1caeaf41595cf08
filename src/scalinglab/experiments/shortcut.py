"""A trained classifier scored on marked copies of its validation images: how much it relies
on the planted spurious marker of `data.shortcut` (`scalinglab.data.shortcut`).

Each variant (`clean`, marker `absent`, `aligned` with the label, `flipped` to another class)
replaces the images of the trial's own validation batches and is scored by the trainer's eval
step (`scalinglab.experiments.evaluation`), so the clean numbers equal what the trial
recorded and any difference is the marker's. Reliance is accuracy(aligned) -
accuracy(flipped): 0 for a model that ignores the marker, up to 1 for one that reads only it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scalinglab.data import shortcut as sc
from scalinglab.experiments import evaluation as ev

VARIANTS = ("clean", "absent", "aligned", "flipped")


def marked_val(te: ev.TrialEval) -> dict[str, Any]:
    """`{variant: stacked validation batches}`: the trial's own batches (padding and weights
    kept) with their images replaced by each variant of `scalinglab.data.shortcut.variants`,
    the marker at the value the trial trained with."""
    spec = te.cfg.data.image_spec()
    if spec is None:
        raise ValueError(f"{te.run_dir}: data.source {te.cfg.data.source!r} has no images")
    images, labels = np.asarray(te.val["image"]), np.asarray(te.val["label"])
    flat_x = images.reshape(-1, *images.shape[2:])
    marked = sc.variants(flat_x, labels.reshape(-1), spec[2], te.cfg.data.shortcut.value)
    return {k: {**te.val, "image": v.reshape(images.shape)} for k, v in marked.items()}


def variant_scores(run_dir: str | Path) -> dict[str, Any]:
    """Loss and accuracy of a finished trial on every variant, `reliance` (aligned - flipped
    accuracy) and `recorded_diff`: the clean evaluation's largest difference from the trial's
    summary.json (over 1e-5 raises, as `evaluation.check_recorded`)."""
    te = ev.load_trial_eval(run_dir)
    out: dict[str, Any] = {}
    for name, val in marked_val(te).items():
        out[name] = ev.evaluate(te, val=val)
    out["recorded_diff"] = ev.check_recorded(te, out["clean"])
    out["reliance"] = out["aligned"]["accuracy"] - out["flipped"]["accuracy"]
    return out

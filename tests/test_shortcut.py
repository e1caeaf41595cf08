"""The planted spurious marker (`data.shortcut`): where it is, how often it agrees with the
label, that validation is never marked, the analysis variants, the removal augmentation, and
that the neutral default changes neither the data nor any trial id."""

from __future__ import annotations

import numpy as np
import pytest

from scalinglab.config import ConfigError, ShortcutConfig, trial_from_dict
from scalinglab.data import build_dataset
from scalinglab.data import shortcut as sc
from scalinglab.data.batches import DataError
from scalinglab.identity import identity_dump
from scalinglab.sweep.expand import trial_id

MLP = {"family": "mlp", "width": 16, "depth": 2, "image_size": 8, "in_channels": 1, "n_classes": 10}
# The marker pixels of an 8x8 image with 10 classes, written out by hand.
DIGIT_POSITIONS = [(r, 0) for r in range(8)] + [(0, 7), (1, 7)]


def digits(**shortcut: float) -> object:
    cfg = trial_from_dict({"model": MLP, "data": {"source": "digits", "shortcut": shortcut}})
    return build_dataset(cfg.data)


def read_markers(images: np.ndarray, positions: list[tuple[int, int]]) -> np.ndarray:
    """(B, K) marker region of channel 0, read pixel by pixel."""
    return np.stack([images[:, r, c, 0] for r, c in positions], axis=1)


def region_mask(size: int, positions: list[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    for r, c in positions:
        mask[r, c] = True
    return mask


def test_marker_positions_and_too_many_classes() -> None:
    assert sc.marker_positions(8, 10).tolist() == [list(p) for p in DIGIT_POSITIONS]
    assert sc.marker_positions(4, 8).tolist()[-1] == [3, 3]
    with pytest.raises(DataError, match="9 classes need 9 marker pixels"):
        sc.marker_positions(4, 9)


@pytest.mark.parametrize("strength", [0.3, 0.9])
def test_training_marker_is_where_and_as_strong_as_configured(strength: float) -> None:
    """Every training image carries exactly one lit marker pixel at `value`; the fraction
    whose marker names the label is within a 99.9% binomial interval of `strength`; the
    disagreeing ones spread over the other 9 classes; nothing outside the region moves."""
    plain, marked = digits(), digits(strength=strength, value=0.75)
    region = read_markers(marked.train_images, DIGIT_POSITIONS)
    assert set(np.unique(region)) == {0.0, 0.75}
    assert ((region == 0.75).sum(axis=1) == 1).all()
    cls = region.argmax(axis=1)
    y = marked.train_labels
    n = len(y)
    agree = (cls == y).mean()
    assert abs(agree - strength) < 3.3 * np.sqrt(strength * (1 - strength) / n)
    offsets = np.bincount(((cls - y) % 10)[cls != y], minlength=10)[1:]
    expected = (cls != y).sum() / 9  # each offset 1-9 equally likely
    assert offsets.min() > expected - 4 * np.sqrt(expected)
    outside = ~region_mask(8, DIGIT_POSITIONS)
    np.testing.assert_array_equal(marked.train_images[:, outside], plain.train_images[:, outside])
    np.testing.assert_array_equal(marked.train_labels, plain.train_labels)
    assert marked.info["sha256"] != plain.info["sha256"]


def test_validation_is_untouched() -> None:
    plain, marked = digits(), digits(strength=1.0)
    np.testing.assert_array_equal(marked.val_images, plain.val_images)
    np.testing.assert_array_equal(marked.val_labels, plain.val_labels)
    # strength 1: every training marker is the label
    assert (
        read_markers(marked.train_images, DIGIT_POSITIONS).argmax(1) == marked.train_labels
    ).all()


def test_neutral_default_changes_no_data_and_no_id() -> None:
    cfg = trial_from_dict({"model": MLP, "data": {"source": "digits"}})
    assert cfg.data.shortcut == ShortcutConfig()
    assert "shortcut" not in identity_dump(cfg)["data"]
    data = build_dataset(cfg.data)
    assert type(data).__name__ == "ImageDataset" and "shortcut" not in data.info
    marked = trial_from_dict(
        {"model": MLP, "data": {"source": "digits", "shortcut": {"strength": 0.5}}}
    )
    assert trial_id(marked) != trial_id(cfg)


def test_variants_flip_exactly() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (50, 8, 8, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 50)
    v = sc.variants(images, labels, 10, value=2.0)
    np.testing.assert_array_equal(v["clean"], images)
    outside = ~region_mask(8, DIGIT_POSITIONS)
    for name in ("absent", "aligned", "flipped"):
        np.testing.assert_array_equal(v[name][:, outside], images[:, outside])
    for ch in range(3):
        assert (read_markers(v["absent"][..., ch:], DIGIT_POSITIONS) == 0).all()
        for name, want in (("aligned", labels), ("flipped", (labels + 1) % 10)):
            region = read_markers(v[name][..., ch:], DIGIT_POSITIONS)
            assert (region.argmax(1) == want).all()
            assert ((region == 2.0).sum(1) == 1).all() and ((region == 0).sum(1) == 9).all()
    flipped = read_markers(v["flipped"], DIGIT_POSITIONS).argmax(1)
    assert (flipped != labels).all()


def test_removal_augmentation_erases_at_its_rate_and_is_resumable() -> None:
    """remove_prob 0.4: a binomial share of batch rows has an all-zero marker region, the
    other rows are the marked images; the same (step, seed) gives the same batch."""
    kept, removed = digits(strength=1.0), digits(strength=1.0, remove_prob=0.4)
    outside = ~region_mask(8, DIGIT_POSITIONS)
    erased = 0
    steps, batch = 40, 64
    for step in range(steps):
        a, b = kept.train_batch(step, batch, 3), removed.train_batch(step, batch, 3)
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"][:, outside], b["image"][:, outside])
        gone = (read_markers(b["image"], DIGIT_POSITIONS) == 0).all(1)
        np.testing.assert_array_equal(b["image"][~gone], a["image"][~gone])
        erased += gone.sum()
        np.testing.assert_array_equal(removed.train_batch(step, batch, 3)["image"], b["image"])
    n = steps * batch
    assert abs(erased / n - 0.4) < 3.3 * np.sqrt(0.4 * 0.6 / n)
    assert kept.train_images.flags.writeable is False  # batches are copies, never the split


def test_shapes_marks_every_channel() -> None:
    cfg = trial_from_dict(
        {
            "model": {**MLP, "in_channels": 3, "image_size": 6, "n_classes": 4},
            "data": {
                "source": "shapes",
                "shapes": {"image_size": 6, "channels": 3, "n_train": 64, "n_val": 16},
                "shortcut": {"strength": 1.0},
            },
        }
    )
    data = build_dataset(cfg.data)
    pos = [(r, 0) for r in range(4)]
    for ch in range(3):
        assert (read_markers(data.train_images[..., ch:], pos).argmax(1) == data.train_labels).all()


def test_non_image_source_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        trial_from_dict({"data": {"source": "stdlib", "shortcut": {"strength": 0.9}}})
    msg = str(e.value)
    assert "data.shortcut applies to image sources only" in msg and "\n" not in msg.strip()


def test_marked_val_keeps_each_batch_row_with_its_label() -> None:
    """The analysis's variants of stacked validation batches (padding and weights kept): row i
    of batch b is marked from its own label, whatever the stacking."""
    from types import SimpleNamespace

    from scalinglab.experiments.shortcut import marked_val

    cfg = trial_from_dict(
        {"model": MLP, "data": {"source": "digits", "shortcut": {"strength": 0.9, "value": 0.5}}}
    )
    rng = np.random.default_rng(1)
    val = {
        "image": rng.uniform(0, 1, (3, 4, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, (3, 4)),
        "weight": np.array([[1, 1, 1, 1]] * 2 + [[1, 1, 0, 0]], np.float32),
    }
    out = marked_val(SimpleNamespace(cfg=cfg, val=val, run_dir="trial"))
    assert set(out) == {"clean", "absent", "aligned", "flipped"}
    for b in range(3):
        for i in range(4):
            y = val["label"][b, i]
            for name, want in (("aligned", y), ("flipped", (y + 1) % 10)):
                region = read_markers(out[name]["image"][b, i][None], DIGIT_POSITIONS)[0]
                assert region.argmax() == want and region.max() == 0.5
    for v in out.values():
        np.testing.assert_array_equal(v["weight"], val["weight"])
        np.testing.assert_array_equal(v["label"], val["label"])

"""Image data (digits, generated shapes), augmentation, and the image config checks."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scalinglab.config import ConfigError, DataConfig, ShapesConfig, trial_from_dict
from scalinglab.data import ImageDataset, build_dataset
from scalinglab.data.augment import Augment, augment_batch, random_crop
from scalinglab.data.images import make_shapes

DIGITS_MODEL = {"image_size": 8, "in_channels": 1, "n_classes": 10}


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return build_dataset(DataConfig(source="digits"))


def test_digits_fixed_split_and_info(digits: ImageDataset) -> None:
    assert digits.train.shape == (1500, 8, 8, 1) and digits.val.shape == (297, 8, 8, 1)
    assert digits.train.dtype == np.float32 and 0.0 <= digits.train.min() < digits.train.max() <= 1
    assert set(np.unique(digits.train_labels)) == set(range(10))
    info = json.loads(json.dumps(digits.info))
    assert info["n_train"] == 1500 and info["n_val"] == 297 and info["n_classes"] == 10
    assert info["image_size"] == 8 and info["channels"] == 1 and len(info["sha256"]) == 64
    # The split does not depend on anything a trial sets.
    assert build_dataset(DataConfig(source="digits")).info["sha256"] == info["sha256"]


def test_train_batches_are_pure_and_epoch_shuffled(digits: ImageDataset) -> None:
    b = digits.train_batch(7, 16, seed=3)
    assert b["image"].shape == (16, 8, 8, 1) and b["label"].dtype == np.int32
    again = build_dataset(DataConfig(source="digits")).train_batch(7, 16, seed=3)
    np.testing.assert_array_equal(b["image"], again["image"])
    assert not np.array_equal(b["label"], digits.train_batch(7, 16, seed=4)["label"])
    # One epoch of batch 20 visits every training example exactly once (1500 = 75 * 20).
    seen = np.concatenate([digits.train_batch(s, 20, 0)["image"] for s in range(75)])
    order = np.lexsort(seen.reshape(1500, -1).T)
    ref = np.lexsort(digits.train.reshape(1500, -1).T)
    np.testing.assert_array_equal(seen[order], digits.train[ref])
    # A batch straddling epochs is still a pure function of its arguments.
    np.testing.assert_array_equal(
        digits.train_batch(74, 21, 0)["label"], digits.train_batch(74, 21, 0)["label"]
    )


def test_val_batches_fixed_full_and_capped(digits: ImageDataset) -> None:
    v = digits.val_batches(32, 100)
    assert len(v) == 4 and all(b["image"].shape == (32, 8, 8, 1) for b in v)
    assert [b["weight"].sum() for b in v] == [32, 32, 32, 4]  # 100 examples scored
    # The whole split: every one of the 297 examples exactly once, in order, padding at 0.
    whole = digits.val_batches(32, 10**9)
    assert len(whole) == 10 and all(b["label"].shape == (32,) for b in whole)
    real = np.concatenate([b["label"][b["weight"] == 1] for b in whole])
    np.testing.assert_array_equal(real, digits.val_labels)
    np.testing.assert_array_equal(v[0]["label"], digits.val_labels[:32])
    small = digits.val_batches(512, 10)
    assert len(small) == 1 and small[0]["weight"].sum() == 10


def test_shapes_deterministic_and_controllable() -> None:
    cfg = ShapesConfig(image_size=12, n_classes=3, channels=2, noise=0.3)
    a, la = make_shapes(cfg, 64, seed=1)
    b, lb = make_shapes(cfg, 64, seed=1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (64, 12, 12, 2) and set(np.unique(la)) <= {0, 1, 2}
    assert not np.array_equal(a, make_shapes(cfg, 64, seed=2)[0])
    clean, _ = make_shapes(cfg.model_copy(update={"noise": 0.0}), 64, seed=1)
    assert np.std(a - clean) == pytest.approx(0.3, rel=0.05)  # noise std is the knob
    ds = build_dataset(DataConfig(source="shapes", shapes={"n_train": 100, "n_val": 20}))
    assert ds.info["n_train"] == 100 and ds.info["n_val"] == 20 and ds.info["image_size"] == 16


def test_shapes_classes_are_orientations() -> None:
    # Binary task: class 0 is a (roughly) horizontal bar, class 1 a vertical one.
    images, labels = make_shapes(ShapesConfig(n_classes=2, noise=0.0), 200, seed=0)
    m = images[..., 0]
    row_mass_spread = m.sum(2).std(-1)  # large when the mass sits in a few rows: horizontal
    col_mass_spread = m.sum(1).std(-1)  # large when it sits in a few columns: vertical
    np.testing.assert_array_equal((col_mass_spread > row_mass_spread).astype(np.int32), labels)


BATCH = {
    "image": jax.random.uniform(jax.random.PRNGKey(0), (8, 6, 6, 3)),
    "label": jnp.arange(8, dtype=jnp.int32),
}
FULL = Augment(crop_pad=2, flip=True, brightness=0.2, contrast=0.3)


def test_augmentation_keeps_labels_and_is_deterministic_given_a_key() -> None:
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    out = augment_batch(BATCH, k1, FULL)
    np.testing.assert_array_equal(out["label"], BATCH["label"])
    assert out["image"].shape == BATCH["image"].shape and out["image"].dtype == jnp.float32
    np.testing.assert_array_equal(out["image"], augment_batch(BATCH, k1, FULL)["image"])
    # Under jit XLA may fuse differently: equal up to float32 rounding of O(1) pixels.
    np.testing.assert_allclose(out["image"], jax.jit(FULL)(BATCH["image"], k1), atol=1e-6)
    assert not np.allclose(out["image"], augment_batch(BATCH, k2, FULL)["image"])
    assert Augment().is_identity and Augment()(BATCH["image"], k1) is BATCH["image"]


def test_crop_is_a_translation_with_zero_fill() -> None:
    x = jnp.arange(1, 37, dtype=jnp.float32).reshape(1, 6, 6, 1)
    for seed in range(5):
        y = random_crop(x, jax.random.PRNGKey(seed), 2)
        assert y.shape == x.shape
        # Find the shift: the kept pixels are a contiguous block of the original.
        nz = np.argwhere(np.asarray(y[0, :, :, 0]) > 0)
        r0, c0 = nz.min(0)
        v = float(y[0, r0, c0, 0])
        src_r, src_c = divmod(int(v) - 1, 6)
        dr, dc = src_r - r0, src_c - c0
        assert abs(dr) <= 2 and abs(dc) <= 2
        shifted = np.zeros((6, 6), np.float32)
        xs = np.asarray(x[0, :, :, 0])
        for r in range(6):
            for c in range(6):
                if 0 <= r + dr < 6 and 0 <= c + dc < 6:
                    shifted[r, c] = xs[r + dr, c + dc]
        np.testing.assert_array_equal(np.asarray(y[0, :, :, 0]), shifted)


def test_flip_brightness_contrast_each_do_what_they_say() -> None:
    x, key = BATCH["image"], jax.random.PRNGKey(0)
    y = Augment(flip=True)(x, key)
    for i in range(8):
        assert np.allclose(y[i], x[i]) or np.allclose(y[i], x[i, :, ::-1])
    y = Augment(brightness=0.5)(x, key)
    shift = np.asarray(y - x).reshape(8, -1)
    assert np.allclose(shift, shift[:, :1], atol=1e-6) and np.abs(shift).max() <= 0.5
    y = Augment(contrast=0.5)(x, key)
    np.testing.assert_allclose(y.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-6)


@pytest.mark.parametrize(
    ("model", "data", "expected"),
    [
        (  # a field of another family: rejected, the allowed fields listed
            {"family": "mlp", "stages": 3, **DIGITS_MODEL},
            {"source": "digits"},
            ["model.stages", "not a field of model.family 'mlp'", "residual"],
        ),
        (  # an image family on text
            {"family": "resnet", **DIGITS_MODEL},
            {"source": "stdlib"},
            ["cannot train on data.source 'stdlib'", "digits, shapes"],
        ),
        (  # a text family on images
            {"family": "gpt"},
            {"source": "digits"},
            ["model.family 'gpt' cannot train on data.source 'digits'", "stdlib"],
        ),
        (
            {"family": "mlp", **{**DIGITS_MODEL, "image_size": 28}},
            {"source": "digits"},
            ["model.image_size (28) does not match data.source 'digits' (8)"],
        ),
        (
            {"family": "mlp", **DIGITS_MODEL},
            {"source": "shapes", "shapes": {"image_size": 8}},
            ["model.n_classes (10) does not match data.shapes.n_classes (4)"],
        ),
        (
            {"family": "resnet", **DIGITS_MODEL, "stages": 5},
            {"source": "digits"},
            ["model.stages: 5 stages halve model.image_size (8) 4 times"],
        ),
        (
            {"family": "mlp", **DIGITS_MODEL},
            {"source": "digits", "seq_len": 8},
            ["data.seq_len must be 1 for image source 'digits'"],
        ),
        ({}, {"augment": {"flip": True}}, ["data.augment applies to image sources only"]),
        (
            {"family": "mlp", **DIGITS_MODEL},
            {"source": "digits", "augment": {"rotate": 10}},
            ["data.augment.rotate", "crop_pad, flip, brightness, contrast"],
        ),
    ],
)
def test_bad_image_configs_are_rejected(model: dict, data: dict, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        trial_from_dict({"model": model, "data": data})
    for part in expected:
        assert part in str(info.value), str(info.value)


def test_good_image_config_defaults_seq_len_to_one() -> None:
    cfg = trial_from_dict(
        {"model": {"family": "resnet", **DIGITS_MODEL}, "data": {"source": "digits"}}
    )
    assert cfg.data.seq_len == 1


def test_train_subset_keeps_the_first_examples_and_the_validation_split(
    digits: ImageDataset,
) -> None:
    sub = build_dataset(DataConfig(source="digits", train_subset=100))
    np.testing.assert_array_equal(sub.train, digits.train[:100])
    np.testing.assert_array_equal(sub.val, digits.val)
    assert sub.info["n_train"] == 100 and sub.info["sha256"] != digits.info["sha256"]
    assert sub.windows_per_epoch == 100
    with pytest.raises(ValueError, match="data.train_subset: 2000 is more than the 1500"):
        build_dataset(DataConfig(source="digits", train_subset=2000))


def test_contrast_scales_each_images_deviation_from_its_mean() -> None:
    """Closed form: y_i - mean(x_i) = f_i (x_i - mean(x_i)) with one factor f_i per image in
    [1 - c, 1 + c], and the factors differ between images (a no-op gives f_i = 1)."""
    x, key, c = BATCH["image"], jax.random.PRNGKey(0), 0.5
    y = np.asarray(Augment(contrast=c)(x, key))
    x = np.asarray(x)
    dev_x = (x - x.mean((1, 2, 3), keepdims=True)).reshape(len(x), -1)
    dev_y = (y - x.mean((1, 2, 3), keepdims=True)).reshape(len(x), -1)
    f = (dev_x * dev_y).sum(1) / (dev_x * dev_x).sum(1)  # least-squares factor per image
    np.testing.assert_allclose(dev_y, f[:, None] * dev_x, atol=1e-5)
    assert np.all((f >= 1 - c - 1e-6) & (f <= 1 + c + 1e-6))
    assert np.ptp(f) > 0.05 and np.max(np.abs(f - 1)) > 0.05


@pytest.mark.parametrize("family", ["mlp", "resnet"])
def test_image_shapes_left_out_come_from_the_data(family: str) -> None:
    """scikit-learn's digits are 8x8 grey images of 10 classes; a shapes source has the
    size, channels and classes its config says."""
    cfg = trial_from_dict({"model": {"family": family}, "data": {"source": "digits"}})
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.n_classes) == (8, 1, 10)
    shapes = {"image_size": 12, "channels": 3, "n_classes": 5}
    cfg = trial_from_dict(
        {
            "model": {"family": family, "in_channels": 3},
            "data": {"source": "shapes", "shapes": shapes},
        }
    )
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.n_classes) == (12, 3, 5)

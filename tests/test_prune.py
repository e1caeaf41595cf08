"""Global magnitude pruning and the masked fine-tune (`scalinglab.experiments.prune`) against
independent computations: a numpy sort of the magnitudes by hand, exact counts of the zeros,
and AdamW written out by hand with the mask applied after each update. Tiny arrays only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scalinglab.experiments import prune as pr


def tiny_tree(seed: int = 0) -> dict:
    """Two kernels, an embedding table, a bias and a norm scale (27 + 15 prunable entries)."""
    rng = np.random.default_rng(seed)
    return {
        "dense": {
            "bias": rng.normal(size=9).astype(np.float32),
            "kernel": rng.normal(size=(3, 9)).astype(np.float32),
        },
        "embed": {"embedding": rng.normal(size=(5, 3)).astype(np.float32)},
        "norm": {"scale": (1.0 + 0.01 * rng.normal(size=3)).astype(np.float32)},
    }


def numpy_masks(tree: dict, sparsity: float) -> dict:
    """The masks by hand: the prunable leaves in sorted-key order (jax's dict order), each
    row-major, a stable numpy argsort of |w|, the first round(sparsity * n) pruned."""
    kernel, table = tree["dense"]["kernel"], tree["embed"]["embedding"]
    flat = np.abs(np.concatenate([kernel.ravel(), table.ravel()]))
    keep = np.ones(flat.size, np.float32)
    keep[np.argsort(flat, kind="stable")[: int(np.round(sparsity * flat.size))]] = 0.0
    return {
        "dense": {"bias": np.ones(9, np.float32), "kernel": keep[: kernel.size].reshape(3, 9)},
        "embed": {"embedding": keep[kernel.size :].reshape(5, 3)},
        "norm": {"scale": np.ones(3, np.float32)},
    }


def assert_trees_equal(a: dict, b: dict) -> None:
    jax.tree_util.tree_map(
        lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b
    )


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.33, 0.5, 0.9, 1.0])
def test_masks_keep_exactly_the_largest_magnitudes_over_all_leaves(sparsity: float) -> None:
    tree = tiny_tree()
    masks = jax.device_get(pr.magnitude_masks(tree, sparsity))
    assert_trees_equal(masks, numpy_masks(tree, sparsity))
    # Distinct magnitudes: the kept entries are those above one global threshold.
    flat = np.abs(
        np.concatenate([tree["dense"]["kernel"].ravel(), tree["embed"]["embedding"].ravel()])
    )
    kept = np.concatenate([masks["dense"]["kernel"].ravel(), masks["embed"]["embedding"].ravel()])
    k = flat.size - int(np.round(sparsity * flat.size))
    assert kept.sum() == k
    if 0 < k < flat.size:
        threshold = np.sort(flat)[-k]
        np.testing.assert_array_equal(kept, (flat >= threshold).astype(np.float32))


def test_ties_are_broken_by_position_and_the_count_is_exact() -> None:
    tree = tiny_tree()
    tree["dense"]["kernel"][:] = 0.5  # 27 equal magnitudes, then the table's
    tree["embed"]["embedding"][:] = -0.5
    tree["embed"]["embedding"][0, 0] = 0.1
    masks = jax.device_get(pr.magnitude_masks(tree, 10 / 42))
    assert_trees_equal(masks, numpy_masks(tree, 10 / 42))
    kernel = masks["dense"]["kernel"].ravel()
    # The smallest (0.1) goes first, then the first 9 equal ones in flatten order.
    assert masks["embed"]["embedding"][0, 0] == 0 and masks["embed"]["embedding"].sum() == 14
    np.testing.assert_array_equal(kernel, np.r_[np.zeros(9), np.ones(18)])


def test_pruning_spares_vectors_and_hits_the_requested_sparsity_within_one_weight() -> None:
    tree = tiny_tree(1)
    assert pr.prunable_count(tree) == 42
    for sparsity in np.linspace(0.0, 0.95, 20):
        pruned, _ = pr.prune(tree, float(sparsity))
        pruned = jax.device_get(pruned)
        for name in (("dense", "bias"), ("norm", "scale")):
            np.testing.assert_array_equal(pruned[name[0]][name[1]], tree[name[0]][name[1]])
        zeros = int(
            (pruned["dense"]["kernel"] == 0).sum() + (pruned["embed"]["embedding"] == 0).sum()
        )
        assert abs(zeros - sparsity * 42) <= 0.5 + 1e-9  # round(): within half a weight
        assert pr.measured_sparsity(pruned) == pytest.approx(zeros / 42)
        # Kept entries are the originals, bit for bit.
        kept = pruned["dense"]["kernel"] != 0
        np.testing.assert_array_equal(
            pruned["dense"]["kernel"][kept], tree["dense"]["kernel"][kept]
        )


def test_sparsity_zero_changes_nothing() -> None:
    tree = tiny_tree(2)
    pruned, masks = pr.prune(tree, 0.0)
    assert_trees_equal(pruned, tree)
    assert all(np.all(np.asarray(m) == 1) for m in jax.tree_util.tree_leaves(masks))


class LinearTask:
    """The task protocol on a linear model: squared error, no model state."""

    def loss(self, params: dict, model_state: dict, batch: dict, key: object, step: object):
        pred = batch["x"] @ params["dense"]["kernel"] + params["dense"]["bias"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, ({"loss": loss}, model_state)


def test_masked_fine_tune_is_adamw_with_the_mask_applied_after_each_update() -> None:
    rng = np.random.default_rng(3)
    params = {
        "dense": {
            "bias": np.zeros(2, np.float32),
            "kernel": rng.normal(size=(4, 2)).astype(np.float32),
        }
    }
    batches = {
        "x": rng.normal(size=(3, 8, 4)).astype(np.float32),
        "y": rng.normal(size=(3, 8, 2)).astype(np.float32),
    }
    lr, wd = 0.05, 0.1
    tx = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(wd))  # adamw without lr
    run = jax.jit(functools.partial(pr.masked_fine_tune, task=LinearTask(), tx=tx))
    for sparsity in (0.0, 0.5):
        pruned, masks = pr.prune(params, sparsity)
        got = run(
            params, masks, {}, tx.init(params), batches, jnp.arange(3), jax.random.PRNGKey(0), lr
        )
        # The reference by hand in float64: the squared error's gradient, AdamW's update
        # (optax's defaults b1 0.9, b2 0.999, eps 1e-8) and the mask multiplied in after it.
        w, bias = (
            np.asarray(x, np.float64) for x in (pruned["dense"]["kernel"], params["dense"]["bias"])
        )
        mask = np.asarray(masks["dense"]["kernel"], np.float64)
        m, v = [np.zeros_like(w), np.zeros_like(bias)], [np.zeros_like(w), np.zeros_like(bias)]
        for t in range(1, 4):
            x, y = batches["x"][t - 1].astype(np.float64), batches["y"][t - 1].astype(np.float64)
            d = 2.0 * (x @ w + bias - y) / y.size
            for j, (p, g) in enumerate(((w, x.T @ d), (bias, d.sum(0)))):
                m[j] = 0.9 * m[j] + 0.1 * g
                v[j] = 0.999 * v[j] + 0.001 * g**2
                u = (m[j] / (1 - 0.9**t)) / (np.sqrt(v[j] / (1 - 0.999**t)) + 1e-8) + wd * p
                p -= lr * u
            w *= mask
        np.testing.assert_allclose(got["dense"]["kernel"], w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["dense"]["bias"], bias, rtol=1e-5, atol=1e-6)
        kernel = np.asarray(got["dense"]["kernel"])
        pruned_at = np.asarray(masks["dense"]["kernel"]) == 0
        assert pruned_at.sum() == round(sparsity * 8)
        assert np.all(kernel[pruned_at] == 0.0)  # exactly 0 after three updates
        assert np.all(kernel[~pruned_at] != params["dense"]["kernel"][~pruned_at])  # trained

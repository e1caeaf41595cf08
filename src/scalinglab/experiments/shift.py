"""Distribution shift: evaluation sets a trained trial never saw, built from its own data, and
the effective-robustness line that says whether scale closes the in/out-of-distribution gap.

- Images (pixels of the trial's validation split, labels unchanged): `translate` (whole pixels,
  zero fill), `blur` (a Gaussian kernel, zero padding), `contrast` (deviations from each image's
  mean scaled, the mean kept), `noise` (seeded Gaussian pixel noise) and `rotate` (bilinear,
  about the image centre, zero fill). `image_shifts` applies one by name.
- Text: the trial's synthetic Markov language (`scalinglab.data.synthetic`) with changed
  transition statistics, `with_zipf` (every context's law re-weighted) or `redraw` (a share of
  the contexts given new next tokens); `cross_entropy_rate` is the exact loss of the true
  training-language model on the shifted one, the floor a model trained on the first language
  approaches as it grows.
- `shifted_eval` scores either through the trainer's own eval step (`scalinglab.experiments.
  evaluation`), so the unshifted set reproduces the trial's recorded metrics.
- `effective_robustness`: OOD vs ID metric across sizes, the line fitted to the per-size means,
  and the residuals' trend over N, with intervals from resampling each size's seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scalinglab.data.synthetic import MarkovLanguage, make_language
from scalinglab.experiments import evaluation as ev
from scalinglab.experiments.imageeval import shift_images

ImageShift = Callable[[np.ndarray], np.ndarray]


def translate(images_BxHxWxC: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Images moved `dy` pixels down and `dx` right, the uncovered pixels 0 (the background)."""
    return shift_images(images_BxHxWxC, dy, dx, mode="zero")


def gaussian_kernel(sigma: float, radius: int = 1) -> np.ndarray:
    """The normalised 1-D Gaussian kernel of `2 radius + 1` taps."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(images_BxHxWxC: np.ndarray, sigma: float, radius: int = 1) -> np.ndarray:
    """Images convolved with a separable Gaussian of std `sigma` (pixels), zero padding, so
    the result has the input's shape (the borders lose some ink, as a blurred crop would)."""
    x = np.asarray(images_BxHxWxC, np.float64)
    k = gaussian_kernel(sigma, radius)
    _, h, w, _ = x.shape
    pad = np.pad(x, ((0, 0), (radius, radius), (radius, radius), (0, 0)))
    rows = sum(k[i] * pad[:, i : i + h] for i in range(len(k)))
    out = sum(k[j] * rows[:, :, j : j + w] for j in range(len(k)))
    return np.asarray(out, np.float32)


def contrast(images_BxHxWxC: np.ndarray, factor: float) -> np.ndarray:
    """Each image's deviations from its own mean pixel scaled by `factor` (< 1: lower
    contrast); the mean of every image is unchanged."""
    x = np.asarray(images_BxHxWxC, np.float64)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    return np.asarray(mean + factor * (x - mean), np.float32)


def noise(images_BxHxWxC: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Images plus Gaussian pixel noise of `std`, drawn from `seed` (the same draw every call)."""
    x = np.asarray(images_BxHxWxC, np.float32)
    draw = np.random.default_rng(seed).standard_normal(x.shape)
    return np.asarray(x + std * draw, np.float32)


def rotate(images_BxHxWxC: np.ndarray, degrees: float) -> np.ndarray:
    """Images rotated counter-clockwise by `degrees` about their centre, bilinear, with 0
    where the source falls outside the image (at 90 degrees: `np.rot90` of each image)."""
    x = np.asarray(images_BxHxWxC, np.float64)
    _, h, w, _ = x.shape
    cy, cx = (h - 1) / 2, (w - 1) / 2
    a = math.radians(degrees)
    i, j = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    # Output pixel (i, j) takes the source pixel rotated back by -a (row axis points down).
    dy, dx = i - cy, j - cx
    src_i = cy + math.cos(a) * dy + math.sin(a) * dx
    src_j = cx - math.sin(a) * dy + math.cos(a) * dx
    src_i, src_j = np.round(src_i, 9), np.round(src_j, 9)  # exact grid points stay exact
    i0, j0 = np.floor(src_i).astype(int), np.floor(src_j).astype(int)
    fi, fj = src_i - i0, src_j - j0
    out = np.zeros_like(x)
    for di, wi in ((0, 1 - fi), (1, fi)):
        for dj, wj in ((0, 1 - fj), (1, fj)):
            ii, jj = i0 + di, j0 + dj
            inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w)
            weight = np.where(inside, wi * wj, 0.0)
            out += weight[None, :, :, None] * x[:, np.clip(ii, 0, h - 1), np.clip(jj, 0, w - 1)]
    return np.asarray(out, np.float32)


def image_shifts(shifts: dict[str, dict[str, Any]]) -> dict[str, ImageShift]:
    """`{name: images -> images}` from `{name: {"kind": translate|blur|contrast|noise|rotate,
    **its arguments}}`; an unknown kind is an error that lists the allowed ones."""
    kinds: dict[str, Callable[..., np.ndarray]] = {
        "translate": translate,
        "blur": blur,
        "contrast": contrast,
        "noise": noise,
        "rotate": rotate,
    }
    out = {}
    for name, spec in shifts.items():
        spec = dict(spec)
        kind = spec.pop("kind")
        if kind not in kinds:
            raise ValueError(f"shift {name}: kind {kind!r}; expected one of {', '.join(kinds)}")
        fn = kinds[kind]
        out[name] = lambda x, fn=fn, spec=spec: fn(x, **spec)
    return out


def with_zipf(lang: MarkovLanguage, zipf_exponent: float) -> MarkovLanguage:
    """The same language (same next tokens and ranks in every context) with the Zipf law of
    the ranks re-weighted by another exponent: every context's law changes, its support not."""
    b = lang.branching
    zipf = np.arange(1, b + 1, dtype=np.float64) ** -zipf_exponent
    return MarkovLanguage(
        lang.vocab_size, lang.order, lang.next_tokens, zipf / zipf.sum(), lang.uniform_mix
    )


def redraw(lang: MarkovLanguage, frac: float, seed: int) -> MarkovLanguage:
    """The language with `round(frac * contexts)` contexts (chosen by `seed`) given new next
    tokens, drawn as `make_language` draws them; the rank law is kept, so the entropy rate is
    the same and only which tokens follow which changes."""
    from scalinglab.config import SyntheticConfig

    rng = np.random.default_rng(seed)
    n = lang.n_contexts
    picked = rng.choice(n, size=round(frac * n), replace=False)
    other = make_language(
        SyntheticConfig(
            vocab_size=lang.vocab_size,
            order=lang.order,
            branching=lang.branching,
            seed=int(rng.integers(1 << 30)),
        )
    )
    table = lang.next_tokens.copy()
    table[picked] = other.next_tokens[picked]
    return MarkovLanguage(lang.vocab_size, lang.order, table, lang.rank_probs, lang.uniform_mix)


def next_token_probs(lang: MarkovLanguage) -> np.ndarray:
    """Dense (contexts, vocab) next-token law of every context (small languages)."""
    s, v = lang.n_contexts, lang.vocab_size
    probs = np.full((s, v), lang.uniform_mix / v)
    np.add.at(
        probs,
        (np.arange(s)[:, None], lang.next_tokens),
        (1 - lang.uniform_mix) * lang.rank_probs[None, :],
    )
    return probs


def cross_entropy_rate(true: MarkovLanguage, model: MarkovLanguage) -> float:
    """Nats per token that the exact next-token law of `model` pays on text of `true` (same
    vocab and order): sum_s pi_true(s) sum_y p_true(y|s) (-log p_model(y|s)). Equal to the
    entropy rate of `true` when the two are the same language."""
    p, q = next_token_probs(true), next_token_probs(model)
    return float((true.stationary[:, None] * p * -np.log(q)).sum())


def text_windows(lang: MarkovLanguage, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """int32 token windows of `shape` (..., seq_len + 1) cut from one stationary sample of
    `lang`, laid out as the trainer's validation batches (consecutive windows)."""
    tokens = lang.sample(int(np.prod(shape)), np.random.default_rng(seed))
    return np.asarray(tokens, np.int32).reshape(shape)


def shifted_eval(
    te: ev.TrialEval, shift: ImageShift | MarkovLanguage, seed: int = 0
) -> dict[str, float]:
    """The trainer's eval metrics of a trial on its validation set shifted by `shift`: an
    image transform applied to every validation image, or a language whose sample replaces
    the validation tokens (same batch shapes, so the eval step compiles nothing new)."""
    if isinstance(shift, MarkovLanguage):
        return ev.evaluate(te, val=text_windows(shift, te.val.shape, seed))
    images = te.val["image"]
    flat = images.reshape(-1, *images.shape[2:])
    moved = np.asarray(shift(flat), images.dtype).reshape(images.shape)
    return ev.evaluate(te, val={**te.val, "image": moved})


def logit(p: Any, eps: float = 1e-3) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [eps, 1 - eps]: the axis on which ID and OOD
    accuracies of a family of models tend to fall on a line (Taori et al. 2020), and on which
    accuracies near 1 are not squeezed together."""
    q = np.clip(np.asarray(p, np.float64), eps, 1 - eps)
    return np.log(q / (1 - q))


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = intercept + slope x."""
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def effective_robustness(
    n: Sequence[float],
    id_metric: Sequence[float],
    ood_metric: Sequence[float],
    target: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None,
    bootstrap: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """The effective-robustness line: OOD vs ID metric fitted to the per-size means (one row
    per trial: its size `n`, ID and OOD metric), and the residuals from it per size with their
    slope per decade of N. Residuals are of `target` (sizes, ID, OOD of another family) when
    given, else of the fitted points themselves. Intervals: percentiles over resamples of each
    size's seeds (pairs kept together), in both sets. A residual slope whose interval excludes
    0 means bigger models lie further above (or below) the line than their ID metric predicts.
    """

    def groups(rows: tuple[Sequence[float], ...]) -> tuple[np.ndarray, list[np.ndarray]]:
        size, a, b = (np.asarray(r, np.float64) for r in rows)
        sizes = np.unique(size)
        return sizes, [np.stack([a[size == s], b[size == s]], axis=1) for s in sizes]

    ref_sizes, ref = groups((n, id_metric, ood_metric))
    tgt_sizes, tgt = (ref_sizes, ref) if target is None else groups(target)
    rng = np.random.default_rng(seed)

    def fit(ref_g: list[np.ndarray], tgt_g: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
        rm = np.stack([g.mean(axis=0) for g in ref_g])
        slope, intercept = _line(rm[:, 0], rm[:, 1])
        tm = np.stack([g.mean(axis=0) for g in tgt_g])
        return slope, intercept, tm[:, 1] - (intercept + slope * tm[:, 0])

    def resample(gs: list[np.ndarray]) -> list[np.ndarray]:
        return [g[rng.integers(0, len(g), len(g))] for g in gs]

    slope, intercept, resid = fit(ref, tgt)
    log_n = np.log10(tgt_sizes)
    many = len(tgt_sizes) > 1
    draws = []
    for _ in range(bootstrap):
        r = resample(ref)
        s, _, res = fit(r, r if target is None else resample(tgt))
        draws.append([s, *res, _line(log_n, res)[0] if many else 0.0])
    d = np.asarray(draws)
    tail = 50.0 * (1.0 - confidence)
    lo, hi = np.percentile(d, [tail, 100.0 - tail], axis=0)

    def ci(k: int) -> list[float]:
        return [float(lo[k]), float(hi[k])]

    k = len(tgt_sizes)
    resid_slope = _line(log_n, resid)[0] if many else None
    return {
        "slope": slope,
        "slope_ci": ci(0),
        "intercept": intercept,
        "residual_per_size": [
            {"x": float(s), "residual": float(r), "ci": ci(1 + i)}
            for i, (s, r) in enumerate(zip(tgt_sizes, resid, strict=True))
        ],
        "residual_slope_per_decade": resid_slope,
        "residual_slope_ci": ci(1 + k) if many else None,
        "residual_resolved": bool(lo[1 + k] > 0 or hi[1 + k] < 0) if many else None,
        "confidence": confidence,
    }

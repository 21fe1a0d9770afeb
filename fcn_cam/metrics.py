"""Localization metrics on precomputed saliency maps and boxes.

Every function takes plain arrays (``[H, W]`` maps in image pixels, boxes as
``[x0, y0, x1, y1]`` with exclusive ``x1, y1``), so the same code scores any method.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]


def normalize(saliency: np.ndarray, eps: float = 1e-8, dtype: type = np.float64) -> np.ndarray:
    """Min-max normalize a map to [0, 1]: ``(m - min) / (max - min + eps)``.

    A constant map becomes all zeros, never NaN. ``dtype=np.float32`` halves the memory
    for rendering large images.
    """
    m = np.asarray(saliency, dtype=dtype)
    lo, hi = float(m.min()), float(m.max())
    m = m - lo
    m *= 1 / (hi - lo + eps)
    return m


def threshold_box(saliency: np.ndarray, fraction: float = 0.2) -> Box:
    """Box around the largest connected region of a map above ``fraction`` of its range.

    The CAM paper's rule (Zhou et al. 2016, §3): normalize the map to [0, 1], keep
    pixels with ``m >= fraction``, take the largest 8-connected component and return
    its bounding box ``[x0, y0, x1, y1]`` (``x1``, ``y1`` exclusive). A constant map
    (nothing stands out) gives the whole image.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    m = np.asarray(saliency)
    h, w = m.shape
    lo, hi = float(m.min()), float(m.max())
    if hi - lo <= 0:
        return (0, 0, w, h)
    # (m - lo) / (hi - lo + eps) >= fraction, without a normalized copy (24-MP maps)
    mask = m >= lo + fraction * (hi - lo + 1e-8)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    del mask
    if n == 0:
        return (0, 0, w, h)
    # component sizes, counted in row blocks: bincount casts to int64 (192 MB on 24 MP at once)
    step = max(1, 2**20 // w)
    sizes = sum(np.bincount(labels[i:i + step].ravel(), minlength=n + 1) for i in range(0, h, step))
    biggest = int(np.argmax(sizes[1:])) + 1
    ys, xs = ndimage.find_objects(labels, max_label=biggest)[biggest - 1]
    return (xs.start, ys.start, xs.stop, ys.stop)


def iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (exclusive ends)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# --- CAM-paper box localization --------------------------------------------------------------

#: Threshold fractions tried by :func:`sweep_fraction`: 0.05, 0.10, ..., 0.95.
FRACTIONS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def box_correct(
    saliency: np.ndarray,
    gt_box: Box | np.ndarray,
    fraction: float = 0.2,
    iou_threshold: float = 0.5,
) -> bool:
    """CAM-paper localization hit: ``iou(threshold_box(saliency, fraction), gt_box) >= t``.

    Zhou et al. 2016 count a box as correct when its IoU with the ground truth is at least
    0.5 (``iou_threshold``); the box comes from :func:`threshold_box` at ``fraction``.
    """
    return iou(threshold_box(saliency, fraction), gt_box) >= iou_threshold


def box_accuracy(
    saliencies: Sequence[np.ndarray],
    gt_boxes: Sequence[Box] | np.ndarray,
    fraction: float = 0.2,
    iou_threshold: float = 0.5,
) -> float:
    """Share of maps whose :func:`box_correct` holds: ``mean_i [IoU(box_i, gt_i) >= t]``."""
    _check_pairs(saliencies, gt_boxes)
    hits = [box_correct(s, b, fraction, iou_threshold) for s, b in zip(saliencies, gt_boxes)]
    return float(np.mean(hits)) if hits else 0.0


@dataclass(frozen=True)
class ThresholdSweep:
    """Result of :func:`sweep_fraction`.

    Attributes:
        fraction: the chosen fraction (the smallest among those with the best accuracy).
        accuracy: box accuracy at ``fraction`` on the maps the sweep saw.
        fractions: every fraction tried, ascending.
        accuracies: box accuracy at each of ``fractions``.
    """

    fraction: float
    accuracy: float
    fractions: tuple[float, ...]
    accuracies: tuple[float, ...]


def sweep_fraction(
    saliencies: Sequence[np.ndarray],
    gt_boxes: Sequence[Box] | np.ndarray,
    fractions: Sequence[float] = FRACTIONS,
    iou_threshold: float = 0.5,
) -> ThresholdSweep:
    """Pick the :func:`threshold_box` fraction that maximizes box accuracy.

    ``fraction* = argmax_f box_accuracy(saliencies, gt_boxes, f)`` over ``fractions``, ties
    going to the smallest ``f``. Run it on a validation split, then report
    :func:`box_accuracy` at ``fraction*`` on the test split, so the threshold is not tuned on
    the data it is scored on.
    """
    _check_pairs(saliencies, gt_boxes)
    if not saliencies:
        raise ValueError("sweep_fraction needs at least one map")
    grid = tuple(sorted(float(f) for f in fractions))
    if not grid:
        raise ValueError("fractions is empty")
    accs = tuple(box_accuracy(saliencies, gt_boxes, f, iou_threshold) for f in grid)
    best = int(np.argmax(accs))  # first maximum = smallest fraction on ties
    return ThresholdSweep(grid[best], accs[best], grid, accs)


# --- pointing game ---------------------------------------------------------------------------


def pointing_tolerance(shape: tuple[int, ...]) -> float:
    """Pointing-game tolerance in pixels for an image of ``shape`` (``[H, W, ...]``).

    Zhang et al. 2016 allow 15 px at 224 px; it scales with the image:
    ``tol = 15 * min(H, W) / 224``.
    """
    return 15.0 * min(shape[0], shape[1]) / 224.0


def pointing_hit(
    saliency: np.ndarray, gt_box: Box | np.ndarray, tolerance: float | None = None
) -> bool:
    """Pointing-game hit (Zhang et al. 2016): the map's maximum lies on the object.

    The maximum at pixel ``(x, y)`` is a hit when its Euclidean distance to the box,
    ``hypot(max(x0 - x, 0, x - (x1 - 1)), max(y0 - y, 0, y - (y1 - 1)))``, is at most
    ``tolerance`` (default :func:`pointing_tolerance`). If several pixels share the maximum
    (flat or saturated maps), every one of them must be a hit, so a featureless map cannot
    score by luck of ``argmax`` order. A map without a finite maximum (all NaN) misses.
    """
    m = np.asarray(saliency)
    tol = pointing_tolerance(m.shape) if tolerance is None else float(tolerance)
    ys, xs = np.nonzero(m == np.nanmax(m)) if np.isfinite(m).any() else ((), ())
    if len(xs) == 0:
        return False
    return bool(np.all(_box_distance(xs, ys, gt_box) <= tol))


def _box_distance(xs: np.ndarray, ys: np.ndarray, box: Box | np.ndarray) -> np.ndarray:
    """Euclidean distance of pixels ``(xs, ys)`` to a box (0 inside)."""
    x0, y0, x1, y1 = (int(v) for v in box[:4])
    dx = np.maximum(np.maximum(x0 - xs, xs - (x1 - 1)), 0)
    dy = np.maximum(np.maximum(y0 - ys, ys - (y1 - 1)), 0)
    return np.hypot(dx, dy)


def discrimination_hit(
    saliency: np.ndarray,
    own_box: Box | np.ndarray,
    other_boxes: Sequence[Box] | np.ndarray,
    tolerance: float | None = None,
) -> bool:
    """Class-discrimination pointing: the map of one object's class points at that object.

    In a scene with several objects of different classes, the map of object ``o``'s class
    hits when its maximum is a :func:`pointing_hit` on ``own_box`` *and* strictly nearer to
    ``own_box`` than to every box in ``other_boxes`` — a map that lights up every object
    (class-agnostic saliency) misses whenever it peaks on the wrong one. Ties in the maximum
    must all hit, as in :func:`pointing_hit`.
    """
    m = np.asarray(saliency)
    if not pointing_hit(m, own_box, tolerance):
        return False
    ys, xs = np.nonzero(m == np.nanmax(m))
    own = _box_distance(xs, ys, own_box)
    return bool(all(np.all(own < _box_distance(xs, ys, b)) for b in other_boxes))


def class_mean_accuracy(
    hits: Sequence[bool] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> float:
    """Accuracy averaged per class, as the pointing game reports it.

    ``mean_k ( #hits of class k / #samples of class k )`` over the classes present in
    ``labels``, so frequent classes do not dominate.
    """
    h = np.asarray(hits, dtype=np.float64)
    y = np.asarray(labels)
    if h.shape != y.shape or h.ndim != 1:
        raise ValueError(f"hits and labels must be 1-D of equal length, got {h.shape}, {y.shape}")
    if h.size == 0:
        return 0.0
    return float(np.mean([h[y == k].mean() for k in np.unique(y)]))


def energy_pointing(saliency: np.ndarray, gt_box: Box | np.ndarray) -> float:
    """Energy-based pointing game (Score-CAM, Wang et al. 2020): share of the map in the box.

    ``sum(m+[y0:y1, x0:x1]) / sum(m+)`` with ``m+ = max(m, 0)``; a map with no positive
    mass scores 0.
    """
    m = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = float(m.sum())
    if total <= 0:
        return 0.0
    x0, y0, x1, y1 = (max(int(v), 0) for v in gt_box[:4])
    return float(m[y0:y1, x0:x1].sum() / total)


# --- deletion / insertion (RISE) -------------------------------------------------------------


def auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid-rule area: ``sum_i (x[i+1] - x[i]) * (y[i] + y[i+1]) / 2``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def _baseline(image: np.ndarray, baseline: str | float | np.ndarray, sigma: float | None):
    """The image every pixel is moved towards (deletion) or starts from (insertion)."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.zeros_like(image)
        if baseline == "mean":
            mean = image.mean(axis=(0, 1))
            if np.issubdtype(image.dtype, np.integer):
                mean = np.rint(mean)
            return np.broadcast_to(mean, image.shape).astype(image.dtype)
        if baseline == "blur":
            # RISE blurs with sigma 5 at 224 px; scale like the image
            s = 5.0 * min(image.shape[:2]) / 224.0 if sigma is None else sigma
            sig = (s, s) + (0,) * (image.ndim - 2)
            out = ndimage.gaussian_filter(image.astype(np.float64), sig, mode="nearest")
            if np.issubdtype(image.dtype, np.integer):
                out = np.rint(out)
            return out.astype(image.dtype)
        raise ValueError(f"baseline must be 'zero', 'mean', 'blur' or an array, got {baseline!r}")
    return np.broadcast_to(np.asarray(baseline, dtype=image.dtype), image.shape)


def perturbation_curve(
    image: np.ndarray,
    saliency: np.ndarray,
    score_fn: Callable[[np.ndarray], np.ndarray],
    mode: str = "deletion",
    steps: int = 50,
    baseline: str | float | np.ndarray | None = None,
    batch_size: int = 64,
    blur_sigma: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class score as pixels are deleted or inserted in decreasing saliency order (RISE).

    Pixels are ranked by ``saliency`` (descending; ties in row-major order). At step
    ``i = 0..steps`` the top ``k_i = round(i * H * W / steps)`` pixels are, for
    ``"deletion"``, replaced by the baseline in the image (default ``"zero"``), or, for
    ``"insertion"``, copied from the image into the baseline (default ``"blur"``: Gaussian,
    sigma ``5 * min(H, W) / 224``). All ``steps + 1`` images go through ``score_fn`` in
    batches of ``batch_size``.

    Args:
        image: ``[H, W, C]`` (or ``[H, W]``) float or uint8 image; the perturbed images keep
            its dtype.
        saliency: ``[H, W]`` map.
        score_fn: maps an ``[N, H, W, C]`` batch to ``N`` scores (e.g. the class probability).
        mode: ``"deletion"`` or ``"insertion"``.
        steps: number of perturbation steps.
        baseline: ``"zero"`` (zeros in the image's own value range: black for uint8 or
            [0, 1] images), ``"mean"`` (per-channel image mean), ``"blur"``, a scalar or an
            array broadcastable to the image.
        batch_size: images per ``score_fn`` call.
        blur_sigma: overrides the ``"blur"`` sigma in pixels.

    Returns:
        ``(x, scores)``: the fraction ``k_i / (H * W)`` of pixels perturbed, from 0 to 1, and
        the scores, both ``float64 [steps + 1]``.
    """
    img = np.asarray(image)
    sal = np.asarray(saliency)
    if sal.shape != img.shape[:2]:
        raise ValueError(f"saliency {sal.shape} must match the image's [H, W] {img.shape[:2]}")
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be 'deletion' or 'insertion', got {mode!r}")
    if steps < 1 or batch_size < 1:
        raise ValueError("steps and batch_size must be >= 1")
    if baseline is None:
        baseline = "zero" if mode == "deletion" else "blur"
    base = _baseline(img, baseline, blur_sigma)
    hw = sal.size
    order = np.argsort(-sal.ravel(), kind="stable")
    counts = np.rint(np.arange(steps + 1) * hw / steps).astype(np.int64)
    # deletion moves pixels image -> baseline, insertion baseline -> image
    start, end = (img, base) if mode == "deletion" else (base, img)
    start_flat = start.reshape(hw, -1)
    end_flat = end.reshape(hw, -1)
    scores = []
    for b0 in range(0, steps + 1, batch_size):
        chunk = counts[b0 : b0 + batch_size]
        batch = np.empty((len(chunk), hw, start_flat.shape[1]), dtype=img.dtype)
        for j, k in enumerate(chunk):
            batch[j] = start_flat
            idx = order[:k]
            batch[j, idx] = end_flat[idx]
        out = np.asarray(score_fn(batch.reshape((len(chunk),) + img.shape)), dtype=np.float64)
        if out.shape != (len(chunk),):
            raise ValueError(f"score_fn must return {len(chunk)} scores, got shape {out.shape}")
        scores.append(out)
    return counts / hw, np.concatenate(scores)


def deletion_auc(
    image: np.ndarray,
    saliency: np.ndarray,
    score_fn: Callable[[np.ndarray], np.ndarray],
    steps: int = 50,
    baseline: str | float | np.ndarray = "zero",
    batch_size: int = 64,
    blur_sigma: float | None = None,
) -> float:
    """Deletion AUC (Petsiuk et al. 2018): area under the score as the most salient pixels are
    replaced by ``baseline`` first; lower is better. See :func:`perturbation_curve`."""
    x, y = perturbation_curve(
        image, saliency, score_fn, "deletion", steps, baseline, batch_size, blur_sigma
    )
    return auc(x, y)


def insertion_auc(
    image: np.ndarray,
    saliency: np.ndarray,
    score_fn: Callable[[np.ndarray], np.ndarray],
    steps: int = 50,
    baseline: str | float | np.ndarray = "blur",
    batch_size: int = 64,
    blur_sigma: float | None = None,
) -> float:
    """Insertion AUC (Petsiuk et al. 2018): area under the score as the most salient pixels
    are put back into the (blurred) baseline first; higher is better. See
    :func:`perturbation_curve`."""
    x, y = perturbation_curve(
        image, saliency, score_fn, "insertion", steps, baseline, batch_size, blur_sigma
    )
    return auc(x, y)


def _check_pairs(saliencies: Sequence[np.ndarray], gt_boxes) -> None:
    if len(saliencies) != len(gt_boxes):
        raise ValueError(f"{len(saliencies)} maps but {len(gt_boxes)} boxes")

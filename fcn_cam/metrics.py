"""Localization metrics on precomputed saliency maps and boxes.

Every function takes plain arrays (``[H, W]`` maps in image pixels, boxes as
``[x0, y0, x1, y1]`` with exclusive ``x1, y1``), so the same code scores any method.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, int, int, int]


def normalize(saliency: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Min-max normalize a map to [0, 1]: ``(m - min) / (max - min + eps)``.

    A constant map becomes all zeros, never NaN.
    """
    m = np.asarray(saliency, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo + eps)


def threshold_box(saliency: np.ndarray, fraction: float = 0.2) -> Box:
    """Box around the largest connected region of a map above ``fraction`` of its range.

    The CAM paper's rule (Zhou et al. 2016, §3): normalize the map to [0, 1], keep
    pixels with ``m >= fraction``, take the largest 8-connected component and return
    its bounding box ``[x0, y0, x1, y1]`` (``x1``, ``y1`` exclusive). A constant map
    (nothing stands out) gives the whole image.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    m = normalize(saliency)
    h, w = m.shape
    mask = m >= fraction
    if m.max() <= 0 or not mask.any():
        return (0, 0, w, h)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if n > 1:
        sizes = np.bincount(labels.ravel())[1:]
        mask = labels == (1 + int(np.argmax(sizes)))
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


def iou(a: Box | np.ndarray, b: Box | np.ndarray) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (exclusive ends)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0

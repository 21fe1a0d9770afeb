"""Synthetic localization scenes: a tinted handwritten digit on a cluttered natural background.

Each scene is one digit from scikit-learn's ``load_digits`` (8x8 bitmaps, 10 classes), cropped
to its ink, upscaled with bilinear interpolation to a random size and pasted at a random
position on a random crop of a scikit-image photo or texture, after a few distractors
(soft blobs, curved strokes, patches of other textures) that belong to no class. The digit's
colour is chosen to contrast with the background under it, so every scene is solvable, while
neither the class nor the location can be read off trivially.

scikit-image and scikit-learn are needed only here, and are imported lazily
(``pip install 'fcn-cam[demo]'``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

#: Native side of the scenes in pixels (and the twins' input size).
SCENE_SIZE = 112
#: Class names, index = label.
CLASS_NAMES = [str(d) for d in range(10)]
#: ``load_digits`` bitmaps from this index on are kept for ``split="test"`` (the last ~20 %,
#: different writers from the first part), the ones before it for ``split="train"``.
TEST_DIGITS_FROM = 1437
#: Upscaled ink below this opacity is dropped, so the box is the tight box of what is drawn.
_ALPHA_LO, _ALPHA_HI = 0.2, 0.6
#: Scenes rendered per vectorized chunk (bounds the float32 working memory to ~40 MB).
_CHUNK = 256

# skimage.data images shipped inside scikit-image itself (no download needed). Text-like
# images (page, text) are left out on purpose: their glyphs could look like digits.
_SOURCE_NAMES = (
    "grass", "gravel", "brick", "coffee", "rocket", "astronaut", "chelsea", "camera",
    "moon", "coins", "hubble_deep_field", "immunohistochemistry", "retina", "clock",
)  # fmt: skip


@dataclass(frozen=True)
class Scenes:
    """A batch of scenes.

    Attributes:
        images: ``uint8 [n, S, S, 3]`` RGB images.
        labels: ``int64 [n]`` class indices into ``class_names``.
        boxes: ``int64 [n, 4]`` tight boxes ``[x0, y0, x1, y1]`` of the digit's drawn pixels,
            ``x1``/``y1`` exclusive.
        masks: ``bool [n, S, S]`` the digit's drawn pixels.
        class_names: the K class names.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def _missing(exc: ImportError) -> ImportError:
    return ImportError(
        "fcn_cam.demo.scenes needs scikit-image and scikit-learn: "
        f"pip install 'fcn-cam[demo]' ({exc})"
    )


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits`` bitmaps in [0, 1] (``float32 [1797, 8, 8]``) and their labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise _missing(exc) from None
    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, ...]:
    """Background material: each photo/texture as ``float32 [H, W, 3]`` in [0, 1].

    Large images also appear 2x2-mean-downscaled, so textures occur at two scales.
    """
    try:
        from skimage import data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise _missing(exc) from None
    out: list[np.ndarray] = []
    for name in _SOURCE_NAMES:
        try:
            img = np.asarray(getattr(data, name)(), dtype=np.float32) / 255.0
        except Exception:  # noqa: BLE001 - a missing optional image only narrows the pool
            continue
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        img = np.ascontiguousarray(img[..., :3])
        out.append(img)
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        if min(h, w) // 2 >= 2 * SCENE_SIZE:
            half = img[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))
            out.append(np.ascontiguousarray(half))
    if len(out) < 4:
        raise RuntimeError("too few skimage.data images available to build backgrounds")
    return tuple(out)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed ``float32 [512, 512, 3]`` field of standard normals to crop pixel noise from."""
    return np.random.default_rng(20160527).standard_normal((512, 512, 3), dtype=np.float32)


@functools.lru_cache(maxsize=512)
def _resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Bilinear (pixel-centre aligned, edge-clamped) resampling matrix ``[n_out, n_in]``."""
    centres = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    centres = np.clip(centres, 0, n_in - 1)
    lo = np.floor(centres).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (centres - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1 - frac)
    np.add.at(m, (rows, hi), frac)
    return m


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _color_with_luma(rng: np.random.Generator, target: float) -> np.ndarray:
    """A random RGB colour rescaled (towards black or white) to have luma ``target``."""
    c = rng.random(3).astype(np.float32)
    lum = float(_luma(c))
    if target <= lum:
        return c * (target / max(lum, 1e-6))
    return 1 - (1 - c) * ((1 - target) / max(1 - lum, 1e-6))


def _window(x: float, y: float, r: float, size: int) -> tuple[int, int, int, int]:
    x0, y0 = max(0, int(x - r)), max(0, int(y - r))
    x1, y1 = min(size, int(np.ceil(x + r)) + 1), min(size, int(np.ceil(y + r)) + 1)
    return x0, y0, x1, y1


def _paint(canvas: np.ndarray, win: tuple[int, int, int, int], alpha: np.ndarray, fill) -> None:
    """Alpha-composite ``fill`` (colour or patch) over ``canvas[win]`` in place."""
    x0, y0, x1, y1 = win
    region = canvas[y0:y1, x0:x1]
    a = alpha[..., None]
    region *= 1 - a
    region += a * fill


def _blob(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A soft-edged ellipse of a random colour."""
    cx, cy = rng.uniform(0, size, 2)
    rx, ry = rng.uniform(4, 22, 2)
    theta = rng.uniform(0, np.pi)
    win = _window(cx, cy, max(rx, ry), size)
    yy, xx = np.mgrid[win[1] : win[3], win[0] : win[2]].astype(np.float32)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    d = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    alpha = np.clip((1.0 - d) * rng.uniform(2, 8), 0, 1) * rng.uniform(0.5, 1.0)
    _paint(canvas, win, alpha, rng.random(3).astype(np.float32))


def _stroke(canvas: np.ndarray, rng: np.random.Generator, size: int) -> None:
    """A curved stroke (quadratic Bezier) of random thickness and colour."""
    p = rng.uniform(-10, size + 10, (3, 2)).astype(np.float32)
    # keep it local: pull the control and end points towards the start
    p[1:] = p[0] + (p[1:] - p[0]) * rng.uniform(0.15, 0.5)
    half = rng.uniform(0.8, 2.5)
    # sample densely enough (< 1 px apart) that the stroke is continuous
    length = np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[1])
    t = np.linspace(0, 1, int(length) + 2, dtype=np.float32)[:, None]
    pts = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
    lo, hi = pts.min(0) - half - 1, pts.max(0) + half + 1
    x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
    x1, y1 = min(size, int(np.ceil(hi[0]))), min(size, int(np.ceil(hi[1])))
    if x1 <= x0 or y1 <= y0:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    d2 = (xx[..., None] - pts[:, 0]) ** 2 + (yy[..., None] - pts[:, 1]) ** 2
    d = np.sqrt(d2.min(axis=-1))
    alpha = np.clip(half + 0.5 - d, 0, 1)
    _paint(canvas, (x0, y0, x1, y1), alpha, rng.random(3).astype(np.float32))


def _patch(canvas: np.ndarray, rng: np.random.Generator, size: int, sources) -> None:
    """A rectangle or ellipse cut from another texture."""
    src = sources[rng.integers(len(sources))]
    h, w = (int(v) for v in rng.integers(12, 48, 2))
    sy, sx = rng.integers(0, src.shape[0] - h + 1), rng.integers(0, src.shape[1] - w + 1)
    y0, x0 = int(rng.integers(-h // 2, size - h // 2)), int(rng.integers(-w // 2, size - w // 2))
    cy0, cx0 = max(0, y0), max(0, x0)
    cy1, cx1 = min(size, y0 + h), min(size, x0 + w)
    piece = src[sy + cy0 - y0 : sy + cy1 - y0, sx + cx0 - x0 : sx + cx1 - x0]
    if rng.random() < 0.5:
        alpha = np.ones(piece.shape[:2], dtype=np.float32)
    else:
        yy, xx = np.mgrid[cy0:cy1, cx0:cx1].astype(np.float32)
        d = np.hypot((xx - (x0 + w / 2)) / (w / 2), (yy - (y0 + h / 2)) / (h / 2))
        alpha = np.clip((1 - d) * 6, 0, 1)
    _paint(canvas, (cx0, cy0, cx1, cy1), alpha, piece * rng.uniform(0.6, 1.3, 3))


def _distractors(canvas: np.ndarray, rng: np.random.Generator, sources: tuple[np.ndarray, ...],
                 distractors: tuple[int, int]) -> None:
    """Paint blobs, strokes and texture patches (no class) on ``canvas`` in place."""
    size = canvas.shape[0]
    for _ in range(rng.integers(distractors[0], distractors[1] + 1)):
        kind = rng.integers(3)
        if kind == 0:
            _blob(canvas, rng, size)
        elif kind == 1:
            _stroke(canvas, rng, size)
        else:
            _patch(canvas, rng, size, sources)


def _draw_digit(
    canvas: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    label: int,
    height: int,
    by_class: list[np.ndarray],
    bitmaps: np.ndarray,
    spread: float,
    area: tuple[int, int, int, int] | None = None,
) -> tuple[int, int, int, int]:
    """Paint one digit inside ``area`` (``[x0, y0, x1, y1]``, default the whole canvas) in a
    colour contrasting with what is under it; fill ``mask``; return its tight box."""
    size = canvas.shape[0]
    ax0, ay0, ax1, ay1 = area if area is not None else (0, 0, size, size)
    # the digit: crop the bitmap to its ink, upscale, sharpen the ramp into an alpha
    choices = by_class[label]
    bmp = bitmaps[choices[rng.integers(len(choices))]]
    rows, cols = np.nonzero(bmp.any(axis=1))[0], np.nonzero(bmp.any(axis=0))[0]
    bmp = bmp[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h = height
    w = h * bmp.shape[1] / bmp.shape[0] * rng.uniform(0.85, 1.15)
    w = int(np.clip(round(w), 2, ax1 - ax0))
    up = _resize_matrix(h, bmp.shape[0]) @ bmp @ _resize_matrix(w, bmp.shape[1]).T
    alpha = np.clip((up - _ALPHA_LO) / (_ALPHA_HI - _ALPHA_LO), 0, 1)
    # top-left corner within the central ``spread`` share of the free range
    ny, nx = ay1 - ay0, ax1 - ax0
    lo_y, lo_x = int((ny - h) * (1 - spread) / 2), int((nx - w) * (1 - spread) / 2)
    y0 = ay0 + int(rng.integers(lo_y, ny - h - lo_y + 1))
    x0 = ax0 + int(rng.integers(lo_x, nx - w - lo_x + 1))
    bg = float(_luma(canvas[y0 : y0 + h, x0 : x0 + w].reshape(-1, 3).mean(axis=0)))
    # contrast: at least 0.35 luma away from the local background, on the roomier side
    target = rng.uniform(0, bg - 0.35) if bg > 0.5 else rng.uniform(bg + 0.35, 1.0)
    _paint(canvas, (x0, y0, x0 + w, y0 + h), alpha, _color_with_luma(rng, target))

    drawn = alpha > 0
    mask[y0 : y0 + h, x0 : x0 + w] = drawn
    ys, xs = np.nonzero(drawn.any(axis=1))[0], np.nonzero(drawn.any(axis=0))[0]
    return (x0 + int(xs[0]), y0 + int(ys[0]), x0 + int(xs[-1]) + 1, y0 + int(ys[-1]) + 1)


def _render(n: int, rng: np.random.Generator, size: int, noise: float,
            draw: Callable[[int, np.ndarray], None]) -> np.ndarray:
    """``uint8 [n, size, size, 3]`` scenes: a random photo/texture crop per scene (maybe
    mirrored, gain-jittered), on which ``draw(i, canvas)`` paints in place, then pixel noise."""
    sources = _sources()
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    # whole-image work (gain, clip, noise, quantization) is done per chunk, vectorized
    for c0 in range(0, n, _CHUNK):
        c1 = min(n, c0 + _CHUNK)
        canvas = np.empty((c1 - c0, size, size, 3), dtype=np.float32)
        src_idx = rng.integers(len(sources), size=c1 - c0)
        offsets = rng.random((c1 - c0, 2))
        flips = rng.random(c1 - c0) < 0.5
        for j, (k, (oy, ox), flip) in enumerate(zip(src_idx, offsets, flips, strict=True)):
            src = sources[k]
            sy = int(oy * (src.shape[0] - size + 1))
            sx = int(ox * (src.shape[1] - size + 1))
            crop = src[sy : sy + size, sx : sx + size]
            canvas[j] = crop[:, ::-1] if flip else crop
        canvas *= rng.uniform(0.6, 1.2, (c1 - c0, 1, 1, 3)).astype(np.float32)
        np.clip(canvas, 0, 1, out=canvas)
        for j, i in enumerate(range(c0, c1)):
            draw(i, canvas[j])
        if noise > 0:
            # crops of a fixed noise bank: ~10x cheaper than fresh normals per pixel
            bank = _noise_bank()
            span = bank.shape[0] - size + 1
            for j, (ny, nx) in enumerate(rng.integers(0, span, (c1 - c0, 2))):
                canvas[j] += noise * bank[ny : ny + size, nx : nx + size]
        canvas *= 255
        canvas += 0.5
        np.clip(canvas, 0, 255, out=canvas)
        images[c0:c1] = canvas.astype(np.uint8)
    return images


def _check(n: int, size: int, object_size: tuple[int, int], distractors: tuple[int, int],
           split: str, largest: int | None = None) -> None:
    """Validate the common arguments of :func:`scenes` and :func:`pair_scenes`."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 16 <= size <= 300:  # the smallest background photos are 300 px
        raise ValueError(f"size must be in [16, 300], got {size}")
    lo_size, hi_size = object_size
    top = size if largest is None else largest
    if not 2 <= lo_size <= hi_size <= top:
        raise ValueError(f"object_size must satisfy 2 <= lo <= hi <= {top}, got {object_size}")
    lo_n, hi_n = distractors
    if not 0 <= lo_n <= hi_n:
        raise ValueError(f"distractors must satisfy 0 <= lo <= hi, got {distractors}")
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")


def _digit_pool(split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """All bitmaps and, per class, the indices of ``split``'s bitmaps of that class."""
    bitmaps, targets = _digits()
    pool = {
        "all": np.arange(len(targets)),
        "train": np.arange(TEST_DIGITS_FROM),
        "test": np.arange(TEST_DIGITS_FROM, len(targets)),
    }[split]
    return bitmaps, [pool[targets[pool] == k] for k in range(len(CLASS_NAMES))]


def scenes(
    n: int,
    seed: int = 0,
    *,
    size: int = SCENE_SIZE,
    object_size: tuple[int, int] = (22, 72),
    distractors: tuple[int, int] = (2, 5),
    split: Literal["all", "train", "test"] = "all",
    noise: float = 0.02,
    spread: float = 1.0,
) -> Scenes:
    """Generate ``n`` localization scenes, deterministically from ``seed``.

    Args:
        n: number of scenes.
        seed: random seed; the same seed (and arguments) gives the same scenes.
        size: side ``S`` of the square images, 16 to 300 (the twins expect ``SCENE_SIZE``).
        object_size: range of the digit's height in pixels, sampled log-uniformly (so each
            scale octave is equally common); the width follows the digit's own aspect ratio,
            jittered by +-15 %.
        distractors: inclusive range of the number of distractors per scene.
        split: which ``load_digits`` bitmaps to draw from: ``"train"`` (the first
            ``TEST_DIGITS_FROM``), ``"test"`` (the rest, other writers) or ``"all"``.
        noise: standard deviation of the Gaussian pixel noise, in [0, 1] intensity units.
        spread: share of the free range the digit's position is drawn from, centred on the
            image centre: 1 = anywhere it fits, 0 = always centred (for curricula).

    Returns:
        A ``Scenes`` with uint8 images, int64 labels, tight int64 boxes and bool masks.

    Raises:
        ImportError: if scikit-image or scikit-learn is missing.
    """
    _check(n, size, object_size, distractors, split)
    if not 0.0 <= spread <= 1.0:
        raise ValueError(f"spread must be in [0, 1], got {spread}")
    bitmaps, by_class = _digit_pool(split)
    sources = _sources()
    lo_size, hi_size = object_size

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASS_NAMES), n).astype(np.int64)
    heights = np.exp(rng.uniform(np.log(lo_size), np.log(hi_size + 1), n)).astype(int)
    heights = np.clip(heights, lo_size, hi_size)
    masks = np.zeros((n, size, size), dtype=bool)
    boxes = np.empty((n, 4), dtype=np.int64)

    def draw(i: int, canvas: np.ndarray) -> None:
        _distractors(canvas, rng, sources, distractors)
        boxes[i] = _draw_digit(canvas, masks[i], rng, int(labels[i]), int(heights[i]), by_class, bitmaps,
                               spread)

    images = _render(n, rng, size, noise, draw)
    return Scenes(images, labels, boxes, masks, list(CLASS_NAMES))


@dataclass(frozen=True)
class Pairs(Scenes):
    """Scenes with two digits of different classes (for class-discrimination tests): the
    fields of :class:`Scenes` with one more axis of 2 — ``labels`` ``int64 [n, 2]`` (always
    different), ``boxes`` ``int64 [n, 2, 4]``, ``masks`` ``bool [n, 2, S, S]``."""


def pair_scenes(
    n: int,
    seed: int = 0,
    *,
    size: int = SCENE_SIZE,
    object_size: tuple[int, int] = (22, 48),
    distractors: tuple[int, int] = (2, 5),
    split: Literal["all", "train", "test"] = "all",
    noise: float = 0.02,
) -> Pairs:
    """Generate ``n`` scenes with two digits of different classes, one in each half.

    Background and distractors are drawn as in :func:`scenes`; the image is split into two
    halves (left/right or top/bottom, at random) and each digit is placed anywhere inside
    its own half, so the two never overlap.

    Args:
        n: number of scenes.
        seed: random seed; the same seed (and arguments) gives the same scenes.
        size: side ``S`` of the square images, 16 to 300.
        object_size: range of each digit's height, sampled log-uniformly; at most ``S // 2``.
        distractors: inclusive range of the number of distractors per scene.
        split: which ``load_digits`` bitmaps to draw from (as in :func:`scenes`).
        noise: standard deviation of the Gaussian pixel noise, in [0, 1] intensity units.

    Returns:
        A :class:`Pairs` with uint8 images, ``[n, 2]`` labels, ``[n, 2, 4]`` boxes and masks.
    """
    _check(n, size, object_size, distractors, split, largest=size // 2)
    bitmaps, by_class = _digit_pool(split)
    sources = _sources()
    k = len(CLASS_NAMES)
    lo_size, hi_size = object_size

    rng = np.random.default_rng(seed)
    first = rng.integers(0, k, n)
    labels = np.stack([first, (first + rng.integers(1, k, n)) % k], axis=1).astype(np.int64)
    heights = np.exp(rng.uniform(np.log(lo_size), np.log(hi_size + 1), (n, 2))).astype(int)
    heights = np.clip(heights, lo_size, hi_size)
    vertical = rng.random(n) < 0.5  # split into left/right halves, else top/bottom
    masks = np.zeros((n, 2, size, size), dtype=bool)
    boxes = np.empty((n, 2, 4), dtype=np.int64)
    half = size // 2

    def draw(i: int, canvas: np.ndarray) -> None:
        _distractors(canvas, rng, sources, distractors)
        areas = ([(0, 0, half, size), (half, 0, size, size)] if vertical[i]
                 else [(0, 0, size, half), (0, half, size, size)])
        for j in (0, 1):
            boxes[i, j] = _draw_digit(canvas, masks[i, j], rng, int(labels[i, j]), int(heights[i, j]),
                                      by_class, bitmaps, 1.0, areas[j])

    images = _render(n, rng, size, noise, draw)
    return Pairs(images, labels, boxes, masks, list(CLASS_NAMES))

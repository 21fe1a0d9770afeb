"""Rendering: heatmaps coloured and blended over the image (the colormap is applied to
the heatmap alone, then blended — not to an already blended image)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
from PIL import Image

from .metrics import normalize
from .settings import DEFAULT_ALPHA, DEFAULT_COLORMAP


def check_colormap(name: str) -> None:
    """Raise ``ValueError`` naming the choices if ``name`` is not a matplotlib colormap."""
    if name not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {name!r}; e.g. jet, viridis, inferno, turbo")


def colorize(heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """``[H, W]`` map → ``[H, W, 3]`` uint8, min-max normalized with an epsilon first.

    A 256-entry lookup table keeps memory at one byte per channel (large images).
    """
    check_colormap(colormap)
    lut = (matplotlib.colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    idx = normalize(heatmap, dtype=np.float32)
    idx *= 255
    return lut[np.rint(idx, out=idx).astype(np.uint8)]


def overlay(image: Image.Image, heatmap: np.ndarray, colormap: str = DEFAULT_COLORMAP,
            alpha: float = DEFAULT_ALPHA) -> Image.Image:
    """Blend ``(1 - alpha)·image + alpha·colormap(heatmap)``; heatmap in image pixels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != (image.height, image.width):
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.height}×{image.width}")
    return Image.blend(image.convert("RGB"), Image.fromarray(colorize(heatmap, colormap)), alpha)


BOX_COLOUR = (255, 255, 255)  # boxes and peaks: white with a dark rim, visible on any colormap
RIM_COLOUR = (0, 0, 0)


def line_width(width: int, height: int) -> int:
    """Box line width for an image of this size: about 1/150 of the shorter side, at least 2."""
    return max(2, round(min(width, height) / 150))


def draw_box(image: Image.Image, box: Sequence[float], peak: Sequence[float] | None = None,
             width: int | None = None) -> Image.Image:
    """A copy of ``image`` with ``box`` ``[x0, y0, x1, y1]`` (``x1``/``y1`` exclusive, image
    pixels) drawn as a white frame with a dark rim, and ``peak`` ``(x, y)`` as a ring."""
    from PIL import ImageDraw

    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    lw = width or line_width(*out.size)
    x0, y0, x1, y1 = (float(v) for v in box)
    rect = (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))
    draw.rectangle(rect, outline=RIM_COLOUR, width=lw + 2)
    draw.rectangle((rect[0] + 1, rect[1] + 1, rect[2] - 1, rect[3] - 1), outline=BOX_COLOUR, width=lw)
    if peak is not None:
        r = 4 * lw
        px, py = float(peak[0]), float(peak[1])
        draw.ellipse((px - r, py - r, px + r, py + r), outline=RIM_COLOUR, width=lw + 2)
        draw.ellipse((px - r + 1, py - r + 1, px + r - 1, py + r - 1), outline=BOX_COLOUR, width=lw)
    return out

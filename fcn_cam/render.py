"""Rendering: heatmaps coloured and blended over the image (the colormap is applied to
the heatmap alone, then blended — not to an already blended image)."""

from __future__ import annotations

import matplotlib
import numpy as np
from PIL import Image

from .metrics import normalize


def check_colormap(name: str) -> None:
    """Raise ``ValueError`` naming the choices if ``name`` is not a matplotlib colormap."""
    if name not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {name!r}; e.g. jet, viridis, inferno, turbo")


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``[H, W]`` map → ``[H, W, 3]`` uint8, min-max normalized with an epsilon first.

    A 256-entry lookup table keeps memory at one byte per channel (large images).
    """
    check_colormap(colormap)
    lut = (matplotlib.colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    idx = normalize(heatmap, dtype=np.float32)
    idx *= 255
    return lut[np.rint(idx, out=idx).astype(np.uint8)]


def overlay(image: Image.Image, heatmap: np.ndarray, colormap: str = "jet",
            alpha: float = 0.5) -> Image.Image:
    """Blend ``(1 - alpha)·image + alpha·colormap(heatmap)``; heatmap in image pixels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if heatmap.shape != (image.height, image.width):
        raise ValueError(f"heatmap {heatmap.shape} does not match image {image.height}×{image.width}")
    return Image.blend(image.convert("RGB"), Image.fromarray(colorize(heatmap, colormap)), alpha)

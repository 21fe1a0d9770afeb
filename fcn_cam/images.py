"""Reading images and turning them into network inputs.

The shorter side is resized to ``scale × input_size`` keeping the aspect ratio, with
PIL's antialiased bilinear filter; PIL's pixel convention (pixel ``j`` covers
``[j, j + 1)``) is the one :mod:`fcn_cam.geometry` maps back with.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
# PIL's own decompression-bomb threshold; a declared size beyond it is refused up front.
MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """An input that is not a readable image; the message names the file."""


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image as RGB, upright (EXIF orientation applied), alpha over white.

    Raises:
        ImageError: missing, empty, not an image, truncated, or an absurd declared size.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(
                        f"{path}: declared size {w}×{h} ({w * h:,} pixels) exceeds the limit of "
                        f"{max_pixels:,} pixels"
                    )
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    rgba = im.convert("RGBA")
                    im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
                return im.convert("RGB")
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory") from None
    except Image.UnidentifiedImageError:
        size = path.stat().st_size
        what = "empty file" if size == 0 else f"not an image PIL can read ({size} bytes)"
        raise ImageError(f"{path}: {what}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: declared size exceeds the limit of {max_pixels:,} pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{path}: truncated or corrupt image ({e})") from None


def input_shape(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(H, W) of the network input for an image of ``size`` = (width, height)."""
    w, h = size
    if w <= h:
        return round(h * side / w), side
    return side, round(w * side / h)


def to_input(
    image: Image.Image, side: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize the shorter side to ``side`` and normalize: ``[3, H, W]`` float32."""
    h, w = input_shape(image.size, side)
    resized = image if (h, w) == (image.height, image.width) else image.resize(
        (w, h), Image.Resampling.BILINEAR
    )
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def find_images(inputs: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Expand directories (recursively, sorted, image suffixes only); files pass as given."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            yield from sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file())
        else:
            yield p

"""Showing an :class:`~fcn_cam.explanation.Explanation` where people look: an overlay image,
a matplotlib figure of the top classes, and the PNG a notebook displays.

Every picture is built on :func:`fcn_cam.render.overlay` — the function whose output the
CLI writes as ``<stem>.<key>_cam.png`` — so for the same colormap and alpha the colours are
the CLI's to the byte. Boxes and peaks are drawn on top of that image
(:func:`fcn_cam.render.draw_box`), never blended into it.

The explanation itself holds no pixels unless it was given them: each function takes
``image=``, else the explanation's ``pixels`` attribute, else reopens ``exp.image`` when it
is a path.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from . import render
from .settings import DEFAULT_ALPHA, DEFAULT_COLORMAP

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .explanation import Explanation, Target

#: Longest side of the notebook preview (``repr_png``): a 24-MP photo is not sent whole.
PREVIEW_SIDE = 640
PREVIEW_LEAST = 256


def pixels_of(exp: Explanation, image: Any = None) -> Image.Image:
    """The RGB image ``exp`` explains: ``image`` (anything :func:`fcn_cam.images.as_image`
    takes), else ``exp.pixels``, else the file ``exp.image``; checked against its size."""
    from .images import ImageError, as_image, load_image

    where = exp.image or "in-memory image"
    if image is None:
        image = getattr(exp, "pixels", None)
    try:
        if image is not None:
            img = as_image(image)[0]
        elif exp.image is not None and os.path.isfile(exp.image):
            img = load_image(exp.image)
        else:
            raise ValueError(f"{where}: the explanation holds no pixels; pass image=")
    except ImageError as e:
        raise ValueError(str(e)) from None
    if img.size != (exp.width, exp.height):
        raise ValueError(f"{where}: image is {img.width}×{img.height} but the explanation is for "
                         f"{exp.width}×{exp.height}")
    return img.convert("RGB")


def target_of(exp: Explanation, target: int | str = 0) -> Target:
    """One of ``exp.targets``: by position (0 = the primary target) or by class name."""
    if not exp.targets:
        raise ValueError(f"{exp.image or 'in-memory image'}: the explanation has no targets")
    if isinstance(target, str):
        for t in exp.targets:
            if t.name is not None and t.name.lower() == target.lower():
                return t
        names = ", ".join(repr(t.name) for t in exp.targets)
        raise ValueError(f"class {target!r} was not explained; explained: {names}")
    if isinstance(target, bool) or not isinstance(target, int | np.integer) \
            or not -len(exp.targets) <= target < len(exp.targets):
        raise ValueError(f"target must be a position in the {len(exp.targets)} explained "
                         f"targets or a class name, got {target!r}")
    return exp.targets[int(target)]


def label(t: Target) -> str:
    """``"tabby (281) 12.70"``: class name (index) and score."""
    name = f"{t.name} ({t.index})" if t.name is not None else f"class {t.index}"
    return f"{name} {t.score:.2f}"


def overlay(exp: Explanation, target: int | str = 0, *, image: Any = None, colormap: str = DEFAULT_COLORMAP,
            alpha: float = DEFAULT_ALPHA, box: bool = False) -> Image.Image:
    """The target's heatmap over the image, ``(1 - alpha)·image + alpha·colormap(heatmap)``.

    Without ``box`` this is exactly the overlay ``fcn-cam explain -o`` writes with the same
    ``--colormap`` and ``--alpha``; with it, the target's box and peak are drawn on top.

    Args:
        target: a position in ``exp.targets`` (0 = the primary target) or a class name.
        image: the explained image (default: ``exp.pixels``, else the file ``exp.image``).
    """
    t = target_of(exp, target)
    out = render.overlay(pixels_of(exp, image), t.heatmap, colormap, alpha)
    return render.draw_box(out, t.box, t.peak) if box else out


def _scaled(img: Image.Image, side: int, least: int) -> tuple[Image.Image, float]:
    """``img`` resized so that its longest side is within ``[least, side]``, and the factor
    (small images grow by whole pixels: nearest neighbour shows the map's true cells)."""
    longest = max(img.size)
    f = side / longest if longest > side else max(1, least // longest)
    if f == 1:
        return img, 1.0
    size = (max(1, round(img.width * f)), max(1, round(img.height * f)))
    return img.resize(size, Image.Resampling.LANCZOS if f < 1 else Image.Resampling.NEAREST), f


def preview(exp: Explanation, *, image: Any = None, colormap: str = DEFAULT_COLORMAP,
            alpha: float = DEFAULT_ALPHA, side: int = PREVIEW_SIDE, least: int = PREVIEW_LEAST) -> Image.Image:
    """The primary target's overlay with its box and peak, at most ``side`` pixels long
    (images under ``least`` pixels grow by a whole factor), captioned with the class and
    score: what a notebook shows for an explanation."""
    from PIL import ImageDraw, ImageFont

    t = target_of(exp, 0)
    img, f = _scaled(render.overlay(pixels_of(exp, image), t.heatmap, colormap, alpha), side, least)
    box = [v * f for v in t.box]
    img = render.draw_box(img, box, (t.peak[0] * f, t.peak[1] * f))
    size = 14
    font = ImageFont.load_default(size=size)
    text = label(t) + (f"   (+{len(exp.targets) - 1} more)" if len(exp.targets) > 1 else "")
    canvas = Image.new("RGB", (max(img.width, 8 * len(text)), img.height + size + 10), (255, 255, 255))
    canvas.paste(img, (0, 0))
    ImageDraw.Draw(canvas).text((4, img.height + 4), text, fill=(0, 0, 0), font=font)
    return canvas


def repr_png(exp: Explanation, **kwargs: Any) -> bytes:
    """PNG bytes of :func:`preview` (``Explanation._repr_png_``); raises ``ValueError``
    when there are no pixels to show."""
    buf = io.BytesIO()
    preview(exp, **kwargs).save(buf, format="PNG")
    return buf.getvalue()


def plot(exp: Explanation, *, image: Any = None, top_k: int | None = None, colormap: str = DEFAULT_COLORMAP,
         alpha: float = DEFAULT_ALPHA, boxes: bool = True, peaks: bool = True, panel_size: float = 3.2,
         dpi: int = 100) -> Figure:
    """A figure: the image, then each explained class's overlay with its box, peak and score.

    The figure is a bare :class:`matplotlib.figure.Figure` (no pyplot state, no window, no
    ``plt.show()``): it renders headless, a notebook displays the returned value once, and
    ``fig.savefig(...)`` writes it.

    Args:
        top_k: show at most this many of ``exp.targets`` (default: all; a class gets a map
            only if it was explained, e.g. ``explain(..., top_k=3)``).
        boxes, peaks: draw each target's box (white frame) and peak (ring).
        panel_size: inches per panel.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle, Rectangle

    img = pixels_of(exp, image)
    targets = exp.targets[:top_k] if top_k is not None else exp.targets
    if top_k is not None and (isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
    n = 1 + len(targets)
    aspect = img.height / img.width
    fig = Figure(figsize=(panel_size * n, panel_size * aspect + 0.6), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(img)
    axes[0].set_title(os.path.basename(exp.image) if exp.image else "image", fontsize=9)
    lw = 1.6
    for ax, t in zip(axes[1:], targets):
        ax.imshow(render.overlay(img, t.heatmap, colormap, alpha))
        x0, y0, x1, y1 = t.box
        if boxes:  # pixel centres are integers: the box's outer edge is half a pixel out
            for colour, width in (("black", lw + 1.5), ("white", lw)):
                ax.add_patch(Rectangle((x0 - .5, y0 - .5), x1 - x0, y1 - y0, fill=False, ec=colour, lw=width))
        if peaks:
            r = max(img.size) / 40
            for colour, width in (("black", lw + 1.5), ("white", lw)):
                ax.add_patch(Circle(t.peak, r, fill=False, ec=colour, lw=width))
        ax.set_title(label(t), fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    maps = "cell maps" if exp.maps == "cells" else "score maps"
    scales = ", ".join(f"{s:g}" for s in exp.scales)
    fig.suptitle(f"{maps}, scale {scales}, ranked by {exp.rank}", fontsize=9)
    return fig

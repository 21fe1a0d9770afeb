"""Side-by-side figures: fcn-cam's maps beside the peers' for the same class on the same model.

For each image one PNG, one row per explained class: the image, fcn-cam's map (the options
of :func:`fcn_cam.explain`, default cell maps), its other map kind (score maps by default),
then Grad-CAM, HiResCAM, Grad-CAM++ and Score-CAM from pytorch-grad-cam on the original
classifier at its native input size (:mod:`fcn_cam.peers`), and the true CAM for GAP heads.
Every panel shows its box (dashed: the largest region above the method's box fraction) and
peak (cross), and its title the class, the score and the seconds the method took.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .evaluation import PEER_FRACTION, Progress
from .explanation import explain
from .files import write_atomic
from .images import load_image
from .metrics import threshold_box
from .peers import CAM, available, peer_maps, require_grad_cam, resolve_methods
from .render import overlay
from .settings import Settings
from .surgery import FCN

#: Longest side of each panel's image in the figure (maps are resampled for display only).
PANEL_SIDE = 320


def _display(image: Image.Image, heat: np.ndarray, side: int = PANEL_SIDE) -> tuple[Image.Image, float]:
    """Image and map overlaid at display size, and the factor from image to display pixels."""
    f = min(1.0, side / max(image.size))
    if f < 1.0:
        size = (max(1, round(image.width * f)), max(1, round(image.height * f)))
        image = image.resize(size, Image.BILINEAR)
        heat = torch.nn.functional.interpolate(
            torch.as_tensor(heat, dtype=torch.float32)[None, None],
            size=(size[1], size[0]),
            mode="bilinear",
            align_corners=False,
        )[0, 0].numpy()
    return overlay(image, heat, alpha=0.5), f


def _peak(heat: np.ndarray) -> tuple[float, float]:
    r, q = divmod(int(np.argmax(heat)), heat.shape[1])
    return float(q), float(r)


def _panel(ax, image: Image.Image, heat: np.ndarray | None, box, peak, title: str) -> None:
    import matplotlib.patches as patches

    if heat is None:
        shown, f = image.convert("RGB"), min(1.0, PANEL_SIDE / max(image.size))
        shown = shown.resize((max(1, round(image.width * f)), max(1, round(image.height * f))), Image.BILINEAR)
    else:
        shown, f = _display(image, heat)
    ax.imshow(shown)
    if box is not None:
        x0, y0, x1, y1 = (v * f for v in box)
        ax.add_patch(
            patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="white", lw=1.6, ls="--")
        )
    if peak is not None:
        ax.plot(peak[0] * f, peak[1] * f, marker="+", color="white", ms=14, mew=2.2)
        ax.plot(peak[0] * f, peak[1] * f, marker="+", color="black", ms=10, mew=1.0)
    ax.set_title(title, fontsize=8.5)
    ax.set_xticks([])
    ax.set_yticks([])


def compare(
    fcn: FCN,
    paths: Iterable[str | os.PathLike],
    *,
    out_dir: str | os.PathLike,
    methods: Sequence[str] | None = None,
    layer: str | None = None,
    settings: Settings | None = None,
    peer_fraction: float = PEER_FRACTION,
    scorecam_batch: int = 64,
    progress: bool = False,
    **overrides: Any,
) -> list[Path]:
    """Write ``out_dir/<image stem>_compare.png`` per image; returns their paths.

    Args:
        methods: the peers to show (default: every one that applies, :func:`fcn_cam.peers.available`).
        layer: the peers' hooked layer by name (default: the body's last module).
        settings, **overrides: fcn-cam's options (:func:`fcn_cam.explain`: ``target``,
            ``top_k``, ``scale``, ``maps``, …); the peers explain the same classes.
        peer_fraction: the peers' box fraction (the CAM paper's 0.2).

    The PNG's ``Description`` text holds the panels' data as JSON (method, class, score,
    seconds, box, peak) for tools and tests.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = resolve_methods(fcn, methods if methods is not None else available(fcn))
    if any(m != CAM for m in peers):
        require_grad_cam()  # before any work
    s = (settings or Settings()).replace(**overrides)
    s.for_model(fcn)  # bad options fail before any work
    other = "scores" if s.maps == "cells" else "cells"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in paths]
    written, bar = [], Progress(len(paths), progress, "compare")
    for i, path in enumerate(paths):
        image = load_image(path)
        if i == 0:  # one-time costs (allocator, imports) kept out of the first image's timings
            explain(fcn, image, s, top_k=1)
            if any(p != "Score-CAM" for p in peers):
                peer_maps(fcn, [image], [0], [next(p for p in peers if p != "Score-CAM")], layer)
        t = time.perf_counter()
        exp = explain(fcn, image, s)
        t_main = time.perf_counter() - t
        classes = [x.index for x in exp.targets]
        rows = []
        for x in exp.targets:
            t = time.perf_counter()
            o = explain(fcn, image, s, maps=other, target=x.index, top_k=1, box_fraction=None).targets[0]
            rows.append(
                [
                    {
                        "method": f"fcn-cam ({s.maps})",
                        "heat": x.heatmap,
                        "box": x.box,
                        "peak": x.peak,
                        "class": x.name or str(x.index),
                        "score": x.score,
                        "seconds": t_main / len(classes),
                    },
                    {
                        "method": f"fcn-cam ({other})",
                        "heat": o.heatmap,
                        "box": o.box,
                        "peak": o.peak,
                        "class": o.name or str(o.index),
                        "score": o.score,
                        "seconds": time.perf_counter() - t,
                    },
                ]
            )
        got = peer_maps(fcn, [image] * len(classes), classes, peers, layer, scorecam_batch) if peers else {}
        for name, pm in got.items():
            for j, c in enumerate(classes):
                heat = pm.maps[j]
                rows[j].append(
                    {
                        "method": name,
                        "heat": heat,
                        "box": threshold_box(heat, peer_fraction),
                        "peak": _peak(heat),
                        "class": exp.targets[j].name or str(c),
                        "score": float(pm.logits[j, c]),
                        "seconds": pm.seconds / len(classes),
                    }
                )
        ncol = 1 + len(rows[0])
        aspect = image.height / image.width
        fig, axes = plt.subplots(
            len(rows), ncol, figsize=(2.3 * ncol, (2.3 * aspect + 0.6) * len(rows) + 0.4), squeeze=False
        )
        for j, row in enumerate(rows):
            _panel(axes[j, 0], image, None, None, None, f"{path.name}\nclass {row[0]['class']}")
            for ax, p in zip(axes[j, 1:], row):
                unit = "score" if p["method"].startswith("fcn-cam") else "logit"
                _panel(
                    ax,
                    image,
                    p["heat"],
                    p["box"],
                    p["peak"],
                    f"{p['method']}\n{p['class']}: {unit} {p['score']:.2f} · {1000 * p['seconds']:.0f} ms",
                )
        fig.suptitle(
            f"{fcn.info.get('arch', 'model')}: same class, same model; dashed box = largest region "
            f"above the box fraction, + = peak",
            fontsize=9,
        )
        fig.tight_layout()
        data = [
            [{k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items() if k != "heat"} for p in row]
            for row in rows
        ]
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, metadata={"Description": json.dumps(data)})
        plt.close(fig)
        target_path = out / f"{path.stem}_compare.png"
        write_atomic(target_path, buf.getvalue())
        written.append(target_path)
        bar.update(1)
    bar.close()
    return written

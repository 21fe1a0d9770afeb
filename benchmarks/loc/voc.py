"""The demo scenes as a user's annotated folder: PNG images and Pascal VOC XML boxes, written
once, so that the benchmark scores them through :func:`fcn_cam.evaluation.evaluate`, the code
``fcn-cam evaluate`` runs.

VOC boxes are 1-based with inclusive maxima: a scene box ``[x0, y0, x1, y1)`` (0-based,
exclusive) is written as ``xmin = x0 + 1, xmax = x1`` (``fcn_cam.annotations`` reads it back
as the same box; ``tests/test_annotations.py`` checks the round trip).
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from fcn_cam.demo import Scenes


def voc_xml(
    filename: str, width: int, height: int, objects: list[tuple[str, tuple[int, int, int, int]]]
) -> str:
    """One image's VOC annotation; ``objects`` are ``(class name, [x0, y0, x1, y1))`` 0-based."""
    objs = "".join(
        f"<object><name>{escape(n)}</name><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation><filename>{escape(filename)}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objs}</annotation>\n"
    )


def write_scenes(data: Scenes, root: Path, prefix: str = "scene") -> list[Path]:
    """``root/images/<prefix>_NNNN.png`` and ``root/annotations/<prefix>_NNNN.xml``; files
    already there with the same pixels are kept (written once). Returns the image paths."""
    images, ann = root / "images", root / "annotations"
    images.mkdir(parents=True, exist_ok=True)
    ann.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (im, label, box) in enumerate(zip(data.images, data.labels, data.boxes)):
        name = f"{prefix}_{i:04d}.png"
        p = images / name
        if not (p.exists() and np.array_equal(np.asarray(Image.open(p).convert("RGB")), im)):
            Image.fromarray(im).save(p)
        h, w = im.shape[:2]
        xml = voc_xml(name, w, h, [(data.class_names[int(label)], tuple(int(v) for v in box))])
        (ann / f"{prefix}_{i:04d}.xml").write_text(xml)
        paths.append(p)
    return paths

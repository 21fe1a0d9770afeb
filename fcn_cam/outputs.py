"""Writing explanation outputs: atomic files, no silent clobbering, one JSON line per image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from .explain import Explanation
from .files import append_line, write_atomic
from .render import overlay


class OutputDir:
    """Per-image outputs in one directory: ``<stem>[.<class>]_cam.png`` / ``.npy`` and
    ``explanations.jsonl``.

    Existing files are not overwritten unless ``overwrite``; then ``explanations.jsonl``
    starts afresh, otherwise new lines are appended to it.
    """

    JSONL = "explanations.jsonl"

    def __init__(self, root: str | os.PathLike, *, overwrite: bool = False,
                 colormap: str = "jet", alpha: float = 0.5) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.overwrite, self.colormap, self.alpha = overwrite, colormap, alpha
        self.jsonl = self.root / self.JSONL
        if overwrite:
            self.jsonl.unlink(missing_ok=True)
        self._stems: dict[str, int] = {}

    def _stem(self, image: str | None) -> str:
        stem = Path(image).stem if image else "image"
        n = self._stems.get(stem, 0)
        self._stems[stem] = n + 1
        return stem if n == 0 else f"{stem}-{n}"

    def write(self, exp: Explanation, image: Image.Image) -> dict:
        """Write one image's overlays, raw maps and JSON line; return the record.

        Raises:
            FileExistsError: an output exists and ``overwrite`` is off (nothing written).
        """
        stem = self._stem(exp.image)
        many = len(exp.targets) > 1
        plans = []
        for t in exp.targets:
            base = f"{stem}.{t.index}" if many else stem
            npys = [self.root / f"{base}_cam.npy"] if len(exp.scales) == 1 else [
                self.root / f"{base}_cam.s{s:g}.npy" for s in exp.scales]
            plans.append((t, self.root / f"{base}_cam.png", npys))
        clash = [str(p) for _, png, npys in plans for p in (png, *npys) if p.exists()]
        if clash and not self.overwrite:
            raise FileExistsError(f"{exp.image}: output exists: {clash[0]} (pass --overwrite)")
        record = exp.record()
        files = []
        for t, png, npys in plans:
            img = overlay(image, t.heatmap, self.colormap, self.alpha)
            write_atomic(png, lambda f, img=img: img.save(f, format="PNG"))
            for npy, cam in zip(npys, t.cams):
                write_atomic(npy, lambda f, cam=cam: np.save(f, cam.astype(np.float32)))
            files.append({"index": t.index, "overlay": png.name, "maps": [p.name for p in npys]})
        record["files"] = files
        append_line(self.jsonl, record)
        return record


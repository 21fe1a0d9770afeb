"""What padding costs: ``pad="cover"`` / ``"window"`` / ``"none"`` for score and cell maps."""

from __future__ import annotations

import fcn_cam
from benchmarks.common import table

from .core import Bench, interleaved, ms
from .forward import macs

PADS = ("cover", "window", "none")


def run(b: Bench) -> None:
    b.section("Padding cost")
    img, m = b.photo, b.model("fp32")
    fns, shapes = {}, {}
    for maps in ("scores", "cells"):
        for pad in PADS:
            fns[(maps, pad)] = lambda maps=maps, pad=pad: fcn_cam.explain(m, img, scale=2, maps=maps, pad=pad)
            e = fcn_cam.explain(m, img, scale=2, maps=maps, pad=pad)
            (h, w), (top, left), (mh, mw) = e.input_shapes[0], e.pads[0], e.map_shapes[0]
            shapes[(maps, pad)] = (h, w, top, left, mh, mw)
    default = {maps: fcn_cam.explain(m, img, scale=2, maps=maps).pads[0] for maps in ("scores", "cells")}
    t = interleaved(fns, b.cfg.repeats_large)
    rows, raw = [], []
    for (maps, pad), ts in t.items():
        h, w, top, left, mh, mw = shapes[(maps, pad)]
        # the network input: the resized image plus the padding (bottom/right from the map size)
        side_h, side_w = m.geometry_input(mh, mw) if hasattr(m, "geometry_input") else (None, None)
        d = {"maps": maps, "pad": pad, "resized": [h, w], "pad_top_left": [top, left], "map": [mh, mw],
             "ms": ms(ts), "vs_none": ms(ts) / ms(t[(maps, "none")])}
        raw.append(d)
        rows.append([maps, pad, f"{h}×{w}", f"{top}/{left}", f"{mh}×{mw}", d["ms"], f"{d['vs_none']:.2f}×"])
    b.res["padding"] = {"rows": raw, "defaults": default}
    b.md += [
        "chelsea 451×300 at scale 2 (resized to 448×673): `explain(fcn, img, scale=2, maps=…, pad=…)`, fp32, "
        "ms, medians of interleaved runs; × = time / the same maps without padding.",
        "",
        table(["maps", "pad", "resized image", "pad top/left", "map", "explain ms", "× pad='none'"], rows),
    ]
    _ = macs

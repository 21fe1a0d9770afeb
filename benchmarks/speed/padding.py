"""What padding costs: ``pad="cover"`` / ``"window"`` / ``"none"`` for score and cell maps."""

from __future__ import annotations

import fcn_cam
from benchmarks.common import table
from fcn_cam.explanation import network_input
from fcn_cam.settings import DEFAULT_PAD, PADS

from .core import Bench, interleaved, ms, side_str
from .forward import macs


def run(b: Bench) -> None:
    b.section("Padding cost")
    img, m = b.photo, b.model("fp32")
    fns, info = {}, {}
    for maps in ("scores", "cells"):
        for pad in PADS:
            fns[(maps, pad)] = lambda maps=maps, pad=pad: fcn_cam.explain(m, img, scale=2, maps=maps, pad=pad)
            ni = network_input(b.fcn, img, 448, pad, maps)
            e = fcn_cam.explain(m, img, scale=2, maps=maps, pad=pad, top_k=1)
            info[(maps, pad)] = {"input": list(ni.x.shape[-2:]), "pad_top_left": list(ni.pad),
                                 "map": list(e.map_shapes[0]), "gmac": macs(b.fcn, (1, *ni.x.shape)) / 1e9}
    t = interleaved(fns, b.cfg.repeats_large)
    rows, raw = [], []
    for (maps, pad), ts in t.items():
        d = {"maps": maps, "pad": pad, **info[(maps, pad)], "ms": ms(ts),
             "vs_none": ms(ts) / ms(t[(maps, "none")]),
             "gmac_vs_none": info[(maps, pad)]["gmac"] / info[(maps, "none")]["gmac"]}
        raw.append(d)
        rows.append([maps, pad + (" (default)" if pad == DEFAULT_PAD else ""), side_str(d["input"]),
                     "/".join(map(str, d["pad_top_left"])), side_str(d["map"]), d["gmac"], d["ms"],
                     f"{d['vs_none']:.2f}×", f"{d['gmac_vs_none']:.2f}×"])
        print(f"  {maps} pad={pad}: input {side_str(d['input'])}, {d['ms']:.0f} ms ({d['vs_none']:.2f}× none)",
              flush=True)
    b.res["padding"] = raw
    b.md += [
        "chelsea 451×300 at scale 2 (resized to 448×673), fp32: `explain(fcn, img, scale=2, maps=…, pad=…)`. "
        "*cover* pads just enough that the cells of the map kind cover every pixel (score maps: window "
        "centres; cell maps: feature-cell centres), *window* pads as for score maps whatever the map kind. "
        "ms, medians of interleaved runs; × = against the same maps without padding.",
        "",
        table(["maps", "pad", "network input", "pad top/left", "map", "GMAC", "explain ms", "time × none",
               "MAC × none"], rows),
    ]

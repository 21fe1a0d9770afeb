"""Cell maps vs score maps: what the backward through the head adds to an explain."""

from __future__ import annotations

import fcn_cam
from benchmarks.common import table

from .core import Bench, interleaved, ms


def run(b: Bench) -> None:
    b.section("Cell maps vs score maps")
    img, m = b.photo, b.model("fp32")
    fns = {}
    for k in (1, 10):
        fns[("scores", k)] = lambda k=k: fcn_cam.explain(m, img, scale=2, top_k=k, maps="scores")
        fns[("cells", k)] = lambda k=k: fcn_cam.explain(m, img, scale=2, top_k=k, maps="cells")
    t = interleaved(fns, b.cfg.repeats_large)
    rows = [[maps, k, ms(ts), f"{ms(ts) / ms(t[('scores', k)]):.2f}×"] for (maps, k), ts in t.items()]
    b.res["cells"] = [{"maps": maps, "classes": k, "ms": ms(ts)} for (maps, k), ts in t.items()]
    b.md += [
        "chelsea 451×300 at scale 2, fp32, default padding: "
        "`explain(..., top_k=k, maps='scores')` vs `explain(..., top_k=k, maps='cells')`; ms, medians of "
        "interleaved runs.",
        "",
        table(["maps", "classes", "explain ms", "× score maps"], rows),
    ]

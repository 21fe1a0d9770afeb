"""Ray Data on a local 2-CPU instance vs the local CLI (images/s, same folder, same records).

The measurement itself lives with the Ray work (``benchmarks/speed_ray.py``: fresh processes
running ``fcn-cam explain`` with and without ``--ray``, alternated); this section runs it in the
same benchmark run when that module and ``ray`` are installed, and says so when they are not.
"""

from __future__ import annotations

import importlib
import importlib.util

from .core import Bench

TARGET = "Ray Data on a local 2-CPU instance ≥ 80 % of the local CLI's images/s"


def run(b: Bench) -> None:
    b.section("Ray Data vs the local CLI")
    missing = [m for m in ("ray", "benchmarks.speed_ray") if importlib.util.find_spec(m) is None]
    if missing:
        b.md += [f"Not measured in this run: {', '.join(missing)} not available."]
        b.target(TARGET, "–", None, f"{', '.join(missing)} not available in this run")
        return
    sr = importlib.import_module("benchmarks.speed_ray")
    n, repeats = (8, 1) if b.cfg.quick else (24, 2)
    res = sr.ray_vs_local(n=n, arch="vgg16", scale=1.0, repeats=repeats, cpus=2)
    b.res["ray"] = res
    b.md += [sr.report(res)]
    fresh, warm = res["ray"], res["ray-warm"]
    identical = all(x["identical"] for m in res["records"].values() for x in m)

    def said(r: dict) -> str:
        n80 = r["images_for_80"]
        return (f"{r['ratio']:.2f}; once running {r['steady_ratio']:.2f}×, start-up {r['startup_s']:.1f} s"
                + ("" if n80 is None else f", 80 % from about {n80:.0f} images (projected)"))

    common = f"{n} photos, VGG16 scale 1, medians of {repeats} alternated runs, records identical: {identical}"
    for r, where in ((warm, "an instance that has run Ray Data before"),
                     (fresh, "a fresh instance: its first Ray Data job also starts Ray Data's helper actors")):
        b.target(f"{TARGET} ({where})", said(r), r["ratio"] >= 0.8,
                 f"{common}; the local CLI's start-up: {res['local']['startup_s']:.1f} s")

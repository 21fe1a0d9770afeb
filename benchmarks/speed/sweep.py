"""Many classes from one image: per-class cost of score maps, cell maps and Grad-CAM."""

from __future__ import annotations

from torchcam.methods import GradCAM

import fcn_cam
from benchmarks.common import table

from .core import Bench, interleaved, ms
from .gradcam import TARGET_LAYER, gradcam_fn


def run(b: Bench) -> None:
    n = b.cfg.sweep_classes
    b.section(f"{n}-class sweep: cost per class")
    img, m = b.photo, b.model("fp32")
    mean, std = b.fcn.info["mean"], b.fcn.info["std"]
    with GradCAM(b.vgg, target_layer=TARGET_LAYER) as ex:
        fns = {}
        for k in (1, n):
            fns[f"gc{k}"] = gradcam_fn(b.vgg, ex, img, 448, mean, std, n_classes=k)
            fns[f"scores{k}"] = lambda k=k: fcn_cam.explain(m, img, scale=2, top_k=k, maps="scores")
            fns[f"nopad{k}"] = lambda k=k: fcn_cam.explain(m, img, scale=2, top_k=k, maps="scores", pad="none")
            fns[f"cells{k}"] = lambda k=k: fcn_cam.explain(m, img, scale=2, top_k=k, maps="cells")
        t = interleaved(fns, b.cfg.repeats_large)
    tot = {k: ms(v) for k, v in t.items()}
    per = {k: tot[f"{k}{n}"] / n for k in ("gc", "scores", "nopad", "cells")}
    marg = {k: (tot[f"{k}{n}"] - tot[f"{k}1"]) / (n - 1) for k in ("gc", "scores", "nopad", "cells")}
    names = {"gc": "torchcam Grad-CAM @448", "scores": "fcn_cam.explain, score maps (default pad)",
             "nopad": "fcn_cam.explain, score maps, pad='none'", "cells": "fcn_cam.explain, cell maps"}
    rows = [[names[k], tot[f"{k}1"], tot[f"{k}{n}"], per[k], marg[k], f"{per['gc'] / per[k]:.1f}×"]
            for k in names]
    b.res["sweep"] = {"classes": n, "total_ms": tot, "per_class_ms": per, "marginal_ms": marg,
                      "runs": len(t["gc1"])}
    print(f"  per class: {per}; marginal: {marg}", flush=True)
    b.target(f"{n}-class sweep: score maps ≥ 10× cheaper per class than Grad-CAM",
             f"{per['gc'] / per['scores']:.1f}×", per["gc"] / per["scores"] >= 10,
             f"{per['scores']:.1f} vs {per['gc']:.1f} ms/class; pad='none': {per['gc'] / per['nopad']:.1f}×; "
             f"each further class: {marg['scores']:.1f} vs {marg['gc']:.1f} ms. At 10× the whole sweep would "
             f"have to take {tot[f'gc{n}'] / 10:.0f} ms, less than one forward pass here "
             f"({tot['scores1']:.0f} ms with one class)")
    b.target(f"{n}-class sweep: cell maps ≥ 3× cheaper per class than Grad-CAM",
             f"{per['gc'] / per['cells']:.1f}×", per["gc"] / per["cells"] >= 3,
             f"{per['cells']:.1f} vs {per['gc']:.1f} ms/class; each further class: {marg['cells']:.1f} vs "
             f"{marg['gc']:.1f} ms")
    b.md += [
        f"chelsea 451×300 at short side 448 (fcn-cam `scale=2`, defaults otherwise), the top {n} classes: "
        f"`explain(fcn, img, scale=2, top_k={n}, maps='scores')` (one forward, then per class aligned "
        "heatmap, peak and "
        f"box), the same with `maps='cells'`, and torchcam Grad-CAM (one forward with autograd, then per "
        "class a backward to features.29 with `retain_graph` and an upsample to the image). fp32, ms, "
        "medians of interleaved runs; *marginal* = (total for N − total for 1) / (N − 1).",
        "",
        table(["method", "1 class ms", f"{n} classes ms", "ms per class", "marginal ms per class",
               "Grad-CAM / this, per class"], rows),
    ]

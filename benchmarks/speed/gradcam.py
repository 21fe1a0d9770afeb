"""``fcn_cam.explain`` (all-class score maps; top-class cell maps) vs torchcam's Grad-CAM (one
class) on the same image at the same network input side: 224, 448 and 672 px, fp32."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

import fcn_cam
from benchmarks.common import table
from fcn_cam.explanation import network_input
from fcn_cam.images import to_input
from fcn_cam.settings import DEFAULT_MAPS, DEFAULT_PAD, DEFAULT_SCALE

from .core import Bench, interleaved, ms, side_str

TARGET_LAYER = "features.29"  # VGG16's last conv block output (after ReLU), torchcam's usual choice


def gradcam_fn(vgg: nn.Module, extractor, img: Image.Image, side: int, mean, std, n_classes: int = 1,
               channels_last: bool = False) -> Callable[[], list[torch.Tensor]]:
    """torchcam Grad-CAM as a user runs it: preprocess, forward with autograd, then per class one
    backward to the target layer and the map upsampled to the image (top ``n_classes`` classes)."""
    def run() -> list[torch.Tensor]:
        x = to_input(img, side, mean, std)[None]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = vgg(x)
        maps = []
        for i, c in enumerate(out[0].topk(n_classes).indices.tolist()):
            cam = extractor(c, out, retain_graph=i < n_classes - 1)[0]
            maps.append(F.interpolate(cam[None], size=(img.height, img.width), mode="bilinear"))
        return maps

    return run


def run(b: Bench) -> None:
    from torchcam.methods import GradCAM

    b.section("explain vs torchcam Grad-CAM (224 / 448 / 672 px, fp32)")
    img, m = b.square, b.model("fp32")
    mean, std = b.fcn.info["mean"], b.fcn.info["std"]
    vgg_cl = copy.deepcopy(b.vgg).to(memory_format=torch.channels_last)
    labels = {
        "gc": "torchcam Grad-CAM, 1 class",
        "gc_cl": "torchcam Grad-CAM, 1 class, channels-last VGG16",
        "scores": f"fcn_cam.explain, score maps (all classes), pad='{DEFAULT_PAD}' (default)",
        "scores_nopad": "fcn_cam.explain, score maps, pad='none'",
        "cells": f"fcn_cam.explain, cell maps (top class), pad='{DEFAULT_PAD}' (default)",
        "defaults": f"fcn_cam.explain with every default ({DEFAULT_MAPS}, scale {DEFAULT_SCALE}, "
                    f"pad '{DEFAULT_PAD}'), whatever the side",
    }
    rows, raw = [], []
    for side in b.cfg.sides:
        s = side / 224
        with GradCAM(b.vgg, target_layer=TARGET_LAYER) as ex, \
                GradCAM(vgg_cl, target_layer=TARGET_LAYER) as ex_cl:
            fns = {
                "gc": gradcam_fn(b.vgg, ex, img, side, mean, std),
                "gc_cl": gradcam_fn(vgg_cl, ex_cl, img, side, mean, std, channels_last=True),
                "scores": lambda s=s: fcn_cam.explain(m, img, scale=s, maps="scores"),
                "scores_nopad": lambda s=s: fcn_cam.explain(m, img, scale=s, maps="scores",
                                                            pad="none"),
                "cells": lambda s=s: fcn_cam.explain(m, img, scale=s, maps="cells"),
            }
            if side == b.cfg.sides[0]:  # the same work at every side: measured once
                fns["defaults"] = lambda: fcn_cam.explain(m, img)
            t = interleaved(fns, b.cfg.repeats if side == 224 else b.cfg.repeats_large)
        inputs = {"scores": network_input(b.fcn, img, side, DEFAULT_PAD, "scores"),
                  "scores_nopad": network_input(b.fcn, img, side, "none", "scores"),
                  "cells": network_input(b.fcn, img, side, DEFAULT_PAD, "cells")}
        gc_ms = ms(t["gc"])
        d = {"side": side, "scale": s, "grad_cam_ms": gc_ms, "runs": len(t["gc"])}
        for k, lab in labels.items():
            if k not in t:
                continue
            d[f"{k}_ms"] = ms(t[k])
            shape = (side_str(inputs[k].x.shape[-2:]) if k in inputs else
                     "per the default scales" if k == "defaults" else f"{side}×{side}")
            d[f"{k}_input"] = shape
            rows.append([side, lab, shape, ms(t[k]), f"{ms(t[k]) / gc_ms:.2f}×"])
        raw.append(d)
        print("  " + f"{side}: " + ", ".join(f"{k} {d[f'{k}_ms']:.0f} ms" for k in labels if k in t),
              flush=True)
    b.res["vs_gradcam"] = raw
    sc = [d["scores_ms"] / d["grad_cam_ms"] for d in raw]
    ce = [d["cells_ms"] / d["grad_cam_ms"] for d in raw]
    sides = "/".join(str(d["side"]) for d in raw)
    b.target(f"explain, score maps (all classes) ≤ 0.8× Grad-CAM (one class) at {sides} px, fp32",
             " / ".join(f"{r:.2f}×" for r in sc), max(sc) <= 0.8,
             "defaults (padding included); pad='none': "
             + " / ".join(f"{d['scores_nopad_ms'] / d['grad_cam_ms']:.2f}×" for d in raw))
    b.target(f"explain, cell maps (top class) ≤ 1.0× Grad-CAM at {sides} px, fp32",
             " / ".join(f"{r:.2f}×" for r in ce), max(ce) <= 1.0)
    b.md += [
        "The 224×224 test image at input side 224 / 448 / 672 (fcn-cam: `scale` = side / 224; Grad-CAM: "
        f"the image resized to that side). torchcam 0.5 `GradCAM(vgg16, '{TARGET_LAYER}')` on the original "
        "torchvision model: preprocessing, forward with autograd, one backward to the target layer, map "
        "upsampled to the image — for the top class. "
        "`fcn_cam.explain(prepare(fcn, 'fp32'), image, scale=s, maps=…)`: "
        "preprocessing, padding, forward, ranking, aligned heatmap, peak and box. ms, medians of interleaved "
        "runs; × = time / Grad-CAM (contiguous, as torchvision ships it).",
        "",
        table(["side", "method", "network input", "ms", "× Grad-CAM"], rows),
    ]

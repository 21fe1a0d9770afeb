"""Speed and agreement benchmark for fcn-cam (CPU): one run, all numbers side by side.

Sections (each a function below; results go to ``benchmarks/results/speed.md`` + ``speed.json``):

A. machine: fp32/bf16 matrix-multiply rate, threads, CPU, versions
B. VGG16 ``explain`` latency at scales 1/2/3 (square and real-size photo), forward GFLOP/s vs
   the matmul rate; torchcam Grad-CAM (VGG16) and CAM (ResNet-18) at 224 and 448
C. agreement of the FCN's spatially averaged scores with the original model's logits
D. fp32 vs bf16, contiguous vs channels-last at scale 2: latency and bf16-vs-fp32 map agreement
E. output stride 32 / 16 / 8 at 448 px
F. all-class maps vs a top-1-only head
G. folder throughput (``explain_files``) vs the bare network forward on the same tensors
H. per-class cost for 1 / 10 / 100 classes: FCN-CAM vs torchcam Grad-CAM
I. peak memory in fresh subprocesses: a folder of small images, one very large image
P. where the time goes: per-layer timing and ``torch.profiler`` top ops (VGG16, 448)

Usage::

    python benchmarks/speed.py            # full run (~20 min on 2 cores), writes benchmarks/results/
    python benchmarks/speed.py --quick    # smoke run, writes to a temporary directory
    python benchmarks/speed.py --only B,D # some sections

Weights are random (no downloads): timings do not depend on them; the agreement numbers on
VGG16 are weak because of it, and the trained demo twins (if ``fcn_cam.demo.twins()`` loads)
give the agreement numbers on a trained FC-head net.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from common import (
    ForeignLoad,
    count_macs,
    cpu_model,
    matmul_rate,
    median,
    other_heavy_processes,
    pearson,
    photo_variants,
    skimage_photos,
    table,
    timings,
    wait_idle,
)
from PIL import Image
from torch import nn
from torch.nn import functional as F

import fcn_cam
from fcn_cam.explain import class_scores, network_input
from fcn_cam.images import load_image, to_input
from fcn_cam.runtime import input_like
from fcn_cam.surgery import FCN
from fcn_cam.zoo import imagenet_classes

# Baseline for every table: no input padding and mean ranking (the behaviour before padding and
# rank="auto" became fcn-cam's defaults), so the network input is the resized image itself.
# Section B also times the defaults: padding costs its MACs (VGG16 at scale 2 runs on 672 px
# instead of 448, 165.9 vs 69.3 GMAC).
explain = functools.partial(fcn_cam.explain, pad=False, rank="mean")
explain_files = functools.partial(fcn_cam.explain_files, pad=False, rank="mean")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MEAN, STD = fcn_cam.surgery.IMAGENET_MEAN, fcn_cam.surgery.IMAGENET_STD
SECTIONS = "ABCDEFGHIP"


@dataclass
class Config:
    """Sizes of the run; ``full()`` is the default, ``quick()`` a smoke test."""

    quick: bool
    repeats: int = 3  # timed repeats per latency (after one warm-up); medians reported
    mm_sizes: tuple[int, ...] = (1024, 2048, 4096)
    mm_repeats: int = 5
    scales: tuple[float, ...] = (1.0, 2.0, 3.0)
    n_agree: int = 16  # real photos / crops for agreement
    n_scenes: int = 200  # demo scenes for the twins
    n_folder: int = 64  # real-size JPEGs for the folder throughput
    folder_fp32: int = 32  # fp32 runs use this many of them (same landscape/portrait mix), for time
    # (precision, batch size, workers) of explain_files runs
    folder_grid: list[tuple[str, int, int]] = field(default_factory=lambda: [
        (p, b, w) for p in ("bf16", "fp32") for b in (1, 4, 8) for w in (1, 2)])
    n_small: int = 1000  # small images for the memory run
    small_scale: float = 1.0
    big_size: tuple[int, int] = (6000, 4000)
    classes: tuple[int, ...] = (1, 10, 100)
    strides: tuple[int, ...] = (32, 16, 8)

    @classmethod
    def full(cls) -> Config:
        return cls(quick=False)

    @classmethod
    def smoke(cls) -> Config:
        return cls(
            quick=True, repeats=1, mm_sizes=(512, 1024), mm_repeats=2, scales=(1.0, 2.0), n_agree=4,
            n_scenes=20, n_folder=8, folder_fp32=4, folder_grid=[("bf16", 4, 2), ("fp32", 1, 1)], n_small=40,
            big_size=(2400, 1600), classes=(1, 10), strides=(32, 16),
        )


# --------------------------------------------------------------------------------------------
# shared state


class Bench:
    """Models and images shared by the sections, plus the result accumulators."""

    def __init__(self, cfg: Config, out: Path, twins_path: Path | None = None) -> None:
        self.cfg = cfg
        self.twins_path = twins_path
        self.out = out
        self.res: dict[str, Any] = {}
        self.md: list[str] = []
        self.peak: dict[str, float] = {}  # best matmul GFLOP/s per precision
        self.missed: list[str] = []
        torch.manual_seed(0)
        self.vgg = torchvision.models.vgg16(weights=None).eval()
        self.names = imagenet_classes("vgg16")
        self.fcn = fcn_cam.convert(self.vgg, 224, class_names=self.names, arch="vgg16", weights="random")
        self._prepared: dict[tuple[str, bool], FCN] = {}
        photos = skimage_photos()
        chelsea = Image.fromarray(photos["chelsea"])
        w, h = chelsea.size
        s = min(w, h)
        self.square = chelsea.crop(((w - s) // 2, 0, (w - s) // 2 + s, s)).resize((224, 224), Image.BILINEAR)
        self.real = chelsea  # 451 × 300
        self._twins: Any = None

    def model(self, precision: str, channels_last: bool) -> FCN:
        """The VGG16 FCN in a runtime configuration; plain fp32 (contiguous) is the converted net."""
        if precision == "fp32" and not channels_last:
            return self.fcn
        key = (precision, channels_last)
        if key not in self._prepared:
            self._prepared[key] = fcn_cam.prepare(self.fcn, precision, channels_last=channels_last)
        return self._prepared[key]

    def drop_prepared(self) -> None:
        self._prepared.clear()
        gc.collect()

    def twins(self) -> Any:
        """``(fc, gap, demo module)`` if the trained demo twins load, else ``None`` (with a note)."""
        if self._twins is None:
            try:
                import fcn_cam.demo as demo

                fc, gap = demo.twins(self.twins_path)
                self._twins = (fc, gap, demo)
            except (ImportError, FileNotFoundError, OSError, RuntimeError, KeyError) as e:
                print(f"  note: demo twins not available ({type(e).__name__}: {e}); skipping twin parts")
                self._twins = False
        return self._twins or None

    def section(self, title: str) -> None:
        print(f"\n== {title}", flush=True)
        self.md += ["", f"## {title}", ""]


def fwd(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """A no-argument forward of ``model`` on ``x`` (already in the model's dtype and layout)."""
    xi = input_like(model, x) if isinstance(model, FCN) else x

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(xi)

    return run


def ms(xs: list[float]) -> float:
    return 1000 * median(xs)


def gflops(macs: int, seconds: float) -> float:
    return 2 * macs / seconds / 1e9


# --------------------------------------------------------------------------------------------
# A. machine


def section_a(b: Bench) -> None:
    b.section("A. Machine")
    rates: dict[str, dict[int, float]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates[name] = {n: matmul_rate(dtype, n, b.cfg.mm_repeats) for n in b.cfg.mm_sizes}
        b.peak[name] = max(rates[name].values())
        print(f"  matmul {name}: " + ", ".join(f"{n}: {r:.0f}" for n, r in rates[name].items()) + " GFLOP/s")
    b.res["machine"] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "python": platform.python_version(),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(), "matmul_gflops": rates, "peak_gflops": b.peak,
    }
    rows = [[n, *(rates[p][n] for p in rates)] for n in b.cfg.mm_sizes]
    b.md += [
        f"CPU: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}); "
        f"torchvision {torchvision.__version__}; Python {platform.python_version()}.",
        "",
        "Matrix multiply `torch.mm` n×n (best of repeats, GFLOP/s = 2·n³/t):",
        "",
        table(["n", "fp32 GFLOP/s", "bf16 GFLOP/s"], rows),
        "",
        f"Peak used for ratios below: fp32 {b.peak['fp32']:.0f}, bf16 {b.peak['bf16']:.0f} GFLOP/s.",
    ]


def need_peak(b: Bench) -> None:
    if not b.peak:  # sections run without A still need a reference rate
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            b.peak[name] = matmul_rate(dtype, max(b.cfg.mm_sizes), 2)


# --------------------------------------------------------------------------------------------
# B. explain latency vs torchcam


def section_b(b: Bench) -> None:
    b.section("B. VGG16 explain latency (random weights) and torchcam")
    need_peak(b)
    r = b.cfg.repeats
    rows, raw, drows, draw = [], [], [], []
    for precision, cl in (("fp32", False), ("bf16", True)):
        m = b.model(precision, cl)
        for img_name, img in (("chelsea 224×224", b.square), ("chelsea 451×300", b.real)):
            for s in b.cfg.scales:
                side = round(224 * s)
                x = to_input(img, side, MEAN, STD)[None]
                macs = count_macs(b.fcn, x.shape)
                t_exp = ms(timings(lambda m=m, img=img, s=s: explain(m, img, scale=s), r))
                # fcn-cam's defaults (pad=True, rank="auto"): the padded input is what the net sees
                xp = network_input(m, img, side, True).x
                macs_p = count_macs(b.fcn, (1, *xp.shape))
                t_def = ms(timings(lambda m=m, img=img, s=s: fcn_cam.explain(m, img, scale=s), r))
                shape_p, map_p = list(xp.shape[-2:]), list(b.fcn.map_size(*xp.shape[-2:]))
                draw.append({"image": img_name, "precision": precision, "scale": s, "input": shape_p,
                             "map": map_p, "gmac": macs_p / 1e9, "explain_ms": t_def,
                             "vs_no_pad": t_def / t_exp, "mac_ratio": macs_p / macs})
                drows.append([img_name, f"{precision}{' CL' if cl else ''}", s, "×".join(map(str, shape_p)),
                              "×".join(map(str, map_p)), macs_p / 1e9, t_def, t_exp, t_def / t_exp,
                              macs_p / macs])
                t_fwd = ms(timings(fwd(m, x), r))
                rate = gflops(macs, t_fwd / 1000)
                d = {"image": img_name, "precision": precision, "channels_last": cl, "scale": s,
                     "input": list(x.shape[-2:]), "map": list(b.fcn.map_size(*x.shape[-2:])),
                     "gmac": macs / 1e9, "explain_ms": t_exp, "forward_ms": t_fwd, "gflops": rate,
                     "of_peak": rate / b.peak[precision]}
                raw.append(d)
                rows.append([img_name, f"{precision}{' CL' if cl else ''}", s,
                             "×".join(map(str, d["input"])), "×".join(map(str, d["map"])), d["gmac"],
                             t_exp, t_fwd, t_exp - t_fwd, rate, f"{100 * d['of_peak']:.0f} %"])
                print(f"  {precision} {img_name} s={s}: explain {t_exp:.0f} ms, forward {t_fwd:.0f} ms, "
                      f"{rate:.0f} GFLOP/s ({100 * d['of_peak']:.0f} % of matmul)", flush=True)
    b.res["explain_latency"] = raw
    b.res["explain_latency_default"] = draw
    b.md += [
        "`fcn_cam.explain(model, image, scale=s)` (PIL image in memory → resize, forward, ranking, aligned "
        "heatmap, peak, box), ms per image, median; *forward* = the network alone on the ready tensor; "
        "GFLOP/s = 2·MACs / forward time (MACs of all Conv2d layers, counted from the layers for the "
        "actual input); *% of matmul* = against the best `torch.mm` rate of the same precision (A). "
        "fp32 = plain converted net (contiguous), bf16 CL = `prepare(fcn, 'bf16')` (channels-last).",
        "",
        table(["image", "precision", "scale", "input", "map", "GMAC", "explain ms", "forward ms",
               "rest ms", "GFLOP/s", "% of matmul"], rows),
        "",
        "fcn-cam's defaults, `explain(model, image, scale=s)` with `pad=True, rank='auto'`: the resized image "
        "is padded so that cell centres cover it (VGG16: 112 px on each side, more on the right/bottom to "
        "reach a whole cell), so the network runs on a larger input (*padded input*). Every other table in "
        "this file uses `pad=False, rank='mean'`.",
        "",
        table(["image", "precision", "scale", "padded input", "map", "GMAC", "explain ms (default)",
               "explain ms (pad=False)", "time ×", "MAC ×"], drows),
    ]
    fwd_ratio = [d["of_peak"] for d in raw if d["scale"] == 2.0]
    if fwd_ratio and min(fwd_ratio) < 0.85:
        b.missed.append("forward ≥ 85 % of the matmul rate")

    # torchcam next to it, same images, same preprocessing, map upsampled to the image
    from torchcam.methods import CAM, GradCAM

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    rfcn = fcn_cam.convert(resnet, 224, class_names=imagenet_classes("resnet18"), arch="resnet18")
    trows, traw = [], []
    for img_name, img in (("chelsea 224×224", b.square), ("chelsea 451×300", b.real)):
        for side in (224, 448):
            def gradcam(img: Image.Image = img, side: int = side) -> torch.Tensor:
                x = to_input(img, side, MEAN, STD)[None]
                out = b.vgg(x)
                cam = ex(int(out.argmax()), out)[0]
                return F.interpolate(cam[None], size=(img.height, img.width), mode="bilinear")

            def cam_resnet(img: Image.Image = img, side: int = side) -> torch.Tensor:
                with torch.inference_mode():
                    x = to_input(img, side, MEAN, STD)[None]
                    out = resnet(x)
                    cam = cex(int(out.argmax()), out)[0]
                    return F.interpolate(cam[None], size=(img.height, img.width), mode="bilinear")

            with GradCAM(b.vgg, target_layer="features.29") as ex:
                t_gc = ms(timings(gradcam, r))
            with CAM(resnet, target_layer="layer4", fc_layer="fc") as cex:
                t_cam = ms(timings(cam_resnet, r))
            s = side / 224
            t_fc = ms(timings(lambda img=img, s=s: explain(b.fcn, img, scale=s), r))
            t_rc = ms(timings(lambda img=img, s=s: explain(rfcn, img, scale=s), r))
            for method, model, t in (("torchcam Grad-CAM (features.29)", "VGG16", t_gc),
                                     ("fcn_cam.explain", "VGG16", t_fc),
                                     ("torchcam CAM (layer4, fc)", "ResNet-18", t_cam),
                                     ("fcn_cam.explain", "ResNet-18", t_rc)):
                traw.append({"image": img_name, "side": side, "method": method, "model": model, "ms": t})
                trows.append([img_name, side, model, method, t])
            print(f"  {img_name} side {side}: Grad-CAM VGG16 {t_gc:.0f} ms, FCN-CAM VGG16 {t_fc:.0f} ms, "
                  f"CAM R18 {t_cam:.0f} ms, FCN-CAM R18 {t_rc:.0f} ms", flush=True)
    b.res["torchcam_latency"] = traw
    b.md += [
        "",
        "Next to torchcam 0.5 (fp32, same image and preprocessing; the torchcam map is upsampled to the "
        "image with `F.interpolate`; Grad-CAM includes its forward with autograd and one backward; "
        "fcn_cam at the same network input side, i.e. scale = side / 224). ms per image, median:",
        "",
        table(["image", "short side", "model", "method", "ms"], trows),
    ]


# --------------------------------------------------------------------------------------------
# C. agreement with the original model


def topk_stats(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Per-row Pearson, top-1 agreement and top-5 overlap between two ``[N, K]`` score tables."""
    corr = [pearson(a.numpy(), g.numpy()) for a, g in zip(ref, got)]
    k = min(5, ref.shape[1])
    t5 = [len(set(a.topk(k).indices.tolist()) & set(g.topk(k).indices.tolist())) / k for a, g in zip(ref, got)]
    return {
        "n": len(ref), "pearson_median": float(np.median(corr)), "pearson_min": float(np.min(corr)),
        "top1_agree": float((ref.argmax(1) == got.argmax(1)).float().mean()),
        "top5_overlap": float(np.mean(t5)),
        "max_abs_diff": float((ref - got).abs().max()),
    }


def section_c(b: Bench) -> None:
    b.section("C. Agreement: FCN mean scores vs the original model's logits")
    rows, raw = [], {}
    photos = photo_variants(b.cfg.n_agree)
    for label, side, square in (("native 224 (square crop)", 224, True),
                                ("scale 2 (short side 448)", 448, False)):
        ref, got = [], []
        for _, img in photos:
            if square:
                s = min(img.size)
                img = img.crop((0, 0, s, s))
            x = to_input(img, side, MEAN, STD)[None]
            with torch.inference_mode():
                ref.append(b.vgg(x)[0])
                got.append(b.fcn(x).mean(dim=(-2, -1))[0])
        st = topk_stats(torch.stack(ref), torch.stack(got))
        raw[f"vgg16_random_{side}"] = st
        rows.append(["VGG16 (random)", label, st["n"], st["pearson_median"], st["pearson_min"],
                     st["top1_agree"], st["top5_overlap"], st["max_abs_diff"]])
        print(f"  VGG16 {label}: {st}", flush=True)

    tw = b.twins()
    notes = []
    if tw is None:
        notes.append("Trained twins: not available in this run (`fcn_cam.demo.twins()` did not load); skipped.")
    else:
        fc, gap, demo = tw
        sc = demo.scenes(b.cfg.n_scenes, seed=3, split="test")
        n_in = demo.INPUT_SIZE
        fcn_fc = fcn_cam.convert(fc, n_in, class_names=demo.CLASS_NAMES, mean=demo.MEAN, std=demo.STD)
        fcn_gap = fcn_cam.convert(gap, n_in, class_names=demo.CLASS_NAMES, mean=demo.MEAN, std=demo.STD)
        pooled = nn.Sequential(fc.features, nn.AdaptiveAvgPool2d(demo.FEATURE_SIZE), nn.Flatten(),
                               fc.classifier).eval()
        labels = torch.as_tensor(sc.labels)
        x1 = demo.preprocess(sc.images)
        x2 = torch.stack([to_input(Image.fromarray(im), 2 * n_in, demo.MEAN, demo.STD) for im in sc.images])
        xpad = torch.stack([network_input(fcn_fc, Image.fromarray(im), 2 * n_in, True).x for im in sc.images])
        with torch.inference_mode():
            native = fc(x1)
            fcn2 = fcn_fc(x2).mean(dim=(-2, -1))
            fcn2max = class_scores(fcn_fc(x2), "max")
            fcn2pad = class_scores(fcn_fc(xpad), "max")
            pooled2 = pooled(x2)
            gap2, gapf2 = gap(x2), fcn_gap(x2).mean(dim=(-2, -1))
        acc = {k: float((v.argmax(1) == labels).float().mean())
               for k, v in (("native", native), ("fcn2", fcn2), ("fcn2max", fcn2max), ("fcn2pad", fcn2pad),
                            ("pooled2", pooled2), ("gap2", gap2))}
        for key, label, ref, got in (
            ("fc_twin_vs_native", "FCN @224 (scale 2) vs original @112 (native)", native, fcn2),
            ("fc_twin_vs_pooled", "FCN @224 vs original + adaptive pool @224", pooled2, fcn2),
            ("fc_twin_max_vs_native", "FCN @224, max over cells (rank='max') vs original @112", native,
             fcn2max),
            ("fc_twin_default_vs_native", "FCN defaults (padded 224 input, max) vs original @112", native,
             fcn2pad),
            ("gap_twin", "GAP twin: FCN @224 vs original @224", gap2, gapf2),
        ):
            st = topk_stats(ref, got)
            raw[key] = st
            rows.append([f"demo {'GAP' if key == 'gap_twin' else 'FC'} twin (trained)", label, st["n"],
                         st["pearson_median"], st["pearson_min"], st["top1_agree"], st["top5_overlap"],
                         st["max_abs_diff"]])
        raw["twin_accuracy"] = acc
        notes.append(
            f"Twin accuracy on these test scenes: FC original at 112 {acc['native']:.3f}, FC-as-FCN at scale 2 "
            f"(mean score) {acc['fcn2']:.3f}, max score {acc['fcn2max']:.3f}, defaults (padded, max) "
            f"{acc['fcn2pad']:.3f}, FC original + adaptive pool at 224 {acc['pooled2']:.3f}, "
            f"GAP twin at 224 {acc['gap2']:.3f}. The FC twin has no adaptive pool, so at 224 its original "
            "cannot run; it is compared with its native 112 prediction and with a VGG-style copy that "
            "inserts `AdaptiveAvgPool2d(7)` before the flatten.")
    b.res["agreement"] = raw
    b.md += [
        "Per image: Pearson correlation of the K class scores, top-1 agreement, top-5 overlap (|∩|/5), "
        "over real photos and crops (skimage chelsea, coffee, rocket, astronaut; full, mirrored, "
        "square, random crops). FCN score = spatial mean of the score maps; original = the unmodified "
        "model on the same input (VGG16 with its `AdaptiveAvgPool2d(7)`: at 448 it averages 14×14 "
        "features down to 7×7, so it is a different function from the sliding window).",
        "",
        table(["model", "comparison", "images", "Pearson median", "Pearson min", "top-1 agree",
               "top-5 overlap", "max |Δ|"], rows),
        "",
        *notes,
        "",
        "Random VGG16 weights make scores nearly input-independent, so the 448 row says little about "
        "a trained VGG16; the native-224 row checks exactness (should be ~1e-6).",
    ]


# --------------------------------------------------------------------------------------------
# D. precision and layout


def section_d(b: Bench) -> None:
    b.section("D. VGG16 at scale 2: fp32 / bf16, contiguous / channels-last")
    r = b.cfg.repeats
    x = to_input(b.real, 448, MEAN, STD)[None]
    configs = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]
    lat: dict[str, dict[str, float]] = {}
    for p, cl in configs:
        m = b.model(p, cl)
        key = f"{p}{' channels-last' if cl else ' contiguous'}"
        lat[key] = {
            "explain_ms": ms(timings(lambda m=m: explain(m, b.real, scale=2), r)),
            "forward_ms": ms(timings(fwd(m, x), r)),
        }
        print(f"  {key}: {lat[key]}", flush=True)
    plain = lat["fp32 contiguous"]["explain_ms"]
    best32 = min(v["explain_ms"] for k, v in lat.items() if k.startswith("fp32"))
    rows = [[k, v["explain_ms"], v["forward_ms"], plain / v["explain_ms"], best32 / v["explain_ms"]]
            for k, v in lat.items()]

    # agreement bf16 vs fp32 on real photos
    photos = photo_variants(b.cfg.n_agree)
    agree: dict[str, dict[str, Any]] = {}
    ref = [explain(b.fcn, img, scale=2) for _, img in photos]
    for p, cl in configs[1:]:
        m = b.model(p, cl)
        corr, same = [], []
        for (_, img), e32 in zip(photos, ref):
            t = e32.targets[0]
            e = explain(m, img, scale=2, target=t.index)
            corr.append(pearson(t.heatmap, e.targets[0].heatmap))
            same.append(e.ranking[0][0] == t.index)
        key = f"{p}{' channels-last' if cl else ' contiguous'}"
        agree[key] = {"n": len(corr), "heat_corr_median": float(np.median(corr)),
                      "heat_corr_min": float(np.min(corr)), "top1_agree": float(np.mean(same)),
                      "frac_corr_ge_0.99": float(np.mean(np.array(corr) >= 0.99))}
        print(f"  agreement {key} vs fp32: {agree[key]}", flush=True)
    arows = [["VGG16 (random), real photos", k, v["n"], v["heat_corr_median"], v["heat_corr_min"],
              v["frac_corr_ge_0.99"], v["top1_agree"]] for k, v in agree.items()]

    tw = b.twins()
    twin_agree = {}
    if tw is not None:
        fc, _, demo = tw
        sc = demo.scenes(b.cfg.n_scenes, seed=3, split="test")
        f32 = fcn_cam.convert(fc, demo.INPUT_SIZE, class_names=demo.CLASS_NAMES, mean=demo.MEAN, std=demo.STD)
        imgs = [Image.fromarray(im) for im in sc.images]
        ref_t = [explain(f32, im, scale=2) for im in imgs]
        for cl in (False, True):
            m = fcn_cam.prepare(f32, "bf16", channels_last=cl)
            corr, same, right16, right32 = [], [], [], []
            for im, e32, lab in zip(imgs, ref_t, sc.labels):
                t = e32.targets[0]
                e = explain(m, im, scale=2, target=t.index)
                corr.append(pearson(t.heatmap, e.targets[0].heatmap))
                same.append(e.ranking[0][0] == t.index)
                right16.append(e.ranking[0][0] == lab)
                right32.append(t.index == lab)
            key = f"bf16{' channels-last' if cl else ' contiguous'}"
            twin_agree[key] = {"n": len(corr), "heat_corr_median": float(np.median(corr)),
                               "heat_corr_min": float(np.min(corr)), "top1_agree": float(np.mean(same)),
                               "frac_corr_ge_0.99": float(np.mean(np.array(corr) >= 0.99)),
                               "acc_bf16": float(np.mean(right16)), "acc_fp32": float(np.mean(right32))}
            arows.append(["demo FC twin (trained), scenes", key, len(corr), twin_agree[key]["heat_corr_median"],
                          twin_agree[key]["heat_corr_min"], twin_agree[key]["frac_corr_ge_0.99"],
                          twin_agree[key]["top1_agree"]])
            print(f"  twin agreement {key}: {twin_agree[key]}", flush=True)

    # threads: cheap to try (interop threads can only be set before the first parallel work)
    threads = {}
    n0 = torch.get_num_threads()
    xs = to_input(b.square, 448, MEAN, STD)[None]
    for n in sorted({1, n0}):
        torch.set_num_threads(n)
        for p, cl in (("fp32", False), ("bf16", True)):
            run = fwd(b.model(p, cl), xs)
            threads[f"{p}{' CL' if cl else ''} threads={n}"] = ms(timings(run, max(1, r - 1)))
    torch.set_num_threads(n0)
    print(f"  threads: {threads}", flush=True)

    b.res["precision"] = {"latency": lat, "agreement": agree, "twin_agreement": twin_agree, "threads": threads,
                          "image": "chelsea 451×300 → 448×673"}
    bf = lat["bf16 channels-last"]["explain_ms"], lat["bf16 contiguous"]["explain_ms"]
    best16 = min(bf)
    worst_corr = min([v["frac_corr_ge_0.99"] for v in agree.values()] +
                     [v["frac_corr_ge_0.99"] for v in twin_agree.values()])
    worst_top1 = min([v["top1_agree"] for v in agree.values()] + [v["top1_agree"] for v in twin_agree.values()])
    ok = plain / best16 >= 2.5 and best32 / best16 >= 2 and worst_corr >= 0.99 and worst_top1 >= 0.99
    if not ok:
        b.missed.append("bf16 ≥ 2.5× plain fp32 and ≥ 2× best fp32 with corr ≥ 0.99 and same top-1 on ≥ 99 %")
    b.md += [
        "Latency on chelsea 451×300 at scale 2 (network input 448×673), ms per image, median; speedup = "
        "plain fp32 explain time / this one (and best fp32 / this one).",
        "",
        table(["configuration", "explain ms", "forward ms", "× vs plain fp32", "× vs best fp32"], rows),
        "",
        "bf16 vs fp32 maps at scale 2: Pearson correlation of the aligned heatmap of the fp32 top-1 class "
        "(bf16 run with `target=` that class) and top-1 agreement (bf16's own top-1 = fp32's).",
        "",
        table(["model / images", "configuration", "n", "heatmap corr median", "corr min",
               "share corr ≥ 0.99", "top-1 agree"], arows),
        "",
        "Threads (`torch.set_num_threads`, VGG16 forward at 448×448, ms): "
        + ", ".join(f"{k}: {v:.0f}" for k, v in threads.items())
        + f". Interop threads left at {torch.get_num_interop_threads()} (settable only before the first "
          "parallel work; the forward uses intra-op threads only).",
        "",
        f"Target bf16 ≥ 2.5× plain fp32 and ≥ 2× best fp32: {plain / best16:.2f}× and {best32 / best16:.2f}× "
        f"({'met' if plain / best16 >= 2.5 and best32 / best16 >= 2 else 'MISSED'}); heatmap corr ≥ 0.99 on "
        f"≥ 99 % and top-1 on ≥ 99 % of images: worst share {100 * worst_corr:.0f} %, worst top-1 "
        f"{100 * worst_top1:.0f} % ({'met' if worst_corr >= 0.99 and worst_top1 >= 0.99 else 'MISSED'}).",
    ]


# --------------------------------------------------------------------------------------------
# E. output stride


def section_e(b: Bench) -> None:
    b.section("E. Output stride 32 / 16 / 8 at 448×448")
    r = b.cfg.repeats
    x = to_input(b.square, 448, MEAN, STD)[None]
    rows, raw = [], []
    base: dict[str, float] = {}
    base_macs = count_macs(b.fcn, x.shape)
    for stride in b.cfg.strides:
        f32 = b.fcn if stride == 32 else fcn_cam.convert(b.vgg, 224, output_stride=stride, class_names=b.names)
        macs = count_macs(f32, x.shape)
        for p in ("fp32", "bf16"):
            m = f32 if p == "fp32" else fcn_cam.prepare(f32, "bf16", channels_last=True)
            t_fwd = ms(timings(fwd(m, x), r))
            t_exp = ms(timings(lambda m=m: explain(m, b.square, scale=2), r))
            if stride == 32:
                base[p] = t_exp
            d = {"stride": stride, "precision": p, "map": list(f32.map_size(448, 448)), "gmac": macs / 1e9,
                 "forward_ms": t_fwd, "explain_ms": t_exp, "ratio": t_exp / base[p],
                 "mac_ratio": macs / base_macs}
            raw.append(d)
            rows.append([stride, p if p == "fp32" else "bf16 CL", "×".join(map(str, d["map"])), d["gmac"],
                         t_fwd, t_exp, d["ratio"], d["mac_ratio"]])
            print(f"  stride {stride} {p}: {d}", flush=True)
            del m
        del f32
        gc.collect()
    b.res["stride"] = raw
    r16 = [d["ratio"] for d in raw if d["stride"] == 16]
    if r16 and max(r16) > 1.35:
        b.missed.append("stride 16 ≤ 1.35× stride 32 at 448")
    b.md += [
        "VGG16, chelsea 224×224 at scale 2 (input 448×448); ratio = explain time / stride-32 explain time of "
        "the same precision; MAC ratio = MACs / stride-32 MACs.",
        "",
        table(["stride", "precision", "map", "GMAC", "forward ms", "explain ms", "× stride 32", "MAC ×"], rows),
        "",
        "Target stride 16 ≤ 1.35× stride 32: "
        + ", ".join(f"{d['precision']} {d['ratio']:.2f}×" for d in raw if d["stride"] == 16)
        + (" (met)" if r16 and max(r16) <= 1.35 else " (MISSED)"),
    ]


# --------------------------------------------------------------------------------------------
# F. all classes vs top-1 only


def single_class(fcn: FCN, c: int) -> FCN:
    """``fcn`` sharing its layers but with a last 1×1 conv that keeps only class ``c``."""
    last = fcn.head[-1]
    one = nn.Conv2d(last.in_channels, 1, 1)
    with torch.no_grad():
        one.weight.copy_(last.weight[c : c + 1])
        one.bias.copy_(last.bias[c : c + 1])
    info = {**fcn.info, "class_names": [fcn.class_names[c]] if fcn.class_names else None}
    return FCN(fcn.features, nn.Sequential(*list(fcn.head)[:-1], one), info).eval()


def section_f(b: Bench) -> None:
    b.section("F. All-class maps vs a top-1-only head")
    r = b.cfg.repeats
    x = to_input(b.square, 448, MEAN, STD)[None]
    c = explain(b.fcn, b.square, scale=2).targets[0].index
    one32 = single_class(b.fcn, c)
    rows, raw = [], []
    for p, cl in (("fp32", False), ("bf16", True)):
        full = b.model(p, cl)
        one = one32 if p == "fp32" else fcn_cam.prepare(one32, p, channels_last=cl)
        res = {}
        for label, m, tgt in (("all 1000 classes", full, c), ("top-1 only", one, 0)):
            res[label] = (ms(timings(fwd(m, x), r)),
                          ms(timings(lambda m=m, t=tgt: explain(m, b.square, scale=2, target=t), r)))
        for label, (tf, te) in res.items():
            rows.append([f"{p}{' CL' if cl else ''}", label, tf, te, te / res["all 1000 classes"][1]])
            raw.append({"precision": p, "head": label, "forward_ms": tf, "explain_ms": te})
        print(f"  {p}: {res}", flush=True)
    macs_all = count_macs(b.fcn, x.shape)
    macs_one = count_macs(one32, x.shape)
    b.res["top1_only"] = {"rows": raw, "gmac_all": macs_all / 1e9, "gmac_one": macs_one / 1e9}
    b.md += [
        f"VGG16 at 448×448; the top-1-only net shares every layer but its last 1×1 conv has one output "
        f"channel (the class must be known beforehand). MACs {macs_all / 1e9:.2f} G vs {macs_one / 1e9:.2f} G.",
        "",
        table(["precision", "head", "forward ms", "explain ms", "× all-class explain"], rows),
    ]


# --------------------------------------------------------------------------------------------
# G. folder throughput


LANDSCAPE = ((640, 480), (800, 600), (1024, 768))
PORTRAIT = ((480, 640), (600, 800))


def write_jpegs(folder: Path, n: int, sizes: tuple[tuple[int, int], ...] | None = None, seed: int = 0,
                prefix: str = "img") -> list[Path]:
    """``n`` JPEGs cropped and resized from the skimage photos: 3/4 landscape 4:3 sizes, then 1/4
    portrait, cycling through the sizes (all 4:3 sizes give the same network input at a given scale)."""
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(v).convert("RGB") for v in skimage_photos().values()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n_land = n if sizes is not None else n - n // 4
    for i in range(n):
        src = photos[i % len(photos)]
        if sizes is not None:
            tw, th = sizes[i % len(sizes)]
        else:
            tw, th = LANDSCAPE[i % 3] if i < n_land else PORTRAIT[i % 2]
        aspect = tw / th
        w, h = src.size
        cw = min(w, h * aspect) * rng.uniform(0.6, 1.0)
        ch = cw / aspect
        x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
        im = src.resize((tw, th), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        p = folder / f"{prefix}_{i:04d}.jpg"
        im.save(p, quality=90)
        paths.append(p)
    return paths


def groups(shapes: list[tuple[int, ...]], batch: int) -> list[list[int]]:
    """Index groups as ``explain_files`` forms them: consecutive equal shapes, at most ``batch``."""
    out: list[list[int]] = []
    for i, s in enumerate(shapes):
        if out and shapes[out[-1][0]] == s and len(out[-1]) < batch:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def section_g(b: Bench) -> None:
    b.section("G. Folder throughput: explain_files vs bare forward")
    with tempfile.TemporaryDirectory(prefix="fcncam-folder-") as tmp:
        paths = write_jpegs(Path(tmp), b.cfg.n_folder)
        sizes = sorted({Image.open(p).size for p in paths})
        t0 = time.perf_counter()
        xs = [to_input(load_image(p), 448, MEAN, STD) for p in paths]
        t_prep = time.perf_counter() - t0
        shapes = [tuple(x.shape) for x in xs]
        print(f"  {len(paths)} JPEGs, sizes {sizes}; decode+resize {1000 * t_prep / len(paths):.1f} ms/image "
              f"(1 thread)", flush=True)
        n_land = len(paths) - len(paths) // 4
        k = min(b.cfg.folder_fp32, len(paths))
        sub = list(range(k - k // 4)) + list(range(n_land, n_land + k // 4))
        chosen = {"bf16": list(range(len(paths))), "fp32": sub}
        bare: dict[tuple[str, int], float] = {}
        rows, raw = [], []
        for p, bs, workers in b.cfg.folder_grid:
            m = b.model(p, p == "bf16")
            idx = chosen[p]
            if (p, bs) not in bare:
                batches = [torch.stack([xs[idx[i]] for i in g]) for g in groups([shapes[i] for i in idx], bs)]
                run = fwd(m, batches[0])
                run()  # warm-up at this batch shape
                t0 = time.perf_counter()
                for x in batches:
                    fwd(m, x)()
                bare[(p, bs)] = len(idx) / (time.perf_counter() - t0)
            files = [paths[i] for i in idx]
            list(explain_files(m, files[:2], scale=2, batch_size=bs, workers=workers))  # warm-up
            t0 = time.perf_counter()
            n_ok = sum(res.error is None for res in explain_files(
                m, files, scale=2, batch_size=bs, workers=workers))
            rate = len(files) / (time.perf_counter() - t0)
            assert n_ok == len(files)
            d = {"precision": p, "batch_size": bs, "workers": workers, "images": len(files),
                 "images_per_s": rate, "bare_images_per_s": bare[(p, bs)], "ratio": rate / bare[(p, bs)]}
            raw.append(d)
            rows.append([f"{p}{' CL' if p == 'bf16' else ''}", bs, workers, len(files), rate, bare[(p, bs)],
                         f"{100 * d['ratio']:.0f} %"])
            print(f"  {d}", flush=True)
    b.res["folder"] = {"n": len(paths), "sizes": sizes, "prep_ms_per_image": 1000 * t_prep / len(paths),
                       "runs": raw}
    best = max(raw, key=lambda d: d["images_per_s"])
    if min(d["ratio"] for d in raw if d["workers"] == 2) < 0.85:
        b.missed.append("folder throughput ≥ 85 % of bare forward")
    b.md += [
        f"{len(paths)} JPEGs written from the skimage photos (sizes {', '.join(f'{w}×{h}' for w, h in sizes)}; "
        "48 landscape then 16 portrait, so all inputs at scale 2 are 448×597 or 597×448). "
        "`explain_files(model, paths, scale=2, batch_size, workers)` consumed to the end (decode, resize, "
        "forward, ranking, aligned heatmap, box; no overlays written) vs the bare forward on the same "
        "pre-resized tensors in the same batches. Images/s; one pass each after a warm-up. "
        f"fp32 runs use {len(sub)} of the files (same landscape/portrait mix) to keep the run short. "
        f"Decode + resize alone: {1000 * t_prep / len(paths):.1f} ms/image on one thread.",
        "",
        table(["precision", "batch", "workers", "images", "explain_files img/s", "bare forward img/s", "ratio"],
              rows),
        "",
        f"Best: {best['precision']} batch {best['batch_size']} workers {best['workers']}, "
        f"{best['images_per_s']:.2f} img/s. Target ≥ 85 % of bare forward: "
        + ("met" if min(d["ratio"] for d in raw if d["workers"] == 2) >= 0.85 else "MISSED")
        + " (judged on the workers=2 runs).",
    ]


# --------------------------------------------------------------------------------------------
# H. per-class cost


def section_h(b: Bench) -> None:
    b.section("H. Per-class cost: FCN-CAM vs torchcam Grad-CAM")
    from torchcam.methods import GradCAM

    r = b.cfg.repeats
    img = b.real
    rows, raw = [], []
    for n in b.cfg.classes:
        t_fcn = ms(timings(lambda n=n: explain(b.fcn, img, scale=2, top_k=n), r))
        t_bf = ms(timings(lambda n=n: explain(b.model("bf16", True), img, scale=2, top_k=n), r))
        gc_t = {}
        for side in (224, 448):
            with GradCAM(b.vgg, target_layer="features.29") as ex:
                def gradcam(n: int = n, side: int = side) -> list[torch.Tensor]:
                    x = to_input(img, side, MEAN, STD)[None]
                    out = b.vgg(x)
                    maps = []
                    for c in out[0].topk(n).indices.tolist():
                        cam = ex(c, out, retain_graph=True)[0]
                        maps.append(F.interpolate(cam[None], size=(img.height, img.width), mode="bilinear"))
                    return maps

                gc_t[side] = ms(timings(gradcam, r))
        d = {"classes": n, "fcn_fp32_ms": t_fcn, "fcn_bf16_ms": t_bf, "gradcam_224_ms": gc_t[224],
             "gradcam_448_ms": gc_t[448]}
        raw.append(d)
        rows.append([n, t_fcn / n, t_bf / n, gc_t[448] / n, gc_t[224] / n, gc_t[448] / t_fcn, gc_t[448] / t_bf])
        print(f"  {d}", flush=True)
    b.res["per_class"] = raw
    last = raw[-1]
    ratio = last["gradcam_448_ms"] / last["fcn_fp32_ms"]
    if ratio < 50:
        b.missed.append(f"{last['classes']} classes: FCN-CAM ≥ 50× cheaper per class than Grad-CAM")
    marg = {}
    if len(raw) > 1:
        k = raw[-1]["classes"] - raw[0]["classes"]
        marg = {key: (raw[-1][key] - raw[0][key]) / k for key in raw[0] if key != "classes"}
        b.res["per_class_marginal_ms"] = marg
    b.md += [
        "chelsea 451×300; FCN-CAM = `explain(fcn, img, scale=2, top_k=N)` (one forward at 448×673, then per "
        "class: aligned heatmap, peak, box); Grad-CAM = torchcam `GradCAM(vgg16, 'features.29')`: one "
        "forward with autograd, then per class `extractor(c, scores, retain_graph=True)` (a backward from the "
        "class score to features.29 — through the FC head only) and an upsample to the image. Both fp32 unless "
        "noted; ms per class = total / N, median.",
        "",
        table(["classes", "FCN-CAM fp32 ms/class", "FCN-CAM bf16 ms/class", "Grad-CAM @448 ms/class",
               "Grad-CAM @224 ms/class", "Grad-CAM@448 / FCN fp32", "Grad-CAM@448 / FCN bf16"], rows),
        "",
        ("Marginal cost of one more class (slope between the first and last row), ms: "
         + ", ".join(f"{k} {v:.1f}" for k, v in marg.items()) + ".") if marg else "",
        "",
        f"Target at {last['classes']} classes, FCN-CAM ≥ 50× cheaper per class: {ratio:.1f}× "
        f"({'met' if ratio >= 50 else 'MISSED'}). torchcam's Grad-CAM backward stops at its target layer "
        "(features.29), so each extra class costs a backward through the FC head only, not the conv body.",
    ]


# --------------------------------------------------------------------------------------------
# I. memory in fresh subprocesses


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(spec: dict) -> dict:
    """Run in a fresh interpreter: load a model file, run one workload, report memory (MB)."""
    rss_imports = _rss_mb()
    t0 = time.perf_counter()
    if spec["kind"] == "convert":
        model = torchvision.models.vgg16(weights=None).eval()
        rss_model = _rss_mb()
        fcn = fcn_cam.convert(model, 224)
        params = sum(p.numel() * p.element_size() for p in fcn.parameters()) / 2**20
        return {"spec": spec, "rss_imports": rss_imports, "rss_model": rss_model, "params_mb": params,
                "seconds": time.perf_counter() - t0, "maxrss": _maxrss_mb(), "rss_after": _rss_mb()}
    fcn = fcn_cam.load(spec["model"])
    if spec["precision"] != "fp32":
        fcn = fcn_cam.prepare(fcn, spec["precision"], channels_last=True)
    gc.collect()
    out = {"spec": spec, "rss_imports": rss_imports, "load_s": time.perf_counter() - t0,
           "maxrss_after_load": _maxrss_mb(),
           "rss_before": _rss_mb()}
    reset = False
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM): the peak of the workload alone
        reset = True
    t0 = time.perf_counter()
    if spec["kind"] == "folder":
        paths = sorted(Path(spec["path"]).glob("*.jpg"))
        curve, n = [], 0
        for i, res in enumerate(explain_files(fcn, paths, scale=spec["scale"], batch_size=8,
                                                      workers=2), 1):
            n += res.error is None
            if i % max(1, len(paths) // 10) == 0:
                curve.append([i, round(_rss_mb(), 1), round(_hwm_mb(), 1)])
        out.update(images=len(paths), ok=n, curve=curve)
    else:
        exp = explain(fcn, spec["path"], scale=spec["scale"])
        out.update(image=[exp.width, exp.height], input=list(exp.input_shapes[0]), map=list(exp.map_shapes[0]))
    # (resetting VmHWM also resets ru_maxrss, so the process peak is the larger of the two readings)
    out.update(seconds=time.perf_counter() - t0, maxrss=max(_maxrss_mb(), out["maxrss_after_load"]),
               workload_hwm=_hwm_mb() if reset else None, rss_after=_rss_mb())
    return out


def run_worker(spec: dict) -> dict:
    """Run :func:`memory_worker` in a fresh interpreter, started through ``sh`` (not exec'd): a
    process forked and exec'd straight from this big one would inherit its peak in ``ru_maxrss``
    (Linux records the old address space's high-water mark at exec)."""
    cmd = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, str(Path(__file__).resolve()),
           "--memory-worker", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise RuntimeError(f"memory worker failed ({p.returncode}): {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def section_i(b: Bench) -> None:
    b.section("I. Peak memory (fresh subprocesses)")
    rows, raw = [], []
    with tempfile.TemporaryDirectory(prefix="fcncam-mem-") as tmp:
        model = Path(tmp) / "vgg16.pt"
        fcn_cam.save(b.fcn, model)
        small = Path(tmp) / "small"
        t0 = time.perf_counter()
        write_jpegs(small, b.cfg.n_small, sizes=((160, 120), (200, 150), (120, 90)), prefix="s")
        print(f"  wrote {b.cfg.n_small} small JPEGs in {time.perf_counter() - t0:.1f} s", flush=True)
        big = Path(tmp) / "big.jpg"
        w, h = b.cfg.big_size
        src = Image.fromarray(skimage_photos()["astronaut"]).resize((w, h), Image.BILINEAR)
        noise = np.random.default_rng(0).integers(0, 24, (h, w, 1), dtype=np.uint8)
        Image.fromarray(np.asarray(src) // 2 + noise * 2 // 3).save(big, quality=90)
        del src, noise
        specs = [
            {"kind": "folder", "path": str(small), "model": str(model), "precision": "bf16",
             "scale": b.cfg.small_scale},
            {"kind": "image", "path": str(big), "model": str(model), "precision": "fp32", "scale": 2.0},
            {"kind": "image", "path": str(big), "model": str(model), "precision": "bf16", "scale": 2.0},
        ]
        for spec in specs:
            d = run_worker(spec)
            raw.append(d)
            what = (f"{d['images']} small JPEGs (160×120 … 200×150), explain_files batch 8 workers 2, scale "
                    f"{spec['scale']:g}" if spec["kind"] == "folder" else
                    f"one {w}×{h} JPEG, explain scale 2 (input {'×'.join(map(str, d['input']))})")
            rows.append([what, spec["precision"], d["rss_imports"], d["maxrss_after_load"], d["rss_before"],
                         d["workload_hwm"], d["maxrss"], d["seconds"]])
            print(f"  {what} {spec['precision']}: {d}", flush=True)
    conv = run_worker({"kind": "convert"})
    print(f"  convert: {conv}", flush=True)
    b.res["memory"] = raw
    b.res["memory_convert"] = conv
    folder = next(d for d in raw if d["spec"]["kind"] == "folder")
    b.md += [
        "Each row is a fresh `python` process (started through `sh`, so it does not inherit this process's "
        "peak) that loads the VGG16 model file (`fcn_cam.load`, random weights, 528 MB of fp32 parameters), "
        "optionally `prepare`s it (bf16 = channels-last bf16 copy, the fp32 one is then dropped), then runs "
        "the workload. *imports* = RSS after `import torch, fcn_cam`; *max RSS* = "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss` of the whole process (includes loading the model); "
        "*workload peak* = `VmHWM` reset (`/proc/self/clear_refs`) right before the workload. MB.",
        "",
        table(["workload", "precision", "RSS imports", "max RSS after load", "RSS before workload",
               "workload peak RSS", "max RSS (process)", "seconds"], rows),
        "",
        "RSS during the folder run (images done: RSS / peak so far, MB): "
        + "; ".join(f"{c[0]}: {c[1]:.0f}/{c[2]:.0f}" for c in folder.get("curve", [])),
        "",
        f"For reference, converting VGG16 (`torchvision.models.vgg16()` then `fcn_cam.convert`) in a fresh "
        f"process peaks at {conv['maxrss']:.0f} MB RSS (model built: {conv['rss_model']:.0f} MB; converted net "
        f"{conv['params_mb']:.0f} MB of parameters; {conv['seconds']:.1f} s).",
    ]


# --------------------------------------------------------------------------------------------
# P. where the time goes


def layer_times(m: FCN, x: torch.Tensor, repeats: int) -> list[tuple[str, int, float]]:
    """(layer, MACs, ms) for every Conv2d of ``m`` run alone on its real input; other layers summed."""
    xi = input_like(m, x)
    out, other = [], 0.0
    layers = [(f"features.{n}", c) for n, c in m.features.named_children()]
    layers += [(f"head.{n}", c) for n, c in m.head.named_children()]
    with torch.inference_mode():
        for name, layer in layers:
            t = median(timings(lambda layer=layer, xi=xi: layer(xi), repeats))
            y = layer(xi)
            if isinstance(layer, nn.Conv2d):
                k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                out.append((f"{name} {layer.in_channels}→{layer.out_channels} k{layer.kernel_size[0]} "
                            f"@{xi.shape[-2]}×{xi.shape[-1]}", y.numel() * k, 1000 * t))
            else:
                other += 1000 * t
            xi = y
    out.append(("ReLU + MaxPool (all)", 0, other))
    return out


def section_p(b: Bench) -> None:
    b.section("P. Where the time goes (VGG16 forward at 448×448)")
    from torch.profiler import ProfilerActivity, profile

    need_peak(b)
    x = to_input(b.square, 448, MEAN, STD)[None]
    raw = {}
    for p, cl in (("fp32", False), ("bf16", True)):
        m = b.model(p, cl)
        fwd(m, x)()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fwd(m, x)()
        ev = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in ev)
        top = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total,
                "calls": e.count} for e in ev[:8]]
        lt = layer_times(m, x, max(1, b.cfg.repeats - 1))
        raw[p] = {"profiler_top": top, "layers": [{"layer": n, "gmac": mac / 1e9, "ms": t} for n, mac, t in lt]}
        key = f"{p}{' channels-last' if cl else ''}"
        b.md += [
            f"**{key}** — `torch.profiler`, top ops by self CPU time (one forward):",
            "",
            table(["op", "self ms", "share", "calls"],
                  [[t["op"], t["self_ms"], f"{100 * t['share']:.0f} %", t["calls"]] for t in top]),
            "",
            f"Per layer ({key}, each layer timed alone on its real input; GFLOP/s and share of the "
            f"{b.peak[p]:.0f} GFLOP/s matmul rate):",
            "",
            table(["layer", "GMAC", "ms", "GFLOP/s", "% of matmul"],
                  [[n, mac / 1e9, t, gflops(mac, t / 1000) if mac else None,
                    f"{100 * gflops(mac, t / 1000) / b.peak[p]:.0f} %" if mac else "–"] for n, mac, t in lt]),
            "",
        ]
        print(f"  {key}: top op {top[0]['op']} {100 * top[0]['share']:.0f} %", flush=True)
    b.res["profile"] = raw


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fast smoke run (results to a temporary directory)")
    ap.add_argument("--only", default=SECTIONS, help=f"sections to run, e.g. B,D (default all: {SECTIONS})")
    ap.add_argument("--out", type=Path, help="results directory (default benchmarks/results, or a temp dir "
                    "with --quick)")
    ap.add_argument("--twins", type=Path, help="demo twin checkpoint (default: fcn_cam/demo/twins.pt)")
    ap.add_argument("--wait-idle", type=float, default=0, metavar="MIN",
                    help="first wait up to MIN minutes for other processes to go idle")
    ap.add_argument("--retries", type=int, default=None,
                    help="re-run a section disturbed by other processes up to this many times "
                         "(default 3, 0 with --quick)")
    ap.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    cfg = Config.smoke() if args.quick else Config.full()
    if args.retries is None:
        args.retries = 0 if args.quick else 3
    out = args.out or (Path(tempfile.gettempdir()) / "fcncam-speed-quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    only = [s for s in args.only.upper().replace(",", "") if s in SECTIONS]
    if args.wait_idle:
        print(f"waiting up to {args.wait_idle:g} min for an idle machine ...", flush=True)
        wait_idle(args.wait_idle)
    busy = other_heavy_processes()
    if busy:
        print("WARNING: other busy processes, timings will be off:\n  " + "\n  ".join(busy), flush=True)
    t_start = time.perf_counter()
    b = Bench(cfg, out, args.twins)
    funcs = {"A": section_a, "B": section_b, "C": section_c, "D": section_d, "E": section_e, "F": section_f,
             "G": section_g, "H": section_h, "I": section_i, "P": section_p}
    section_times, foreign, attempts = {}, {}, {}
    mon = ForeignLoad()
    for s in only:
        for attempt in range(1, args.retries + 2):
            n_md, n_missed = len(b.md), len(b.missed)
            t0 = time.perf_counter()
            mon.start()
            funcs[s](b)
            section_times[s] = time.perf_counter() - t0
            foreign[s], attempts[s] = mon.cores(), attempt
            print(f"  [{s} took {section_times[s]:.0f} s; other processes used {foreign[s]:.2f} cores]",
                  flush=True)
            if foreign[s] <= 0.1 or attempt > args.retries:
                break
            del b.md[n_md:], b.missed[n_missed:]  # disturbed: wait for quiet, then run the section again
            print(f"  section {s} disturbed; waiting for an idle machine to run it again", flush=True)
            wait_idle(15)
    disturbed = {k: v for k, v in foreign.items() if v > 0.1}
    total = time.perf_counter() - t_start
    cmd = "python " + " ".join(shlex.quote(a) for a in [str(Path(sys.argv[0])), *sys.argv[1:]])
    when = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    m = b.res.get("machine", {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()})
    b.res["run"] = {"command": cmd, "date": when, "total_s": total, "bench_s": sum(section_times.values()),
                    "section_s": section_times,
                    "config": asdict(cfg), "busy_processes_at_start": busy, "foreign_load_cores": foreign,
                    "attempts": attempts,
                    "targets_missed": b.missed}
    head = [
        "# fcn-cam speed and agreement benchmark",
        "",
        f"Command: `{cmd}` (from the repository root)  ",
        f"Date: {when}  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} threads, no GPU  ",
        f"Runtime: {sum(section_times.values()) / 60:.1f} min of benchmarking "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in section_times.items())}); {total / 60:.1f} min wall clock "
        "including waits for an idle machine and re-runs"
        + ("  " if busy else ""),
    ]
    if busy:
        head.append(f"**Other busy processes at start (timings disturbed):** {'; '.join(busy)}  ")
    head.append("CPU used by other processes during each section (cores, from /proc/stat): "
                + ", ".join(f"{k} {v:.2f}" for k, v in foreign.items())
                + (f" — **sections {''.join(disturbed)} were disturbed**" if disturbed else " (idle machine)")
                + "; sections re-run after a disturbance: "
                + (", ".join(f"{k} ×{v - 1}" for k, v in attempts.items() if v > 1) or "none"))
    head += ["", "All weights random (no downloads). Medians over repeats after a warm-up unless stated. "
             "Unless a table says *default*, `explain` / `explain_files` run with `pad=False, rank='mean'` "
             "(the network input is the resized image itself; fcn-cam's defaults now pad it, see the second "
             "table of B for their cost).", "",
             "## Targets", ""]
    head += [f"- MISSED: {t}" for t in b.missed] or [f"- all targets checked by sections {''.join(only)} met"]
    name = "speed"
    (out / f"{name}.md").write_text("\n".join(head + b.md) + "\n")
    (out / f"{name}.json").write_text(json.dumps(b.res, indent=1, default=str) + "\n")
    print(f"\nwrote {out / (name + '.md')} and .json in {total / 60:.1f} min")


if __name__ == "__main__":
    main()

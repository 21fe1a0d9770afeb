"""The converted head alone: run as GEMMs (``head="gemm"``) vs as convolutions (``head="conv"``),
next to the original classifier at the native size."""

from __future__ import annotations

import torch

from benchmarks.common import count_macs, table
from fcn_cam import head as head_module
from fcn_cam.geometry import feature_cover_padding
from fcn_cam.head import WindowGrid, run_head
from fcn_cam.maps import pad_features
from fcn_cam.runtime import input_like

from . import machine
from .core import Bench, gflops, interleaved, ms, side_str
from .forward import batch, macs


def one_product(head, f):
    """The GEMM head with its first layer as one product (no blocks of output channels)."""
    block, head_module.ROW_BLOCK = head_module.ROW_BLOCK, 1 << 30
    try:
        return run_head(head, f, "gemm")
    finally:
        head_module.ROW_BLOCK = block


def run(b: Bench) -> None:
    b.section("Head: GEMM vs convolution")
    machine.ensure_peak(b)
    m = b.model("fp32")  # channels-last fp32: the features the head gets in a default run
    vgg = b.vgg
    rows, raw = [], []
    cases = [(side, False) for side in b.cfg.sides] + [(b.cfg.sides[0], True)]
    for side, padded in cases:
        x = batch(b, side)
        with torch.inference_mode():
            f = m.features(input_like(m, x))
        head_macs = macs(b.fcn, tuple(x.shape)) - count_macs(b.fcn.features, tuple(x.shape))
        if padded:  # what a default explain hands the head: features padded by whole cells
            f = pad_features(f, feature_cover_padding(b.fcn.features, b.fcn.head, side, side))
        h, w = WindowGrid.of(b.fcn.head[0], f.shape).windows
        if padded:
            head_macs *= h * w  # one window's MACs per window
        fns = {"conv": lambda f=f: run_head(m.head, f, "conv"), "gemm": lambda f=f: run_head(m.head, f, "gemm"),
               "gemm_one": lambda f=f: one_product(m.head, f)}
        if side == 224 and not padded:  # the original classifier: pool (identity here), flatten, Linears
            fns["original"] = lambda f=f: vgg.classifier(torch.flatten(vgg.avgpool(f), 1))
        with torch.inference_mode():
            diff = float((run_head(m.head, f, "gemm") - run_head(m.head, f, "conv")).abs().max())
            t = interleaved(fns, b.cfg.repeats if side == 224 else b.cfg.repeats_large)
        d = {"side": side, "padded": padded, "features": list(f.shape[-2:]),
             "map": [h, w],
             "gmac": head_macs / 1e9, "conv_ms": ms(t["conv"]), "gemm_ms": ms(t["gemm"]),
             "gemm_one_ms": ms(t["gemm_one"]),
             "original_ms": ms(t["original"]) if "original" in t else None, "max_abs_diff": diff}
        d["conv_over_gemm"] = d["conv_ms"] / d["gemm_ms"]
        raw.append(d)
        for mode in ("conv", "gemm_one", "gemm", "original"):
            if d.get(f"{mode}_ms") is None:
                continue
            rate = gflops(head_macs, d[f"{mode}_ms"] / 1000)
            rows.append([side, side_str(d["features"]) + (" (padded)" if padded else ""), side_str(d["map"]),
                         d["gmac"],
                         {"conv": "head as convolutions", "gemm_one": "head as GEMMs, first layer one product",
                          "gemm": f"head as GEMMs, first layer in blocks of {head_module.ROW_BLOCK} (default)",
                          "original": "original classifier (Linear)"}[mode],
                         d[f"{mode}_ms"], rate, f"{100 * rate / b.peak['fp32']:.0f} %"])
        print(f"  {side}: conv {d['conv_ms']:.1f} ms, gemm {d['gemm_ms']:.1f} ms "
              f"({d['conv_over_gemm']:.2f}×), original {d['original_ms']}, max |Δ| {diff:.1e}", flush=True)
    b.res["head"] = raw
    b.md += [
        "The head alone, fp32, on the body's real (channels-last) features of the test image at each input "
        "side: `run_head(head, features, 'conv')` (the 7×7 and 1×1 convolutions the file stores) vs "
        "`'gemm'` (unfold + one matrix product per layer over the window grid; the first layer in blocks "
        "of output channels, or as one product); at 224 also the original "
        "torchvision classifier (adaptive pool, flatten, Linears) on the same features, and the 224 features "
        "padded as the default `pad='features'` pads them (7×7 windows). Medians of "
        "interleaved runs; % of the fp32 matmul rate.",
        "",
        table(["input", "features", "map", "GMAC", "head run as", "ms", "GFLOP/s", "% of matmul"], rows),
        "",
        "Largest |GEMM − conv| on the score maps: "
        + ", ".join(f"{d['side']} px {d['max_abs_diff']:.1e}" for d in raw)
        + "; conv time / GEMM time: "
        + ", ".join(f"{d['side']} px {d['conv_over_gemm']:.2f}×" for d in raw) + ".",
    ]


"""VGG16 forward: the converted net vs the original torchvision model (224), and the share of
the matmul rate the converted forward reaches at 448 (fp32, bf16)."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import count_macs, median, table, timings
from fcn_cam.images import to_input
from fcn_cam.runtime import input_like
from fcn_cam.surgery import FCN

from . import machine
from .core import Bench, gflops, interleaved, ms, timeboxed


def batch(b: Bench, side: int) -> torch.Tensor:
    """The 224×224 test image resized to ``side``, normalized, ``[1, 3, side, side]``."""
    return to_input(b.square, side, b.fcn.info["mean"], b.fcn.info["std"])[None]


def forward_fn(model: nn.Module, x: torch.Tensor, channels_last: bool = False) -> Callable[[], torch.Tensor]:
    """A no-argument forward on ``x`` already in the model's dtype and memory format."""
    if isinstance(model, FCN):
        x = input_like(model, x)
    elif channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return run


def macs(fcn: FCN, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of ``fcn`` for one input (counted on its layers run as convolutions,
    the same arithmetic as the GEMM head)."""
    ref = copy.copy(fcn)  # shallow: same modules, own attributes
    ref.head_mode = "conv"
    return count_macs(ref, shape)


def prepare_quietly(b: Bench, precision: str, **kw) -> tuple[FCN, list[str]]:
    """``b.model(precision, ...)`` and the warnings ``prepare`` gave (bf16 without bf16 units)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = b.model(precision, **kw)
    return m, [str(w.message) for w in caught]


def layer_times(fcn: FCN, x: torch.Tensor, repeats: int) -> list[tuple[str, int, float]]:
    """(layer, MACs, ms) for each Conv2d of the body run alone on its real input, the head as one
    unit (the way it runs), ReLU + pooling summed."""
    xi = input_like(fcn, x)
    out, other = [], 0.0
    with torch.inference_mode():
        for name, layer in fcn.features.named_children():
            t = 1000 * median(timings(lambda layer=layer, xi=xi: layer(xi), repeats))
            y = layer(xi)
            if isinstance(layer, nn.Conv2d):
                k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                out.append((f"features.{name} {layer.in_channels}→{layer.out_channels} @{xi.shape[-2]}²",
                            y.numel() * k, t))
            else:
                other += t
            xi = y
        t = 1000 * median(timings(lambda: fcn.run_head(xi), repeats))
        head_macs = macs(fcn, tuple(x.shape)) - sum(m for _, m, _ in out)
        out.append((f"head ({fcn.head_mode}) @{xi.shape[-2]}² features", head_macs, t))
    out.append(("ReLU + MaxPool (all)", 0, other))
    return out


def run(b: Bench) -> None:
    b.section("VGG16 forward: converted vs original")
    machine.ensure_peak(b)
    cfg = b.cfg

    # 224: the native size, where the converted net does exactly the original's arithmetic
    x = batch(b, 224)
    vgg_cl = copy.deepcopy(b.vgg).to(memory_format=torch.channels_last)
    default = b.model()  # prepare(fcn): precision auto, channels-last, GEMM head
    configs: dict[str, tuple[nn.Module, bool]] = {
        "torchvision VGG16 (original, contiguous)": (b.vgg, False),
        "torchvision VGG16, channels-last": (vgg_cl, True),
        "converted, head as conv, contiguous": (b.model("fp32", "conv", False), False),
        "converted, head as GEMM, contiguous": (b.model("fp32", "gemm", False), False),
        f"prepare(fcn) default ({default.info.get('precision')}, channels-last, GEMM)": (default, True),
    }
    fns = {k: forward_fn(m, x, cl) for k, (m, cl) in configs.items()}
    with torch.inference_mode():
        ref = b.vgg(x)
        delta = {k: float((fn().float().reshape(ref.shape) - ref).abs().max()) for k, fn in fns.items()}
    t = interleaved(fns, cfg.repeats)
    base = ms(t["torchvision VGG16 (original, contiguous)"])
    rows, raw = [], []
    for k in fns:
        d = {"config": k, "ms": ms(t[k]), "runs_ms": [1000 * v for v in t[k]], "max_abs_diff": delta[k],
             "vs_original": ms(t[k]) / base}
        raw.append(d)
        rows.append([k, d["ms"], f"{d['vs_original']:.3f}×", f"{delta[k]:.1e}"])
        print(f"  224 {k}: {d['ms']:.0f} ms ({d['vs_original']:.3f}× original), max |Δ| {delta[k]:.1e}",
              flush=True)
    b.res["forward_224"] = raw
    ratio = raw[-1]["vs_original"]
    plain = raw[3]["vs_original"]
    b.target("VGG16 fp32 at 224: converted forward ≤ 1.05× the original torchvision forward",
             f"{ratio:.3f}× (prepare default); {plain:.3f}× (converted, contiguous, GEMM head)",
             ratio <= 1.05, f"original {base:.0f} ms, converted {raw[-1]['ms']:.0f} ms, medians of "
             f"{len(t[next(iter(t))])} interleaved runs")
    del vgg_cl

    # 448: share of the matmul rate (bf16 at cfg.bf16_side: 448, or 224 in a smoke run)
    x = batch(b, 448)
    x16 = batch(b, cfg.bf16_side)
    t32 = interleaved({"fp32": forward_fn(b.model("fp32"), x)}, cfg.repeats_large)["fp32"]
    m16, warned = prepare_quietly(b, "bf16")
    t16 = timeboxed(forward_fn(m16, x16), cfg.repeats_large, cfg.bf16_budget_s)
    rows448, raw448 = [], {}
    for p, ts, xi in (("fp32", t32, x), ("bf16", t16, x16)):
        n_mac = macs(b.fcn, tuple(xi.shape))
        rate = gflops(n_mac, median(ts))
        raw448[p] = {"side": xi.shape[-1], "gmac": n_mac / 1e9, "ms": ms(ts), "runs": len(ts), "gflops": rate,
                     "of_peak": rate / b.peak[p], "of_fp32_peak": rate / b.peak["fp32"]}
        rows448.append([f"{p} (prepare, channels-last, GEMM head)", f"{xi.shape[-1]}²", n_mac / 1e9, ms(ts),
                        len(ts) if len(ts) > 1 else "1 (cold)", rate, f"{b.peak[p]:.3g}",
                        f"{100 * rate / b.peak[p]:.0f} %", f"{100 * rate / b.peak['fp32']:.0f} %"])
        print(f"  {xi.shape[-1]} {p}: {ms(ts):.0f} ms, {rate:.1f} GFLOP/s = {100 * rate / b.peak[p]:.0f} % of "
              f"{p} matmul", flush=True)
    raw448["bf16"]["prepare_warnings"] = warned
    b.res["forward_448"] = raw448
    of32, of16 = raw448["fp32"]["of_peak"], raw448["bf16"]["of_peak"]
    b.target("VGG16 forward at 448 ≥ 75 % of the fp32 matmul rate", f"{100 * of32:.0f} %", of32 >= 0.75,
             f"{raw448['fp32']['gflops']:.1f} of {b.peak['fp32']:.1f} GFLOP/s")
    no_units = b.peak["bf16"] < 0.5 * b.peak["fp32"]
    speed16 = raw448["bf16"]["gflops"] / raw448["fp32"]["gflops"]
    b.target(f"VGG16 forward at {cfg.bf16_side} ≥ 60 % of the bf16 matmul rate", f"{100 * of16:.0f} %",
             of16 >= 0.60, f"{raw448['bf16']['gflops']:.2f} of {b.peak['bf16']:.2f} GFLOP/s"
             + ("; no bf16 units: the bf16 matmul rate is no ceiling here, and the bf16 forward runs at "
                f"{speed16:.2f}× the fp32 forward's GFLOP/s" if no_units else ""))

    b.md += [
        "Forward only (the network on a ready tensor in its dtype and memory format), the 224×224 test "
        "image, random weights. *max |Δ|* = largest difference from the original logits. Runs are "
        "interleaved (one of each configuration per round) and the median is reported.",
        "",
        table(["224×224 input", "ms", "× original", "max |Δ| logits"], rows),
        "",
        "At 448×448 (8×8 score map), GFLOP/s = 2·MACs / time, MACs counted from the layers; compared with "
        "the best `torch.mm` rate of the same precision (Machine section) and with the fp32 rate. bf16 is "
        "time-boxed: a call that takes over half the budget is timed once, cold.",
        "",
        table(["forward", "input", "GMAC", "ms", "timed runs", "GFLOP/s", "matmul rate", "% of same-precision "
               "matmul", "% of fp32 matmul"], rows448),
    ]
    if warned:
        b.md += ["", "`prepare(fcn, precision='bf16')` warned: " + " / ".join(f"“{w}”" for w in warned)]

    if cfg.profile:
        lt = layer_times(b.model("fp32"), x, max(1, cfg.repeats_large - 1))
        b.res["forward_448_layers"] = [{"layer": n, "gmac": m / 1e9, "ms": t} for n, m, t in lt]
        b.md += [
            "",
            f"Where the fp32 time goes at 448 (each layer timed alone on its real input, median; % of the "
            f"{b.peak['fp32']:.1f} GFLOP/s fp32 matmul rate):",
            "",
            table(["layer", "GMAC", "ms", "GFLOP/s", "% of matmul"],
                  [[n, m / 1e9, t, gflops(m, t / 1000) if m else None,
                    f"{100 * gflops(m, t / 1000) / b.peak['fp32']:.0f} %" if m else "–"] for n, m, t in lt]),
        ]

"""FCN-CAM maps for the benchmark: one forward (plus a head-only backward for cell maps) per
scale and padding, kept raw; aligned, clamped and fused per configuration on demand.

The per-image work goes through fcn-cam's own pieces (``network_input``, ``cell_maps``,
``align``, ``class_scores``); :func:`explain_check` compares the result with
``fcn_cam.explain`` so the benchmark measures what users get.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from common import count_macs
from PIL import Image

import fcn_cam
import fcn_cam.metrics
from fcn_cam.explanation import class_scores, fuse, map_geometry, network_input, sides
from fcn_cam.geometry import map_size
from fcn_cam.maps import MAP_KINDS as KINDS
from fcn_cam.maps import cell_maps
from fcn_cam.settings import resolve_rank


@dataclass(frozen=True)
class Config:
    """One FCN-CAM configuration: map kind, scales (fused when several), padding, clamping."""

    kind: str
    scales: tuple[float, ...]
    pad: str
    clamp: bool

    def label(self) -> str:
        sc = "+".join(f"{s:g}" for s in self.scales)
        return f"{self.kind}, scale {sc}, pad {self.pad}, {'clamped' if self.clamp else 'raw'}"

    def as_dict(self) -> dict:
        return {"maps": self.kind, "scale": list(self.scales), "pad": self.pad, "clamp": self.clamp}


@dataclass
class Raw:
    """Raw maps of ``n`` same-size images at one scale and padding."""

    scores: torch.Tensor  # [n, K, h, w] window score maps
    cells: torch.Tensor  # [n, T, fh, fw] cell maps of the requested classes
    shape: tuple[int, int]  # (H, W) of the resized image inside the network input
    pad: tuple[int, int]  # (top, left) padding
    macs: dict[str, int]  # multiply-accumulates per image by map kind (the cost proxy)
    hw: tuple[int, int]  # (H, W) of the original images


def input_key(scale: float, pad: str, kind: str) -> tuple[float, str]:
    """Which network input a map kind uses at a scale and padding: ``cover`` pads less for
    cell maps (feature-cell centres) than for score maps, where it equals ``window``."""
    if pad == "cover":
        return (scale, "window") if kind == "scores" else (scale, "cover")
    return scale, pad


def input_keys(scales, pads, kinds=KINDS) -> list[tuple[float, str]]:
    return sorted({input_key(s, p, k) for s in scales for p in pads for k in kinds})


def forward(
    fcn: fcn_cam.FCN, images: np.ndarray, classes: np.ndarray, scale: float, pad: str, batch: int = 32
) -> Raw:
    """Score maps and the cell maps of ``classes`` (``[n, T]``) for ``images`` (``uint8
    [n, H, W, 3]``, one size) at one scale and padding (``cover`` here: the cell maps' cover
    padding, see :func:`input_key`)."""
    side = sides(fcn, [scale])[0]
    scores, cells, inp = [], [], None
    cls = torch.as_tensor(np.asarray(classes, dtype=np.int64).reshape(len(images), -1))
    for b0 in range(0, len(images), batch):
        inputs = [network_input(fcn, Image.fromarray(im), side, pad, "cells") for im in images[b0 : b0 + batch]]
        s, c = cell_maps(fcn, torch.stack([i.x for i in inputs]), cls[b0 : b0 + batch], inputs[0].feature_pad)
        scores.append(s.float())
        cells.append(c.float())
        inp = inputs[0]
    return Raw(
        torch.cat(scores),
        torch.cat(cells),
        inp.shape,
        inp.pad,
        macs(fcn, inp),
        images.shape[1:3],
    )


def macs(fcn: fcn_cam.FCN, inp) -> dict[str, int]:
    """MACs of one image's maps: the body on the network input, the head on the (padded)
    feature map; cell maps add the head's backward to its input (about one head forward)."""
    body = count_macs(fcn.features, (1, *inp.x.shape))
    fh, fw = map_size(fcn.features, *inp.x.shape[-2:])
    t, b, left, r = inp.feature_pad or (0, 0, 0, 0)
    head = count_macs(fcn.head, (1, fcn.head[0].in_channels, fh + t + b, fw + left + r))
    return {"scores": body + head, "cells": body + 2 * head}


def heatmaps(
    fcn: fcn_cam.FCN,
    raws: list[Raw],
    kind: str,
    clamp: bool,
    classes: np.ndarray,
    j: int,
    image_hw: tuple[int, int],
) -> np.ndarray:
    """``float32 [n, H, W]`` heatmaps as ``explain`` makes them: target ``j`` of each image
    (``classes[:, j]`` of the score maps, or cell-map slot ``j``) aligned per scale, averaged
    over scales, then clamped at 0 if asked."""
    idx = torch.as_tensor(np.asarray(classes).reshape(len(classes), -1)[:, j])
    maps = [r.scores[torch.arange(len(idx)), idx] if kind == "scores" else r.cells[:, j] for r in raws]
    geoms = [map_geometry(fcn, kind).shifted(*r.pad) for r in raws]
    heat = fuse(maps, geoms, [r.shape for r in raws], image_hw)
    if clamp:
        heat = heat.clamp_(min=0)
    return heat.numpy().astype(np.float32)


def pick(raws: dict[tuple[float, str], Raw], cfg: Config) -> list[Raw]:
    """The raw maps a configuration fuses, one per scale."""
    return [raws[input_key(s, cfg.pad, cfg.kind)] for s in cfg.scales]


def config_maps(fcn: fcn_cam.FCN, raws: dict, cfg: Config, classes: np.ndarray, j: int = 0) -> np.ndarray:
    """:func:`heatmaps` of a configuration."""
    rs = pick(raws, cfg)
    return heatmaps(fcn, rs, cfg.kind, cfg.clamp, classes, j, rs[0].hw)


def predictions(fcn: fcn_cam.FCN, raws: list[Raw], rank: str = "auto") -> np.ndarray:
    """Top-1 classes of explain's ranking: the spatial statistic of the score maps, averaged
    over scales."""
    rank = resolve_rank(fcn, rank)
    return torch.stack([class_scores(r.scores, rank) for r in raws]).mean(0).argmax(1).numpy()


def explain_check(
    fcn: fcn_cam.FCN, cfg: Config, images: np.ndarray, labels: np.ndarray, ours: np.ndarray, box_fraction: float
) -> dict:
    """Max |difference| between the benchmark's heatmaps and ``fcn_cam.explain``'s with the
    same settings (true class), and whether every box agrees."""
    diff, same_box = 0.0, True
    for img, t, m in zip(images, labels, ours):
        e = fcn_cam.explain(
            fcn,
            img,
            scale=list(cfg.scales),
            maps=cfg.kind,
            pad=cfg.pad,
            clamp=cfg.clamp,
            target=int(t),
            box_fraction=box_fraction,
        ).targets[0]
        diff = max(diff, float(np.abs(e.heatmap - m).max()))
        same_box &= tuple(e.box) == fcn_cam.metrics.threshold_box(m, box_fraction)
    return {"images": len(images), "max_abs_diff": diff, "same_boxes": bool(same_box)}

"""Twin digit-scene classifiers: a VGG16-shaped FC-head net and its global-average-pooling twin.

Both share one convolutional architecture (VGG-style 3x3 conv + BatchNorm + ReLU blocks, each
ending in a 2x2 max-pool), so a ``SCENE_SIZE``-pixel input gives a ``FEATURE_SIZE`` x
``FEATURE_SIZE`` map with ``FEATURE_CHANNELS`` channels; each twin has its own weights:

* FC twin, the layout of torchvision's ``vgg16_bn``::

      Sequential(features=Sequential(...), flatten=Flatten(),
                 classifier=Sequential(Linear, ReLU, Dropout, Linear, ReLU, Dropout, Linear))

* GAP twin, the layout the CAM paper needs::

      Sequential(features=Sequential(...), pool=AdaptiveAvgPool2d(1), flatten=Flatten(),
                 fc=Linear(FEATURE_CHANNELS, K))

Only standard ``torch.nn`` layers are used. Weights trained from scratch on
:func:`fcn_cam.demo.scenes` by ``python -m fcn_cam.demo.train_twins`` ship in ``twins.pt`` next to
this file.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fcn_cam.demo.scenes import CLASS_NAMES, SCENE_SIZE

#: Side of the square input the twins were trained at (the scenes' native size).
INPUT_SIZE = SCENE_SIZE
#: Output channels of the conv layers, one tuple per block; each block ends in a 2x2 max-pool.
BLOCKS: tuple[tuple[int, ...], ...] = ((16,), (32,), (64, 64), (128, 128))
#: Channels of the last feature map.
FEATURE_CHANNELS = BLOCKS[-1][-1]
#: Side of the last feature map for an ``INPUT_SIZE`` input (one halving per block).
FEATURE_SIZE = INPUT_SIZE // 2 ** len(BLOCKS)
#: Width of the FC twin's two hidden Linear layers.
HIDDEN = 256
#: The FC twin's dropout probability in training (VGG uses 0.5; with 0.5 the twin learned ~3x
#: slower on the CPU budget, see benchmarks/results/twins.md). No effect in eval mode.
DROPOUT = 0.2
#: Per-channel mean and std of training scenes scaled to [0, 1] (``scenes(4096, seed=1,
#: split="train")``, recomputed by ``python -m fcn_cam.demo.train_twins --stats``); the twins take
#: ``(img / 255 - MEAN) / STD``.
MEAN: tuple[float, float, float] = (0.459, 0.3935, 0.3714)
STD: tuple[float, float, float] = (0.2616, 0.2364, 0.2389)
#: Training crops (torchvision's ImageNet ``RandomResizedCrop`` ranges, no flips): the share of
#: the scene's area and the width/height ratio of a crop, which is then resized to
#: ``INPUT_SIZE``. A crop always contains the digit's whole box (:func:`crop_windows`).
CROP_AREA: tuple[float, float] = (0.08, 1.0)
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
#: The shipped weights: ``{"fc": state_dict, "gap": state_dict, "meta": {...}}``.
WEIGHTS_PATH = Path(__file__).with_name("twins.pt")

__all__ = [
    "BLOCKS",
    "CLASS_NAMES",
    "CROP_AREA",
    "CROP_RATIO",
    "DROPOUT",
    "FEATURE_CHANNELS",
    "FEATURE_SIZE",
    "HIDDEN",
    "INPUT_SIZE",
    "MEAN",
    "STD",
    "WEIGHTS_PATH",
    "build_fc_twin",
    "build_features",
    "crop_windows",
    "build_gap_twin",
    "load_meta",
    "preprocess",
    "resized_crops",
    "twins",
]


def build_features(blocks: tuple[tuple[int, ...], ...] = BLOCKS) -> nn.Sequential:
    """The shared conv trunk: per block, ``(Conv2d 3x3 pad 1, BatchNorm2d, ReLU)`` per entry,
    then ``MaxPool2d(2, 2)`` — torchvision's ``vgg*_bn`` layout (ReLUs not in-place, so
    hook-based explainers can read any activation)."""
    layers: list[nn.Module] = []
    c_in = 3
    for block in blocks:
        for c_out in block:
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
            c_in = c_out
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def build_fc_twin(num_classes: int = len(CLASS_NAMES), dropout: float = DROPOUT) -> nn.Sequential:
    """VGG16-shaped net: features -> flatten -> (Linear, ReLU, Dropout) x 2 -> Linear(K).

    The first Linear reads the flattened ``FEATURE_CHANNELS x FEATURE_SIZE x FEATURE_SIZE``
    map, so the net only accepts ``INPUT_SIZE`` inputs until its head is rewritten as convs.
    """
    flat = FEATURE_CHANNELS * FEATURE_SIZE * FEATURE_SIZE
    return nn.Sequential(
        OrderedDict(
            features=build_features(),
            flatten=nn.Flatten(),
            classifier=nn.Sequential(
                nn.Linear(flat, HIDDEN),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(HIDDEN, HIDDEN),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(HIDDEN, num_classes),
            ),
        )
    )


def build_gap_twin(num_classes: int = len(CLASS_NAMES)) -> nn.Sequential:
    """The CAM-ready twin: features -> global average pool -> flatten -> Linear(C, K)."""
    return nn.Sequential(
        OrderedDict(
            features=build_features(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
            fc=nn.Linear(FEATURE_CHANNELS, num_classes),
        )
    )


def _load(path: str | Path | None) -> dict[str, Any]:
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"twin weights not found at {path}; train them with python -m fcn_cam.demo.train_twins"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def load_meta(path: str | Path | None = None) -> dict[str, Any]:
    """The metadata saved with the weights (input size, normalization, class names, recipe,
    accuracies, training times)."""
    return _load(path)["meta"]


def twins(path: str | Path | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """Build both twins, load the shipped (or given) weights and return them in eval mode.

    Args:
        path: a checkpoint saved by ``python -m fcn_cam.demo.train_twins``; default ``WEIGHTS_PATH``.

    Returns:
        ``(fc_model, gap_model)``, each mapping ``[B, 3, INPUT_SIZE, INPUT_SIZE]`` normalized
        images (see :func:`preprocess`) to ``[B, K]`` logits.
    """
    ckpt = _load(path)
    k = len(ckpt["meta"]["class_names"])
    fc, gap = build_fc_twin(k), build_gap_twin(k)
    fc.load_state_dict(ckpt["fc"])
    gap.load_state_dict(ckpt["gap"])
    return fc.eval(), gap.eval()


def preprocess(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` (or one ``[H, W, 3]``) images to the twins' input.

    ``x = (img / 255 - MEAN) / STD``, channels first: a float32 ``[N, 3, H, W]`` tensor.
    """
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x[None]
    x = x.permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def crop_windows(
    boxes: np.ndarray,
    rng: np.random.Generator,
    size: int = INPUT_SIZE,
    area: tuple[float, float] = CROP_AREA,
    ratio: tuple[float, float] = CROP_RATIO,
    attempts: int = 10,
    log_area: bool = False,
) -> np.ndarray:
    """Random-resized-crop windows that keep each scene's label valid.

    As torchvision's ``RandomResizedCrop``: per attempt, an area ``A ~ U(area) * size²`` and a
    ratio ``r ~ logU(ratio)`` give a ``round(sqrt(A r)) x round(sqrt(A / r))`` window; an
    attempt is rejected unless the window fits in the scene AND covers the digit's box, and
    its position is then uniform among those that contain the box. After ``attempts``
    rejections the whole scene is used (a big digit cannot be magnified much).

    Args:
        boxes: ``int [n, 4]`` digit boxes ``[x0, y0, x1, y1]`` (exclusive ends).
        rng: the random generator (the same stream gives the same windows).
        size: side of the square scenes.
        log_area: draw the area log-uniformly (more small crops, i.e. high magnifications).

    Returns:
        ``int64 [n, 4]`` windows ``[x0, y0, x1, y1]``, each containing its box.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    n = len(boxes)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    w = np.full(n, size, dtype=np.int64)
    h = np.full(n, size, dtype=np.int64)
    todo = np.ones(n, dtype=bool)
    for _ in range(attempts):
        a = (np.exp(rng.uniform(*np.log(area), n)) if log_area else rng.uniform(*area, n)) * size**2
        r = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]), n))
        cw, ch = np.round(np.sqrt(a * r)).astype(np.int64), np.round(np.sqrt(a / r)).astype(np.int64)
        ok = todo & (cw <= size) & (ch <= size) & (cw >= bw) & (ch >= bh)
        w[ok], h[ok] = cw[ok], ch[ok]
        todo &= ~ok
    # left edge in [max(0, x1 - w), min(x0, size - w)]: the window holds the box and fits
    lo_x, hi_x = np.maximum(0, boxes[:, 2] - w), np.minimum(boxes[:, 0], size - w)
    lo_y, hi_y = np.maximum(0, boxes[:, 3] - h), np.minimum(boxes[:, 1], size - h)
    x0 = lo_x + (rng.random(n) * (hi_x - lo_x + 1)).astype(np.int64)
    y0 = lo_y + (rng.random(n) * (hi_y - lo_y + 1)).astype(np.int64)
    return np.stack([x0, y0, x0 + w, y0 + h], axis=1)


def resized_crops(x: torch.Tensor, windows: np.ndarray, size: int = INPUT_SIZE) -> torch.Tensor:
    """Cut ``windows`` (``[n, 4]`` ``x0, y0, x1, y1``) out of ``x`` (``[n, C, H, W]``) and
    resize each to ``size x size`` (bilinear, half-pixel centres, as PIL's upscaling)."""
    out = torch.empty(x.shape[0], x.shape[1], size, size, dtype=x.dtype)
    for i, (x0, y0, x1, y1) in enumerate(np.asarray(windows).tolist()):
        crop = x[i : i + 1, :, y0:y1, x0:x1]
        out[i] = crop[0] if crop.shape[-2:] == (size, size) else torch.nn.functional.interpolate(
            crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return out

"""Explanations: image → network input(s) → score maps → ranking, aligned heatmap, peak, box.

Ranking (``rank``): a class's score is a spatial statistic of its score map, averaged over
scales. ``mean`` is the original logit at the native size, and for GAP heads at any size;
``max`` is the class's strongest window (OverFeat's rule for sliding-window classifiers).
``auto`` (default) uses ``mean`` for GAP heads and ``max`` for FC heads: on the demo FC twin
at scale 2, top-1 accuracy was 62 % with ``max`` against 38 % with ``mean``
(``benchmarks/results/localization.md``).

Heatmap: the target class's raw score map resampled onto the original image with cell
values at their centres (:func:`fcn_cam.geometry.align`), averaged over scales.
"""

from __future__ import annotations

import difflib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .geometry import align, cell_centre, cover_padding
from .images import ImageError, load_image, to_input
from .metrics import threshold_box
from .runtime import input_like
from .surgery import FCN

Scales = float | Sequence[float]


@dataclass
class Target:
    """One explained class: its score, aligned heatmap, raw maps, peak and box."""

    index: int
    name: str | None
    score: float
    heatmap: np.ndarray  # [height, width] raw scores in image pixels, fused over scales
    cams: list[np.ndarray]  # [h, w] raw score map per scale
    peak: tuple[float, float]  # (x, y) in image pixels
    box: tuple[int, int, int, int]  # [x0, y0, x1, y1], x1/y1 exclusive


@dataclass
class Explanation:
    image: str | None
    width: int
    height: int
    scales: list[float]
    input_shapes: list[tuple[int, int]]  # the resized image per scale, before padding
    map_shapes: list[tuple[int, int]]
    ranking: list[tuple[int, str | None, float]]  # best classes, best first
    rank: str = "mean"  # the spatial statistic the scores are
    pads: list[tuple[int, int]] = field(default_factory=list)  # (top, left) padding per scale
    targets: list[Target] = field(default_factory=list)

    def record(self) -> dict:
        """The JSON line for ``explanations.jsonl`` (primary target first)."""
        t = self.targets[0]
        single = len(self.scales) == 1
        return {
            "image": self.image,
            "width": self.width,
            "height": self.height,
            "scale": self.scales[0] if single else self.scales,
            "map_shape": list(self.map_shapes[0]) if single else [list(s) for s in self.map_shapes],
            "class_index": t.index,
            "class_name": t.name,
            "score": t.score,
            "rank": self.rank,
            "pad": [list(p) for p in self.pads] if not single else list(self.pads[0]),
            "top_k": [{"index": i, "name": n, "score": s} for i, n, s in self.ranking],
            "peak": [round(t.peak[0], 2), round(t.peak[1], 2)],
            "box": list(t.box),
            "targets": [
                {"index": x.index, "name": x.name, "score": x.score,
                 "peak": [round(x.peak[0], 2), round(x.peak[1], 2)], "box": list(x.box)}
                for x in self.targets
            ],
        }


def resolve_class(fcn: FCN, target: int | str) -> int:
    """A class index from an index or a (case-insensitive) class name."""
    names = fcn.class_names or []
    k = fcn.head[-1].out_channels
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        target = int(target)
    if isinstance(target, int):
        if not 0 <= target < k:
            raise ValueError(f"class index {target} out of range [0, {k})")
        return target
    lower = [n.lower() for n in names]
    if target.lower() in lower:
        return lower.index(target.lower())
    close = difflib.get_close_matches(target.lower(), lower, n=3)
    hint = f"; did you mean {', '.join(repr(names[lower.index(c)]) for c in close)}?" if close else ""
    raise ValueError(f"unknown class name {target!r}{hint}")


RANKS = ("auto", "mean", "max")


def resolve_rank(fcn: FCN, rank: str) -> str:
    """The statistic ``rank`` stands for on this model: ``mean`` or ``max``."""
    if rank not in RANKS:
        raise ValueError(f"rank must be one of {', '.join(RANKS)}, got {rank!r}")
    if rank == "auto":
        rank = "mean" if fcn.info.get("head") == "gap" else "max"
    return rank


def class_scores(maps: torch.Tensor, rank: str) -> torch.Tensor:
    """``[..., K, h, w]`` maps → ``[..., K]`` scores: spatial ``mean`` or ``max``."""
    return maps.mean(dim=(-2, -1)) if rank == "mean" else maps.amax(dim=(-2, -1))


def _scales(scale: Scales) -> list[float]:
    scales = [float(scale)] if isinstance(scale, int | float) else [float(s) for s in scale]
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {scales}")
    return scales


def sides(fcn: FCN, scales: Sequence[float]) -> list[int]:
    """Network input shorter sides: ``round(scale × input_size)``."""
    return [round(s * min(fcn.input_size)) for s in scales]


class NetInput(NamedTuple):
    x: torch.Tensor  # [3, H', W'] normalized, padded
    shape: tuple[int, int]  # (H, W) of the resized image inside it
    pad: tuple[int, int]  # (top, left) padding


def network_input(fcn: FCN, image: Image.Image, side: int, pad: bool) -> NetInput:
    """The normalized image with its shorter side resized to ``side``; with ``pad``, padded
    with zeros (the mean colour) so that cell centres cover the whole image."""
    x = to_input(image, side, fcn.info["mean"], fcn.info["std"])
    shape = (x.shape[-2], x.shape[-1])
    if not pad:
        return NetInput(x, shape, (0, 0))
    top, bottom, left, right = cover_padding(fcn, *shape)
    return NetInput(torch.nn.functional.pad(x, (left, right, top, bottom)), shape, (top, left))


@torch.inference_mode()
def score_maps(fcn: FCN, batch: torch.Tensor) -> torch.Tensor:
    """``[B, K, h, w]`` float32 score maps on the model's device."""
    return fcn(input_like(fcn, batch)).float()


def summarize(
    fcn: FCN,
    maps: Sequence[torch.Tensor],
    input_shapes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    *,
    scales: Sequence[float],
    pads: Sequence[tuple[int, int]] | None = None,
    image: str | None = None,
    target: int | str | None = None,
    top_k: int = 1,
    ranking_size: int = 5,
    box_fraction: float = 0.2,
    rank: str = "auto",
) -> Explanation:
    """Turn one image's score maps (``[K, h, w]`` per scale) into an :class:`Explanation`.

    Args:
        input_shapes: the resized image's (H, W) per scale, before padding.
        image_size: (width, height) of the original image.
        pads: (top, left) padding of the network input per scale.
        target: class index or name; default the ``top_k`` best classes.
    """
    width, height = image_size
    rank = resolve_rank(fcn, rank)
    scores = torch.stack([class_scores(m, rank) for m in maps]).mean(0)
    n = min(max(ranking_size, top_k), len(scores))
    best = scores.topk(n).indices.tolist()
    names = fcn.class_names
    label = (lambda i: names[i]) if names else (lambda i: None)
    ranking = [(i, label(i), float(scores[i])) for i in best]
    chosen = [resolve_class(fcn, target)] if target is not None else best[:top_k]
    pads = [tuple(p) for p in pads] if pads is not None else [(0, 0)] * len(maps)
    geoms = [fcn.geometry.shifted(*p) for p in pads]
    exp = Explanation(
        image, width, height, list(scales), [tuple(s) for s in input_shapes],
        [tuple(m.shape[-2:]) for m in maps], ranking, rank, pads,
    )
    for c in chosen:
        aligned = [align(m[c], g, s, (height, width)) for m, g, s in zip(maps, geoms, input_shapes)]
        heat = torch.stack(aligned).mean(0).cpu().numpy()
        if len(maps) == 1:  # the centre of the best cell, exactly
            m = maps[0][c]
            r, q = divmod(int(m.argmax()), m.shape[-1])
            peak = cell_centre(geoms[0], (r, q), input_shapes[0], (height, width))
        else:
            r, q = divmod(int(np.argmax(heat)), width)
            peak = (float(q), float(r))
        # with padding the outermost centres may lie just outside the image
        peak = (min(max(float(peak[0]), 0.0), width - 1.0), min(max(float(peak[1]), 0.0), height - 1.0))
        exp.targets.append(Target(
            c, label(c), float(scores[c]), heat, [m[c].cpu().numpy() for m in maps],
            peak, threshold_box(heat, box_fraction),
        ))
    return exp


def _as_image(image: Image.Image | np.ndarray | str | os.PathLike) -> tuple[Image.Image, str | None]:
    if isinstance(image, Image.Image):
        return image.convert("RGB"), None
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB"), None
    return load_image(image), str(image)


def explain(
    fcn: FCN,
    image: Image.Image | np.ndarray | str | os.PathLike,
    *,
    scale: Scales = 2.0,
    target: int | str | None = None,
    top_k: int = 1,
    box_fraction: float = 0.2,
    rank: str = "auto",
    pad: bool = True,
) -> Explanation:
    """Explain one image: all class maps from one forward pass per scale.

    Args:
        fcn: a converted model (:func:`fcn_cam.convert` or :func:`fcn_cam.load`).
        image: a PIL image, an ``[H, W, 3]`` uint8 array or a path.
        scale: the shorter side becomes ``scale × input_size``; several scales are fused
            by averaging their aligned heatmaps and their class scores.
        target: a class index or name (default: the ``top_k`` best classes).
        box_fraction: the box covers the largest region above this fraction of the
            heatmap's range (CAM paper: 0.2).
        rank: how classes are ranked (``auto``, ``mean``, ``max``; module docstring).
        pad: pad the network input with the mean colour so cell centres cover the whole
            image (:func:`fcn_cam.geometry.cover_padding`); otherwise the outer band
            (VGG16: 111.5 input px) has no cell of its own and shows its neighbour's value.
    """
    img, name = _as_image(image)
    scales = _scales(scale)
    inputs = [network_input(fcn, img, side, pad) for side in sides(fcn, scales)]
    maps = [score_maps(fcn, i.x[None])[0] for i in inputs]
    return summarize(
        fcn, maps, [i.shape for i in inputs], img.size, scales=scales,
        pads=[i.pad for i in inputs], image=name,
        target=target, top_k=top_k, box_fraction=box_fraction, rank=rank,
    )


@dataclass
class Result:
    """One file's outcome in :func:`explain_files`: an explanation or an error."""

    path: Path
    explanation: Explanation | None = None
    image: Image.Image | None = None
    error: str | None = None
    record: dict | None = None  # the JSON line, once written


def prefetch(fn, items: Iterable, workers: int, depth: int | None = None) -> Iterator:
    """``map(fn, items)`` in a thread pool, in order, at most ``depth`` results ahead
    (``Executor.map`` would submit everything at once: unbounded memory on big folders)."""
    depth = depth or 2 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def explain_files(
    fcn: FCN,
    paths: Iterable[str | os.PathLike],
    *,
    scale: Scales = 2.0,
    target: int | str | None = None,
    top_k: int = 1,
    box_fraction: float = 0.2,
    batch_size: int = 8,
    workers: int = 2,
    rank: str = "auto",
    pad: bool = True,
    load: Callable[[Path], Image.Image] = load_image,
) -> Iterator[Result]:
    """Explain many files, in order; a file that fails yields a :class:`Result` with the error.

    Decoding and resizing run in a thread pool ahead of the network; consecutive images
    whose inputs have the same shape are batched (others run alone — padding would change
    the border cells). ``load`` opens one path (raising :class:`ImageError`); callers that
    decoded elsewhere, like :mod:`fcn_cam.distributed`, pass a lookup instead.
    """
    scales = _scales(scale)
    side_list = sides(fcn, scales)
    resolve_rank(fcn, rank)  # fail once, before any work
    if target is not None:
        resolve_class(fcn, target)

    def prepare(path: Path) -> tuple[Path, Image.Image | None, list[NetInput] | None, str | None]:
        try:
            img = load(path)
            return path, img, [network_input(fcn, img, s, pad) for s in side_list], None
        except ImageError as e:
            return path, None, None, str(e)

    def flush(group: list) -> Iterator[Result]:
        per_scale = [score_maps(fcn, torch.stack([g[2][i].x for g in group])) for i in range(len(scales))]
        for j, (path, img, inputs, _) in enumerate(group):
            exp = summarize(
                fcn, [m[j] for m in per_scale], [i.shape for i in inputs], img.size,
                scales=scales, pads=[i.pad for i in inputs], image=str(path), target=target, top_k=top_k,
                box_fraction=box_fraction, rank=rank,
            )
            yield Result(path, exp, img)

    group: list = []
    for path, img, xs, err in prefetch(prepare, (Path(p) for p in paths), workers):
        if err is not None:
            yield Result(path, error=err)
            continue
        if group and ([i.x.shape for i in group[0][2]] != [i.x.shape for i in xs]
                      or len(group) == batch_size):
            yield from flush(group)
            group = []
        group.append((path, img, xs, None))
    if group:
        yield from flush(group)

"""Explanations: image → network input(s) → score maps → ranking, aligned heatmap, peak, box.

Ranking (``rank``): a class's score is a spatial statistic of its score map, averaged over
scales. ``mean`` is the original logit at the native size, and for GAP heads at any size;
``max`` is the class's strongest window (OverFeat's rule for sliding-window classifiers).
``auto`` (default) uses ``mean`` for GAP heads and ``max`` for FC heads: on the demo FC twin
at scale 2, top-1 accuracy was 88.2 % with ``max`` against 28.4 % with ``mean`` (89.2 %
native; ``benchmarks/results/twins.md``).

Heatmap: the target class's raw map — window score map or cell map (:mod:`fcn_cam.maps`) —
resampled onto the original image with cell values at their centres
(:func:`fcn_cam.geometry.align`), averaged over scales.
"""

from __future__ import annotations

import gc
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from .geometry import Geometry, align, cell_centre, cover_padding, feature_cover_padding
from .images import ImageError, ImageLike, as_image, load_image, to_input
from .maps import Padding, cell_maps_of, forward
from .metrics import threshold_box
from .settings import DEFAULT_ALPHA, DEFAULT_COLORMAP, Runtime, Settings, resolve_pad
from .surgery import FCN


@dataclass
class Target:
    """One explained class: its score, aligned heatmap, raw maps, peak and box."""

    index: int
    name: str | None
    score: float
    heatmap: np.ndarray  # [height, width] raw scores in image pixels, fused over scales
    cams: list[np.ndarray]  # [h, w] raw map (score or cell map) per scale
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
    maps: str = "scores"  # the map kind: window scores or cell decomposition
    clamp: bool = False
    targets: list[Target] = field(default_factory=list)
    #: the decoded RGB image (for display; never part of a record, repr or comparison)
    pixels: Image.Image | None = field(default=None, repr=False, compare=False)

    def overlay(self, target: int | str = 0, *, image: ImageLike | None = None,
                colormap: str = DEFAULT_COLORMAP, alpha: float = DEFAULT_ALPHA,
                box: bool = False) -> Image.Image:
        """The target's heatmap over the image, as ``fcn-cam explain`` writes it for the same
        colormap and alpha (:func:`fcn_cam.display.overlay`); ``box`` draws its box and peak."""
        from .display import overlay

        return overlay(self, target, image=image, colormap=colormap, alpha=alpha, box=box)

    def show(self, **kwargs: Any):
        """A matplotlib figure of the image and each explained class's overlay with its box,
        peak and score (:func:`fcn_cam.display.plot`, which takes the keyword arguments)."""
        from .display import plot

        return plot(self, **kwargs)

    def _repr_png_(self) -> bytes | None:
        """What a notebook shows: the top class's overlay with its box, class and score."""
        from .display import repr_png

        try:
            return repr_png(self)
        except ValueError:  # no pixels to show: the notebook shows the text repr instead
            return None

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
            "maps": self.maps,
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


def class_scores(maps: torch.Tensor, rank: str) -> torch.Tensor:
    """``[..., K, h, w]`` maps → ``[..., K]`` scores: spatial ``mean`` or ``max``."""
    return maps.mean(dim=(-2, -1)) if rank == "mean" else maps.amax(dim=(-2, -1))


def sides(fcn: FCN, scales: Sequence[float]) -> list[int]:
    """Network input shorter sides: ``round(scale × input_size)``."""
    return [round(s * min(fcn.input_size)) for s in scales]


def map_geometry(fcn: FCN, maps: str) -> Geometry:
    """Where the cells of a map kind sit: windows (score maps) or feature cells (cell maps)."""
    return Geometry.of(fcn.features) if maps == "cells" else fcn.geometry


class NetInput(NamedTuple):
    x: torch.Tensor  # [3, H', W'] normalized, padded
    shape: tuple[int, int]  # (H, W) of the resized image inside it
    pad: tuple[int, int]  # (top, left) padding in input pixels (or its equivalent, below)
    feature_pad: Padding | None = None  # feature-map padding in cells (pad="features")


def network_input(fcn: FCN, image: Image.Image, side: int, pad: str | bool, maps: str = "scores") -> NetInput:
    """The normalized image with its shorter side resized to ``side``, padded with zeros
    (the mean colour) as ``pad`` says (:func:`~fcn_cam.settings.resolve_pad`). With
    ``pad="features"`` the image stays unpadded and ``feature_pad`` says how to pad the
    features; ``pad`` is then the input padding that would place the cells alike (cells ×
    feature stride)."""
    pad = resolve_pad(pad)
    x = to_input(image, side, fcn.info["mean"], fcn.info["std"])
    shape = (x.shape[-2], x.shape[-1])
    if pad == "none":
        return NetInput(x, shape, (0, 0))
    if pad == "features":
        cells = feature_cover_padding(fcn.features, fcn.head, *shape)
        g = fcn.geometry
        return NetInput(x, shape, (round(cells[0] * g.y.stride), round(cells[2] * g.x.stride)), cells)
    net = fcn.features if (pad, maps) == ("cover", "cells") else fcn
    top, bottom, left, right = cover_padding(net, *shape)
    return NetInput(torch.nn.functional.pad(x, (left, right, top, bottom)), shape, (top, left))


def inputs_of(fcn: FCN, image: Image.Image, s: Settings) -> list[NetInput]:
    """The network input per scale."""
    return [network_input(fcn, image, side, s.pad, s.maps) for side in sides(fcn, s.scale)]


def settings_for(fcn: FCN, settings: Settings | None = None, **overrides: Any) -> Settings:
    """``settings`` (default :class:`Settings`) with ``overrides``, resolved on ``fcn``
    (:meth:`Settings.for_model`): checked once, before any work."""
    return (settings or Settings()).replace(**overrides).for_model(fcn)


def _choose(scores: Sequence[torch.Tensor], s: Settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Class scores ``[B, K]`` (a spatial statistic, averaged over scales) and the classes
    to explain ``[B, T]``."""
    mean = torch.stack([class_scores(m.detach().float(), s.rank) for m in scores]).mean(0)
    if s.target is not None:
        return mean, torch.full((len(mean), 1), s.target, dtype=torch.long, device=mean.device)
    return mean, mean.topk(min(s.top_k, mean.shape[1]), dim=1).indices


def explain_inputs(
    fcn: FCN, inputs: Sequence[Sequence[NetInput]], image_sizes: Sequence[tuple[int, int]],
    settings: Settings, names: Sequence[str | None] | None = None,
) -> list[Explanation]:
    """Explain a batch of images whose network inputs have equal shapes per scale.

    Args:
        inputs: per image, its :class:`NetInput` per scale.
        image_sizes: (width, height) of each original image.
        settings: resolved on ``fcn`` (:func:`settings_for`).
    """
    s = settings
    cells = s.maps == "cells"
    passes = [forward(fcn, torch.stack([i[k].x for i in inputs]), cells=cells, pad=inputs[0][k].feature_pad)
              for k in range(len(s.scale))]
    scores, chosen = _choose([p.scores for p in passes], s)
    maps = [cell_maps_of(p, chosen) if cells else
            p.scores.detach().float().gather(1, chosen[:, :, None, None].expand(-1, -1, *p.scores.shape[-2:]))
            for p in passes]
    del passes  # frees the head's graph
    names = names if names is not None else [None] * len(inputs)
    return [
        summarize_one(fcn, [m[j] for m in maps], chosen[j].tolist(), scores[j], inputs[j], image_sizes[j],
                      s, names[j])
        for j in range(len(inputs))
    ]


def fuse(maps: Sequence[torch.Tensor], geoms: Sequence[Geometry], shapes: Sequence[tuple[int, int]],
         image_hw: tuple[int, int]) -> torch.Tensor:
    """The mean over scales of ``[..., h, w]`` maps aligned onto the image (:func:`align`),
    summed in place: one image-sized array however many scales."""
    heat = align(maps[0], geoms[0], shapes[0], image_hw)
    for m, g, sh in zip(maps[1:], geoms[1:], shapes[1:]):
        if m.dim() == 2:
            align(m, g, sh, image_hw, add_to=heat)
        else:
            heat += align(m, g, sh, image_hw)
    return heat.div_(len(maps))


def summarize_one(
    fcn: FCN, maps: Sequence[torch.Tensor], classes: Sequence[int], scores: torch.Tensor,
    inputs: Sequence[NetInput], image_size: tuple[int, int], s: Settings, image: str | None = None,
) -> Explanation:
    """One image's :class:`Explanation` from its maps ``[T, h, w]`` per scale (for
    ``classes``) and its class scores ``[K]``."""
    width, height = image_size
    n = min(max(s.ranking_size, s.top_k), len(scores))
    names = fcn.class_names
    label = (lambda i: names[i]) if names else (lambda i: None)
    ranking = [(i, label(i), float(scores[i])) for i in scores.topk(n).indices.tolist()]
    shapes = [i.shape for i in inputs]
    pads = [i.pad for i in inputs]
    base = map_geometry(fcn, s.maps)
    geoms = [base.shifted(*p) for p in pads]
    exp = Explanation(
        image, width, height, list(s.scale), shapes, [tuple(m.shape[-2:]) for m in maps],
        ranking, s.rank, pads, maps=s.maps, clamp=s.clamp,
    )
    for t, c in enumerate(classes):
        heat = fuse([m[t] for m in maps], geoms, shapes, (height, width))
        if s.clamp:
            heat = heat.clamp_(min=0)
        heat = heat.cpu().numpy()
        if len(maps) == 1:  # the centre of the best cell, exactly
            m = maps[0][t]
            r, q = divmod(int(m.argmax()), m.shape[-1])
            peak = cell_centre(geoms[0], (r, q), shapes[0], (height, width))
        else:
            r, q = divmod(int(np.argmax(heat)), width)
            peak = (float(q), float(r))
        # with padding the outermost centres may lie just outside the image
        peak = (min(max(float(peak[0]), 0.0), width - 1.0), min(max(float(peak[1]), 0.0), height - 1.0))
        exp.targets.append(Target(
            c, label(c), float(scores[c]), heat, [m[t].cpu().numpy() for m in maps],
            peak, threshold_box(heat, s.box_fraction),
        ))
    return exp


def explain(fcn: FCN, image: ImageLike, settings: Settings | None = None, **overrides: Any) -> Explanation:
    """Explain one image: every class's score map from one forward pass per scale.

    Args:
        fcn: a converted model (:func:`fcn_cam.convert` or :func:`fcn_cam.load`).
        image: a path, a PIL image, a numpy array or a tensor (layout and range rule in
            :mod:`fcn_cam.images`), decoded the same way whatever the kind.
        settings: how to explain (:class:`~fcn_cam.settings.Settings`; default: its defaults).
        **overrides: any :class:`~fcn_cam.settings.Settings` field, e.g. ``scale=2``,
            ``maps="scores"``, ``target="tabby"``, ``top_k=3``, ``pad="none"``.

    Returns:
        The :class:`Explanation`, with the decoded image in ``pixels``.
    """
    s = settings_for(fcn, settings, **overrides)
    img, name = as_image(image)
    exp = explain_inputs(fcn, [inputs_of(fcn, img, s)], [img.size], s, [name])[0]
    exp.pixels = img
    return exp


@dataclass
class Result:
    """One file's outcome in :func:`explain_files`: an explanation or an error."""

    path: Path
    explanation: Explanation | None = None
    image: Image.Image | None = None
    error: str | None = None
    record: dict | None = None  # the JSON line, once written
    skipped: str | None = None  # why it was not written (done meanwhile by another process)


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


def failure(path: str | os.PathLike, e: BaseException) -> str:
    """One line for an image that failed unexpectedly: the file, the error type and its first
    line (``MemoryError`` says what to try)."""
    if isinstance(e, MemoryError):
        return f"{path}: out of memory ({e or 'MemoryError'}); try a smaller --scale or --batch-size 1"
    text = str(e).strip().splitlines()
    return f"{path}: {type(e).__name__}: {text[0] if text else 'no detail'}"


def explain_files(
    fcn: FCN,
    paths: Iterable[str | os.PathLike],
    settings: Settings | None = None,
    *,
    batch_size: int = Runtime.batch_size,
    workers: int = 2,
    load: Callable[[Path], Image.Image] = load_image,
    **overrides: Any,
) -> Iterator[Result]:
    """Explain many files, in order; a file that fails yields a :class:`Result` with the error.

    Takes :func:`explain`'s ``settings`` and overrides. Decoding and resizing run in a thread
    pool ahead of the network; consecutive images whose inputs have the same shape are
    batched (others run alone — padding would change the border cells). ``load`` opens one
    path (raising :class:`ImageError`); callers that decoded elsewhere, like
    :mod:`fcn_cam.distributed`, pass a lookup instead. Any error while explaining one image
    (memory, a decoder bug, non-finite values) is that image's failure: a batch that fails
    is redone one image at a time, so only the culprit fails, and the run goes on.
    """
    s = settings_for(fcn, settings, **overrides)  # fails once, before any work

    def prepare(path: Path) -> tuple[Path, Image.Image | None, list[NetInput] | None, str | None]:
        try:
            img = load(path)
            return path, img, inputs_of(fcn, img, s), None
        except ImageError as e:
            return path, None, None, str(e)
        except Exception as e:  # noqa: BLE001 - a decoder bug or memory: this image only
            return path, None, None, failure(path, e)

    def run(group: list) -> list[Result]:
        exps = explain_inputs(fcn, [g[2] for g in group], [g[1].size for g in group], s,
                              [str(g[0]) for g in group])
        for (_, img, _, _), exp in zip(group, exps):
            exp.pixels = img
        return [Result(path, exp, img) for (path, img, _, _), exp in zip(group, exps)]

    def flush(group: list) -> list[Result]:
        try:
            return run(group)
        except Exception as e:  # noqa: BLE001 - this image's failure (or the batch's: retried alone)
            gc.collect()  # after a MemoryError: free the failed batch before going on
            if len(group) == 1:
                return [Result(group[0][0], error=failure(group[0][0], e))]
            return [r for item in group for r in flush([item])]

    group: list = []
    for path, img, xs, err in prefetch(prepare, (Path(p) for p in paths), workers):
        if err is not None:
            if group:  # keep input order: earlier images first
                yield from flush(group)
                group = []
            yield Result(path, error=err)
            continue
        if group and ([i.x.shape for i in group[0][2]] != [i.x.shape for i in xs]
                      or len(group) == batch_size):
            yield from flush(group)
            group = []
        group.append((path, img, xs, None))
    if group:
        yield from flush(group)

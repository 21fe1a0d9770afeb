"""Configuration as data: what an explanation is asked for, where it runs, where it goes.

Three small frozen objects, each default written once, here, and nothing here imports torch
(the command line shows these defaults in its help without loading the model code):

- :class:`Settings`: every option that changes an explanation (and so the output folder's
  record key). Checked when built; :meth:`Settings.for_model` resolves what depends on the
  model (a class name to its index, ``rank="auto"``, the box fraction per map kind).
- :class:`Runtime`: where and how fast it runs (device, precision, threads, batch size);
  never changes *what* is computed beyond float rounding (precision is part of the key).
- :class:`Output`: where records, overlays and maps are written, and how overlays look.

The defaults were chosen on the demo scenes' validation split by a stated rule
(``benchmarks/results/localization.md``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

MAP_KINDS = ("scores", "cells")
PADS = ("features", "cover", "window", "none")
RANKS = ("auto", "mean", "max")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

DEFAULT_SCALE: tuple[float, ...] = (1.0, 2.0)
DEFAULT_MAPS = "cells"
DEFAULT_PAD = "features"
DEFAULT_CLAMP = False
#: The model ``fcn-cam explain`` uses when not given ``--model``: torchvision's ImageNet VGG16.
DEFAULT_MODEL = "vgg16"
#: The weights of a model named by architecture: torchvision's default (ImageNet) weights.
DEFAULT_WEIGHTS = "DEFAULT"
#: Where ``fcn-cam explain`` writes when not given ``-o`` (``$FCN_CAM_OUTPUT`` overrides it).
DEFAULT_OUTPUT = "fcn-cam-out"
#: How overlays look: a matplotlib colormap over the image, at this opacity.
DEFAULT_COLORMAP = "jet"
DEFAULT_ALPHA = 0.5
#: Images whose header declares more pixels are refused before decoding (decompression bombs);
#: PIL's own limit, which ``--max-pixels`` / ``max_pixels=`` replaces.
MAX_PIXELS = 89_478_485
#: The box is the largest region above this fraction of the heatmap's range, per map kind.
BOX_FRACTION: dict[str, float] = {"scores": 0.65, "cells": 0.4}


class Model(Protocol):
    """What resolving settings needs to know of a model (an :class:`~fcn_cam.FCN` has it)."""

    info: dict

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> list[str] | None: ...


def _scales(scale: float | Sequence[float]) -> tuple[float, ...]:
    if isinstance(scale, bool):
        raise ValueError(f"scales must be finite and positive, got {scale!r}")
    scales = (float(scale),) if isinstance(scale, int | float) else tuple(float(s) for s in scale)
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        got = ", ".join(f"{s:g}" for s in scales) or "none"
        raise ValueError(f"scales must be finite and positive, got {got}")
    return scales


def _one_of(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _is_int(v: Any) -> bool:
    """An integer (numpy's too: they register as ``numbers.Integral``), not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def resolve_pad(pad: str | bool) -> str:
    """``features``: the body runs on the unpadded image and its feature map is zero-padded
    until the window centres cover every pixel (the cheap way: only the head sees the
    padding); ``cover``: the input is padded with the mean colour, the least after which the
    cells of the map kind cover every pixel (score maps: window centres; cell maps:
    feature-cell centres); ``window``: the input padded as ``cover`` pads for score maps,
    whatever the map kind; ``none``. ``True``/``False`` mean cover/none."""
    pad = {True: "cover", False: "none"}[pad] if isinstance(pad, bool) else pad
    _one_of("pad", pad, PADS)
    return pad


def resolve_rank(model: Model, rank: str) -> str:
    """The statistic ``rank`` stands for on ``model``: ``mean`` or ``max`` (``auto``: mean for a
    GAP head, whose maps' mean is the logits; max, the strongest window, for an FC head)."""
    _one_of("rank", rank, RANKS)
    if rank == "auto":
        return "mean" if model.info.get("head") == "gap" else "max"
    return rank


def resolve_class(model: Model, target: int | str) -> int:
    """A class index from an index or a (case-insensitive) class name."""
    names, k = model.class_names or [], model.num_classes
    if isinstance(target, str) and target.strip().lstrip("-").isdigit() or _is_int(target):
        target = int(target)
        if not 0 <= target < k:
            raise ValueError(f"class index {target} out of range [0, {k})")
        return target
    lower = [n.lower() for n in names]
    if target.lower() in lower:
        return lower.index(target.lower())
    close = difflib.get_close_matches(target.lower(), lower, n=3)
    hint = f"; did you mean {', '.join(repr(names[lower.index(c)]) for c in close)}?" if close else ""
    raise ValueError(f"unknown class name {target!r}{hint}")


@dataclass(frozen=True)
class Settings:
    """How images are explained: every option that changes an explanation.

    Attributes:
        scale: the shorter side becomes ``scale × input_size``; several scales are fused by
            averaging their aligned heatmaps and their class scores.
        maps: ``"scores"`` — the window score maps ``S_c``; ``"cells"`` — their exact
            per-feature-cell decomposition ``A_c`` (:mod:`fcn_cam.maps`).
        pad: how the image is covered by cells (:func:`resolve_pad`).
        clamp: clamp heatmaps at 0 (negative evidence shown as none).
        target: a class index or name (default: the ``top_k`` best classes).
        top_k: how many of the best classes to explain.
        box_fraction: the box covers the largest region above this fraction of the
            heatmap's range (None: :data:`BOX_FRACTION` of the map kind).
        rank: ``mean`` (the logits at the native size, and for GAP heads at any size),
            ``max`` (the strongest window) or ``auto`` (mean for GAP heads, max for FC heads).
        ranking_size: how many classes the ranking lists (at least ``top_k``).
    """

    scale: tuple[float, ...] = DEFAULT_SCALE
    maps: str = DEFAULT_MAPS
    pad: str = DEFAULT_PAD
    clamp: bool = DEFAULT_CLAMP
    target: int | str | None = None
    top_k: int = 1
    box_fraction: float | None = None
    rank: str = "auto"
    ranking_size: int = 5

    def __post_init__(self) -> None:
        # frozen: normalized once, here
        object.__setattr__(self, "scale", _scales(self.scale))
        _one_of("maps", self.maps, MAP_KINDS)
        object.__setattr__(self, "pad", resolve_pad(self.pad))
        object.__setattr__(self, "clamp", bool(self.clamp))
        _one_of("rank", self.rank, RANKS)
        if not _is_int(self.top_k) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if self.target is not None and (isinstance(self.target, bool)
                                        or not (_is_int(self.target) or isinstance(self.target, str))):
            raise ValueError(f"target must be a class index (int) or a class name (str), got {self.target!r}")
        if self.box_fraction is not None and not 0.0 <= self.box_fraction <= 1.0:
            raise ValueError(f"box_fraction must be in [0, 1], got {self.box_fraction}")

    def replace(self, **overrides: Any) -> Settings:
        """A copy with ``overrides`` (checked as when built); unknown names are refused."""
        unknown = set(overrides) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown explain option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **overrides) if overrides else self

    def for_model(self, model: Model) -> Settings:
        """These settings on ``model``: the target as a class index, ``rank`` as ``mean`` or
        ``max``, ``top_k`` at most the class count, the box fraction filled in."""
        return dataclasses.replace(
            self, rank=resolve_rank(model, self.rank), top_k=min(self.top_k, model.num_classes),
            target=resolve_class(model, self.target) if self.target is not None else None,
            box_fraction=BOX_FRACTION[self.maps] if self.box_fraction is None else float(self.box_fraction),
        )

    def as_request(self) -> dict[str, Any]:
        """Plain data for the output folder's record key (resolve with :meth:`for_model` first,
        so that equal requests give equal keys)."""
        return {**dataclasses.asdict(self), "scale": list(self.scale)}


@dataclass(frozen=True)
class Runtime:
    """Where and how an explanation runs (:func:`fcn_cam.prepare`) and which inputs it takes
    (``max_pixels``); changes no value beyond rounding, except ``precision`` (so that one is
    part of the record key)."""

    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    batch_size: int = 8
    threads: int | None = None
    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        _one_of("precision", self.precision, PRECISIONS)
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.threads is not None and (not _is_int(self.threads) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if not _is_int(self.max_pixels) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")

    def prepare_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`fcn_cam.prepare`."""
        return {"precision": self.precision, "device": self.device, "channels_last": self.channels_last}


@dataclass(frozen=True)
class Output:
    """Where explanations are written (:class:`fcn_cam.outputs.OutputDir`) and how overlays look."""

    dir: Path | None = None
    overwrite: bool = False
    colormap: str = DEFAULT_COLORMAP
    alpha: float = DEFAULT_ALPHA
    report: bool = False
    protect: frozenset[Path] = field(default_factory=frozenset)
    #: the folder was not asked for (``explain`` without ``-o``): the images given are redone
    #: and stdout carries the plain records, as without a folder
    implicit: bool = False

    @classmethod
    def default(cls, **kwargs: Any) -> Output:
        """The folder ``explain`` writes to without ``-o``: ``$FCN_CAM_OUTPUT`` or
        :data:`DEFAULT_OUTPUT` in the working directory."""
        import os

        where = Path(os.environ.get("FCN_CAM_OUTPUT") or DEFAULT_OUTPUT)
        return cls(where, **{**kwargs, "overwrite": True, "implicit": True})

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")

    def folder_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :class:`~fcn_cam.outputs.OutputDir` besides the root."""
        return {"overwrite": self.overwrite, "colormap": self.colormap, "alpha": self.alpha,
                "protect": self.protect}

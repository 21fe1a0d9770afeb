"""The form every importer hands to surgery: a classifier as body, pool and head.

A :class:`Layout` describes a classifier as

    ``logits = head(flatten(pool(conv_head(body(x)))))``

where ``body`` is convolutional, ``pool`` an optional adaptive pool, ``flatten`` reads the
``C×H×W`` features in ``flatten_order`` and ``head`` is a list of layers acting on
``[B, N]`` vectors (Linears, BatchNorm1d, activations, a final softmax). Importers
(:mod:`fcn_cam.importers`) turn what they are given into one; :func:`fcn_cam.surgery.convert_layout`
converts it and checks the result against ``original`` (or ``logits``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConversionError

FLATTEN_ORDERS = tuple("".join(p) for p in itertools.permutations("chw"))


@dataclass
class Layout:
    """A classifier as surgery sees it (see the module docstring for the formula).

    Attributes:
        body: the convolutional part, ``[B, 3, H, W] → [B, C, h, w]``.
        pool: the adaptive pool between body and flatten, if any (bypassed by FC surgery;
            a global average pool makes a GAP head).
        head: the layers after the flatten, in order.
        flatten_order: the order the model itself flattens in, read from a permute before
            the flatten (``"hwc"`` for Keras); ``None`` when it states none (``"chw"``).
        conv_head: convolutions of the original head that run on the features before the
            pool (timm's ``ConvMlp``); they move to the front of the converted head.
        original: the model's chosen output on NCHW images, what the maps reproduce
            (through a softmax that is kept); ``None``: nothing to check against.
        logits: the original's logits entering a final softmax of ``head``, what the maps
            reproduce when that softmax is dropped.
        permute_node: where ``flatten_order`` was read (a torch.fx node), for messages.
        arch: the default architecture label (the model's type name).
    """

    body: nn.Module
    pool: nn.Module | None
    head: list[nn.Module]
    flatten_order: str | None = None
    conv_head: list[nn.Module] = field(default_factory=list)
    original: Callable[[torch.Tensor], torch.Tensor] | None = None
    logits: Callable[[torch.Tensor], torch.Tensor] | None = None
    permute_node: str | None = None
    arch: str | None = None

    def parameters(self) -> Iterator[nn.Parameter]:
        """The layers' parameters, body first (the first one gives the device and dtype)."""
        for m in (self.body, *self.conv_head, *([self.pool] if self.pool is not None else []), *self.head):
            yield from m.parameters()


def check_flatten_order(flatten_order: str | None) -> None:
    """Raise unless ``flatten_order`` is ``None`` or a permutation of ``c``, ``h``, ``w``."""
    if flatten_order is not None and flatten_order not in FLATTEN_ORDERS:
        raise ConversionError(
            f"flatten_order {flatten_order!r}: expected a permutation of c, h, w ({', '.join(FLATTEN_ORDERS)})"
        )


def permute_order(dims: Sequence[int]) -> str:
    """Flatten order of ``x.permute(dims).flatten(1)`` for ``[B, C, H, W]`` features:
    ``permute(0, 2, 3, 1)`` → ``"hwc"`` (Keras), ``permute(0, 3, 2, 1)`` → ``"whc"`` (Caffe ports)."""
    dims = [d % 4 for d in dims]
    if len(dims) != 4 or dims[0] != 0 or sorted(dims) != [0, 1, 2, 3]:
        raise ConversionError(f"permute{tuple(dims)} before the flatten moves the batch axis")
    return "".join("bchw"[d] for d in dims[1:])


__all__ = ["FLATTEN_ORDERS", "Layout", "check_flatten_order", "permute_order"]

"""Plain importer: an ``nn.Module`` of a known shape → :class:`~fcn_cam.layout.Layout`,
read from its attributes without running it.

- VGG/AlexNet-like: ``features``, optional ``avgpool``, ``classifier``;
- ResNet-like: ``conv1`` … ``layer4``, ``avgpool``, ``fc``;
- ``nn.Sequential(body…, [Permute], [adaptive pool], Flatten, head…)``: a
  ``torchvision.ops.Permute`` right before the flatten states the flatten order.
"""

from __future__ import annotations

import sys
from collections import OrderedDict

import torch
from torch import nn

from ..errors import ConversionError
from ..layers import SOFTMAX, leaves
from ..layout import Layout, permute_order


class _Tap(nn.Module):
    """``model``'s input to ``layer`` (e.g. the logits entering a final Softmax), by a hook
    that lives only during the call."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = self.layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen[-1]


def _is_permute(m: nn.Module) -> bool:
    """A ``torchvision.ops.Permute`` (without importing torchvision: a model holding one has)."""
    tv = sys.modules.get("torchvision")
    return tv is not None and isinstance(m, tv.ops.Permute)


def split(model: nn.Module) -> Layout:
    """Find the convolutional body, the pooling and the head layers of a classifier.

    Raises:
        ConversionError: the model has none of the known shapes.
    """
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        flat = [i for i, (_, c) in enumerate(children) if isinstance(c, nn.Flatten)]
        if not flat:
            raise ConversionError(
                "expected an nn.Sequential with an nn.Flatten between the convolutional part "
                f"and the Linear head; found no nn.Flatten among {[type(c).__name__ for _, c in children]}"
            )
        body = children[: flat[0]]
        order = None
        if body and _is_permute(body[-1][1]):
            order = permute_order(body.pop()[1].dims)
        pool = None
        if body and isinstance(body[-1][1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            pool = body.pop()[1]
        head = leaves([c for _, c in children[flat[0] + 1 :]])
        return Layout(nn.Sequential(OrderedDict(body)), pool, head, order)
    if hasattr(model, "features") and hasattr(model, "classifier"):  # VGG, AlexNet
        return Layout(model.features, getattr(model, "avgpool", None), leaves([model.classifier]))
    if all(hasattr(model, n) for n in ("conv1", "layer4", "avgpool", "fc")):  # ResNet
        body = [(n, c) for n, c in model.named_children() if n not in ("avgpool", "fc")]
        return Layout(nn.Sequential(OrderedDict(body)), model.avgpool, leaves([model.fc]))
    raise ConversionError(
        f"cannot find the head of {type(model).__name__}: expected `features` + `classifier` "
        "(VGG/AlexNet), a ResNet (`conv1` … `layer4`, `avgpool`, `fc`), or an nn.Sequential "
        "containing nn.Flatten"
    )


def to_layout(
    model: nn.Module, input_size: tuple[int, int], *, output: int | str | None = None
) -> Layout | None:
    """The :class:`Layout` of a model of a known shape, checked against the model itself;
    ``None`` when it has none (or ``output=`` asks for one of several outputs: torch.fx's job)."""
    if output is not None:
        return None
    try:
        layout = split(model)
    except ConversionError:
        return None
    layout.original, layout.arch = model, type(model).__name__
    if layout.head and isinstance(layout.head[-1], SOFTMAX):
        layout.logits = _Tap(model, layout.head[-1])
    return layout


__all__ = ["split", "to_layout"]

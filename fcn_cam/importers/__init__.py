"""Importers: models as they come → a :class:`~fcn_cam.layout.Layout` surgery converts.

Each importer reads one kind of model and returns its layout (body, pool, head layers,
flatten order, what to check the conversion against), or ``None`` when the model is not
of its kind; it raises :class:`~fcn_cam.errors.ConversionError` when the model is of its
kind but cannot be read. Surgery alone turns Linears into convolutions and checks the
result; no importer converts and surgery imports no importer.

:data:`IMPORTERS` is tried in order by :func:`to_layout` (and so by :func:`fcn_cam.convert`):

- ``layout``: a :class:`~fcn_cam.layout.Layout` given as it is;
- ``timm`` (:mod:`.timm`): timm's VGG, whose FC layers are already convolutions;
- ``plain`` (:mod:`.plain`): VGG/AlexNet-like, ResNet-like and ``nn.Sequential`` nets, read
  from their attributes;
- ``fx`` (:mod:`.fx`): any torch.fx-traceable net (a custom ``forward``, several outputs:
  ``output=``); the fallback, it never declines.

:mod:`.onnx` reads ONNX files (Keras/TF or PyTorch exports) through ``fx`` and checks
against onnxruntime; it takes a path, not a module, so it is not in the list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from torch import nn

from ..errors import ConversionError
from ..layout import Layout
from . import fx, plain, timm


class Importer(NamedTuple):
    """A named reader: ``read(model, input_size, *, output) -> Layout | None``."""

    name: str
    read: Callable[..., Layout | None]


def _given(model: object, input_size: tuple[int, int], *, output: int | str | None = None) -> Layout | None:
    if not isinstance(model, Layout):
        return None
    if output is not None:
        raise ConversionError(
            f"output={output!r} picks one of a model's outputs; a Layout has one: drop output="
        )
    return model


IMPORTERS: tuple[Importer, ...] = (
    Importer("layout", _given),
    Importer("timm", timm.to_layout),
    Importer("plain", plain.to_layout),
    Importer("fx", fx.to_layout),
)


def to_layout(
    model: nn.Module | Layout, input_size: tuple[int, int], *, output: int | str | None = None
) -> Layout:
    """The first of :data:`IMPORTERS` that reads ``model``.

    Raises:
        ConversionError: from the importer whose kind the model is, naming what it could not read.
    """
    for importer in IMPORTERS:
        layout = importer.read(model, input_size, output=output)
        if layout is not None:
            return layout
    raise ConversionError(f"no importer reads {type(model).__name__} ({', '.join(i.name for i in IMPORTERS)})")


__all__ = ["IMPORTERS", "Importer", "to_layout"]

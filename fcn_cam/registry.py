"""The models fcn-cam knows by name: one table of plain data, no torch.

Each entry says what a name is (its family), how a converted model of it is saved (``kind``:
``"layers"``, a tree of standard ``torch.nn`` layer specs, or ``"torchvision"``, rebuilt on
load from torchvision by name because its blocks are not plain layers), its native input
size, the state-dict key of its last Linear in torchvision's layout (where a fine-tuned
checkpoint's class count is read), and the builder that makes it, as a ``"module:function"``
path imported on first use (timm-style: names in a registry, configuration as data). The
command line lists :data:`NAMES` in its help without importing torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: How a converted model is stored in a model file (:mod:`fcn_cam.modelfile`).
KINDS = ("layers", "torchvision")


@dataclass(frozen=True)
class Entry:
    """One model name.

    Attributes:
        name: what ``fcn-cam convert NAME`` / ``explain --model NAME`` accept.
        family: ``"vgg"``, ``"alexnet"``, ``"resnet"`` or ``"demo"``.
        kind: ``"layers"`` or ``"torchvision"`` (see the module's docstring).
        input_size: the side of the square input the weights were trained at.
        head: state-dict key (without ``.weight``) of the last Linear in torchvision's
            layout; ``None`` for models not in that layout.
        builder: ``"module:function"`` building the converted model, imported lazily.
    """

    name: str
    family: str
    kind: str
    input_size: int
    head: str | None
    builder: str


_TORCHVISION = "fcn_cam.zoo:torchvision_fcn"
_DEMO = "fcn_cam.zoo:demo_fcn"

ENTRIES: dict[str, Entry] = {e.name: e for e in (
    *(Entry(f"vgg{d}{bn}", "vgg", "layers", 224, "classifier.6", _TORCHVISION)
      for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    Entry("alexnet", "alexnet", "layers", 224, "classifier.6", _TORCHVISION),
    *(Entry(f"resnet{d}", "resnet", "torchvision", 224, "fc", _TORCHVISION) for d in (18, 34, 50, 101, 152)),
    *(Entry(n, "demo", "layers", 112, None, _DEMO) for n in ("demo-fc", "demo-gap")),
)}

#: torchvision architectures ``fcn-cam convert`` builds by name.
ARCHS: tuple[str, ...] = tuple(n for n, e in ENTRIES.items() if e.family != "demo")
#: The demo's twin models, shipped with the package (``fcn_cam/demo/twins.pt``).
DEMOS: tuple[str, ...] = tuple(n for n, e in ENTRIES.items() if e.family == "demo")
#: Everything ``fcn-cam convert`` / ``explain --model`` accept by name.
NAMES: tuple[str, ...] = (*ARCHS, *DEMOS)


def entry(name: str) -> Entry:
    """The registry's entry for ``name``; a one-line ``ValueError`` listing the names if unknown."""
    try:
        return ENTRIES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(NAMES)}") from None


def rebuilt_by_torchvision(name: object) -> bool:
    """Whether a saved model of ``name`` stores a torchvision name rather than its layers."""
    e = ENTRIES.get(name) if isinstance(name, str) else None
    return e is not None and e.kind == "torchvision"


def builder(name: str) -> Callable[..., Any]:
    """The function that builds ``name`` (imported now: it needs torch)."""
    module, _, func = entry(name).builder.partition(":")
    return getattr(importlib.import_module(module), func)


def create(name: str, **kwargs: Any) -> Any:
    """Build the converted model ``name``: ``builder(name)(name, **kwargs)`` (see
    :func:`fcn_cam.zoo.load_arch` for the arguments)."""
    return builder(name)(name, **kwargs)

"""fcn-cam: Class Activation Maps for CNNs with fully-connected heads.

    >>> fcn = fcn_cam.convert(torchvision.models.vgg16(weights="DEFAULT"))
    >>> exp = fcn_cam.explain(fcn, "cat.jpg", scale=2)
    >>> exp.targets[0].name, exp.targets[0].peak, exp.targets[0].box

The public names load on first use (PEP 562): ``import fcn_cam.images`` alone does not
import torch, so that a worker that only decodes images (Ray's decoding tasks) starts in
a fraction of a second instead of the ~4 s torch takes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_PUBLIC = {
    "Explanation": "explanation", "Result": "explanation", "Target": "explanation",
    "explain": "explanation", "explain_files": "explanation",
    "Settings": "settings", "Runtime": "settings", "Output": "settings",
    "score_maps": "maps", "cell_maps": "maps",
    "Geometry": "geometry", "align": "geometry",
    "ModelFileError": "modelfile", "load": "modelfile", "save": "modelfile",
    "prepare": "runtime", "plot": "display",
    "compare": "comparison", "evaluate": "evaluation", "read_annotations": "annotations",
    "FCN": "surgery", "Layout": "layout", "ConversionError": "errors", "convert": "conversion",
}
__all__ = [
    "ConversionError",
    "Explanation",
    "FCN",
    "Geometry",
    "Layout",
    "ModelFileError",
    "Output",
    "Result",
    "Runtime",
    "Settings",
    "Target",
    "align",
    "cell_maps",
    "compare",
    "convert",
    "evaluate",
    "explain",
    "explain_files",
    "load",
    "plot",
    "prepare",
    "read_annotations",
    "save",
    "score_maps",
]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .annotations import read_annotations
    from .comparison import compare
    from .conversion import convert
    from .display import plot
    from .errors import ConversionError
    from .evaluation import evaluate
    from .explanation import Explanation, Result, Target, explain, explain_files
    from .geometry import Geometry, align
    from .layout import Layout
    from .maps import cell_maps, score_maps
    from .modelfile import ModelFileError, load, save
    from .runtime import prepare
    from .settings import Output, Runtime, Settings
    from .surgery import FCN


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fcn_cam' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])

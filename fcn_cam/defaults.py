"""What ``explain`` does when not told, and the models known by name: plain values, no torch,
so that the command line can show them in its help without importing torch.

The explain defaults were chosen on the demo scenes' validation split by a stated rule
(``benchmarks/results/localization.md``).
"""

from __future__ import annotations

DEFAULT_SCALE: tuple[float, ...] = (1.0, 2.0)
DEFAULT_MAPS = "cells"
DEFAULT_PAD = "features"
DEFAULT_CLAMP = False
#: The box is the largest region above this fraction of the heatmap's range, per map kind.
BOX_FRACTION: dict[str, float] = {"scores": 0.65, "cells": 0.4}

#: torchvision architectures ``fcn-cam convert`` builds by name (:mod:`fcn_cam.zoo`).
ARCHS: tuple[str, ...] = (
    *(f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")),
    "alexnet",
    *(f"resnet{d}" for d in (18, 34, 50, 101, 152)),
)
#: The demo's twin models, shipped with the package (``fcn_cam/demo/twins.pt``).
DEMOS: tuple[str, ...] = ("demo-fc", "demo-gap")
#: Everything ``fcn-cam convert`` / ``explain --model`` accept by name.
NAMES: tuple[str, ...] = (*ARCHS, *DEMOS)

"""The models fcn-cam knows by name (built by :mod:`fcn_cam.zoo`): plain names, no torch, so
that the command line can list them in its help without importing torch."""

from __future__ import annotations

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

"""pytorch-grad-cam's calling convention for fcn-cam's maps: a drop-in for their CAM classes.

    >>> from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    >>> from pytorch_grad_cam.utils.image import show_cam_on_image
    >>> with fcn_cam.compat.CAM(vgg16) as cam:                 # converted once, here
    ...     maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(281)])  # [B, H, W] in [0, 1]
    >>> show_cam_on_image(rgb_float, maps[0], use_rgb=True)

The input is a batch ``[B, 3, H, W]`` already normalized as the model expects (as theirs
is); it runs through the converted net as given (``scale=1``), or resized by each factor of
``scale`` with the maps averaged. Each map is the class's cell map (``maps="cells"``, the
default) or window score map of that input, clamped at 0, placed on the input's pixel grid
by the layers' geometry (:func:`fcn_cam.geometry.align`) and min-max normalized per image
with an epsilon — pytorch-grad-cam's post-processing: ``relu``, then
``(m - min) / (max - min + eps)``. A constant map becomes zeros, never NaN.

For an FC head at the native size with ``pad="none"`` the cell map is HiResCAM at the
flatten input (``tests/test_compat.py`` checks it against their ``HiResCAM`` on the body's
last layer); the default ``pad="features"`` lets windows reach past the border, so the
border band gets evidence of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .conversion import convert
from .geometry import Geometry, align, cover_padding, feature_cover_padding
from .maps import cell_maps_of, forward
from .runtime import input_like
from .settings import DEFAULT_MAPS, DEFAULT_PAD
from .surgery import FCN

#: pytorch-grad-cam's ``scale_cam_image`` epsilon.
EPS = 1e-7
MAP_KINDS = ("cells", "scores")
PADS = ("features", "cover", "window", "none")


def categories(targets: Sequence[Any] | None, batch: int, logits: torch.Tensor) -> list[int]:
    """Class indices from pytorch-grad-cam targets (objects with ``.category``, e.g.
    ``ClassifierOutputTarget``), plain ints, or ``None`` (each image's top logit)."""
    if targets is None:
        return logits.argmax(-1).tolist()
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch} images; give one per image")
    out = []
    for t in targets:
        c = getattr(t, "category", t)
        if isinstance(c, torch.Tensor | np.ndarray) and c.ndim == 0:
            c = c.item()
        if isinstance(c, bool) or not isinstance(c, int | np.integer):
            raise ValueError(f"targets must be class indices or objects with an integer .category "
                             f"(ClassifierOutputTarget), got {t!r}")
        if not 0 <= c < logits.shape[-1]:
            raise ValueError(f"target class {int(c)} out of range [0, {logits.shape[-1]})")
        out.append(int(c))
    return out


def normalize_maps(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Per map ``(m - min) / (max - min + eps)`` over the last two axes."""
    lo = maps.amin(dim=(-2, -1), keepdim=True)
    hi = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - lo) / (hi - lo + eps)


class CAM:
    """fcn-cam maps called like pytorch-grad-cam's methods (``GradCAM(model, target_layers)``).

    Args:
        model: the original classifier (converted once, here, checked against its logits by
            :func:`fcn_cam.convert`) or an already converted :class:`~fcn_cam.FCN`.
        target_layers: accepted for their signature and ignored: the maps are those of the
            body's last feature map (cells) or of the classifier's windows (scores).
        input_size: the model's native input size (for the conversion).
        maps: ``"cells"`` (the exact per-feature-cell decomposition) or ``"scores"``.
        scale: run on the input resized by this factor; several factors are averaged.
        pad: ``features`` / ``cover`` / ``window`` / ``none`` (:func:`fcn_cam.explanation.resolve_pad`).
        clamp: clamp the maps at 0 before normalizing, as pytorch-grad-cam does.
        convert_kwargs: passed to :func:`fcn_cam.convert` (``class_names``, ``mean``, ...).

    Attributes:
        outputs: the logits ``[B, K]`` of the last call (the spatial mean of the score maps
            of the input as given: the original model's logits at the native size).
    """

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module] | None = None, *,
                 input_size: int | tuple[int, int] = 224, maps: str = DEFAULT_MAPS,
                 scale: float | Sequence[float] = 1.0, pad: str = DEFAULT_PAD, clamp: bool = True,
                 reshape_transform: Any = None, **convert_kwargs: Any) -> None:
        if reshape_transform is not None:
            raise ValueError("reshape_transform is not supported: fcn-cam explains convolutional nets")
        if maps not in MAP_KINDS:
            raise ValueError(f"maps must be one of {', '.join(MAP_KINDS)}, got {maps!r}")
        if pad not in PADS:
            raise ValueError(f"pad must be one of {', '.join(PADS)}, got {pad!r}")
        scales = [float(scale)] if isinstance(scale, int | float) else [float(s) for s in scale]
        if not scales or not all(np.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"scale must be finite and positive, got {scale!r}")
        self.model = model
        self.target_layers = target_layers
        self.fcn = model if isinstance(model, FCN) else convert(model, input_size, **convert_kwargs)
        self.maps, self.pad, self.scales, self.clamp = maps, pad, scales, bool(clamp)
        self.outputs: torch.Tensor | None = None

    # -- one input size ---------------------------------------------------------------------------

    def _net_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], tuple | None]:
        """The input padded as ``pad`` says: (input, (top, left) shift in input pixels,
        feature padding in cells or None) — :func:`fcn_cam.explanation.network_input` for a
        normalized tensor (zeros are the mean colour)."""
        fcn, h, w = self.fcn, x.shape[-2], x.shape[-1]
        if self.pad == "none":
            return x, (0, 0), None
        if self.pad == "features":
            cells = feature_cover_padding(fcn.features, fcn.head, h, w)
            g = fcn.geometry
            return x, (round(cells[0] * g.y.stride), round(cells[2] * g.x.stride)), cells
        net = fcn.features if (self.pad, self.maps) == ("cover", "cells") else fcn
        top, bottom, left, right = cover_padding(net, h, w)
        return nn.functional.pad(x, (left, right, top, bottom)), (top, left), None

    def _pass(self, x: torch.Tensor) -> dict:
        """One forward pass (with the head's graph for cell maps); where the body saw the
        input unpadded, also the logits of the input as given."""
        fcn = self.fcn
        inp, shift, fpad = self._net_input(x)
        fw = forward(fcn, inp, cells=self.maps == "cells", pad=fpad)
        logits = None
        if fpad is not None or self.pad == "none":
            f = fw.features.detach()
            if fpad is not None:  # the padded cells off again: the body's own feature map
                t, b, le, r = fpad
                f = f[..., t:f.shape[-2] - b, le:f.shape[-1] - r]
            with torch.inference_mode():
                logits = fcn.run_head(f).float().mean(dim=(-2, -1))
        base = Geometry.of(fcn.features) if self.maps == "cells" else fcn.geometry
        return {"fw": fw, "geometry": base.shifted(*shift), "shape": tuple(x.shape[-2:]), "logits": logits}

    def _aligned(self, p: dict, classes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The chosen classes' maps ``[B, H, W]`` of one pass, clamped, on the input's grid."""
        fw = p["fw"]
        if self.maps == "cells":
            m = cell_maps_of(fw, classes)[:, 0]
        else:
            s = fw.scores.detach().float()
            m = s.gather(1, classes[:, :, None, None].expand(-1, -1, *s.shape[-2:]))[:, 0]
        m = m.detach().float()
        if self.clamp:  # before resampling, as pytorch-grad-cam clamps its layer maps
            m = m.clamp(min=0)
        return align(m, p["geometry"], p["shape"], size)

    # -- pytorch-grad-cam's interface -------------------------------------------------------------

    def forward(self, input_tensor: torch.Tensor, targets: Sequence[Any] | None = None) -> np.ndarray:
        """Maps ``[B, H, W]`` float32 in [0, 1] at the input's size; sets ``outputs``."""
        x = input_tensor
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"input_tensor must be a [B, C, H, W] tensor, got {got}")
        x = x.detach()
        height, width = x.shape[-2:]
        passes = [self._pass(x if s == 1 else nn.functional.interpolate(
            x, size=(max(1, round(height * s)), max(1, round(width * s))), mode="bilinear",
            align_corners=False, antialias=s < 1)) for s in self.scales]
        logits = next((p["logits"] for s, p in zip(self.scales, passes) if s == 1 and p["logits"] is not None),
                      None)
        if logits is None:  # no pass saw the input as given, unpadded
            with torch.inference_mode():
                logits = self.fcn.logits(input_like(self.fcn, x)).float()
        self.outputs = logits
        classes = torch.tensor(categories(targets, x.shape[0], logits), device=logits.device)[:, None]
        heat = self._aligned(passes[0], classes, (height, width))
        for p in passes[1:]:
            heat += self._aligned(p, classes, (height, width))
        del passes  # frees the head's graphs
        return normalize_maps(heat / len(self.scales)).cpu().numpy().astype(np.float32)

    def forward_augmentation_smoothing(self, input_tensor: torch.Tensor,
                                       targets: Sequence[Any] | None = None) -> np.ndarray:
        """Their ``aug_smooth``: the mean of the maps over their default test-time
        augmentations (horizontal flip × multiply by 0.9, 1, 1.1), each mapped back."""
        if targets is None:  # one class per image for every augmentation: the plain input's
            self.forward(input_tensor, None)
            targets = self.outputs.argmax(-1).tolist()
        logits, cams = None, []
        for flip in (False, True):
            for factor in (0.9, 1.0, 1.1):
                x = input_tensor * factor
                m = self.forward(x.flip(-1) if flip else x, targets)
                cams.append(m[..., ::-1] if flip else m)
                if not flip and factor == 1.0:
                    logits = self.outputs
        self.outputs = logits
        return np.mean(np.float32(cams), axis=0)

    def __call__(self, input_tensor: torch.Tensor, targets: Sequence[Any] | None = None,
                 aug_smooth: bool = False, eigen_smooth: bool = False) -> np.ndarray:
        if eigen_smooth:
            raise ValueError("eigen_smooth is not supported: fcn-cam's maps are exact, not an SVD projection")
        if aug_smooth:
            return self.forward_augmentation_smoothing(input_tensor, targets)
        return self.forward(input_tensor, targets)

    def __enter__(self) -> CAM:
        return self

    def __exit__(self, *exc: object) -> None:  # no hooks to release: nothing persists between calls
        return None


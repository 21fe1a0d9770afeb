"""torchvision architectures by name, and where their weights come from (one place).

``weights`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1`` …, downloaded and
cached by torchvision under ``$TORCH_HOME/hub/checkpoints``), a local state-dict file in
torchvision's layout, or ``random``.
"""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import torch
from torch import nn

from .conversion import convert
from .names import ARCHS, DEMOS, NAMES  # noqa: F401 (the registry's names, torch-free for the CLI's help)
from .runtime import resolve_device
from .surgery import FCN, IMAGENET_MEAN, IMAGENET_STD

RANDOM = "random"


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded or loaded."""


def _check_arch(arch: str) -> None:
    if arch not in NAMES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(NAMES)}")


def imagenet_classes(arch: str) -> list[str]:
    """ImageNet class names from torchvision's weights metadata (no download needed)."""
    import torchvision

    return list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])


def _local_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means "not a plain state dict"
        raise WeightsError(
            f"{path}: not a loadable state-dict file ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{path}: expected a state dict (a dict of tensors) in torchvision's layout")
    return sd


def _download(arch: str, name: str) -> nn.Module:
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    try:
        w = enum[name] if name != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise WeightsError(
            f"unknown weights {name!r} for {arch}; choose one of: {choices}, a state-dict "
            f"file, or {RANDOM!r}"
        ) from None
    try:
        return torchvision.models.get_model(arch, weights=w)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
        raise WeightsError(
            f"could not download the {w} weights for {arch} from {w.url} ({e}). If this machine "
            f"is offline, fetch that file elsewhere and put it at {target}, or pass --weights "
            f"/path/to/state_dict.pth (or --weights {RANDOM} to try things out)"
        ) from e


def build(arch: str, weights: str = "DEFAULT") -> tuple[nn.Module, str]:
    """A torchvision classifier in eval mode, and a label saying where its weights came from."""
    import torchvision  # here, not at import: it costs ~160 MB that explaining never needs

    _check_arch(arch)
    if weights == RANDOM:
        return torchvision.models.get_model(arch, weights=None).eval(), RANDOM
    path = Path(weights)
    if path.suffix in (".pt", ".pth", ".bin") or path.exists():
        if not path.is_file():
            raise WeightsError(f"{path}: weights file not found")
        model = torchvision.models.get_model(arch, weights=None)
        try:
            model.load_state_dict(_local_state_dict(path))
        except RuntimeError as e:
            raise WeightsError(f"{path}: does not fit {arch}: {str(e).splitlines()[0]}") from e
        return model.eval(), str(path)
    return _download(arch, weights).eval(), weights


def load_arch(
    arch: str, weights: str = "DEFAULT", *, output_stride: int | None = None,
    device: str | torch.device = "cpu",
) -> FCN:
    """Build a torchvision architecture (or a shipped demo twin) by name and convert it on
    ``device`` (the `convert ARCH` path)."""
    if arch in DEMOS:
        return load_demo(arch, weights, output_stride=output_stride).to(resolve_device(device))
    model, label = build(arch, weights)
    model = model.to(resolve_device(device))
    return convert(
        model, 224, output_stride=output_stride, class_names=imagenet_classes(arch),
        mean=IMAGENET_MEAN, std=IMAGENET_STD, arch=arch, weights=label,
    )


def load_demo(name: str, weights: str = "DEFAULT", *, output_stride: int | None = None) -> FCN:
    """A shipped demo twin (``demo-fc``: the VGG-shaped FC head; ``demo-gap``: its GAP twin),
    converted like any model; ``weights`` may be ``DEFAULT``/``shipped`` or a checkpoint of
    ``benchmarks/train_twins.py``."""
    from .demo.scenes import CLASS_NAMES
    from .demo.twins import INPUT_SIZE, MEAN, STD, twins

    path = None if weights in ("DEFAULT", "shipped") else weights
    try:
        fc, gap = twins(path)
    except FileNotFoundError as e:
        raise WeightsError(str(e)) from None
    return convert(
        fc if name == "demo-fc" else gap, INPUT_SIZE, output_stride=output_stride,
        class_names=CLASS_NAMES, mean=MEAN, std=STD, arch=f"{name}-twin", weights=path or "shipped",
    )

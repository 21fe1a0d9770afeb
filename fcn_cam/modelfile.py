"""Model files: tensors plus plain metadata, loaded with ``torch.load(weights_only=True)``.

A file holds ``{"format": "fcn-cam", "version", "info", "architecture", "state_dict"}``.
The architecture is plain data: either a tree of standard ``torch.nn`` layer specs (one
small table below says which constructor arguments each layer type keeps), or, for a
torchvision ResNet whose blocks are not plain layers, its name — rebuilt by the same
surgery. Nothing is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn

from .files import write_atomic
from .surgery import FCN, ChannelSoftmax, convert, set_output_stride
from .zoo import ARCHS

FORMAT, VERSION = "fcn-cam", 1

# Layer type → constructor arguments read back from the attributes of the same name.
LAYERS: dict[type[nn.Module], tuple[str, ...]] = {
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups", "padding_mode"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum", "affine", "track_running_stats"),
    nn.MaxPool2d: ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
    nn.AvgPool2d: ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.ReLU: ("inplace",),
    nn.LeakyReLU: ("negative_slope", "inplace"),
    nn.ELU: ("alpha", "inplace"),
    nn.GELU: ("approximate",),
    nn.SiLU: ("inplace",),
    nn.Hardtanh: ("min_val", "max_val", "inplace"),
    nn.Tanh: (),
    nn.Sigmoid: (),
    nn.PReLU: ("num_parameters",),
    nn.ReLU6: ("inplace",),
    nn.SELU: ("inplace",),
    nn.CELU: ("alpha", "inplace"),
    nn.Hardswish: ("inplace",),
    nn.Hardsigmoid: ("inplace",),
    nn.Mish: ("inplace",),
    nn.Softplus: ("beta", "threshold"),
    nn.Softsign: (),
    nn.Tanhshrink: (),
    nn.ZeroPad2d: ("padding",),
    nn.ConstantPad2d: ("padding", "value"),
    nn.ReflectionPad2d: ("padding",),
    nn.ReplicationPad2d: ("padding",),
    ChannelSoftmax: ("log",),
    nn.Dropout: ("p",),
    nn.Dropout2d: ("p",),
    nn.Identity: (),
}
BY_NAME = {cls.__name__: cls for cls in LAYERS}


class ModelFileError(ValueError):
    """A file that is not a loadable fcn-cam model."""


class _NotPlain(Exception):
    pass


def _plain(v):
    return list(v) if isinstance(v, tuple) else v


def _spec(module: nn.Module) -> dict:
    if isinstance(module, nn.Sequential):
        return {"type": "Sequential",
                "children": [[name, _spec(child)] for name, child in module.named_children()]}
    cls = type(module)
    if cls not in LAYERS:
        raise _NotPlain(cls.__name__)
    args = {a: _plain(getattr(module, a)) for a in LAYERS[cls]}
    if cls is nn.Conv2d:
        args["bias"] = module.bias is not None
    return {"type": cls.__name__, "args": args}


def _module(spec: dict) -> nn.Module:
    if spec["type"] == "Sequential":
        return nn.Sequential(OrderedDict((name, _module(c)) for name, c in spec["children"]))
    cls = BY_NAME.get(spec["type"])
    if cls is None:
        raise ModelFileError(f"unknown layer type {spec['type']!r}")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["args"].items()}
    return cls(**args)


def _rebuilds(spec: dict, module: nn.Module) -> None:
    """Raise at save time if the spec would not load back into the same layers."""
    again = _module(spec)
    for (name, a), (_, b) in zip(module.named_modules(), again.named_modules()):
        same = type(a) is type(b) and all(
            _plain(getattr(a, k)) == _plain(getattr(b, k)) for k in LAYERS.get(type(a), ()))
        if not same:
            raise ModelFileError(f"cannot save: layer {name or type(a).__name__} would not load back the same")
    missing = set(module.state_dict()) ^ set(again.state_dict())
    if missing:
        raise ModelFileError(f"cannot save: tensors {sorted(missing)[:5]} would not load back")


def _architecture(fcn: FCN) -> dict:
    try:
        arch = {"kind": "layers", "features": _spec(fcn.features), "head": _spec(fcn.head)}
        _rebuilds(arch["features"], fcn.features)
        _rebuilds(arch["head"], fcn.head)
        return arch
    except _NotPlain as e:
        arch = fcn.info.get("arch")
        if arch in ARCHS and arch.startswith("resnet"):
            return {"kind": "torchvision", "arch": arch, "num_classes": fcn.head[-1].out_channels}
        raise ModelFileError(
            f"cannot save: layer {e} is not a standard torch.nn layer (supported: "
            f"{', '.join(BY_NAME)}, Sequential, and torchvision ResNets)"
        ) from None


def save(fcn: FCN, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``fcn`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --overwrite)")
    obj = {
        "format": FORMAT,
        "version": VERSION,
        "info": fcn.info,
        "architecture": _architecture(fcn),
        "state_dict": {k: v.detach().cpu() for k, v in fcn.state_dict().items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(obj, f))
    return path


def read(path: str | os.PathLike) -> dict:
    """The raw contents of a model file, checked to be an fcn-cam file (no code run)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelFileError(
            f"{path}: refused: loading it would run code or build objects other than tensors "
            f"({str(e).splitlines()[0][:200]}). fcn-cam only loads files written by "
            "`fcn-cam convert` / fcn_cam.save"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on non-torch bytes
        raise ModelFileError(
            f"{path}: not a PyTorch file, or truncated ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ModelFileError(
            f"{path}: a PyTorch file but not an fcn-cam model (found {keys}); make one with "
            "`fcn-cam convert ARCH --weights FILE -o OUT.pt` or fcn_cam.save(fcn_cam.convert(model), OUT)"
        )
    if obj.get("version", 0) > VERSION:
        raise ModelFileError(f"{path}: format version {obj['version']} is newer than this fcn-cam ({VERSION})")
    return obj


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FCN:
    """Load a model written by :func:`save` (``torch.load(weights_only=True)``)."""
    obj = read(path)
    info, arch = obj["info"], obj["architecture"]
    try:
        if arch["kind"] == "layers":
            fcn = FCN(_module(arch["features"]), _module(arch["head"]), info)
        else:
            model = torchvision.models.get_model(arch["arch"], weights=None, num_classes=arch["num_classes"])
            fcn = convert(model, info["input_size"], verify=False)
            if info["output_stride"] != fcn.info["output_stride"]:
                set_output_stride(fcn, info["output_stride"])
            fcn.info = info
        fcn.load_state_dict(obj["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ModelFileError(f"{path}: inconsistent model file ({type(e).__name__}: {e})") from None
    return fcn.eval().to(map_location)

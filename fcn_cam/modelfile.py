"""Model files: tensors plus plain metadata, loaded with ``torch.load(weights_only=True)``.

A file holds ``{"format": "fcn-cam", "version", "info", "architecture", "state_dict"}``.
The architecture is plain data: either a tree of standard ``torch.nn`` layer specs (one
small table below says which constructor arguments each layer type keeps), or, for a
torchvision ResNet whose blocks are not plain layers, its name — rebuilt by the same
surgery. Nothing is ever unpickled.
"""

from __future__ import annotations

import inspect
import math
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from . import registry
from .conversion import convert
from .errors import ConversionError, ModelFileError
from .files import torch_file_problem, write_atomic
from .geometry import Geometry
from .layers import ChannelSoftmax
from .surgery import FCN, set_output_stride

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
        if registry.rebuilt_by_torchvision(arch):
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
    """The raw contents of a model file, checked to be an fcn-cam file (no code run).

    Only the envelope is checked here (``format``, ``version``); :func:`validate` checks the
    rest before anything is built.
    """
    path = Path(path)
    problem = torch_file_problem(path)
    if problem is not None:
        kind, detail = problem
        raise ModelFileError(f"{path}: not an fcn-cam model file (not a PyTorch file at all: {detail})"
                             if kind == "not torch" else f"{path}: model file {detail}" if kind == "missing"
                             else f"{path}: {detail}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
        first = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[0])[:200]
        if "global" in first.lower() or "unsupported class" in first.lower():
            raise ModelFileError(
                f"{path}: refused: loading it would run code or build objects other than tensors "
                f"({first}). fcn-cam only loads files written by `fcn-cam convert` / fcn_cam.save"
            ) from None
        raise ModelFileError(f"{path}: not an fcn-cam model file (corrupt or truncated: {first})") from None
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on non-torch bytes
        raise ModelFileError(
            f"{path}: not an fcn-cam model file (not a PyTorch file, or truncated: {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'})"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ModelFileError(
            f"{path}: a PyTorch file but not an fcn-cam model (found {keys}); make one with "
            "`fcn-cam convert ARCH --weights FILE -o OUT.pt` or fcn_cam.save(fcn_cam.convert(model), OUT) "
            "(the shipped demo twins: `fcn-cam convert demo-fc -o fc.pt`)"
        )
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: format version must be a positive integer, found {version!r}")
    if version > VERSION:
        raise ModelFileError(f"{path}: format version {version} is newer than this fcn-cam ({VERSION})")
    return obj


# -- validation: everything checked on plain data and on the meta device, before any memory
# -- is allocated for a layer.

MAX_DEPTH, MAX_LAYERS, MAX_INT = 64, 20_000, 1 << 24
MAX_INPUT_SIDE = 16_384


class _Bad(Exception):
    """A validation failure; the message says where and what."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def _check_arg(where: str, name: str, v: object) -> None:
    """Constructor arguments are plain scalars or short lists of them; numbers finite and
    bounded (a tampered 10**9 channel count must not reach a constructor)."""
    items = v if isinstance(v, list) else [v]
    if isinstance(v, list) and not 1 <= len(v) <= 4:
        raise _Bad(f"{where}: argument {name} has {len(v)} elements")
    for x in items:
        if x is None or isinstance(x, bool | str):
            if isinstance(x, str) and len(x) > 64:
                raise _Bad(f"{where}: argument {name} is a {len(x)}-character string")
            continue
        if not _is_num(x) or abs(x) > MAX_INT:
            raise _Bad(f"{where}: argument {name} = {x!r} is not a finite number within ±{MAX_INT}")


def _check_spec(spec: object, where: str, depth: int, count: list[int]) -> None:
    count[0] += 1
    if depth > MAX_DEPTH or count[0] > MAX_LAYERS:
        raise _Bad(f"{where}: architecture nested deeper than {MAX_DEPTH} or over {MAX_LAYERS} layers")
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        raise _Bad(f"{where}: a layer spec must be a dict with a 'type'")
    if spec["type"] == "Sequential":
        children = spec.get("children")
        if not isinstance(children, list):
            raise _Bad(f"{where}: Sequential without a 'children' list")
        names = set()
        for i, c in enumerate(children):
            if not (isinstance(c, list) and len(c) == 2 and isinstance(c[0], str) and c[0]
                    and "." not in c[0] and len(c[0]) <= 64):
                raise _Bad(f"{where}[{i}]: a child must be [name, spec] with a plain name")
            if c[0] in names:
                raise _Bad(f"{where}: duplicate child name {c[0]!r}")
            names.add(c[0])
            _check_spec(c[1], f"{where}.{c[0]}", depth + 1, count)
        return
    cls = BY_NAME.get(spec["type"])
    if cls is None:
        known = ", ".join([*BY_NAME, "Sequential"])
        raise _Bad(f"{where}: unknown layer type {spec['type'][:64]!r} (known: {known})")
    args = spec.get("args")
    if not isinstance(args, dict):
        raise _Bad(f"{where}: {spec['type']} without an 'args' dict")
    allowed = set(inspect.signature(cls).parameters) - {"device", "dtype"}
    for k, v in args.items():
        if k not in allowed:
            raise _Bad(f"{where}: {spec['type']} has no argument {str(k)[:64]!r}")
        _check_arg(f"{where} ({spec['type']})", k, v)


def _check_info(info: object, k: int | None) -> None:
    if not isinstance(info, dict):
        raise _Bad("'info' must be a dict")
    for key in ("input_size", "mean", "std", "output_stride"):
        if key not in info:
            raise _Bad(f"info: missing {key!r}")
    for key in ("arch", "weights", "head"):
        if info.get(key) is not None and not (isinstance(info[key], str) and len(info[key]) <= 1000):
            raise _Bad(f"info.{key} must be a string, found {type(info[key]).__name__}")
    size = info["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 1 <= v <= MAX_INPUT_SIDE
                                                             for v in size)):
        raise _Bad(f"info.input_size must be [height, width] in 1…{MAX_INPUT_SIDE}, found {size!r:.80}")
    for key in ("mean", "std"):
        v = info[key]
        if not (isinstance(v, list) and len(v) == 3 and all(_is_num(x) for x in v)):
            raise _Bad(f"info.{key} must be 3 finite numbers (R, G, B), found {v!r:.80}")
    if not all(x > 0 for x in info["std"]):
        raise _Bad(f"info.std must be positive, found {info['std']!r}")
    for key in ("native_stride", "output_stride"):
        if key in info and not (_is_int(info[key]) and 1 <= info[key] <= 4096):
            raise _Bad(f"info.{key} must be a positive integer, found {info[key]!r:.80}")
    names = info.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) and len(n) <= 1000 for n in names)):
            raise _Bad("info.class_names must be a list of strings")
        if k is not None and len(names) != k:
            raise _Bad(f"info.class_names has {len(names)} names for the head's {k} classes")
    if info.get("exactness") is not None and not isinstance(info["exactness"], dict):
        raise _Bad("info.exactness must be a dict or null")
    _check_provenance(info, k)


def _check_provenance(info: dict, k: int | None) -> None:
    """``num_classes`` and ``weights_file`` (where the weights came from), when present."""
    n = info.get("num_classes")
    if n is not None and not (_is_int(n) and 1 <= n <= MAX_INT and (k is None or n == k)):
        head = f" but the head has {k} classes" if k is not None else ""
        raise _Bad(f"info.num_classes is {n!r:.80}{head}")
    wf = info.get("weights_file")
    if wf is None:
        return
    if not (isinstance(wf, dict) and all(isinstance(key, str) for key in wf)):
        raise _Bad("info.weights_file must be a dict or null")
    sha = wf.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise _Bad(f"info.weights_file.sha256 must be 64 hex digits, found {sha!r:.80}")
    if not (isinstance(wf.get("path"), str) and len(wf["path"]) <= 4096):
        raise _Bad("info.weights_file.path must be a string")
    if not (_is_int(wf.get("bytes")) and wf["bytes"] >= 0):
        raise _Bad(f"info.weights_file.bytes must be a byte count, found {wf.get('bytes')!r:.80}")
    for key in ("form", "url"):
        if wf.get(key) is not None and not (isinstance(wf[key], str) and len(wf[key]) <= 1000):
            raise _Bad(f"info.weights_file.{key} must be a string")


def _meta_model(obj: dict) -> FCN:
    """The model built on the meta device (shapes only, no memory) from checked specs."""
    info, arch = obj["info"], obj.get("architecture")
    if not isinstance(arch, dict):
        raise _Bad("'architecture' must be a dict")
    with torch.device("meta"):
        if arch.get("kind") == "layers":
            count = [0]
            for part in ("features", "head"):
                _check_spec(arch.get(part), part, 0, count)
            try:
                features, head = _module(arch["features"]), _module(arch["head"])
            except (TypeError, ValueError, RuntimeError) as e:
                raise _Bad(f"layer arguments rejected by torch ({type(e).__name__}: {str(e)[:200]})") from None
            if not isinstance(head, nn.Sequential) or not len(head) or not isinstance(head[-1], nn.Conv2d):
                raise _Bad("the head must be a Sequential ending in a Conv2d")
            return FCN(features, head, info)
        if arch.get("kind") == "torchvision":
            name, k = arch.get("arch"), arch.get("num_classes")
            if not registry.rebuilt_by_torchvision(name):
                kinds = [n for n in registry.ARCHS if registry.rebuilt_by_torchvision(n)]
                raise _Bad(f"architecture.arch must be one of {', '.join(kinds)}, found {name!r:.80}")
            if not (_is_int(k) and 1 <= k <= 100_000):
                raise _Bad(f"architecture.num_classes must be in 1…100000, found {k!r:.80}")
            from .zoo import network  # only for this kind of file (torchvision costs ~160 MB to import)

            model = network(name, k)
            fcn = convert(model, tuple(info["input_size"]), verify=False)
            if info["output_stride"] != fcn.info["output_stride"]:
                try:
                    set_output_stride(fcn, info["output_stride"])
                except ConversionError as e:
                    raise _Bad(f"info.output_stride: {e}") from None
            fcn.info = info
            return fcn
    raise _Bad(f"architecture.kind must be 'layers' or 'torchvision', found {arch.get('kind')!r:.80}")


def _check_tensors(fcn: FCN, sd: object) -> None:
    """The file's tensors are exactly the model's: same names, shapes and dtypes, so building
    allocates no more than the bytes present in the file."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                           for k, v in sd.items()):
        raise _Bad("'state_dict' must map names to tensors")
    want = fcn.state_dict()
    missing, extra = sorted(set(want) - set(sd)), sorted(set(sd) - set(want))
    if missing or extra:
        raise _Bad(f"tensors do not match the layers (missing {missing[:3]}, unexpected {extra[:3]})")
    for name, w in want.items():
        t = sd[name]
        if t.shape != w.shape or t.dtype != w.dtype:
            raise _Bad(f"tensor {name} is {t.dtype} {list(t.shape)}, the layer needs {w.dtype} {list(w.shape)}")


def _check_geometry(fcn: FCN) -> None:
    """``geometry`` / ``output_stride`` stored in the file must be what the layers give."""
    info, g = fcn.info, fcn.geometry
    if info["output_stride"] != g.y.stride or g.y.stride != g.x.stride:
        raise _Bad(f"info.output_stride is {info['output_stride']} but the layers give {g.y.stride:g}")
    if info.get("geometry") is not None:
        try:
            stored = Geometry.from_dict(info["geometry"])
        except (TypeError, KeyError, AttributeError) as e:
            raise _Bad(f"info.geometry is malformed ({e})") from None
        if stored != g:
            raise _Bad(f"info.geometry {info['geometry']} differs from the layers' {g.to_dict()}")


def validate(obj: dict, path: str | os.PathLike = "model file") -> FCN:
    """Check a file's metadata and architecture against its tensors; return the model built
    on the meta device (no memory). Every refusal is a one-line :class:`ModelFileError`."""
    try:
        _check_info(obj.get("info"), None)
        fcn = _meta_model(obj)
        _check_info(obj["info"], fcn.head[-1].out_channels)
        _check_tensors(fcn, obj.get("state_dict"))
        _check_geometry(fcn)
    except _Bad as e:
        raise ModelFileError(f"{path}: inconsistent model file: {e}") from None
    return fcn


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> FCN:
    """Load a model written by :func:`save` (``torch.load(weights_only=True)``), validated
    (:func:`validate`) before any layer is given memory: the file's tensors become the
    layers' parameters as they are."""
    obj = read(path)
    fcn = validate(obj, path)
    fcn.load_state_dict(obj["state_dict"], assign=True)
    if any(t.is_meta for t in (*fcn.parameters(), *fcn.buffers())):
        raise ModelFileError(f"{path}: inconsistent model file: a layer has state the file does not hold")
    fcn.info = obj["info"]
    return fcn.eval().to(map_location)

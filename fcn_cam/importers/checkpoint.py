"""Checkpoints as users save them → a state dict or a plain module, nothing run by default.

- ``torch.save(model.state_dict())``, also wrapped: ``module.`` (DataParallel/DDP),
  ``_orig_mod.`` (``torch.compile``), ``model.`` / ``net.`` (Lightning, hand-written loops),
  or nested in a training checkpoint beside epochs and optimizer states. The state dict is
  found by its tensors (the one dict of named tensors with a ``*.weight``), not by its key.
- ``torch.save(model)`` and checkpoints holding a model object: unpickling them runs code
  from the file, so they are refused unless ``trust_pickle=True`` (``--trust-pickle``).
- ``torch.jit.save`` archives: rebuilt as a plain ``nn.Sequential`` when their module tree is
  a chain of standard layers (read from the scripted submodules' ``original_name``, constants
  and parameters, or a traced submodule's single ATen call), checked against the archive's
  own forward.

Every refusal is one :class:`WeightsError` line naming the file and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import NotAChainError, WeightsError
from ..files import torch_file_problem

#: Prefixes wrappers put before every key: DataParallel/DDP, torch.compile, Lightning and
#: hand-written training loops (the attribute holding the net).
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")
MAX_DEPTH = 4  # how deep a state dict may sit in a checkpoint's dicts


@dataclass
class Checkpoint:
    """What a weights file held.

    Attributes:
        value: a state dict (wrapper prefixes stripped) or an ``nn.Module`` in eval mode.
        form: ``"state_dict"``, ``"pickle"`` (a model object, unpickled on request) or
            ``"torchscript"`` (rebuilt as ``nn.Sequential``).
        where: the keys leading to the state dict or model inside the file (``[]``: top level).
        prefixes: the wrapper prefixes stripped from the state dict's keys, outermost first.
    """

    value: dict[str, torch.Tensor] | nn.Module
    form: str
    where: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)

    def expression(self, path: str | os.PathLike) -> str:
        """Python that loads the same state dict with plain torch (for the recipes in errors)."""
        expr = f"torch.load({str(path)!r})" + "".join(f"[{k!r}]" for k in self.where)
        if not self.prefixes:
            return expr
        strip = "".join(f".removeprefix({p!r})" for p in self.prefixes)
        return f"{{k{strip}: v for k, v in {expr}.items()}}"


def file_digest(path: str | os.PathLike) -> dict:
    """``{"path", "sha256", "bytes"}`` of a file (the provenance stored with a converted model)."""
    path = Path(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return {"path": str(path.resolve()), "sha256": h.hexdigest(), "bytes": path.stat().st_size}


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file (one per line, blank lines skipped) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read class names ({e.__class__.__name__}: {e})") from None
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a JSON list of class names ({e})") from None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{path}: a JSON class-names file must be a list of strings")
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: no class names in the file")
    return names


def read_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False,
) -> dict[str, torch.Tensor] | nn.Module:
    """The weights in ``path``: a state dict (wrappers stripped) or a plain ``nn.Module``.

    Args:
        path: a ``torch.save`` file (a state dict, a training checkpoint, a model object)
            or a ``torch.jit.save`` archive.
        trust_pickle: allow unpickling model objects (``weights_only=False``), which runs
            code from the file.

    Raises:
        WeightsError: one line naming the file: not found, not a checkpoint, a pickled
            object without ``trust_pickle``, several candidate state dicts, a TorchScript
            module that is not a chain of standard layers.
    """
    return open_checkpoint(path, trust_pickle=trust_pickle).value


def open_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """:func:`read_checkpoint`, also saying what form the file had and where its weights were."""
    path = Path(path)
    problem = torch_file_problem(path)
    if problem is not None:
        kind, detail = problem
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({detail})" if kind == "not torch"
                           else f"{path}: weights file {detail}" if kind == "missing" else f"{path}: {detail}")
    if is_torchscript(path):
        return Checkpoint(torchscript_chain(path), "torchscript")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        if found is None:
            detail = _unpickler_detail(e)
            raise WeightsError(f"{path}: not a PyTorch checkpoint (corrupt or truncated: {detail})") from None
        if not trust_pickle:
            raise WeightsError(
                f"{path}: holds a pickled Python object ({found.group(1)}), e.g. from torch.save(model); "
                "refused because unpickling runs code from the file. If you trust the file, pass "
                "--trust-pickle (trust_pickle=True), or save model.state_dict() instead"
            ) from None
        obj = _unpickle(path)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on non-torch bytes
        raise WeightsError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {_first_line(e)})") from None
    return _find_weights(obj, path)


def _first_line(e: BaseException) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    return (lines[0] if lines else type(e).__name__)[:200]


def _unpickler_detail(e: BaseException) -> str:
    """The line of torch's weights-only error that says what was wrong (not its advice)."""
    advice = ("Weights only load failed", "Please file", "Check the documentation", "(1)", "(2)", "In PyTorch")
    lines = [x.strip() for x in str(e).splitlines() if x.strip() and not x.strip().startswith(advice)]
    return (lines[0] if lines else type(e).__name__)[:200]


def _unpickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise WeightsError(
            f"{path}: unpickling needs code that is not importable here ({_first_line(e)}); load the "
            "model in the script that defines its class and call fcn_cam.convert(model)"
        ) from None
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"{path}: could not unpickle ({type(e).__name__}: {_first_line(e)})") from None


# -- state dicts and model objects inside whatever was saved


def _is_state_dict(v: object) -> bool:
    """A non-empty dict of named tensors with at least one ``…weight`` (an optimizer's
    per-parameter state, ``{"exp_avg": …, "step": …}``, has none)."""
    return (isinstance(v, dict) and bool(v) and all(isinstance(k, str) and isinstance(t, torch.Tensor)
                                                    for k, t in v.items())
            and any(k.rsplit(".", 1)[-1] == "weight" for k in v))


def _candidates(obj: object, where: list[str], depth: int) -> list[tuple[list[str], object]]:
    if isinstance(obj, nn.Module) or _is_state_dict(obj):
        return [(where, obj)]
    if not isinstance(obj, dict) or depth >= MAX_DEPTH:
        return []
    found = []
    for k, v in obj.items():
        if isinstance(k, str):  # (an optimizer's state is keyed by parameter index: skipped)
            found += _candidates(v, [*where, k], depth + 1)
    return found


def _unwrap(model: nn.Module) -> nn.Module:
    """The net inside DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``sd`` without the wrapper prefixes every key shares (repeatedly: ``module._orig_mod.``)."""
    stripped = []
    while True:
        p = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in sd)), None)
        if p is None:
            return sd, stripped
        sd = OrderedDict((k[len(p):], v) for k, v in sd.items())
        stripped.append(p)


def _find_weights(obj: object, path: Path) -> Checkpoint:
    found = _candidates(obj, [], 0)
    if not found:
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(f"{path}: no state dict (a dict of named tensors) or model in it; found {what}")
    if len(found) > 1:
        listed = "; ".join(f"{_where(w)} ({_describe(v)})" for w, v in found)
        raise WeightsError(
            f"{path}: holds several candidate weights: {listed}; save the one to convert on its own, "
            "e.g. torch.save(ckpt[KEY], 'weights.pth')"
        )
    where, value = found[0]
    if isinstance(value, nn.Module):
        return Checkpoint(_unwrap(value).eval(), "pickle", where)
    sd, prefixes = strip_prefixes(value)
    return Checkpoint(sd, "state_dict", where, prefixes)


def _where(where: list[str]) -> str:
    return "".join(f"[{k!r}]" for k in where) or "the top level"


def _describe(v: object) -> str:
    if isinstance(v, nn.Module):
        return f"a {type(v).__name__} model"
    return f"{len(v)} tensors"


# -- TorchScript archives


def is_torchscript(path: Path) -> bool:
    """A ``torch.jit.save`` archive: a zip holding ``constants.pkl`` and ``code/`` (``torch.save``
    writes neither)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


# Layer types a TorchScript chain may hold, and where a traced submodule's ATen call keeps
# their constructor arguments (input positions); scripted submodules keep them as attributes.
_TRACED_ARGS: dict[str, dict[str, dict[str, int]]] = {
    "Conv2d": {"aten::_convolution": {"stride": 3, "padding": 4, "dilation": 5, "groups": 8},
               "aten::conv2d": {"stride": 3, "padding": 4, "dilation": 5, "groups": 6}},
    "MaxPool2d": {"aten::max_pool2d": {"kernel_size": 1, "stride": 2, "padding": 3, "dilation": 4,
                                       "ceil_mode": 5}},
    "AvgPool2d": {"aten::avg_pool2d": {"kernel_size": 1, "stride": 2, "padding": 3, "ceil_mode": 4,
                                       "count_include_pad": 5, "divisor_override": 6}},
    "AdaptiveAvgPool2d": {"aten::adaptive_avg_pool2d": {"output_size": 1}},
    "BatchNorm2d": {"aten::batch_norm": {"momentum": 6, "eps": 7}},
    "BatchNorm1d": {"aten::batch_norm": {"momentum": 6, "eps": 7}},
    "LeakyReLU": {"aten::leaky_relu": {"negative_slope": 1}, "aten::leaky_relu_": {"negative_slope": 1}},
    "Flatten": {"aten::flatten": {"start_dim": 1, "end_dim": 2}},
    "Softmax": {"aten::softmax": {"dim": 1}},
    "LogSoftmax": {"aten::log_softmax": {"dim": 1}},
    "Linear": {}, "ReLU": {}, "ReLU6": {}, "Dropout": {}, "Identity": {}, "Sigmoid": {}, "Tanh": {},
}
_LAYERS = {name: getattr(nn, name) for name in _TRACED_ARGS}


def torchscript_chain(path: str | os.PathLike) -> nn.Sequential:
    """A ``torch.jit.save`` archive of an ``nn.Sequential`` tree of standard layers, rebuilt
    as the same ``nn.Sequential`` with the same parameters, and checked against the
    archive's forward on a random input (``max|Δ| ≤ 1e-5·max|y|``).

    Raises:
        WeightsError: a module with its own forward, a layer type not in the table, or a
            rebuilt chain that disagrees with the archive.
    """
    path = Path(path)
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice says nothing here
        warnings.simplefilter("ignore", FutureWarning)
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path}: not a loadable TorchScript archive ({_first_line(e)})") from None
    try:
        chain = _rebuild(scripted, "", path).eval()
    except NotAChainError as e:
        e.archive = scripted.eval()
        raise
    _check_chain(chain, scripted.eval(), path)
    return chain


def _rebuild(m: torch.jit.ScriptModule, name: str, path: Path) -> nn.Module:
    kind = m.original_name
    if kind == "Sequential":
        return nn.Sequential(OrderedDict((n, _rebuild(c, f"{name}.{n}".lstrip("."), path))
                                         for n, c in m.named_children()))
    if kind not in _LAYERS:
        what = "its top module" if not name else f"layer {name}"
        raise NotAChainError(
            f"{path}: a TorchScript archive whose {what} is {kind}, not a plain chain of standard layers "
            f"(fcn-cam rebuilds nn.Sequential of {', '.join(_LAYERS)}); convert the model in Python "
            "from the code that defines it, or save its state_dict()"
        )
    params = dict(m.named_parameters(recurse=False))
    buffers = dict(m.named_buffers(recurse=False))
    args = {**_shape_args(kind, params, buffers), **_traced_args(m, kind), **_scripted_args(m, kind)}
    if kind == "Conv2d":  # the weight holds in_channels / groups
        args["in_channels"] = params["weight"].shape[1] * args.get("groups", 1)
    layer = _LAYERS[kind](**args)
    try:
        layer.load_state_dict({**params, **buffers}, strict=True)
    except RuntimeError as e:
        raise WeightsError(
            f"{path}: TorchScript layer {name} ({kind}) does not rebuild: {_first_line(e)}") from None
    return layer


def _scripted_args(m: torch.jit.ScriptModule, kind: str) -> dict[str, Any]:
    """Constructor arguments a scripted submodule keeps as attributes/constants."""
    out = {}
    for a in inspect.signature(_LAYERS[kind]).parameters:
        if a in ("device", "dtype", "bias", "affine", "track_running_stats"):
            continue
        with contextlib.suppress(AttributeError, RuntimeError):
            out[a] = getattr(m, a)
    return out


def _const(value: torch._C.Value) -> Any:
    node = value.node()
    if node.kind() == "prim::Constant":
        return value.toIValue()
    if node.kind() == "prim::ListConstruct":
        return [_const(v) for v in node.inputs()]
    raise ValueError(node.kind())


def _traced_args(m: torch.jit.ScriptModule, kind: str) -> dict[str, Any]:
    """Constructor arguments a traced submodule has only in its graph's ATen call."""
    ops = _TRACED_ARGS[kind]
    if not ops:
        return {}
    try:
        nodes = [n for n in m.graph.nodes() if n.kind() in ops]
    except RuntimeError:
        return {}
    if len(nodes) != 1:
        return {}
    inputs = list(nodes[0].inputs())
    out = {}
    for arg, i in ops[nodes[0].kind()].items():
        try:
            v = _const(inputs[i])
        except (ValueError, IndexError):
            continue
        out[arg] = tuple(v) if isinstance(v, list) else v
    return out


def _shape_args(kind: str, params: dict, buffers: dict) -> dict[str, Any]:
    """Constructor arguments read from the parameters' shapes."""
    w, b = params.get("weight"), params.get("bias")
    if kind == "Conv2d":
        out_c, _, kh, kw = w.shape
        return {"out_channels": out_c, "kernel_size": (kh, kw), "bias": b is not None}
    if kind == "Linear":
        return {"in_features": w.shape[1], "out_features": w.shape[0], "bias": b is not None}
    if kind.startswith("BatchNorm"):
        stats = buffers.get("running_mean")
        n = (w if w is not None else stats).shape[0]
        return {"num_features": n, "affine": w is not None, "track_running_stats": stats is not None}
    return {}


def _input_side(chain: nn.Sequential, channels: int) -> int:
    """The smallest square input side for which the layers before the first Linear give
    exactly its ``in_features`` (shapes on the meta device: no compute)."""
    leaves = [m for m in chain.modules() if not isinstance(m, nn.Sequential)]
    first = next((i for i, m in enumerate(leaves) if isinstance(m, nn.Linear)), None)
    if first is None:
        return 64
    body, want = nn.Sequential(*leaves[:first]), leaves[first].in_features
    meta = {k: torch.empty_like(v, device="meta") for k, v in (*body.named_parameters(), *body.named_buffers())}

    def features(s: int) -> int:
        try:
            x = torch.empty(1, channels, s, s, device="meta")
            return torch.func.functional_call(body, meta, (x,)).numel()
        except RuntimeError:  # too small for a kernel
            return 0

    lo, hi = 1, 4096
    while lo < hi:  # the feature count grows with the side
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if features(mid) < want else (lo, mid)
    return lo


def _check_chain(chain: nn.Sequential, scripted: torch.jit.ScriptModule, path: Path) -> None:
    conv = next((m for m in chain.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    side = _input_side(chain, channels)
    x = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            want, got = scripted(x), chain(x)
        except RuntimeError as e:
            raise WeightsError(
                f"{path}: the rebuilt TorchScript chain does not run ({_first_line(e)})") from None
    if got.shape != want.shape or (got - want).abs().max() > 1e-5 * want.abs().max().clamp_min(1e-12):
        raise WeightsError(
            f"{path}: the TorchScript chain rebuilt from its layers disagrees with the archive's forward "
            "(a layer with arguments the archive does not show); convert the model in Python instead"
        )

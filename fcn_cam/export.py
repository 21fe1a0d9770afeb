"""Maps in production: a forward-only graph of the score maps and cell maps, exported to
ONNX or ``torch.export`` and checked against onnxruntime.

Gradient CAMs need autograd at inference time; fcn-cam's maps need none. The score maps are
the converted net's plain output, and with the head's gates fixed the cell maps are a
closed-form forward computation. For the head ``h₁ = W₁ ⋆ F + b₁`` (the k×k layer), then
1×1 layers ``Wᵢ`` and channel-wise gates ``σᵢ``, the gradient of the class score at window
``w`` with respect to the first layer's output is the class row pushed back::

    g_c(w) = W₁ₓ₁ᵀ diag σ'(zᵢ(w)) … W_Lᵀ e_c               (zᵢ(w): gate i's input at w)
    A_c(p) = Σ_channels F(p) ⊙ ConvTranspose(g_c, W₁)(p)   (same dilation, stride 1, no padding)

which is :func:`fcn_cam.maps.cell_maps_of`'s backward pass written out: ReLU-like gates
give masks (exact), smooth gates (GELU, SiLU, …) their analytic derivative at the window's
own pre-activation (first order, as the cell maps are). :class:`CAMGraph` is that
computation as an ``nn.Module`` of plain tensor ops; :func:`export` writes it to a file,
runs the file at two sizes other than the one it was traced at, and refuses to keep a file
that disagrees with the module.

With ``pad="features"`` (``explain``'s default) the feature map is zero-padded inside the
graph: the top/left padding is a constant of the net, the bottom/right padding follows from
the dynamic input and feature sizes (:func:`feature_padding`, equal to
:func:`fcn_cam.geometry.feature_cover_padding`).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import ExportError
from .explanation import class_scores
from .geometry import Geometry
from .head import gemm_compatible
from .layers import eval_mode
from .settings import resolve_rank
from .surgery import FCN

FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
PADS = ("features", "none")
#: Output names; ONNX needs names distinct from the inputs', so the class explained (the
#: module's third output, ``target``) is ``target_class`` in a file.
OUTPUTS = ("scores", "class_scores", "target_class", "cells")
#: Network inputs an exported file is run at before it is kept: two sizes that are not the native one.
CHECK_SIZES: tuple[tuple[int, int], ...] = ((448, 448), (480, 672))
INPUTS = ("image", "target")
#: Metadata key (ONNX ``metadata_props``; ``fcn_cam.json`` in a ``.pt2`` archive).
METADATA_KEY = "fcn_cam"
#: Largest accepted ``max|file − module| / max|module|`` per output.
TOLERANCE = 1e-4
#: A gate input this close to a kink, relative to the layer's largest, may be on either side
#: of it in another implementation (:meth:`CAMGraph.kink_allowance`).
KINK_EPS = 1e-5


# --- gates: forward and derivative, both plain tensor ops ------------------------------------

Gate = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]
_SQRT_2_PI = math.sqrt(2 / math.pi)


def _gelu(m: nn.GELU) -> Gate:
    if m.approximate == "tanh":
        def d(x: torch.Tensor) -> torch.Tensor:
            t = torch.tanh(_SQRT_2_PI * (x + 0.044715 * x**3))
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_PI * (1 + 3 * 0.044715 * x * x)
        return (lambda x: F.gelu(x, approximate="tanh")), d
    # Φ(x) + x φ(x)
    return F.gelu, lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2 * math.pi)


def _silu_d(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _mish_d(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(F.softplus(x))
    return t + x * torch.sigmoid(x) * (1 - t * t)


def _between(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((x > lo) & (x < hi)).to(x.dtype)


def _where(x: torch.Tensor, inside: torch.Tensor | float, outside: torch.Tensor | float) -> torch.Tensor:
    """``inside`` where ``x > 0``, else ``outside``: autograd's convention at 0 (the slope below)."""
    one = torch.ones_like(x)
    return torch.where(x > 0, one * inside, one * outside)


#: The gates :class:`CAMGraph` takes: ``type → (layer → (forward, derivative))``. Derivatives
#: follow torch's backward at the kinks (ReLU: 0 at 0; Hardtanh: 0 at the bounds).
GATES: dict[type, Callable[[nn.Module], Gate]] = {
    nn.ReLU: lambda m: (F.relu, lambda x: (x > 0).to(x.dtype)),
    nn.ReLU6: lambda m: (F.relu6, lambda x: _between(x, 0.0, 6.0)),
    nn.Hardtanh: lambda m: ((lambda x: F.hardtanh(x, m.min_val, m.max_val)),
                            lambda x: _between(x, m.min_val, m.max_val)),
    nn.LeakyReLU: lambda m: ((lambda x: F.leaky_relu(x, m.negative_slope)),
                             lambda x: _where(x, 1.0, m.negative_slope)),
    nn.PReLU: lambda m: ((lambda x: F.prelu(x, m.weight)), lambda x: _where(x, 1.0, m.weight[:, None, None])),
    nn.ELU: lambda m: ((lambda x: F.elu(x, m.alpha)), lambda x: _where(x, 1.0, m.alpha * torch.exp(x))),
    nn.GELU: _gelu,
    nn.SiLU: lambda m: (F.silu, _silu_d),
    nn.Mish: lambda m: (F.mish, _mish_d),
    nn.Sigmoid: lambda m: (torch.sigmoid, lambda x: torch.sigmoid(x) * (1 - torch.sigmoid(x))),
    nn.Tanh: lambda m: (torch.tanh, lambda x: 1 - torch.tanh(x) ** 2),
    nn.Softplus: lambda m: ((lambda x: F.softplus(x, m.beta, m.threshold)),
                            lambda x: torch.where(x * m.beta > m.threshold, torch.ones_like(x),
                                                  torch.sigmoid(m.beta * x))),
    nn.Hardswish: lambda m: (F.hardswish, lambda x: torch.where(
        x <= -3, torch.zeros_like(x), torch.where(x < 3, x / 3 + 0.5, torch.ones_like(x)))),
    nn.Hardsigmoid: lambda m: (F.hardsigmoid, lambda x: _between(x, -3.0, 3.0) / 6),
    nn.Identity: lambda m: ((lambda x: x), torch.ones_like),
    nn.Dropout: lambda m: ((lambda x: x), torch.ones_like),  # eval mode
}


def kinks(layer: nn.Module) -> tuple[tuple[float, float], ...]:
    """``(where, jump)`` for each point where a gate's derivative jumps. A pre-activation
    within rounding of one may take either side in two correct implementations (another
    summation order: onnxruntime vs. torch, conv vs. GEMM); their cell maps then differ by
    that unit's share, at most ``jump`` times it (:meth:`CAMGraph.kink_allowance`)."""
    if isinstance(layer, nn.Hardtanh):  # ReLU6 included
        return ((float(layer.min_val), 1.0), (float(layer.max_val), 1.0))
    if isinstance(layer, nn.Hardswish):
        return ((-3.0, 0.5), (3.0, 0.5))
    if isinstance(layer, nn.Hardsigmoid):
        return ((-3.0, 1 / 6), (3.0, 1 / 6))
    if isinstance(layer, nn.ReLU):
        return ((0.0, 1.0),)
    if isinstance(layer, nn.LeakyReLU):
        return ((0.0, abs(1 - layer.negative_slope)),)
    if isinstance(layer, nn.PReLU):
        return ((0.0, float((1 - layer.weight.detach()).abs().max())),)
    if isinstance(layer, nn.ELU):
        return ((0.0, abs(1 - layer.alpha)),)
    return ()


def _gate(layer: nn.Module, where: str) -> Gate:
    make = GATES.get(type(layer))
    if make is None:
        names = ", ".join(t.__name__ for t in GATES)
        raise ExportError(
            f"{where} ({type(layer).__name__}) has no forward-only derivative in fcn_cam.export; "
            f"supported head layers: 1×1 Conv2d and {names}"
        )
    return make(layer)


# --- the feature padding, from the dynamic shape ---------------------------------------------

def _axis_constants(axis) -> tuple[int, int, Fraction]:
    """``(S, before, q)`` of one axis: the windows' (integer) stride, the constant leading
    padding and ``q = 1 + S/2 + O`` (see :func:`feature_padding`)."""
    stride, offset = int(axis.stride), Fraction(axis.offset).limit_denominator(1 << 16)
    if stride != axis.stride:
        raise ExportError(f"the windows' stride {axis.stride} is not a whole number of pixels")
    before = max(0, math.ceil((offset - Fraction(stride, 2)) / stride))
    return stride, before, 1 + Fraction(stride, 2) + offset


def feature_padding(fcn: FCN, size, features, axis: int):
    """The trailing feature padding (bottom for ``axis=0``, right for 1) for an input ``size``
    pixels long whose feature map is ``features`` cells long — integer arithmetic only, so
    that it stays symbolic in an exported graph (``torch.export`` ``SymInt``s)::

        after = max(0, ⌈(n − 1 − S/2 − O) / S⌉ − f + e + 1, e − f − before + 1)

    for the windows' stride ``S`` and offset ``O`` (:class:`Geometry` of features + head),
    the head's span ``e = d(k − 1)`` and the constant leading padding ``before``: the least
    padding after which the last window centre lies within half a stride of the last pixel
    and at least one window fits (:func:`fcn_cam.geometry.feature_cover_padding`'s rule)."""
    g = fcn.geometry
    stride, before, q = _axis_constants((g.y, g.x)[axis])
    head = fcn.head[0]
    span = head.dilation[axis] * (head.kernel_size[axis] - 1)
    # ⌈(n − q) / S⌉ = ⌈(n·den − num) / (S·den)⌉, with a non-negative dividend: ONNX's Div
    # truncates towards zero where Python floors, so a negative one would round the wrong way
    div = stride * q.denominator
    lift = -(-q.numerator // div)  # whole divisors added to the dividend, subtracted after
    reach = (size * q.denominator - q.numerator + lift * div + div - 1) // div - lift
    return torch.sym_max(torch.sym_max(0, reach - features + span + 1), span - features - before + 1)


def leading_padding(fcn: FCN) -> tuple[int, int]:
    """``(top, left)`` feature padding in cells: constants of the net (for every input size)."""
    g = fcn.geometry
    return _axis_constants(g.y)[1], _axis_constants(g.x)[1]


# --- the graph --------------------------------------------------------------------------------

class CAMGraph(nn.Module):
    """Score maps, class scores and the chosen class's cell map, forward-only.

    Inputs: ``image`` ``[B, 3, H, W]`` (normalized, as the FCN takes it) and ``target``
    ``[B]`` int64, a class index or −1 for the top class by ``rank``. Outputs:
    ``scores`` ``[B, K, h, w]`` (the converted net's maps over the padded features),
    ``class_scores`` ``[B, K]`` (their spatial mean or max), ``target`` ``[B]`` (the class
    explained) and ``cells`` ``[B, fh, fw]`` (its cell map on the padded feature grid, as
    :func:`fcn_cam.maps.cell_maps_of` gives it)::

        g_c = W₂ᵀ diag σ'(z₁) … W_Lᵀ e_c,     A_c = Σ_channels F ⊙ ConvTranspose(g_c, W₁)

    Every head layer runs as a ``Conv`` and its transpose as a ``ConvTranspose`` on the same
    weight (an exported file holds each weight once); the class row stays ``[B, C, 1, 1]``
    until the first gate from the end makes it per window. Gates the head ends in are
    supported (their derivative at the class channel); a head layer without a derivative
    here (a softmax over the classes kept by ``keep_softmax``, a custom module) is refused.
    Call ``.eval()`` first: the body's BatchNorm would otherwise use batch statistics.

    Args:
        fcn: a converted model whose head is a k×k conv, then 1×1 convs and channel-wise
            gates (:data:`GATES`), as surgery makes it. Its modules are shared, not copied.
        pad: ``features`` (zero-pad the feature map as ``explain`` does by default) or ``none``.
        rank: ``auto``, ``mean`` or ``max`` (:func:`fcn_cam.settings.resolve_rank`).

    Raises:
        ExportError: a head this graph cannot express (the message names the layer).
    """

    def __init__(self, fcn: FCN, pad: str = "features", rank: str = "auto") -> None:
        super().__init__()
        if pad not in PADS:
            raise ExportError(f"pad must be one of {', '.join(PADS)} for an exported graph, got {pad!r} "
                              "(cover/window pad the input image: pad it before the graph)")
        head = fcn.head
        if not gemm_compatible(head):
            raise ExportError(
                "the head is not a k×k Conv2d followed by unstrided, unpadded 1×1 convs and channel-wise "
                f"layers ({', '.join(type(m).__name__ for m in head)}); fcn_cam.export takes heads as surgery "
                "makes them"
            )
        self.fcn = fcn  # shares the modules: nothing is copied
        self.pad, self.rank = pad, resolve_rank(fcn, rank)
        self.layers, self.gates = [], []
        for i, m in enumerate(list(head)[1:], 1):
            self.layers.append(m)
            self.gates.append(None if isinstance(m, nn.Conv2d) else _gate(m, f"head layer {i}"))
        self.num_classes = fcn.num_classes

    @property
    def first(self) -> nn.Conv2d:
        """The head's k×k layer (reached through ``fcn``: registered once, exported once)."""
        return self.fcn.head[0]

    def pad_features(self, f: torch.Tensor, height, width) -> torch.Tensor:
        """``f`` zero-padded as ``feature_cover_padding`` pads it for an input of ``height × width``."""
        if self.pad == "none":
            return f
        top, left = leading_padding(self.fcn)
        bottom = feature_padding(self.fcn, height, f.shape[-2], 0)
        right = feature_padding(self.fcn, width, f.shape[-1], 1)
        return F.pad(f, (left, right, top, bottom))

    def head_rows(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], tuple[int, int, int]]:
        """The head on padded features: the last layer's output ``[B, K, h, w]``, each gate's
        input and ``(B, h, w)``."""
        y = F.conv2d(f, self.first.weight, self.first.bias, dilation=self.first.dilation)
        b, o, h, w = y.shape
        # 1×1 layers as convolutions: rows [B·h·w, C] would make torch.export assume B ≠ 1 (the
        # batch merged into the rows), and Conv / ConvTranspose share one weight in a file
        x = y
        inputs = []  # each gate's input: where its derivative is taken
        for m, gate in zip(self.layers, self.gates):
            if gate is None:
                x = F.conv2d(x, m.weight, m.bias)
            else:
                inputs.append(x)
                x = gate[0](x)
        return x, inputs, (b, h, w)

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.pad_features(self.fcn.features(image), image.shape[-2], image.shape[-1])
        x, inputs, (b, h, w) = self.head_rows(f)
        o = self.first.out_channels
        scores = x
        ranked = class_scores(scores, self.rank)
        chosen = torch.where(target < 0, ranked.argmax(1), target)
        # e_c pushed back: per image while no gate has been met, per window after
        classes = torch.arange(self.num_classes, device=chosen.device)
        v = (classes[None, :, None, None] == chosen[:, None, None, None]).to(x.dtype)  # [B, K, 1, 1]
        for m, gate in zip(reversed(self.layers), reversed(self.gates)):
            v = F.conv_transpose2d(v, m.weight) if gate is None else v * gate[1](inputs.pop())
        g = v.expand(b, o, h, w)
        back = F.conv_transpose2d(g, self.first.weight, dilation=self.first.dilation)
        cells = (back * f).sum(1)
        return scores, ranked, chosen, cells

    @torch.no_grad()
    def kink_allowance(self, image: torch.Tensor, target: torch.Tensor, eps: float = KINK_EPS) -> dict:
        """How far another correct implementation's cell maps may lie from this one's, per cell.

        A gate input within ``eps × max|input|`` of a kink (:func:`kinks`) may fall on the
        other side elsewhere; flipping unit ``j`` of gate ``i`` at window ``w`` changes
        ``g_c(w)`` by at most ``jump·|v_j(w)|`` (``v``: the class row pushed back to that gate)
        pushed on through the earlier layers in absolute values, and the cells by
        ``Σ_channels |F| ⊙ ConvTranspose(|Δg|, |W₁|)``. Returns ``{"allowance": [B, fh, fw],
        "units": how many gate inputs were that near a kink}`` for the classes ``target``
        (``[B]``, none −1)."""
        f = self.pad_features(self.fcn.features(image), image.shape[-2], image.shape[-1])
        _, inputs, (b, h, w) = self.head_rows(f)
        layers, gates = self.layers, self.gates
        classes = torch.arange(self.num_classes, device=f.device)
        v = (classes[None, :, None, None] == target[:, None, None, None]).to(f.dtype).expand(-1, -1, h, w)
        total = torch.zeros(b, self.first.out_channels, h, w, device=f.device, dtype=f.dtype)
        at = len(inputs)
        derivs = [gate[1](z).abs() for gate, z in zip([g for g in gates if g is not None], inputs)]
        units = 0
        for i in reversed(range(len(layers))):
            if gates[i] is None:
                v = F.conv_transpose2d(v, layers[i].weight)
                continue
            at -= 1
            z = inputs[at]
            scale = z.abs().amax().clamp(min=1e-30)
            u = torch.zeros_like(z)
            for k, jump in kinks(layers[i]):
                near = (z - k).abs() <= eps * scale
                units += int(near.sum())
                u = u + near * (jump * v.abs())
            d = at  # on through the earlier layers, in absolute values
            for m, gate in zip(reversed(layers[:i]), reversed(gates[:i])):
                if gate is None:
                    u = F.conv_transpose2d(u, m.weight.abs())
                else:
                    d -= 1
                    u = u * derivs[d]
            total += u
            v = v * gates[i][1](z)
        g = total
        back = F.conv_transpose2d(g, self.first.weight.abs(), dilation=self.first.dilation)
        return {"allowance": (back * f.abs()).sum(1), "units": units}


# --- export -----------------------------------------------------------------------------------

def metadata(fcn: FCN, graph: CAMGraph, opset: int | None = None) -> dict:
    """What a consumer needs to place the cells without fcn-cam: normalization, classes,
    native input size, the resize rule and the maps' geometry in network-input pixels (the
    constant leading feature padding already applied)."""
    top, left = leading_padding(fcn) if graph.pad == "features" else (0, 0)
    shift = (top * fcn.geometry.y.stride, left * fcn.geometry.x.stride)
    from . import __version__

    return {
        "format": "fcn-cam cam-graph 1",
        "fcn_cam_version": __version__,
        "arch": fcn.info.get("arch"),
        "weights": fcn.info.get("weights"),
        "head": fcn.info.get("head"),
        "inputs": {"image": "[B, 3, H, W] float32, RGB, (pixel/255 − mean) / std",
                   "target": "[B] int64, class index or -1 for the top class"},
        "outputs": {"scores": "[B, K, h, w] window score maps", "class_scores": "[B, K] ranking statistic",
                    "target_class": "[B] int64 class explained", "cells": "[B, fh, fw] its cell map"},
        "input_size": list(fcn.input_size),
        "resize": "shorter side to round(scale × min(input_size)) px, PIL bilinear, aspect kept",
        "mean": list(fcn.info["mean"]),
        "std": list(fcn.info["std"]),
        "class_names": fcn.class_names,
        "num_classes": fcn.num_classes,
        "rank": graph.rank,
        "pad": graph.pad,
        "feature_pad": [top, left],
        "score_geometry": fcn.geometry.shifted(*shift).to_dict(),
        "cell_geometry": Geometry.of(fcn.features).shifted(*shift).to_dict(),
        "output_stride": fcn.info.get("output_stride"),
        "piecewise_linear": fcn.info.get("head_piecewise_linear"),
        "opset": opset,
    }


def _example(fcn: FCN, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A trace input whose sizes are none of 0, 1 or each other (torch.export would
    specialize them): twice the native size, one stride wider."""
    h, w = fcn.input_size
    stride = int(fcn.geometry.x.stride)
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 2 * h, 2 * w + stride, generator=g).to(device),
            torch.tensor([-1, 0], device=device))


def _trace(graph: CAMGraph, example: tuple[torch.Tensor, torch.Tensor]) -> torch.export.ExportedProgram:
    dim = torch.export.Dim
    batch = dim("batch", min=1)
    shapes = {"image": {0: batch, 2: dim.DYNAMIC, 3: dim.DYNAMIC}, "target": {0: batch}}
    with torch.no_grad():
        return torch.export.export(graph, example, dynamic_shapes=shapes)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)) if b.size else 0.0


def compare(got: Sequence, want: Sequence, allowance: np.ndarray | torch.Tensor | None = None) -> dict:
    """Relative disagreement per output (``max|got − want| / max|want|``) and whether the
    explained classes are the same. For the cell maps, ``cells`` is what remains beyond
    ``allowance`` (:meth:`CAMGraph.kink_allowance`: gates at a kink, which either side
    fixes correctly), ``cells_raw`` the plain figure and ``cells_allowed`` the number of
    cells with an allowance."""
    out = {n: _rel(g, w) for n, g, w in zip(OUTPUTS[:2], got, want) if w is not None}
    a, b = np.asarray(got[3], np.float64), np.asarray(want[3], np.float64)
    allow = np.zeros(b.shape) if allowance is None else np.asarray(allowance, np.float64)
    if a.shape != b.shape or allow.shape != b.shape:
        out.update(cells=math.inf, cells_raw=math.inf, cells_allowed=0)
    else:
        scale = max(np.abs(b).max(), 1e-12) if b.size else 1.0
        diff = np.abs(a - b)
        out["cells"] = float(np.clip(diff - allow, 0, None).max() / scale) if b.size else 0.0
        out["cells_raw"] = float(diff.max() / scale) if b.size else 0.0
        out["cells_allowed"] = int((allow > 0).sum())
    out["target_equal"] = bool(np.array_equal(np.asarray(got[2]), np.asarray(want[2])))
    return out


def _check_inputs(fcn: FCN, size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(size[0] * 7919 + size[1])
    return (torch.randn(2, 3, *size, generator=g).to(device),
            torch.tensor([-1, fcn.num_classes - 1], device=device))


def _onnx_runner(path: Path) -> Callable:
    try:
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"checking an ONNX export needs onnxruntime ({e.name} is missing): "
                          "pip install 'fcn-cam[export]'") from None
    opts = onnxruntime.SessionOptions()
    session = onnxruntime.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x, t: session.run(list(OUTPUTS), {"image": x.cpu().numpy(), "target": t.cpu().numpy()})


def _pt2_runner(path: Path) -> Callable:
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor, t: torch.Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.cpu().numpy() for o in module(x, t)]
    return run


def _write_onnx(ep: torch.export.ExportedProgram, tmp: Path, meta: dict, opset: int | None) -> int:
    import warnings

    try:
        import onnxscript  # noqa: F401 - torch.onnx's exporter needs it
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnxscript and onnx ({e.name} is missing): "
                          "pip install 'fcn-cam[export]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(ep, (), dynamo=True, opset_version=opset, input_names=list(INPUTS),
                                    output_names=list(OUTPUTS), verbose=False)
    model = program.model
    used = model.opset_imports.get("", opset)
    meta = {**meta, "opset": used}
    model.metadata_props[METADATA_KEY] = json.dumps(meta)
    program.save(str(tmp), external_data=False)
    return used


def export(
    fcn: FCN,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    opset: int | None = None,
    check_sizes: Sequence[tuple[int, int]] = CHECK_SIZES,
    overwrite: bool = False,
    pad: str = "features",
    rank: str = "auto",
    tolerance: float = TOLERANCE,
) -> dict:
    """Write ``fcn``'s :class:`CAMGraph` to ``path`` (dynamic batch, height and width) and
    check it: the written file is run (onnxruntime on CPU for ONNX, ``torch.export.load``
    for ``.pt2``) at each of ``check_sizes`` on random inputs, with one target given and one
    −1, against the module; a file that disagrees by more than ``tolerance`` (relative, per
    output) or explains another class is deleted and :class:`ExportError` raised. The file
    appears whole or not at all (written beside ``path``, then renamed).

    Args:
        format: ``onnx`` or ``torch-export`` (a ``.pt2`` archive of ``torch.export``).
        opset: the ONNX opset (default: the exporter's).
        check_sizes: ``(H, W)`` network inputs to check at; the graph is traced at twice the
            native size, so the defaults differ from it.

    Returns:
        ``{"path", "format", "bytes", "opset", "metadata", "check": [{"size", "scores",
        "class_scores", "cells", "target_equal"}], "tolerance"}``.
    """
    if format not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not path.parent.is_dir():
        raise ExportError(f"{path}: no such directory {path.parent}")
    if any(p.dtype != torch.float32 for p in fcn.parameters()):
        raise ExportError("export a float32 model (fcn_cam.prepare(..., precision='fp32') or load it as saved)")
    if not check_sizes:
        raise ExportError("check_sizes is empty: an export is only written once checked")
    device = next(fcn.parameters()).device
    with eval_mode(fcn):  # each submodule's flag restored after
        graph = CAMGraph(fcn, pad=pad, rank=rank).eval()
        ep = _trace(graph, _example(fcn, device))
        meta = metadata(fcn, graph)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            if format == "onnx":
                meta["opset"] = _write_onnx(ep, tmp, meta, opset)
                run = _onnx_runner(tmp)
            else:
                meta["torch"] = torch.__version__
                torch.export.save(ep, str(tmp), extra_files={f"{METADATA_KEY}.json": json.dumps(meta)})
                run = _pt2_runner(tmp)
            checks = []
            for size in check_sizes:
                x, t = _check_inputs(fcn, tuple(size), device)
                with torch.no_grad():
                    want = [o.cpu().numpy() for o in graph(x, t)]
                allow = graph.kink_allowance(x, torch.as_tensor(want[2], device=device))
                c = {"size": list(size), **compare(run(x, t), want, allow["allowance"].cpu().numpy()),
                     "kink_units": allow["units"]}
                checks.append(c)
                bad = [f"{k} {c[k]:.3g}" for k in ("scores", "class_scores", "cells") if not c[k] <= tolerance]
                if bad or not c["target_equal"]:
                    what = ", ".join(bad) or "a different target class"
                    raise ExportError(
                        f"{path}: not written: the {format} graph disagrees with the module at "
                        f"{size[0]}×{size[1]} ({what}; tolerance {tolerance:g} relative)"
                    )
            del run
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp made it 0600
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return {"path": str(path), "format": format, "bytes": path.stat().st_size, "opset": meta.get("opset"),
            "metadata": meta, "check": checks, "tolerance": tolerance}


def read_metadata(path: str | os.PathLike) -> dict:
    """The fcn-cam metadata of an exported file (ONNX ``metadata_props`` or the ``.pt2``'s
    ``fcn_cam.json``)."""
    path = Path(path)
    if path.suffix == ".pt2":
        extra = {f"{METADATA_KEY}.json": ""}
        torch.export.load(str(path), extra_files=extra)
        return json.loads(extra[f"{METADATA_KEY}.json"])
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path}: no fcn-cam metadata (not written by fcn_cam.export)")
    return json.loads(props[METADATA_KEY])

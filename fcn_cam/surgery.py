"""Model surgery: a classifier with a fully-connected (or GAP) head → class score maps.

FC heads (VGG, AlexNet, any ``features → [adaptive pool] → flatten → Linear…`` net): the
first ``Linear(C·h·w, O)`` becomes ``Conv2d(C, O, (h, w))`` with ``weight.view(O, C, h, w)``
(PyTorch flattens in C, H, W order), later Linears become 1×1 convs, BatchNorm1d is folded
into its Linear, Dropout is dropped and the adaptive pool is bypassed (identity at
``input_size``, a different function at other sizes). On a larger input the result is a
sliding window of the original classifier with stride = the features' stride.

GAP heads (ResNet, ``… → AdaptiveAvgPool2d(1) → flatten → Linear``): the Linear becomes a
1×1 conv applied *before* the pooling, which gives exactly the CAM of Zhou et al. (2016),
``M_c(x, y) = Σ_k w_k^c f_k(x, y) + b_c``, whose spatial mean is the logit at any size.

Every conversion is checked against the original logits on probe inputs.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .geometry import SHORTCUT_NAMES, Geometry, map_size, spatial_layers
from .head import run_head

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Pointwise layers that act the same on [B, C] vectors and on [B, C, h, w] maps.
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh)
SKIPPED = (nn.Dropout, nn.Identity, nn.Flatten)


class ConversionError(ValueError):
    """The model cannot be converted (unsupported shape) or failed the exactness check."""


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, restoring each submodule's training flag on exit."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags.items():
            m.training = flag


class FCN(nn.Module):
    """A fully-convolutional classifier: ``[B, 3, H, W]`` images → ``[B, K, h, w]`` maps.

    Attributes:
        features: the original convolutional body (copied; stride possibly reduced).
        head: the classifier as convolutions.
        info: plain metadata (architecture, class names, input size, normalization,
            head kind, output stride, exactness result, weights).
        head_mode: how the head runs, ``"gemm"`` (window-grid matrix products, the
            default) or ``"conv"`` (its convolutions); a run-time choice, not saved
            (:mod:`fcn_cam.head`).
    """

    def __init__(self, features: nn.Module, head: nn.Sequential, info: dict) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.info = info
        self.head_mode = "gemm"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_head(self.features(x))

    def run_head(self, features: torch.Tensor) -> torch.Tensor:
        """The head on a ``[B, C, H, W]`` feature map → ``[B, K, h, w]`` score maps."""
        return run_head(self.head, features, self.head_mode)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial mean of the score maps: the original logits at ``input_size`` (and, for
        GAP heads, at every size); the mean of the sliding-window logits otherwise."""
        return self(x).mean(dim=(-2, -1))

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self)

    def map_size(self, height: int, width: int) -> tuple[int, int]:
        return map_size(self, height, width)

    @property
    def class_names(self) -> list[str] | None:
        return self.info.get("class_names")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.info["input_size"])


@dataclass
class _Split:
    body: nn.Module
    pool: nn.Module | None
    head: list[nn.Module]


def _leaves(modules: Sequence[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        out.extend(_leaves(list(m.children())) if isinstance(m, nn.Sequential) else [m])
    return out


def split(model: nn.Module) -> _Split:
    """Find the convolutional body, the pooling and the head layers of a classifier."""
    if isinstance(model, nn.Sequential):
        children = list(model.named_children())
        flat = [i for i, (_, c) in enumerate(children) if isinstance(c, nn.Flatten)]
        if not flat:
            raise ConversionError(
                "expected an nn.Sequential with an nn.Flatten between the convolutional part "
                f"and the Linear head; found no nn.Flatten among {[type(c).__name__ for _, c in children]}"
            )
        body = children[: flat[0]]
        pool = None
        if body and isinstance(body[-1][1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            pool = body.pop()[1]
        return _Split(nn.Sequential(OrderedDict(body)), pool, _leaves([c for _, c in children[flat[0] + 1 :]]))
    if hasattr(model, "features") and hasattr(model, "classifier"):  # VGG, AlexNet
        return _Split(model.features, getattr(model, "avgpool", None), _leaves([model.classifier]))
    if all(hasattr(model, n) for n in ("conv1", "layer4", "avgpool", "fc")):  # ResNet
        body = [(n, c) for n, c in model.named_children() if n not in ("avgpool", "fc")]
        return _Split(nn.Sequential(OrderedDict(body)), model.avgpool, _leaves([model.fc]))
    raise ConversionError(
        f"cannot find the head of {type(model).__name__}: expected `features` + `classifier` "
        "(VGG/AlexNet), a ResNet (`conv1` … `layer4`, `avgpool`, `fc`), or an nn.Sequential "
        "containing nn.Flatten"
    )


def _fold_head(layers: list[nn.Module]) -> list[nn.Module | tuple[torch.Tensor, torch.Tensor]]:
    """Head layers → ``(W, b)`` matrices and pointwise modules, BatchNorm1d folded in.

    BatchNorm1d in eval mode is ``y = a·x + c`` with ``a = γ / √(σ² + ε)``,
    ``c = β - a·μ``; after a Linear it folds as ``(a·W, a·b + c)``, before one as
    ``(W·a, b + W·c)``.
    """
    ops: list = []
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    for layer in layers:
        if isinstance(layer, SKIPPED):
            continue
        if isinstance(layer, nn.BatchNorm1d):
            a = 1 / torch.sqrt(layer.running_var + layer.eps)
            if layer.affine:
                a = a * layer.weight
            c = (layer.bias if layer.affine else 0) - a * layer.running_mean
            a, c = a.detach().double(), c.detach().double()
            if ops and isinstance(ops[-1], tuple):
                w, b = ops[-1]
                ops[-1] = (a[:, None] * w, a * b + c)
            else:
                pending = (a, c) if pending is None else (a * pending[0], a * pending[1] + c)
        elif isinstance(layer, nn.Linear):
            w = layer.weight.detach().double()
            b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(len(w))
            if pending is not None:
                w, b = w * pending[0][None, :], b + w @ pending[1]
                pending = None
            ops.append((w, b.to(w.device)))
        elif isinstance(layer, POINTWISE):
            if pending is not None:
                raise ConversionError("BatchNorm1d followed by an activation cannot be folded")
            ops.append(copy.deepcopy(layer))
        else:
            raise ConversionError(
                f"unsupported layer in the head: {type(layer).__name__} (expected Linear, "
                "BatchNorm1d, Dropout or a pointwise activation such as ReLU)"
            )
    if pending is not None:
        raise ConversionError("BatchNorm1d at the end of the head has no Linear to fold into")
    return ops


def _conv(w: torch.Tensor, b: torch.Tensor, channels: int, kernel: tuple[int, int], dtype) -> nn.Conv2d:
    conv = nn.Conv2d(channels, w.shape[0], kernel, device=w.device, dtype=dtype)
    with torch.no_grad():
        conv.weight.copy_(w.view(w.shape[0], channels, *kernel))
        conv.bias.copy_(b)
    return conv


def _feature_shape(body: nn.Module, size: tuple[int, int], like: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad(), eval_mode(body):
        return tuple(body(torch.zeros(1, 3, *size, device=like.device, dtype=like.dtype)).shape[1:])


def _build_head(s: _Split, input_size: tuple[int, int], ref: torch.Tensor) -> tuple[nn.Sequential, str]:
    ops = _fold_head(s.head)
    linears = [op for op in ops if isinstance(op, tuple)]
    if not linears:
        raise ConversionError("the head has no Linear layer")
    c, h, w = _feature_shape(s.body, input_size, ref)
    gap = isinstance(s.pool, nn.AdaptiveAvgPool2d) and s.pool.output_size in (1, (1, 1))
    if gap and len(linears) > 1:
        raise ConversionError(
            "global average pooling followed by several Linear layers: neither CAM (one Linear "
            "after the pool) nor FC surgery (flattened feature map) is exact for this head"
        )
    if gap:
        kernel = (1, 1)
    else:
        kernel = (h, w)
        if s.pool is not None:
            target = s.pool.output_size
            target = (target, target) if isinstance(target, int) else tuple(target)
            target = tuple(t if t is not None else f for t, f in zip(target, (h, w)))
            if target != (h, w):
                raise ConversionError(
                    f"the adaptive pool maps the {h}×{w} features to {target[0]}×{target[1]} at "
                    f"input size {input_size[0]}×{input_size[1]}; convert at the size where it is "
                    "the identity (the model's native input size)"
                )
    first = linears[0][0]
    if first.shape[1] != c * kernel[0] * kernel[1]:
        raise ConversionError(
            f"the first Linear takes {first.shape[1]} inputs but the features give "
            f"{c}×{kernel[0]}×{kernel[1]} = {c * kernel[0] * kernel[1]} at input size "
            f"{input_size[0]}×{input_size[1]}; pass the model's native input_size"
        )
    layers, channels, k = [], c, kernel
    for op in ops:
        if isinstance(op, tuple):
            layers.append(_conv(op[0], op[1], channels, k, ref.dtype))
            channels, k = op[0].shape[0], (1, 1)
        else:
            layers.append(op)
    return nn.Sequential(*layers), "gap" if gap else "fc"


def set_output_stride(fcn: FCN, output_stride: int) -> None:
    """Reduce the score maps' stride by the "à trous" trick (FCN paper §3.2), in place.

    The last strided layers whose strides multiply to ``stride / output_stride`` get
    stride 1, and every later layer gets its dilation and padding multiplied by the
    accumulated factor. The maps then equal shift-and-stitch of the original net (the
    net run on inputs shifted by multiples of ``output_stride``, interleaved) except
    where a receptive field touches the border.
    """
    stride = int(Geometry.of(fcn.features).y.stride)
    if output_stride <= 0 or stride % output_stride:
        raise ConversionError(f"output stride must divide the native stride {stride}, got {output_stride}")
    factor, chosen = stride // output_stride, []
    for layer in reversed(list(spatial_layers(fcn.features))):
        if factor == 1:
            break
        s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        if s > 1:
            if factor % s:
                raise ConversionError(f"cannot reach output stride {output_stride} with stride-{s} layers")
            chosen.append(layer)
            factor //= s
    m = 1
    for layer in spatial_layers(fcn):
        if m > 1:
            k = layer.kernel_size if isinstance(layer.kernel_size, int) else max(layer.kernel_size)
            if isinstance(layer, nn.AvgPool2d) and k > 1:
                raise ConversionError("AvgPool2d has no dilation; cannot reduce the stride before it")
            if not isinstance(layer, nn.AvgPool2d):
                layer.dilation = _times(layer.dilation, m)
                layer.padding = _times(layer.padding, m)
        if any(layer is c for c in chosen):
            m *= layer.stride if isinstance(layer.stride, int) else layer.stride[0]
            _unstride(layer)
    # ResNet shortcuts beside a de-strided block must keep the shapes equal.
    for module in fcn.modules():
        for name in SHORTCUT_NAMES & set(dict(module.named_children())):
            main = [c for n, c in module.named_children() if n not in SHORTCUT_NAMES]
            if any(layer is c for sub in main for layer in spatial_layers(sub) for c in chosen):
                for layer in spatial_layers(getattr(module, name)):
                    _unstride(layer)
    fcn.info["output_stride"] = output_stride


def _times(v: int | tuple[int, ...], m: int) -> int | tuple[int, ...]:
    return v * m if isinstance(v, int) else tuple(x * m for x in v)


def _unstride(layer: nn.Module) -> None:
    layer.stride = (1, 1) if isinstance(layer, nn.Conv2d) else 1


@torch.no_grad()
def check(model: nn.Module, fcn: FCN, input_size: tuple[int, int], n: int = 2, seed: int = 0) -> dict:
    """Compare the original logits with the converted net's on random probe inputs.

    Returns:
        ``{"max_abs_diff", "rel_diff", "top1_agree", "probes", "input_size"}`` where
        ``rel_diff = max|logits - mean(maps)| / max|logits|``.
    """
    p = next(model.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, *input_size, generator=g).to(p.device, p.dtype)
    # At a reduced output stride the native cells are every f-th cell of the map.
    f = fcn.info["native_stride"] // fcn.info["output_stride"]
    with eval_mode(model), eval_mode(fcn):
        ref = model(x).double()
        got = fcn(x)[..., ::f, ::f].double().mean(dim=(-2, -1))
    diff = (ref - got).abs().max().item()
    return {
        "max_abs_diff": diff,
        "rel_diff": diff / max(ref.abs().max().item(), 1e-12),
        "top1_agree": bool((ref.argmax(1) == got.argmax(1)).all()),
        "probes": n,
        "input_size": list(input_size),
    }


def convert(
    model: nn.Module,
    input_size: int | tuple[int, int] = 224,
    *,
    output_stride: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    arch: str | None = None,
    weights: str | None = None,
    tolerance: float = 1e-4,
    verify: bool = True,
) -> FCN:
    """Rewrite a classifier's head as convolutions so it returns class score maps.

    Args:
        model: a VGG/AlexNet-like net (``features``, optional adaptive pool,
            ``classifier``), a ResNet, or an ``nn.Sequential`` with an ``nn.Flatten``.
            It is not modified.
        input_size: the model's native input size (where its adaptive pool, if any, is
            the identity).
        output_stride: a finer stride for the maps (e.g. 16 or 8 for VGG), by dilation.
        class_names, mean, std: metadata used by :func:`fcn_cam.explain`.
        arch, weights: provenance labels stored with the model.
        tolerance: the largest accepted ``max|logits - maps| / max|logits|``.
        verify: check against the original logits (only skipped when rebuilding a
            saved model whose check is on record).

    Returns:
        An :class:`FCN` on the model's device with ``info["exactness"]`` recorded.

    Raises:
        ConversionError: unsupported architecture or failed exactness check.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    ref = next(model.parameters()).detach()
    s = split(model)
    head, kind = _build_head(s, size, ref)
    features = copy.deepcopy(s.body)
    if class_names is not None and len(class_names) != head[-1].out_channels:
        raise ConversionError(
            f"{len(class_names)} class names for {head[-1].out_channels} classes"
        )
    info = {
        "arch": arch or type(model).__name__,
        "weights": weights,
        "head": kind,
        "input_size": list(size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "class_names": list(class_names) if class_names is not None else None,
        "native_stride": int(Geometry.of(features).y.stride),
        "output_stride": int(Geometry.of(features).y.stride),
        "exactness": None,
    }
    fcn = FCN(features, head, info).eval()
    if output_stride is not None and output_stride != info["output_stride"]:
        set_output_stride(fcn, output_stride)
    if verify:
        result = check(model, fcn, size)
        info["exactness"] = result
        if result["rel_diff"] > tolerance or not result["top1_agree"]:
            raise ConversionError(
                f"converted net disagrees with the original: max |Δlogit| = "
                f"{result['max_abs_diff']:.3g} ({result['rel_diff']:.3g} of the largest logit, "
                f"tolerance {tolerance:g}), same top-1: {result['top1_agree']}"
            )
    info["geometry"] = fcn.geometry.to_dict()
    return fcn

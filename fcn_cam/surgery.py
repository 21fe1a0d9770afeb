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

Head layers between the Linears are kept when they act on ``[B, C]`` vectors and on
``[B, C, h, w]`` maps the same way at every position (ReLU, PReLU, GELU, …: decided by
probing the layer, not by a list); constant per-channel affine maps (BatchNorm1d, an
ONNX ``Mul``/``Add``) are folded into the neighbouring Linear. A model that flattens its
features in another order than C, H, W (Keras: H, W, C) says so with ``flatten_order``.

Surgery converts a :class:`~fcn_cam.layout.Layout` (body, pool, head layers, flatten order)
and imports no importer: :mod:`fcn_cam.importers` turn models into layouts and
:func:`fcn_cam.conversion.convert` hands their result here. Every conversion is checked
against the original logits on probe inputs.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .errors import ConversionError
from .geometry import PADS, SHORTCUT_NAMES, Geometry, map_size, spatial_layers
from .head import run_head
from .layers import (
    PIECEWISE_LINEAR,
    SKIPPED,
    SOFTMAX,
    ChannelAffine,
    ChannelSoftmax,
    channelwise,
    eval_mode,
    shared_copy,
)
from .layout import Layout, check_flatten_order

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
    def num_classes(self) -> int:
        return _classes(self.head)

    @property
    def class_names(self) -> list[str] | None:
        return self.info.get("class_names")

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.info["input_size"])


def _affine(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(a, c)`` with ``layer(x) = a·x + c`` per channel, for BatchNorm1d (eval) and ChannelAffine.

    BatchNorm1d in eval mode has ``a = γ / √(σ² + ε)``, ``c = β - a·μ``.
    """
    if isinstance(layer, ChannelAffine):
        return layer.scale.detach().double().flatten(), layer.shift.detach().double().flatten()
    if isinstance(layer, nn.BatchNorm1d):
        a = 1 / torch.sqrt(layer.running_var + layer.eps)
        if layer.affine:
            a = a * layer.weight
        c = (layer.bias if layer.affine else 0) - a * layer.running_mean
        return a.detach().double(), c.detach().double()
    return None


def _fold_head(
    layers: list[nn.Module], like: torch.Tensor
) -> list[nn.Module | tuple[torch.Tensor, torch.Tensor]]:
    """Head layers → ``(W, b)`` matrices and channel-wise modules, affine layers folded in.

    A per-channel affine ``y = a·x + c`` (BatchNorm1d, ChannelAffine) after a Linear folds
    as ``(a·W, a·b + c)``, before one as ``(W·a, b + W·c)``.
    """
    ops: list = []
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    for i, layer in enumerate(layers):
        where = f"head layer {i} ({type(layer).__name__})"
        if isinstance(layer, SKIPPED):
            continue
        ac = _affine(layer)
        if ac is not None:
            a, c = ac
            if ops and isinstance(ops[-1], tuple):
                w, b = ops[-1]
                ops[-1] = (a[:, None] * w, a * b + c)
            else:
                pending = (a, c) if pending is None else (a * pending[0], a * pending[1] + c)
        elif isinstance(layer, nn.Linear):
            # float64 only where an affine layer is folded in (promotion below): VGG16's first
            # Linear is 411 MB in fp32, 822 MB more as a float64 copy
            w = layer.weight.detach()
            b = layer.bias.detach() if layer.bias is not None else w.new_zeros(len(w))
            if pending is not None:
                a, c = (v.expand(w.shape[1]) if v.numel() == 1 else v for v in pending)
                w, b = w.double(), b.double()
                w, b = w * a[None, :], b + w @ c
                pending = None
            ops.append((w, b.to(w.device)))
        else:
            linears = [op for op in ops if isinstance(op, tuple)]
            if not linears:
                raise ConversionError(
                    f"{where} sits between the flatten and the first Linear; only Dropout and "
                    "per-channel affine layers (BatchNorm1d) can be folded there — move it before the flatten"
                )
            if pending is not None:
                raise ConversionError(
                    f"{where} follows a BatchNorm1d/affine layer that has no Linear to fold into"
                )
            if not channelwise(layer, linears[-1][0].shape[0], like):
                raise ConversionError(
                    f"unsupported layer in the head: {where} does not act on [B, C] vectors and on "
                    "[B, C, h, w] maps the same way (channel at dim 1), so it has no convolutional form"
                )
            ops.append(copy.deepcopy(layer))
    if pending is not None:
        raise ConversionError(
            "BatchNorm1d (or a constant Mul/Add) at the end of the head has no Linear to fold into"
        )
    return ops


def _conv(
    w: torch.Tensor, b: torch.Tensor, channels: int, kernel: tuple[int, int], dtype, order: str = "chw"
) -> nn.Conv2d:
    """A conv with a Linear's weights; ``order`` is how the Linear's inputs were flattened:
    the weight is viewed in that order, then permuted to the conv's (C, kh, kw)."""
    conv = nn.Conv2d(channels, w.shape[0], kernel, device="meta", dtype=dtype)  # no random init
    sizes = {"c": channels, "h": kernel[0], "w": kernel[1]}
    weight = w.view(w.shape[0], *(sizes[d] for d in order)).permute(0, *(1 + order.index(d) for d in "chw"))
    # no copy where the values are the Linear's own: the conv shares its storage (chw order)
    conv.weight = nn.Parameter(weight.to(dtype).contiguous())
    conv.bias = nn.Parameter(b.to(device=w.device, dtype=dtype))
    return conv


def _feature_shape(body: nn.Module, size: tuple[int, int], like: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad(), eval_mode(body):
        return tuple(body(torch.zeros(1, 3, *size, device=like.device, dtype=like.dtype)).shape[1:])


def _build_head(
    body: nn.Module, pool: nn.Module | None, head: list[nn.Module], input_size: tuple[int, int],
    ref: torch.Tensor, order: str,
) -> tuple[nn.Sequential, str]:
    ops = _fold_head(head, ref)
    linears = [op for op in ops if isinstance(op, tuple)]
    if not linears:
        raise ConversionError("the head has no Linear layer")
    c, h, w = _feature_shape(body, input_size, ref)
    gap = isinstance(pool, nn.AdaptiveAvgPool2d) and pool.output_size in (1, (1, 1))
    if gap and len(linears) > 1:
        raise ConversionError(
            "global average pooling followed by several Linear layers: neither CAM (one Linear "
            "after the pool) nor FC surgery (flattened feature map) is exact for this head"
        )
    if gap:
        kernel = (1, 1)
    else:
        kernel = (h, w)
        if pool is not None:
            target = pool.output_size
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
            layers.append(_conv(op[0], op[1], channels, k, ref.dtype, order))
            channels, k, order = op[0].shape[0], (1, 1), "chw"
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
        if isinstance(layer, PADS):
            continue
        s = layer.stride if isinstance(layer.stride, int) else layer.stride[0]
        if s > 1:
            if factor % s:
                raise ConversionError(f"cannot reach output stride {output_stride} with stride-{s} layers")
            chosen.append(layer)
            factor //= s
    m = 1
    for layer in spatial_layers(fcn):
        if m > 1 and isinstance(layer, PADS):  # padding counted in cells of the denser grid
            layer.padding = _times(layer.padding, m)
            continue
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
def check(
    reference: Callable[[torch.Tensor], torch.Tensor], fcn: FCN, input_size: tuple[int, int],
    n: int = 2, seed: int = 0,
) -> dict:
    """Compare the original logits (``reference(x)``) with the converted net's on random probes.

    Returns:
        ``{"max_abs_diff", "rel_diff", "top1_agree", "probes", "input_size"}`` where
        ``rel_diff = max|logits - mean(maps)| / max|logits|``.
    """
    p = next(fcn.parameters())
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, *input_size, generator=g).to(p.device, p.dtype)
    # At a reduced output stride the native cells are every f-th cell of the map.
    f = fcn.info["native_stride"] // fcn.info["output_stride"]
    modules = [m for m in (reference, fcn) if isinstance(m, nn.Module)]
    with contextlib.ExitStack() as stack:
        for m in modules:
            stack.enter_context(eval_mode(m))
        ref = torch.as_tensor(reference(x)).to(p.device).double()
        got = fcn(x)[..., ::f, ::f].double().mean(dim=(-2, -1))
    if ref.shape != got.shape:
        raise ConversionError(
            f"the original gives logits of shape {tuple(ref.shape)}, the converted net "
            f"{tuple(got.shape)}; if the model has several outputs pick the class logits with output="
        )
    diff = (ref - got).abs().max().item()
    return {
        "max_abs_diff": diff,
        "rel_diff": diff / max(ref.abs().max().item(), 1e-12),
        "top1_agree": bool((ref.argmax(1) == got.argmax(1)).all()),
        "probes": n,
        "input_size": list(input_size),
    }


def convert_layout(
    layout: Layout,
    input_size: int | tuple[int, int] = 224,
    *,
    flatten_order: str | None = None,
    keep_softmax: bool = False,
    output_stride: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    arch: str | None = None,
    weights: str | None = None,
    tolerance: float = 1e-4,
    verify: bool = True,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FCN:
    """Rewrite a :class:`Layout`'s head as convolutions and check the result.

    The arguments are :func:`fcn_cam.convert`'s (which reads the layout off a model and
    calls this); ``reference`` defaults to ``layout.original``, or to ``layout.logits``
    when a final softmax is dropped. The layout is not modified.

    Raises:
        ConversionError: unsupported head or failed exactness check; the message names the
            layer and the argument that would help.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    check_flatten_order(flatten_order)
    if flatten_order is not None and layout.flatten_order not in (None, flatten_order):
        if layout.permute_node is not None:
            raise ConversionError(
                f"the model permutes its features to flatten order {layout.flatten_order!r} "
                f"(node {layout.permute_node}) but flatten_order={flatten_order!r} was given; drop the argument"
            )
        raise ConversionError(
            f"the model's Permute gives flatten order {layout.flatten_order!r} but flatten_order="
            f"{flatten_order!r} was given; drop the argument"
        )
    order = flatten_order or layout.flatten_order or "chw"
    ref = next(layout.parameters()).detach()
    head_layers = list(layout.head)
    dropped, softmax = [], None
    if head_layers and isinstance(head_layers[-1], SOFTMAX):
        softmax = head_layers.pop()
        if keep_softmax:
            if softmax.dim not in (1, -1, None):
                raise ConversionError(f"{type(softmax).__name__}(dim={softmax.dim}) is not over the classes")
            head_layers.append(ChannelSoftmax(log=isinstance(softmax, nn.LogSoftmax)))
        else:
            dropped.append(type(softmax).__name__)
    # a convolutional prefix of the head runs on the features: measured and copied with the body
    body = nn.Sequential(layout.body, *layout.conv_head) if layout.conv_head else layout.body
    head, kind = _build_head(body, layout.pool, head_layers, size, ref, order)
    features = shared_copy(body)
    if layout.conv_head:  # the head's convolutions go back to the head, after the features
        moved = list(features.children())[1:]
        features = features[0]
        head = nn.Sequential(*moved, *head)
    if class_names is not None and len(class_names) != _classes(head):
        raise ConversionError(
            f"{len(class_names)} class names for {_classes(head)} classes"
        )
    info = {
        "arch": arch or layout.arch or type(layout.body).__name__,
        "weights": weights,
        "head": kind,
        "input_size": list(size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "class_names": list(class_names) if class_names is not None else None,
        "native_stride": int(Geometry.of(features).y.stride),
        "output_stride": int(Geometry.of(features).y.stride),
        "flatten_order": order,
        "dropped": dropped,
        "head_layers": [type(m).__name__ for m in head],
        # Cell maps are exact decompositions only through piecewise-linear activations.
        "head_piecewise_linear": all(isinstance(m, (nn.Conv2d, *PIECEWISE_LINEAR)) for m in head),
        "exactness": None,
    }
    fcn = FCN(features, head, info).eval()
    if output_stride is not None and output_stride != info["output_stride"]:
        set_output_stride(fcn, output_stride)
    if verify:
        if reference is None:
            logits = softmax is not None and not keep_softmax
            reference = layout.logits if logits else layout.original
            if reference is None:
                raise ConversionError(
                    "the layout gives no " + ("logits before its final softmax" if logits else "original model")
                    + " to check the maps against; pass reference= (or verify=False)"
                )
        result = check(reference, fcn, size)
        info["exactness"] = result
        if result["rel_diff"] > tolerance or not result["top1_agree"]:
            hint = "" if order != "chw" or kind == "gap" else (
                "; if the model was ported from Keras/TF or Caffe its features may be flattened in "
                "another order: try flatten_order='hwc' or 'whc'")
            raise ConversionError(
                f"converted net disagrees with the original: max |Δlogit| = "
                f"{result['max_abs_diff']:.3g} ({result['rel_diff']:.3g} of the largest logit, "
                f"tolerance {tolerance:g}), same top-1: {result['top1_agree']}{hint}"
            )
    info["geometry"] = fcn.geometry.to_dict()
    return fcn


def _classes(head: nn.Sequential) -> int:
    return [m for m in head if isinstance(m, nn.Conv2d)][-1].out_channels

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

Every conversion is checked against the original logits on probe inputs.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .geometry import PADS, SHORTCUT_NAMES, Geometry, map_size, spatial_layers
from .head import run_head

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SKIPPED = (nn.Dropout, nn.Identity, nn.Flatten)
SOFTMAX = (nn.Softmax, nn.LogSoftmax)
FLATTEN_ORDERS = tuple("".join(p) for p in itertools.permutations("chw"))
# Head activations whose maps are piecewise linear in the features (cell maps are exact).
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh)


class ConversionError(ValueError):
    """The model cannot be converted (unsupported shape) or failed the exactness check."""


class ChannelSoftmax(nn.Module):
    """Softmax (or log-softmax) over the class channels of ``[B, K, h, w]`` maps: channel-wise,
    i.e. ``p_k(x, y) = exp(s_k(x, y)) / Σ_j exp(s_j(x, y))`` at every cell independently."""

    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.log_softmax(1) if self.log else x.softmax(1)


class ChannelAffine(nn.Module):
    """``y = scale·x + shift`` per channel (dim 1): an importer's constant ``Mul``/``Add``.
    Never left in a converted head: it is folded into the neighbouring Linear."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


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
    def num_classes(self) -> int:
        return _classes(self.head)

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
    flatten_order: str | None = None  # stated by the model (a Permute before the flatten)


def _is_permute(m: nn.Module) -> bool:
    """A ``torchvision.ops.Permute`` (without importing torchvision: a model holding one has)."""
    tv = sys.modules.get("torchvision")
    return tv is not None and isinstance(m, tv.ops.Permute)


def _leaves(modules: Sequence[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in modules:
        out.extend(_leaves(list(m.children())) if isinstance(m, nn.Sequential) else [m])
    return out


def permute_order(dims: Sequence[int]) -> str:
    """Flatten order of ``x.permute(dims).flatten(1)`` for ``[B, C, H, W]`` features:
    ``permute(0, 2, 3, 1)`` → ``"hwc"`` (Keras), ``permute(0, 3, 2, 1)`` → ``"whc"`` (Caffe ports)."""
    dims = [d % 4 for d in dims]
    if len(dims) != 4 or dims[0] != 0 or sorted(dims) != [0, 1, 2, 3]:
        raise ConversionError(f"permute{tuple(dims)} before the flatten moves the batch axis")
    return "".join("bchw"[d] for d in dims[1:])


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
        order = None
        if body and _is_permute(body[-1][1]):
            order = permute_order(body.pop()[1].dims)
        pool = None
        if body and isinstance(body[-1][1], (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            pool = body.pop()[1]
        head = _leaves([c for _, c in children[flat[0] + 1 :]])
        return _Split(nn.Sequential(OrderedDict(body)), pool, head, order)
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


@torch.no_grad()
def channelwise(layer: nn.Module, channels: int, like: torch.Tensor) -> bool:
    """Whether ``layer`` maps ``[B, C]`` vectors and ``[B, C, h, w]`` maps the same way at every
    position (ReLU, PReLU with 1 or C slopes, GELU, …): probed on random values, in eval mode."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, channels, 2, 3, generator=g) * 3).to(like.device, like.dtype)
    vec = x.permute(0, 2, 3, 1).reshape(-1, channels)
    try:
        with eval_mode(layer):
            maps, vecs = layer(x.clone()), layer(vec.clone())
    except Exception:  # noqa: BLE001 - any failure on maps means "not channel-wise"
        return False
    return (isinstance(maps, torch.Tensor) and maps.shape == x.shape and vecs.shape == vec.shape
            and torch.allclose(maps.permute(0, 2, 3, 1).reshape(-1, channels), vecs, rtol=1e-5, atol=1e-6))


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


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers share storage with the original's.

    The modules are new (surgery may change their strides and dilations) and so are the
    Parameter objects (``prepare``'s dtype and memory-format changes rebind only the
    copy's), but no weight is duplicated: VGG16's 528 MB are not held twice.
    """
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


def _feature_shape(body: nn.Module, size: tuple[int, int], like: torch.Tensor) -> tuple[int, ...]:
    with torch.no_grad(), eval_mode(body):
        return tuple(body(torch.zeros(1, 3, *size, device=like.device, dtype=like.dtype)).shape[1:])


def _build_head(
    s: _Split, input_size: tuple[int, int], ref: torch.Tensor, order: str
) -> tuple[nn.Sequential, str]:
    ops = _fold_head(s.head, ref)
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


class _Tap(nn.Module):
    """``model``'s input to ``layer`` (e.g. the logits entering a final Softmax), by a hook
    that lives only during the call."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen = []
        handle = self.layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
        try:
            self.model(x)
        finally:
            handle.remove()
        return seen[-1]


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


def _is_known_layout(model: nn.Module) -> bool:
    try:
        split(model)
    except ConversionError:
        return False
    return True


def convert(
    model: nn.Module,
    input_size: int | tuple[int, int] = 224,
    *,
    flatten_order: str | None = None,
    keep_softmax: bool = False,
    output: int | str | None = None,
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
    """Rewrite a classifier's head as convolutions so it returns class score maps.

    Args:
        model: a VGG/AlexNet-like net (``features``, optional adaptive pool,
            ``classifier``), a ResNet, an ``nn.Sequential`` with an ``nn.Flatten`` (optionally
            after a ``torchvision.ops.Permute``), timm's VGG, or any net that torch.fx can
            trace to ``convolutional chain → [permute] → flatten → head``. It is not modified;
            the converted net shares its weights' storage wherever the values are the same
            (no second copy of VGG16's 528 MB), so an in-place change to one model's weights
            shows in the other (``copy.deepcopy`` the result to separate them).
        input_size: the model's native input size (where its adaptive pool, if any, is
            the identity).
        flatten_order: the order, outermost first, in which the model flattens its
            ``C×H×W`` features before the first Linear: ``"chw"`` (PyTorch), ``"hwc"``
            (Keras/TF), ``"whc"`` (``permute(0, 3, 2, 1)``, Caffe ports), … Read from the
            model when it permutes; ``"chw"`` otherwise.
        keep_softmax: keep a final Softmax/LogSoftmax as a channel-wise softmax over the
            class maps (checked on probabilities); by default it is dropped, recorded in
            ``info["dropped"]``, and exactness is checked on the logits before it.
        output: for a model whose ``forward`` returns several outputs, which one holds the
            class logits (index, or key of a returned dict).
        output_stride: a finer stride for the maps (e.g. 16 or 8 for VGG), by dilation.
        class_names, mean, std: metadata used by :func:`fcn_cam.explain`.
        arch, weights: provenance labels stored with the model.
        tolerance: the largest accepted ``max|logits - maps| / max|logits|``.
        verify: check against the original logits (only skipped when rebuilding a
            saved model whose check is on record).
        reference: what the maps must reproduce, ``[B, 3, H, W] → [B, K]`` (default: the
            model; importers pass e.g. onnxruntime on the original file). It must return
            the logits before a Softmax that is dropped.

    Returns:
        An :class:`FCN` on the model's device with ``info["exactness"]`` recorded.

    Raises:
        ConversionError: unsupported architecture or failed exactness check; the message
            names the layer and the argument that would help.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if flatten_order is not None and flatten_order not in FLATTEN_ORDERS:
        raise ConversionError(
            f"flatten_order {flatten_order!r}: expected a permutation of c, h, w ({', '.join(FLATTEN_ORDERS)})"
        )
    full = model  # what the maps reproduce when a final softmax is kept
    logits = None  # the original's output before a final softmax, where the importer has it
    conv_head: list[nn.Module] = []  # conv layers of the original head (timm's ConvMlp)
    from .importers import timm as timm_vgg

    if timm_vgg.is_timm_vgg(model):
        model, conv_head = timm_vgg.plain(model)
    elif output is not None or not _is_known_layout(model):
        from .importers.fx import plain as fx_plain

        p = fx_plain(model, size, output=output)
        model, full, logits = p.module, p.outputs, p.logits
        if flatten_order is not None and p.flatten_order not in (None, flatten_order):
            raise ConversionError(
                f"the model permutes its features to flatten order {p.flatten_order!r} "
                f"(node {p.permute_node}) but flatten_order={flatten_order!r} was given; drop the argument"
            )
        flatten_order = flatten_order or p.flatten_order
    ref = next(model.parameters()).detach()
    s = split(model)
    if flatten_order is not None and s.flatten_order not in (None, flatten_order):
        raise ConversionError(
            f"the model's Permute gives flatten order {s.flatten_order!r} but flatten_order="
            f"{flatten_order!r} was given; drop the argument"
        )
    order = flatten_order or s.flatten_order or "chw"
    dropped, softmax = [], None
    if s.head and isinstance(s.head[-1], SOFTMAX):
        softmax = s.head.pop()
        if keep_softmax:
            if softmax.dim not in (1, -1, None):
                raise ConversionError(f"{type(softmax).__name__}(dim={softmax.dim}) is not over the classes")
            s.head.append(ChannelSoftmax(log=isinstance(softmax, nn.LogSoftmax)))
        else:
            dropped.append(type(softmax).__name__)
    if conv_head:
        s.body = nn.Sequential(s.body, *conv_head)
    head, kind = _build_head(s, size, ref, order)
    features = shared_copy(s.body)
    if conv_head:  # the head's convolutions go back to the head, after the features
        moved = list(features.children())[1:]
        features = features[0]
        head = nn.Sequential(*moved, *head)
    if class_names is not None and len(class_names) != _classes(head):
        raise ConversionError(
            f"{len(class_names)} class names for {_classes(head)} classes"
        )
    info = {
        "arch": arch or type(full).__name__,
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
            if softmax is None or keep_softmax:
                reference = full
            else:
                reference = logits if logits is not None else _Tap(model, softmax)
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

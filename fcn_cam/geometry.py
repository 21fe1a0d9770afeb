"""Where each score-map cell looks: stride, centre offset and window, derived from layers.

A conv or pool layer with stride ``s``, kernel ``k``, dilation ``d`` and padding ``p`` maps
output index ``i`` to the input position ``s·i + (k - 1)·d / 2 - p`` (pixel-centre index
coordinates: pixel ``j`` is centred at ``j``). Composing these affine maps along the net
gives, for the score map, ``centre(i) = stride·i + offset`` in network-input pixels
(VGG16: ``32·i + 111.5``) and a receptive window of ``window`` pixels (VGG16: 404; the
nominal classifier window is 224). Nothing here is a per-architecture table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from .layers import pair

# Children that run beside the main path (ResNet's 1x1 projection); their geometry
# matches the main path's by construction, so the walk follows the main path only.
SHORTCUT_NAMES = frozenset({"downsample", "shortcut"})
# Explicit padding layers (ONNX/Keras "same" padding is often asymmetric: one more pixel
# bottom/right) shift and enlarge the map like a 1×1, stride-1 layer with padding.
PADS = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
SPATIAL = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, *PADS)


def spatial_layers(module: nn.Module) -> Iterator[nn.Module]:
    """Yield the layers that change spatial geometry, in forward order (main path only)."""
    if isinstance(module, SPATIAL):
        yield module
        return
    for name, child in module.named_children():
        if name not in SHORTCUT_NAMES:
            yield from spatial_layers(child)


def layer_params(layer: nn.Module) -> tuple[tuple[int, int], ...]:
    """``(kernel, stride, dilation)`` of a spatial layer as (y, x) pairs (1s for padding layers)."""
    if isinstance(layer, PADS):
        return (1, 1), (1, 1), (1, 1)
    stride = layer.stride if layer.stride is not None else layer.kernel_size
    dilation = getattr(layer, "dilation", 1)  # AvgPool2d has none
    return tuple(pair(v) for v in (layer.kernel_size, stride, dilation))


def layer_padding(layer: nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((top, bottom), (left, right))`` padding of a spatial layer."""
    if isinstance(layer, PADS):
        left, right, top, bottom = (layer.padding,) * 4 if isinstance(layer.padding, int) else layer.padding
        return (top, bottom), (left, right)
    if layer.padding == "valid":
        return (0, 0), (0, 0)
    if layer.padding == "same":  # torch puts the odd pixel after (bottom/right)
        k, _, d = layer_params(layer)
        total = [d[a] * (k[a] - 1) for a in (0, 1)]
        return (total[0] // 2, total[0] - total[0] // 2), (total[1] // 2, total[1] - total[1] // 2)
    p = pair(layer.padding)
    return (p[0], p[0]), (p[1], p[1])


@dataclass(frozen=True)
class Axis:
    """Geometry of one axis: ``centre(i) = stride·i + offset``; ``window`` pixels seen."""

    stride: float
    offset: float
    window: float

    def centres(self, n: int) -> list[float]:
        return [self.stride * i + self.offset for i in range(n)]


@dataclass(frozen=True)
class Geometry:
    """Score-map geometry in network-input pixels, per axis (y, x)."""

    y: Axis
    x: Axis

    @classmethod
    def of(cls, net: nn.Module) -> Geometry:
        """Compose the affine map of every spatial layer of ``net``."""
        axes = []
        for a in (0, 1):
            stride, offset, window = 1.0, 0.0, 1.0
            for layer in spatial_layers(net):
                k, s, d = (v[a] for v in layer_params(layer))
                p = layer_padding(layer)[a][0]
                offset += stride * ((k - 1) * d / 2 - p)
                window += stride * (k - 1) * d
                stride *= s
            axes.append(Axis(stride, offset, window))
        return cls(*axes)

    def shifted(self, top: float, left: float) -> Geometry:
        """The same cells seen from an input padded by ``top`` / ``left`` pixels."""
        return Geometry(replace(self.y, offset=self.y.offset - top),
                        replace(self.x, offset=self.x.offset - left))

    def to_dict(self) -> dict:
        return {"y": asdict(self.y), "x": asdict(self.x)}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(Axis(**d["y"]), Axis(**d["x"]))


def layer_output_size(layer: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Output size of one spatial layer (conv, pool or padding) for a ``height × width`` input.

    ``out = floor_or_ceil((in + p_before + p_after - d(k - 1) - 1) / s) + 1``; in ceil mode
    a last window that would start in the right padding is dropped (as torch does).
    """
    k, s, d = layer_params(layer)
    pads = layer_padding(layer)
    ceil = getattr(layer, "ceil_mode", False)
    out = []
    for a, size in enumerate((height, width)):
        n = size + sum(pads[a]) - d[a] * (k[a] - 1) - 1
        o = (math.ceil(n / s[a]) if ceil else n // s[a]) + 1
        if ceil and (o - 1) * s[a] >= size + pads[a][0]:
            o -= 1
        out.append(o)
    return out[0], out[1]


def map_size(net: nn.Module, height: int, width: int) -> tuple[int, int]:
    """Score-map size for an input of ``height × width``: :func:`layer_output_size` composed
    along the net's spatial layers. A non-positive size means the input is smaller than one
    classifier window.
    """
    size = (height, width)
    for layer in spatial_layers(net):
        size = layer_output_size(layer, *size)
    return size


def activation_bytes(net: nn.Module, height: int, width: int, channels: int = 3) -> int:
    """Estimated peak activation memory of ``net`` on one ``channels × height × width`` input.

    The largest ``input + output`` pair of any spatial layer, with each layer's size from
    :func:`layer_output_size` (the one :func:`map_size` composes) and its channels from the
    last conv before it, times 2 for the framework's workspace and residual branches, in
    bytes of the parameters' dtype::

        bytes = 2 · itemsize · max(C₀H₀W₀, maxₗ (Cₗ₋₁Hₗ₋₁Wₗ₋₁ + CₗHₗWₗ))

    The walk stops at the first layer whose output would be empty.
    """
    itemsize = next(net.parameters()).element_size()
    size, peak = (height, width), channels * height * width
    for layer in spatial_layers(net):
        new = layer_output_size(layer, *size)
        if min(new) <= 0:
            break
        c = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
        peak = max(peak, channels * size[0] * size[1] + c * new[0] * new[1])
        size, channels = new, c
    return 2 * peak * itemsize


def input_activation_bytes(
    net: nn.Module, size: tuple[int, int], sides: Sequence[int], pad: str = "cover"
) -> int:
    """Estimated peak activation memory to explain an image of ``size`` (width, height) at
    each shorter side in ``sides``: the largest :func:`activation_bytes` over the network
    inputs, padded by :func:`cover_padding` unless ``pad`` is ``"none"``: the score maps'
    input padding, the largest of the input paddings (an over-estimate for ``"features"``,
    where the body sees the unpadded input).
    """
    from .images import input_shape  # images imports PIL: only when an estimate is wanted

    worst = 0
    for side in sides:
        h, w = input_shape(size, side)
        if pad != "none":
            top, bottom, left, right = cover_padding(net, h, w)
            h, w = h + top + bottom, w + left + right
        worst = max(worst, activation_bytes(net, h, w))
    return worst


def cover_padding(net: nn.Module, height: int, width: int) -> tuple[int, int, int, int]:
    """Padding ``(top, bottom, left, right)`` after which score-cell centres cover every pixel
    of a ``height × width`` input: the first centre at or before pixel 0, the last at or after
    the last pixel. Without it the outer band (VGG16: 111.5 px) has no cell of its own.
    """
    g = Geometry.of(net)
    pads = []
    for a, (axis, n) in enumerate(((g.y, height), (g.x, width))):
        before = max(0, math.ceil(axis.offset))
        for after in range(before, before + int(axis.stride) + 1):
            size = n + before + after
            cells = map_size(net, size, size)[a]
            if cells > 0 and axis.stride * (cells - 1) + axis.offset - before >= n - 1:
                break
        pads += [before, after]
    return pads[0], pads[1], pads[2], pads[3]


def feature_cover_padding(
    features: nn.Module, head: nn.Module, height: int, width: int
) -> tuple[int, int, int, int]:
    """Feature-map padding ``(top, bottom, left, right)``, in whole cells, after which every
    pixel of a ``height × width`` input lies within half a stride of a window centre of
    ``head`` run over the padded features — as interior pixels do: each has a cell of its own.

    Padding the feature map by ``p`` cells places the windows as padding the input by
    ``p × stride`` pixels would, so the maps align with ``Geometry.shifted(p × stride)``.
    (:func:`cover_padding` pads the input in pixels until the outermost centres reach the
    outermost pixels; in whole cells that would often cost one more row of windows.)
    """
    g = Geometry.of(nn.Sequential(features, head))
    fsize = map_size(features, height, width)
    pads = []
    for a, (axis, n) in enumerate(((g.y, height), (g.x, width))):
        reach = axis.stride / 2  # how far from a centre a pixel still counts as its cell's
        before = max(0, math.ceil((axis.offset - reach) / axis.stride))
        for after in range(0, fsize[a] + before + 2 * math.ceil(axis.window / axis.stride) + 2):
            size = [fsize[0], fsize[1]]
            size[a] += before + after
            cells = map_size(head, *size)[a]
            if cells > 0 and axis.stride * (cells - 1 - before) + axis.offset >= n - 1 - reach:
                break
        pads += [before, after]
    return pads[0], pads[1], pads[2], pads[3]


def _interp_matrix(
    n_out: int, n_map: int, axis: Axis, in_per_out: float, device: torch.device
) -> torch.Tensor:
    """``[n_out, n_map]`` linear-interpolation weights placing cell values at their centres.

    Output pixel ``j`` (of an image resized by ``1/in_per_out`` to the network input) sits
    at input position ``X = (j + 0.5)·in_per_out - 0.5``, i.e. at fractional cell
    ``u = (X - offset) / stride``; ``u`` is clamped to the map (border values extend).
    """
    j = torch.arange(n_out, device=device, dtype=torch.float64)
    u = ((j + 0.5) * in_per_out - 0.5 - axis.offset) / axis.stride
    u = u.clamp(0, n_map - 1)
    lo = u.floor().long().clamp(max=max(n_map - 2, 0))
    frac = u - lo
    m = torch.zeros(n_out, n_map, device=device, dtype=torch.float64)
    rows = torch.arange(n_out, device=device)
    m[rows, lo] += 1 - frac
    if n_map > 1:
        m[rows, lo + 1] += frac
    return m


def align(
    maps: torch.Tensor,
    geometry: Geometry,
    input_size: tuple[int, int],
    image_size: tuple[int, int],
    add_to: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample score maps onto the original image so each cell sits at its centre.

    Args:
        maps: ``[..., h, w]`` score maps from a network input of ``input_size`` (H, W).
        geometry: the net's :class:`Geometry`.
        input_size: (H, W) of the network input the maps came from.
        image_size: (height, width) of the original image to resample onto.
        add_to: a ``[height, width]`` float32 array to add the resampled ``[h, w]`` map to,
            in place (no second image-sized array: 96 MB on a 24-MP photo).

    Returns:
        ``[..., height, width]`` maps, bilinear between cell centres and constant beyond
        the outermost centres (a separable product ``Ay · M · Axᵀ``); ``add_to`` if given.
    """
    h, w = maps.shape[-2:]
    ay = _interp_matrix(image_size[0], h, geometry.y, input_size[0] / image_size[0], maps.device)
    ax = _interp_matrix(image_size[1], w, geometry.x, input_size[1] / image_size[1], maps.device)
    dt = torch.float64 if maps.dtype == torch.float64 else torch.float32
    if add_to is not None:
        return add_to.addmm_(ay.to(add_to.dtype) @ maps.to(add_to.dtype), ax.to(add_to.dtype).T)
    return ay.to(dt) @ maps.to(dt) @ ax.to(dt).T


def cell_centre(
    geometry: Geometry, cell: tuple[int, int], input_size: tuple[int, int],
    image_size: tuple[int, int],
) -> tuple[float, float]:
    """Centre ``(x, y)`` of score cell ``(row, col)`` in original-image pixel coordinates."""
    def to_image(pos: float, n_in: int, n_img: int) -> float:
        return (pos + 0.5) * n_img / n_in - 0.5

    y = to_image(geometry.y.stride * cell[0] + geometry.y.offset, input_size[0], image_size[0])
    x = to_image(geometry.x.stride * cell[1] + geometry.x.offset, input_size[1], image_size[1])
    return x, y


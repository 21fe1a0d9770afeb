"""Geometry: map sizes, cell centres, alignment, and a planted pattern found where it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from conftest import NATIVE, convert_planted, small_vgg
from helpers import stretch
from PIL import Image

from fcn_cam import convert, explain
from fcn_cam.geometry import (
    SPATIAL,
    Geometry,
    activation_bytes,
    align,
    cell_centre,
    cover_padding,
    feature_cover_padding,
    input_activation_bytes,
    layer_output_size,
    layer_padding,
    layer_params,
)
from fcn_cam.geometry import map_size as fcn_map_size
from fcn_cam.images import input_shape


@pytest.fixture(scope="module")
def vgg16():
    return convert(torchvision.models.vgg16(weights=None).eval())


def test_vgg16_geometry_from_layers(vgg16):
    g = vgg16.geometry
    assert (g.y.stride, g.y.offset, g.y.window) == (32, 111.5, 404)
    for h in (224, 256, 448, 512, 672, 500):
        assert vgg16.map_size(h, h)[0] == h // 32 - 6
    x = torch.zeros(1, 3, 448, 300)
    with torch.no_grad():
        assert tuple(vgg16(x).shape[-2:]) == vgg16.map_size(448, 300) == (8, 3)


def test_alexnet_geometry_matches_reference_formula():
    fcn = convert(torchvision.models.alexnet(weights=None).eval())
    assert (fcn.geometry.x.stride, fcn.geometry.x.offset) == (32, 111)
    for h in (224, 300, 448, 513):
        a = (h - 7) // 4 + 1
        b = (a - 3) // 2 + 1
        c = (b - 3) // 2 + 1
        d = (c - 3) // 2 + 1
        assert fcn.map_size(h, h)[0] == d - 5
    with torch.no_grad():
        assert tuple(fcn(torch.zeros(1, 3, 300, 448)).shape[-2:]) == fcn.map_size(300, 448)


def test_align_puts_each_cell_at_its_centre(vgg16):
    """VGG16 at scale 2 on a 224-px image: cell i sits at (32 i + 111.5 + 0.5) / 2 - 0.5."""
    g = vgg16.geometry
    for i in range(8):
        m = torch.zeros(8, 8)
        m[i, 7 - i] = 1.0
        heat = align(m, g, (448, 448), (224, 224)).numpy()
        y, x = np.unravel_index(heat.argmax(), heat.shape)
        cx, cy = cell_centre(g, (i, 7 - i), (448, 448), (224, 224))
        assert cy == pytest.approx((32 * i + 111.5 + 0.5) / 2 - 0.5)
        # the cell's value sits at its centre (half a pixel at most, stride 16 px here)
        assert heat[round(cy), round(cx)] >= (1 - 0.5 / 16) ** 2 - 1e-6
        if 0 < i < 7:  # outer cells extend flat to the border; inner ones peak alone
            assert abs(y - cy) <= 0.5 and abs(x - cx) <= 0.5
        # the naive stretch puts the same cell near 56 i + 27.5 in a 448-px frame
        naive = stretch(m, (448, 448)).numpy()
        assert naive[round(56 * i + 27.5), 448 - round(56 * i + 28.5)] >= 1 - 1 / 56


def test_align_constant_beyond_outer_centres():
    g = Geometry.from_dict({"y": {"stride": 32, "offset": 111.5, "window": 404},
                            "x": {"stride": 32, "offset": 111.5, "window": 404}})
    m = torch.arange(4.0).view(2, 2)
    heat = align(m, g, (256, 256), (256, 256))
    assert heat[0, 0] == 0 and heat[-1, -1] == 3  # clamped, not extrapolated
    assert heat.min() >= 0 and heat.max() <= 3


def test_align_add_to_accumulates_in_place():
    g = Geometry.from_dict({"y": {"stride": 32, "offset": 111.5, "window": 404},
                            "x": {"stride": 32, "offset": 15.5, "window": 32}})
    m = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    base = torch.randn(300, 200, generator=torch.Generator().manual_seed(1))
    out = base.clone()
    assert align(m, g, (250, 160), (300, 200), add_to=out) is out
    torch.testing.assert_close(out, base + align(m, g, (250, 160), (300, 200)))


def red_patch_image(width: int, height: int, cx: int, cy: int, side: int = 12) -> Image.Image:
    rng = np.random.default_rng(cx * 1000 + cy)
    img = (rng.random((height, width, 3)) * 0.4 * 255).astype(np.uint8)  # dull noise, never red
    img[cy - side // 2: cy + side // 2, cx - side // 2: cx + side // 2] = (255, 0, 0)
    return Image.fromarray(img)


@pytest.mark.parametrize("size", [(160, 160), (240, 150), (130, 210)])
@pytest.mark.parametrize("scale", [1.5, 2.0, 3.0])
def test_planted_patch_peak_within_half_stride(size, scale):
    fcn = convert_planted()
    width, height = size
    rng = np.random.default_rng(int(scale * 10) + width)
    # Cell centres cover a central band only (the outer band has no centre): plant there.
    side = round(scale * NATIVE)
    shape = (side, round(width * side / height)) if height <= width else (round(height * side / width), side)
    h, w = fcn.map_size(*shape)
    x_lo, y_lo = cell_centre(fcn.geometry, (0, 0), shape, (height, width))
    x_hi, y_hi = cell_centre(fcn.geometry, (h - 1, w - 1), shape, (height, width))
    assert h * w > 1
    for _ in range(3):
        cx = int(rng.integers(np.ceil(x_lo) + 1, np.floor(x_hi) + 1))
        cy = int(rng.integers(np.ceil(y_lo) + 1, np.floor(y_hi) + 1))
        img = red_patch_image(width, height, cx, cy)
        exp = explain(fcn, img, scale=scale, target="red", pad=False, maps="scores")
        # the patch's centre in pixel-centre coordinates (pixels cx-6 .. cx+5)
        px, py = cx - 0.5, cy - 0.5
        stride_img = fcn.geometry.x.stride * min(width, height) / (scale * NATIVE)
        t = exp.targets[0]
        assert abs(t.peak[0] - px) <= stride_img / 2 + 0.5
        assert abs(t.peak[1] - py) <= stride_img / 2 + 0.5
        x0, y0, x1, y1 = t.box
        assert x0 <= px < x1 and y0 <= py < y1


def test_naive_stretch_misplaces_the_planted_patch():
    fcn = convert_planted()
    img = red_patch_image(160, 160, 48, 112)
    exp = explain(fcn, img, scale=3.0, target="red", pad=False, maps="scores")
    raw = torch.from_numpy(exp.targets[0].cams[0])
    naive = stretch(raw, (160, 160)).numpy()
    ny, nx = np.unravel_index(naive.argmax(), naive.shape)
    aligned_err = np.hypot(exp.targets[0].peak[0] - 47.5, exp.targets[0].peak[1] - 111.5)
    naive_err = np.hypot(nx - 47.5, ny - 111.5)
    assert aligned_err < naive_err


@pytest.mark.parametrize("size", [(160, 160), (240, 150)])
@pytest.mark.parametrize("scale", [1.5, 3.0])
def test_planted_patch_near_border_found_with_padding(size, scale):
    """With padding, cells are centred over the outer band too: a patch in a corner is found
    within half a stride; without it the peak stays on the innermost centre."""
    fcn = convert_planted()
    width, height = size
    cx, cy = 10, height - 10
    img = red_patch_image(width, height, cx, cy)
    stride_img = fcn.geometry.x.stride * min(width, height) / (scale * NATIVE)
    t = explain(fcn, img, scale=scale, target="red", maps="scores").targets[0]
    assert abs(t.peak[0] - (cx - 0.5)) <= stride_img / 2 + 0.5
    assert abs(t.peak[1] - (cy - 0.5)) <= stride_img / 2 + 0.5
    unpadded = explain(fcn, img, scale=scale, target="red", pad=False, maps="scores").targets[0]
    assert np.hypot(unpadded.peak[0] - cx, unpadded.peak[1] - cy) > stride_img


@pytest.mark.parametrize("arch", ["vgg16", "alexnet", "resnet18"])
def test_cover_padding_reaches_every_pixel(arch):
    fcn = convert(torchvision.models.get_model(arch, weights=None).eval())
    for h, w in ((224, 224), (448, 300), (337, 513)):
        top, bottom, left, right = cover_padding(fcn, h, w)
        n = fcn.map_size(h + top + bottom, w + left + right)
        g = fcn.geometry.shifted(top, left)
        assert g.y.offset <= 0 and g.x.offset <= 0
        assert g.y.stride * (n[0] - 1) + g.y.offset >= h - 1
        assert g.x.stride * (n[1] - 1) + g.x.offset >= w - 1


@pytest.mark.parametrize("arch", ["vgg16", "alexnet"])
def test_feature_cover_padding_reaches_every_pixel_and_is_least(arch):
    """Over the zero-padded feature map every pixel is within half a stride of a window
    centre; one cell less on either side would leave some pixel farther."""
    fcn = convert(torchvision.models.get_model(arch, weights=None).eval())
    g = fcn.geometry
    for h, w in ((224, 224), (448, 300), (337, 513)):
        pads = feature_cover_padding(fcn.features, fcn.head, h, w)
        fsize = fcn_map_size(fcn.features, h, w)

        def reach(a: int, before: int, after: int, fsize=fsize) -> tuple[float, float]:
            axis, size = (g.y, g.x)[a], list(fsize)
            size[a] += before + after
            n = fcn_map_size(fcn.head, *size)[a]
            first = axis.offset - axis.stride * before
            return first, first + axis.stride * (n - 1) if n > 0 else -1.0

        half = g.y.stride / 2
        for a, n_px in ((0, h), (1, w)):
            before, after = pads[2 * a], pads[2 * a + 1]
            first, last = reach(a, before, after)
            assert first <= half and last >= n_px - 1 - half
            if before:
                assert reach(a, before - 1, after)[0] > half
            if after:
                assert reach(a, before, after - 1)[1] < n_px - 1 - half


def _box_net(*layers: torch.nn.Module) -> torch.nn.Sequential:
    """Positive box filters: a cell's input gradient is symmetric about its window centre."""
    net = torch.nn.Sequential(*layers).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.constant_(m.weight, 1.0)
            torch.nn.init.zeros_(m.bias)
    return net


@pytest.mark.parametrize("layers", [
    # TF "same" padding of a stride-2 conv: nothing before, one pixel after
    lambda: [torch.nn.ZeroPad2d((0, 1, 0, 1)), torch.nn.Conv2d(1, 1, 3, stride=2),
             torch.nn.AvgPool2d(3, 2, ceil_mode=True), torch.nn.Conv2d(1, 1, 3)],
    lambda: [torch.nn.ConstantPad2d((2, 0, 1, 0), 0.0), torch.nn.Conv2d(1, 1, 2, stride=2, padding=1),
             torch.nn.AvgPool2d(2, ceil_mode=True), torch.nn.Conv2d(1, 1, 4, padding="same")],
])
def test_planted_impulse_at_cell_centre_with_pads_and_ceil_mode(layers):
    """Each interior cell's window, found by back-propagating from the cell, is centred where the
    geometry (derived from the layers) says; map sizes match the forward pass."""
    net = _box_net(*layers())
    g = Geometry.of(net)
    checked = 0
    for h, w in ((37, 29), (40, 41), (23, 50)):
        x = torch.zeros(1, 1, h, w, requires_grad=True)
        out = net(x)
        assert tuple(out.shape[-2:]) == fcn_map_size(net, h, w)
        i, j = out.shape[-2] // 2, out.shape[-1] // 2
        out[0, 0, i, j].backward()
        grad = x.grad[0, 0]
        ys, xs = torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64)
        wy, wx = grad.sum(1).double(), grad.sum(0).double()
        if wy[0] == 0 and wy[-1] == 0 and wx[0] == 0 and wx[-1] == 0:  # window inside the image
            assert (wy @ ys / wy.sum()).item() == pytest.approx(g.y.stride * i + g.y.offset)
            assert (wx @ xs / wx.sum()).item() == pytest.approx(g.x.stride * j + g.x.offset)
            checked += 1
    assert checked >= 2


def ceil_mode_net() -> torch.nn.Sequential:
    """Convs and ceil-mode pools whose last window can start in the right padding (dropped)."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(1, 2, ceil_mode=True),
        torch.nn.Conv2d(4, 6, 3), torch.nn.AvgPool2d(3, 3, padding=1, ceil_mode=True),
        torch.nn.ZeroPad2d((0, 1, 1, 0)), torch.nn.Conv2d(6, 5, 2, stride=2, dilation=2),
    ).eval()


def spatial_shapes(net: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.nn.Module, torch.Size, ...]]:
    """(layer, input shape, output shape) of every conv, pool and padding layer, in the order
    a real forward pass runs them (a converted head as its convolutions)."""
    seen = []
    if hasattr(net, "head_mode"):
        net.head_mode = "conv"  # as GEMMs the head's convs are not called
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((m, i[0].shape, o.shape)))
             for m in net.modules() if isinstance(m, SPATIAL)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def ceil_without_drop(layer: torch.nn.Module, size: tuple[int, int]) -> tuple[int, ...]:
    """The ceil-mode size formula without torch's rule for a last window in the padding."""
    (k, s, d), pads = layer_params(layer), layer_padding(layer)
    return tuple(math.ceil((size[a] + sum(pads[a]) - d[a] * (k[a] - 1) - 1) / s[a]) + 1 for a in (0, 1))


@pytest.mark.parametrize("make", [lambda: convert(small_vgg(), NATIVE), ceil_mode_net])
def test_activation_estimate_follows_the_layers_real_shapes(make):
    """The estimate is 2 · itemsize · the largest input + output of any spatial layer, with the
    shapes the layers really produce: one size formula with map_size, ceil mode included."""
    net = make()
    drops = 0
    for h, w in ((64, 64), (81, 70), (100, 97), (67, 131)):
        shapes = spatial_shapes(net, torch.zeros(1, 3, h, w))
        size = (h, w)
        for layer, i, o in shapes:
            assert tuple(i[-2:]) == size and layer_output_size(layer, *size) == tuple(o[-2:])
            if getattr(layer, "ceil_mode", False):
                drops += ceil_without_drop(layer, size) != tuple(o[-2:])
            size = tuple(o[-2:])
        assert fcn_map_size(net, h, w) == size
        want = max(3 * h * w, *(i.numel() + o.numel() for _, i, o in shapes))
        assert activation_bytes(net, h, w) == 2 * 4 * want
    assert drops > 0 or make is not ceil_mode_net  # the sizes above exercise the ceil-mode rule


def test_activation_estimate_in_the_parameters_dtype_and_stops_at_an_empty_map():
    fcn = convert(small_vgg(), NATIVE)
    # 40 px: the head's 4×4 window does not fit the 2×2 features; the body's layers still count
    body = spatial_shapes(fcn.features, torch.zeros(1, 3, 40, 40))
    small = max(3 * 40 * 40, *(i.numel() + o.numel() for _, i, o in body))
    assert activation_bytes(fcn, 40, 40) == 2 * 4 * small
    fp32 = activation_bytes(fcn, 96, 80)
    assert activation_bytes(fcn.to(torch.bfloat16), 96, 80) == fp32 // 2


def test_input_activation_estimate_takes_the_worst_side_with_cover_padding():
    fcn = convert(small_vgg(), NATIVE)
    size, sides = (150, 100), [64, 96]
    padded = []
    for side in sides:
        h, w = input_shape(size, side)
        top, bottom, left, right = cover_padding(fcn, h, w)
        assert top + bottom + left + right > 0
        padded.append(activation_bytes(fcn, h + top + bottom, w + left + right))
    assert input_activation_bytes(fcn, size, sides) == max(padded)
    assert input_activation_bytes(fcn, size, sides, pad="none") == activation_bytes(fcn, *input_shape(size, 96))

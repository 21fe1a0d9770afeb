"""Cell maps: the exact decomposition of window scores, against independent computations."""

from __future__ import annotations

import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import NATIVE, convert_planted, randomize_batchnorm, small_vgg
from PIL import Image
from torch import nn

import fcn_cam
from fcn_cam.geometry import Geometry
from fcn_cam.maps import cell_maps, forward

CLASSES = torch.tensor([[3, 0], [1, 4]])


def small_gap(num_classes: int = 5) -> nn.Sequential:
    torch.manual_seed(1)
    features = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    )
    return randomize_batchnorm(nn.Sequential(OrderedDict(
        features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, num_classes),
    ))).eval()


def prelu_vgg() -> nn.Sequential:
    """small_vgg with BatchNorm1d and LeakyReLU in the head (still piecewise linear)."""
    model = small_vgg()
    model.classifier = nn.Sequential(
        nn.Linear(32 * 4 * 4, 64), nn.BatchNorm1d(64), nn.LeakyReLU(0.1), nn.Linear(64, 5),
    )
    return randomize_batchnorm(model, seed=3).eval()


def batch(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_gap_head_cells_equal_cam_minus_bias():
    model = small_gap()
    fcn = fcn_cam.convert(model, NATIVE)
    x = batch(2, 72, 104)
    _, cells = cell_maps(fcn, x, CLASSES)
    with torch.no_grad():
        f = model.features(x)
    for b in range(2):
        for t in range(2):
            c = int(CLASSES[b, t])
            cam = torch.einsum("k,khw->hw", model.fc.weight[c], f[b])  # Zhou et al., without b_c
            torch.testing.assert_close(cells[b, t], cam, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make", [small_vgg, prelu_vgg])
def test_fc_head_native_equals_gradient_times_activation(make):
    """One window at the native size: A_c = Σ_channels ∂logit_c/∂F ⊙ F of the ORIGINAL model."""
    model = make()
    fcn = fcn_cam.convert(model, NATIVE)
    x = batch(2, NATIVE, NATIVE, seed=1)
    _, cells = cell_maps(fcn, x, CLASSES)
    f = model.features(x).detach().requires_grad_()
    logits = model.classifier(model.flatten(f))
    for b in range(2):
        for t in range(2):
            (g,) = torch.autograd.grad(logits[b, CLASSES[b, t]], f, retain_graph=True)
            torch.testing.assert_close(cells[b, t], (g * f)[b].sum(0), rtol=1e-4, atol=1e-6)


def _bias_only(fcn: fcn_cam.FCN, f: torch.Tensor) -> torch.Tensor:
    """β_c(w): the head's output with its gates fixed by ``f`` and the input set to zero.

    Runs the head layer by layer as convolutions; each (Leaky)ReLU's slope pattern comes
    from the real activations and is applied to the zero-input path.
    """
    a, z = f, torch.zeros_like(f)
    for layer in fcn.head:
        if isinstance(layer, nn.Conv2d):
            a, z = layer(a), layer(z)
        else:
            leak = torch.full_like(a, getattr(layer, "negative_slope", 0.0))
            slope = torch.where(a > 0, torch.ones_like(a), leak)
            a, z = layer(a), z * slope
    return z


@pytest.mark.parametrize("output_stride", [None, 8])
def test_cells_sum_to_window_scores_minus_bias_part(output_stride):
    fcn = fcn_cam.convert(prelu_vgg(), NATIVE, output_stride=output_stride)
    x = batch(2, 2 * NATIVE, 2 * NATIVE + 24, seed=2)  # many windows
    scores, cells = cell_maps(fcn, x, CLASSES)
    with torch.no_grad():
        f = fcn.features(x)
        beta = _bias_only(fcn, f)
    assert scores.shape[-1] > 1 and scores.shape[-2] > 1
    for b in range(2):
        for t in range(2):
            c = int(CLASSES[b, t])
            want = (scores[b, c] - beta[b, c]).sum()
            assert cells[b, t].sum().item() == pytest.approx(want.item(), rel=1e-4, abs=1e-4)


def ending_in_a_gate() -> nn.Sequential:
    """prelu_vgg whose head ends in a LeakyReLU: no final linear layer to start the backward at."""
    model = prelu_vgg()
    model.classifier.append(nn.LeakyReLU(0.2))
    return model


@pytest.mark.parametrize("make", [prelu_vgg, ending_in_a_gate])
def test_gemm_head_equals_conv_head_for_scores_and_cells(make):
    fcn = fcn_cam.convert(make(), NATIVE, output_stride=8)
    x = batch(2, 150, 130, seed=4)
    fcn.head_mode = "gemm"
    fw = forward(fcn, x, cells=True)
    assert (fw.last is None) == (make is ending_in_a_gate)  # the backward starts at the last layer's input
    s1, c1 = cell_maps(fcn, x, CLASSES)
    fcn.head_mode = "conv"
    s2, c2 = cell_maps(fcn, x, CLASSES)
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c1, c2, rtol=1e-4, atol=1e-5)



@pytest.mark.parametrize("method", ["dgrad", "cells", "cells in blocks", "forward"])
@pytest.mark.parametrize("stride,pad", [(None, (3, 2, 1, 4)), (8, (2, 2, 2, 2)), (None, None)])
def test_every_order_of_the_sum_equals_the_full_backward(method, stride, pad, monkeypatch):
    """``A_t(p) = Σ_q ⟨g_t(p − q), W₁,q F(p)⟩`` in each order equals autograd through the
    whole head (conv mode), with padded features, dilation, a batch and 1 or 3 classes: the
    first layer contracted after the backward in either order (``cells`` also in blocks of 5
    output channels, the last one partial), or every pair pushed forward (``forward``)."""
    from fcn_cam import head
    from fcn_cam.maps import cell_maps_of

    if method == "cells in blocks":
        method = "cells"
        monkeypatch.setattr(head, "CELL_BLOCK", 5)
    monkeypatch.setattr(head, "PAIR_ROWS", 7)  # the forward order: pairs in many groups
    fcn = fcn_cam.convert(prelu_vgg(), NATIVE, output_stride=stride)
    x = batch(2, 90, 110, seed=6)
    for classes in (torch.tensor([[2], [0]]), torch.tensor([[3, 0, 4], [1, 4, 2]])):
        fcn.head_mode = "conv"
        want = cell_maps_of(forward(fcn, x, cells=True, pad=pad), classes)
        fcn.head_mode = "gemm"
        fw = forward(fcn, x, cells=True, pad=pad)
        assert fw.first is not None  # the split path
        got = cell_maps_of(fw, classes, method=method)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        if pad:
            assert got[..., :pad[0], :].abs().max() == 0 and got[..., :, -pad[3]:].abs().max() == 0


def test_many_classes_go_in_chunks_with_the_same_maps(monkeypatch):
    """Classes beyond the gradient budget are explained in chunks; the maps are the same."""
    from fcn_cam import maps
    from fcn_cam.maps import cell_maps_of

    fcn = fcn_cam.convert(prelu_vgg(), NATIVE)
    fw = forward(fcn, batch(2, 90, 110, seed=7), cells=True, pad=(1, 1, 2, 0))
    classes = torch.tensor([[4, 0, 1, 3, 2], [2, 2, 0, 1, 4]])
    whole = cell_maps_of(fw, classes)
    monkeypatch.setattr(maps, "GRAD_VALUES", 2 * fw.first.numel())  # two classes per chunk
    torch.testing.assert_close(cell_maps_of(fw, classes), whole, rtol=1e-5, atol=1e-6)


def deep_smooth_vgg() -> nn.Sequential:
    """small_vgg with two hidden layers in the middle of the head and smooth gates."""
    model = small_vgg()
    model.classifier = nn.Sequential(
        nn.Linear(32 * 4 * 4, 48), nn.GELU(), nn.Linear(48, 40), nn.Tanh(), nn.Linear(40, 32),
        nn.ELU(inplace=True), nn.Linear(32, 5),
    )
    return model.eval()


@pytest.mark.parametrize("make", [small_vgg, prelu_vgg, deep_smooth_vgg])
def test_forward_order_serves_many_classes_with_the_same_maps(make):
    """Pushing every (window, offset) pair forward once gives the backward's maps: a VGG head
    (in-place ReLU; convert drops Dropout), folded BatchNorm1d and LeakyReLU, and three
    layers in the middle with smooth gates (both orders linearize them at the same point);
    ``auto`` takes it where it needs fewer multiply-accumulates (for hundreds of classes)."""
    from fcn_cam.maps import cell_maps_of, cell_order

    fcn = fcn_cam.convert(make(), NATIVE)
    fw = forward(fcn, batch(2, 150, 130, seed=8), cells=True, pad=(2, 1, 1, 2))
    many = torch.randint(0, 5, (2, 300), generator=torch.Generator().manual_seed(0))
    assert cell_order(fw, 300) == "forward"
    if make is small_vgg:  # with a 1×1 layer in the middle, one class is cheaper backwards
        assert cell_order(fw, 1) == "auto"
    want = cell_maps_of(fw, many, method="cells")
    torch.testing.assert_close(cell_maps_of(fw, many), want, rtol=1e-4, atol=1e-5)


class _NoJvpGate(torch.autograd.Function):
    """A ReLU with a backward but no forward-mode rule, as custom layers often are."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class NoJvpReLU(nn.Module):
    def forward(self, x):
        return _NoJvpGate.apply(x)


def test_auto_falls_back_to_the_backward_for_layers_without_forward_autograd():
    from fcn_cam.maps import cell_maps_of, cell_order

    model = small_vgg()
    model.classifier[1] = NoJvpReLU()
    fcn = fcn_cam.convert(model, NATIVE)
    fw = forward(fcn, batch(1, 150, 130, seed=10), cells=True, pad=(1, 1, 1, 1))
    many = torch.randint(0, 5, (1, 300), generator=torch.Generator().manual_seed(1))
    assert cell_order(fw, 300) == "forward"
    torch.testing.assert_close(cell_maps_of(fw, many), cell_maps_of(fw, many, method="cells"))
    with pytest.raises(NotImplementedError):
        cell_maps_of(fw, many, method="forward")


def test_forward_order_needs_a_final_linear_layer():
    from fcn_cam.maps import cell_maps_of, cell_order

    fcn = fcn_cam.convert(ending_in_a_gate(), NATIVE)
    fw = forward(fcn, batch(1, 150, 130, seed=9), cells=True)
    assert cell_order(fw, 10_000) == "auto"
    with pytest.raises(ValueError, match="ends in a 1×1 layer"):
        cell_maps_of(fw, torch.tensor([[1]]), method="forward")


@pytest.mark.parametrize("method", ["dgrad", "cells", "forward"])
def test_cells_in_bf16_follow_fp32(method):
    from fcn_cam.maps import cell_maps_of

    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    x, classes = batch(1, 2 * NATIVE, 2 * NATIVE, seed=5), torch.tensor([[2, 0, 4]])
    ref = cell_maps_of(forward(fcn, x, cells=True, pad=(1, 2, 2, 1)), classes, method)
    with warnings.catch_warnings():  # bf16 may be emulated (slow, warned) on this CPU
        warnings.simplefilter("ignore")
        bf16 = fcn_cam.prepare(fcn, precision="bf16")
        got = cell_maps_of(forward(bf16, x, cells=True, pad=(1, 2, 2, 1)), classes, method)
    assert got.dtype == torch.float32
    r = np.corrcoef(ref.flatten().numpy(), got.flatten().numpy())[0, 1]
    assert r > 0.98


def test_feature_padding_equals_input_padding_on_a_pooling_body():
    """Padding the features by p cells is padding the input by p × stride zeros, exactly,
    when zeros stay zeros through the body (bias-free, non-overlapping convs + ReLU): the
    same windows, the same cells, the same geometry (``pad`` recorded as p × stride)."""
    from fcn_cam.explanation import network_input

    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 2, stride=2, bias=False), nn.ReLU(),
                             nn.Conv2d(8, 16, 2, stride=2, bias=False), nn.ReLU())
    model = nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(), classifier=nn.Sequential(
        nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 5))))
    fcn = fcn_cam.convert(model.eval(), 16)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 44, 3), dtype=np.uint8))
    ni = network_input(fcn, img, 40, "features")
    top, bottom, left, right = ni.feature_pad
    assert ni.pad == (4 * top, 4 * left) and min(ni.feature_pad) > 0
    x = ni.x[None]
    padded = torch.nn.functional.pad(x, (4 * left, 4 * right, 4 * top, 4 * bottom))
    classes = torch.tensor([[2, 4]])
    s_feat, c_feat = cell_maps(fcn, x, classes, pad=ni.feature_pad)
    s_img, c_img = cell_maps(fcn, padded, classes)
    torch.testing.assert_close(s_feat, s_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c_feat, c_img, rtol=1e-5, atol=1e-5)
    assert c_feat[..., :top, :].abs().max() == 0  # padded cells hold no evidence


def test_no_graph_or_grad_left_behind():
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    fw = forward(fcn, batch(1, NATIVE, NATIVE), cells=True)
    assert fw.last_input.grad_fn is not None  # the head's graph only, up to the last layer's input ...
    assert fw.scores.grad_fn is None
    assert all(p.grad is None for p in fcn.parameters())
    cell_maps(fcn, batch(1, NATIVE, NATIVE), CLASSES[:1])
    assert all(p.grad is None for p in fcn.parameters())  # ... and no parameter gradients
    assert not forward(fcn, batch(1, NATIVE, NATIVE)).scores.requires_grad


def test_explain_cells_points_at_the_planted_patch():
    """Cells sit at the feature map's own centres; the peak lands on the red patch."""
    fcn = convert_planted()
    img = np.zeros((96, 128, 3), np.uint8)
    img[52:60, 84:92] = (255, 0, 0)  # centre (87.5, 55.5) in pixel-centre coordinates
    for pad in ("features", "cover", "window", "none"):
        exp = fcn_cam.explain(fcn, Image.fromarray(img), scale=1.5, maps="cells", target="red", pad=pad)
        assert exp.maps == "cells" and exp.record()["maps"] == "cells"
        t = exp.targets[0]
        assert abs(t.peak[0] - 87.5) <= 8 and abs(t.peak[1] - 55.5) <= 8, (pad, t.peak)
        x0, y0, x1, y1 = t.box
        assert x0 <= 86 and x1 >= 90 and y0 <= 54 and y1 >= 58
        assert (x1 - x0) * (y1 - y0) < 0.5 * 96 * 128  # not the whole image
    # the map's grid is the feature map's: 8 px stride for three 2×2 pools
    assert Geometry.of(fcn.features).x.stride == 8


def test_cover_padding_for_cells_is_smaller_than_for_windows():
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    img = Image.new("RGB", (100, 80), "gray")
    cells = fcn_cam.explain(fcn, img, maps="cells", pad="cover")
    scores = fcn_cam.explain(fcn, img, maps="scores", pad="cover")
    assert sum(cells.pads[0]) < sum(scores.pads[0])
    # feature cells' centres cover every pixel: first centre at or before 0
    g = Geometry.of(fcn.features).shifted(*cells.pads[0])
    assert g.y.offset <= 0 and g.x.offset <= 0


def test_explain_files_cells_equal_single_images(photos):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    paths = [photos["cat"], photos["coffee"], photos["cat"]]
    many = list(fcn_cam.explain_files(fcn, paths, scale=[1, 1.5], maps="cells", top_k=2, batch_size=4))
    for r, p in zip(many, paths):
        one = fcn_cam.explain(fcn, p, scale=[1, 1.5], maps="cells", top_k=2)
        assert [t.index for t in r.explanation.targets] == [t.index for t in one.targets]
        got, want = r.explanation.targets[1].heatmap, one.targets[1].heatmap
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,dilation,pad", [
    (3, 2, (2, 1, 0, 3)), ((2, 4), 1, (0, 0, 0, 0)), (1, 1, (1, 2, 2, 1)),
    ((11, 9), 1, (1, 1, 2, 0)),  # the native size: one window, the rows are nn.Flatten's
])
def test_window_grid_against_a_walk_over_every_window_and_offset(kernel, dilation, pad):
    """The grid's sizes, offset spans and real pairs equal a cell-by-cell walk; its unfold is
    the conv's input rows and its fold their adjoint."""
    from fcn_cam.head import WindowGrid

    conv = nn.Conv2d(3, 4, kernel, dilation=dilation)
    shape = (2, 3, 11, 9)
    grid = WindowGrid.of(conv, shape, pad)
    (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
    h, w = 11 - dh * (kh - 1), 9 - dw * (kw - 1)
    assert grid.windows == (h, w) and grid.rows == 2 * h * w and grid.offsets == kh * kw
    top, bottom, left, right = pad
    real = torch.zeros(11, 9, dtype=torch.bool)
    real[top:11 - bottom, left:9 - right] = True
    assert grid.real_cells == 2 * int(real.sum()) and bool(real[grid.real].all())
    walk = {(i, j, qy, qx) for i in range(h) for j in range(w) for qy in range(kh) for qx in range(kw)
            if real[i + qy * dh, j + qx * dw]}
    spans = set()
    for s in grid.offset_spans():
        assert s.cell_rows == slice(s.rows.start + s.qy * dh, s.rows.stop + s.qy * dh)
        assert s.cell_cols == slice(s.cols.start + s.qx * dw, s.cols.stop + s.qx * dw)
        spans |= {(i, j, s.qy, s.qx) for i in range(h)[s.rows] for j in range(w)[s.cols]}
    assert spans == walk and grid.real_pairs == 2 * len(walk)
    x = torch.randn(shape, dtype=torch.float64)
    rows = grid.unfold(x)
    want = nn.functional.conv2d(x, conv.weight.double(), dilation=dilation).permute(0, 2, 3, 1)  # [B, h, w, O]
    torch.testing.assert_close(rows @ conv.weight.double().flatten(1).T, want.reshape(-1, 4))
    y = torch.randn(2, 3 * kh * kw, h * w, dtype=torch.float64)  # ⟨unfold(x), y⟩ = ⟨x, fold(y)⟩
    as_rows = y.transpose(1, 2).reshape(-1, 3 * kh * kw)
    torch.testing.assert_close((rows * as_rows).sum(), (x * grid.fold(y)).sum())


def test_window_grid_larger_than_the_features_names_the_problem():
    from fcn_cam.head import WindowGrid

    with pytest.raises(ValueError, match="feature map 3×9 is smaller than the head's 4×4 window"):
        WindowGrid.of(nn.Conv2d(8, 2, 4), (1, 8, 3, 9))

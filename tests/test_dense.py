"""Denser maps by dilation equal shift-and-stitch; multi-scale fusion; the bf16 path."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torchvision
from conftest import NATIVE, small_vgg

import fcn_cam
from fcn_cam import convert, explain, prepare, runtime
from fcn_cam.geometry import align


def shift_and_stitch(coarse: fcn_cam.FCN, x: torch.Tensor, fine: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the coarse net on inputs shifted by multiples of ``fine`` px and interleave.

    Returns the stitched map and a mask of cells whose receptive field lies inside both
    the shifted input and the full input (no zero padding seen by either net).
    """
    g = coarse.geometry.y
    f = int(g.stride) // fine
    H, W = x.shape[-2:]
    outs = {}
    for dy in range(f):
        for dx in range(f):
            with torch.no_grad():
                outs[dy, dx] = coarse(x[..., dy * fine:, dx * fine:])
    h = max(o.shape[-2] * f for o in outs.values())
    w = max(o.shape[-1] * f for o in outs.values())
    dense = torch.full((x.shape[0], outs[0, 0].shape[1], h, w), float("nan"))
    mask = torch.zeros(h, w, dtype=torch.bool)
    half = (g.window - 1) / 2
    for (dy, dx), o in outs.items():
        dense[..., dy::f, dx::f][..., : o.shape[-2], : o.shape[-1]] = o
        cy = dy * fine + g.stride * torch.arange(o.shape[-2]) + g.offset
        cx = dx * fine + g.stride * torch.arange(o.shape[-1]) + g.offset
        iy = (cy - half >= dy * fine) & (cy + half <= H - 1)
        ix = (cx - half >= dx * fine) & (cx + half <= W - 1)
        mask[dy::f, dx::f][: o.shape[-2], : o.shape[-1]] = iy[:, None] & ix[None, :]
    return dense, mask


def compare(coarse, fine_net, x, fine):
    dense, mask = shift_and_stitch(coarse, x, fine)
    with torch.no_grad():
        got = fine_net(x)
    h, w = got.shape[-2:]
    assert mask[:h, :w].sum() >= 4, "test input too small to have interior cells"
    sel = mask[:h, :w]
    ref = dense[..., :h, :w][..., sel]
    torch.testing.assert_close(got[..., sel], ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    return got


@pytest.mark.parametrize("stride", [8, 4])
def test_dilation_equals_shift_and_stitch_small(stride):
    model = small_vgg(bn=True)
    coarse = convert(model, NATIVE)
    fine = convert(model, NATIVE, output_stride=stride)
    assert fine.geometry.y.stride == stride and fine.geometry.y.offset == coarse.geometry.y.offset
    compare(coarse, fine, torch.randn(1, 3, 200, 232), stride)
    got = compare(coarse, fine, torch.randn(1, 3, 208, 240), stride)
    n, f = coarse.map_size(208, 240), 16 // stride  # sides multiple of 16: f (N - 1) + 1
    assert tuple(got.shape[-2:]) == fine.map_size(208, 240) == (f * (n[0] - 1) + 1, f * (n[1] - 1) + 1)


def test_vgg16_stride16_equals_shift_and_stitch():
    model = torchvision.models.vgg16(weights=None).eval()
    coarse, fine = convert(model), convert(model, output_stride=16)
    assert fine.map_size(448, 448) == (15, 15)  # 2N - 1
    assert (fine.geometry.y.stride, fine.geometry.y.offset) == (16, 111.5)
    compare(coarse, fine, torch.randn(1, 3, 544, 544), 16)


def test_stride8_vgg_geometry_and_alexnet():
    vgg = convert(torchvision.models.vgg11_bn(weights=None).eval(), output_stride=8)
    assert vgg.map_size(448, 448) == (29, 29) and vgg.geometry.x.offset == 111.5
    alex = torchvision.models.alexnet(weights=None).eval()
    coarse, fine = convert(alex), convert(alex, output_stride=16)
    compare(coarse, fine, torch.randn(1, 3, 480, 480), 16)


def test_gap_path_stride16_is_cam_of_dilated_net():
    model = torchvision.models.resnet18(weights=None).eval()
    fine = convert(model, output_stride=16)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        maps = fine(x)
    assert maps.shape[-2:] == (14, 14)
    torch.testing.assert_close(maps[..., ::2, ::2].mean((-2, -1)), model(x), atol=1e-4, rtol=1e-4)


def test_multiscale_fusion_averages_aligned_maps(photos):
    fcn = convert(small_vgg(), NATIVE, class_names=list("abcde"))
    scales = [1.5, 2.0, 3.0]
    fused = explain(fcn, photos["coffee"], scale=scales, target=2)
    singles = [explain(fcn, photos["coffee"], scale=s, target=2) for s in scales]
    heat = np.mean([e.targets[0].heatmap for e in singles], axis=0)
    np.testing.assert_allclose(fused.targets[0].heatmap, heat, rtol=1e-5, atol=1e-5)
    assert fused.targets[0].score == pytest.approx(np.mean([e.targets[0].score for e in singles]), rel=1e-5)
    # the ranking is on fused evidence
    best = int(np.argmax(np.mean([[s for _, _, s in sorted(e.ranking)] for e in
                                  [explain(fcn, photos["coffee"], scale=s, top_k=5) for s in scales]], 0)))
    assert explain(fcn, photos["coffee"], scale=scales).targets[0].index == best
    rec = fused.record()
    assert rec["scale"] == scales and len(rec["map_shape"]) == 3


def test_bf16_close_to_fp32(photos):
    fcn = convert(small_vgg(), NATIVE)
    with pytest.warns(UserWarning) if not runtime.native_bf16(torch.device("cpu")) else nullcontext():
        fast = prepare(fcn, "bf16")
    assert next(fast.parameters()).dtype == torch.bfloat16
    assert next(fcn.parameters()).dtype == torch.float32  # original untouched
    a = explain(fcn, photos["cat"], scale=2, top_k=5)
    b = explain(fast, photos["cat"], scale=2, target=a.targets[0].index)
    r = np.corrcoef(a.targets[0].heatmap.ravel(), b.targets[0].heatmap.ravel())[0, 1]
    assert r > 0.99


def test_align_with_reduced_stride_uses_finer_centres():
    fcn = convert(torchvision.models.vgg11(weights=None).eval(), output_stride=16)
    m = torch.zeros(15, 15)
    m[7, 7] = 1
    heat = align(m, fcn.geometry, (448, 448), (448, 448))
    y, x = np.unravel_index(heat.numpy().argmax(), (448, 448))
    assert abs(y - (16 * 7 + 111.5)) <= 0.5 and abs(x - (16 * 7 + 111.5)) <= 0.5

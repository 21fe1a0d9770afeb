"""Grad-CAM (used for comparisons) against the GAP identity: α_k = w_ck / (h·w)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fcn_cam import convert
from fcn_cam.gradcam import grad_cam


def test_gradcam_on_gap_net_is_relu_cam_over_area():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 5),
    )).train()
    cam = convert(model, 32)
    x = torch.randn(3, 3, 40, 48)
    classes = [0, 3, 4]
    g = grad_cam(model, model.features[4], x, classes)
    with torch.no_grad():
        maps = cam(x)
    expected = torch.stack([
        torch.relu(maps[b, c] - model.fc.bias[c]) / (maps.shape[-2] * maps.shape[-1])
        for b, c in enumerate(classes)
    ])
    torch.testing.assert_close(g, expected, atol=1e-5, rtol=1e-4)
    # nothing left behind: no hooks, training flags restored
    assert all(not m._forward_hooks for m in model.modules())
    assert model.training and all(m.training for m in model.modules())

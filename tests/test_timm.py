"""timm's VGG: ConvMlp kept as convolutions, the Linear after the global pool as a 1×1 conv
before it; the maps' spatial mean is timm's logits at the native size and larger."""

from __future__ import annotations

import pytest
import torch
from timm.models.vgg import VGG

import fcn_cam
from fcn_cam import ConversionError, convert

# A narrow VGG with timm's own head (ConvMlp 7×7 → 1×1, global avg pool, Linear).
CFG = [8, "M", 16, "M", 16, "M", 32, "M", 32, "M"]


def small_timm_vgg(**kw) -> VGG:
    torch.manual_seed(0)
    return VGG(cfg=CFG, num_classes=10, mlp_ratio=1 / 64, **kw).eval()


@pytest.mark.parametrize("size", [224, 448, 320])
def test_maps_mean_is_timm_logits(size):
    model = small_timm_vgg()
    fcn = convert(model, 224)
    assert fcn.info["head"] == "gap" and fcn.info["exactness"]["rel_diff"] <= 1e-5
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ref, maps = model(x), fcn(x)
    assert maps.shape[-2:] == fcn.map_size(size, size) == ((size // 32) - 6,) * 2
    assert (maps.mean((-2, -1)) - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_head_is_convs_with_timm_weights(tmp_path):
    model = small_timm_vgg()
    fcn = convert(model, 224)
    convs = [m for m in fcn.head if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(7, 7), (1, 1), (1, 1)]
    assert torch.equal(convs[0].weight, model.pre_logits.fc1.weight)
    assert torch.equal(convs[2].weight.flatten(1), model.head.fc.weight)
    fcn_cam.save(fcn, tmp_path / "t.pt")
    back = fcn_cam.load(tmp_path / "t.pt")
    x = torch.randn(1, 3, 256, 288)
    with torch.no_grad():
        assert torch.equal(back(x), fcn(x))


def test_max_pool_head_refused():
    with pytest.raises(ConversionError, match="global_pool='max'.*create the model with global_pool='avg'"):
        convert(small_timm_vgg(global_pool="max"), 224)

"""Surgery is exact: converted nets reproduce the original logits."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from conftest import NATIVE, randomize_batchnorm, small_vgg
from torch import nn

import fcn_cam
from fcn_cam import ConversionError, convert
from fcn_cam.zoo import ARCHS


def assert_exact(model: nn.Module, fcn: fcn_cam.FCN, size: int = 224, seed: int = 1) -> None:
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref, maps = model(x), fcn(x)
    assert maps.shape[-2:] == (1, 1) or fcn.info["head"] == "gap"
    got = maps.mean(dim=(-2, -1))
    assert (ref - got).abs().max() <= 1e-4 * ref.abs().max()
    assert torch.equal(ref.argmax(1), got.argmax(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_torchvision_archs_exact(arch):
    model = randomize_batchnorm(torchvision.models.get_model(arch, weights=None)).eval()
    fcn = convert(model, arch=arch)
    ex = fcn.info["exactness"]
    assert ex["rel_diff"] <= 1e-4 and ex["top1_agree"]
    assert_exact(model, fcn)  # an independent probe, not the one recorded at conversion
    del model, fcn


def test_vgg16_head_is_conv_with_same_weights():
    model = torchvision.models.vgg16(weights=None).eval()
    fcn = convert(model)
    convs = [m for m in fcn.head if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (512, 4096, (7, 7), (0, 0)), (4096, 4096, (1, 1), (0, 0)), (4096, 1000, (1, 1), (0, 0))]
    assert torch.equal(convs[0].weight, model.classifier[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(convs[2].bias, model.classifier[6].bias)
    assert not any(isinstance(m, nn.Dropout | nn.AdaptiveAvgPool2d) for m in fcn.modules())
    assert fcn.map_size(448, 448) == (8, 8)
    assert fcn.info["head"] == "fc"


def test_resnet18_gap_cam_matches_independent_cam():
    """Zhou et al.: M_c = sum_k w_ck f_k + b_c on layer4's output, and mean(M_c) = logit."""
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None)).eval()
    fcn = convert(model)
    assert fcn.info["head"] == "gap"
    feats = {}
    handle = model.layer4.register_forward_hook(lambda m, i, o: feats.setdefault("f", o))
    x = torch.randn(1, 3, 320, 288)
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    f = feats["f"]
    cam = torch.einsum("kc,bchw->bkhw", model.fc.weight, f) + model.fc.bias[:, None, None]
    with torch.no_grad():
        maps = fcn(x)
    assert maps.shape == cam.shape == (1, 1000, 10, 9)
    torch.testing.assert_close(maps, cam, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(maps.mean(dim=(-2, -1)), logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bn", [True, False])
def test_sequential_with_flatten(bn):
    model = small_vgg(bn=bn)
    fcn = convert(model, NATIVE)
    assert_exact(model, fcn, NATIVE)
    assert fcn.map_size(128, 96) == (5, 3) == tuple(fcn(torch.zeros(1, 3, 128, 96)).shape[-2:])


def test_batchnorm1d_folded_before_and_after_linear():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
        nn.BatchNorm1d(4 * 4 * 4), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.BatchNorm1d(16), nn.Linear(16, 3),
    )
    model = randomize_batchnorm(model).eval()
    fcn = convert(model, 16)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fcn.modules())
    assert_exact(model, fcn, 16)


def test_gap_sequential_is_cam_at_every_size():
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(
        features=nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(8, 4),
    )).eval()
    fcn = convert(model, 32)
    assert fcn.info["head"] == "gap"
    for size in (32, 50, 96):
        x = torch.randn(2, 3, size, size + 6)
        with torch.no_grad():
            torch.testing.assert_close(fcn.logits(x), model(x), atol=1e-5, rtol=1e-5)


def test_original_model_untouched():
    model = small_vgg().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    convert(model, NATIVE)
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unsupported_architecture_message():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 3)

    with pytest.raises(ConversionError, match="expected `features` \\+ `classifier`"):
        convert(Odd())
    with pytest.raises(ConversionError, match="no nn.Flatten"):
        convert(nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU()))


def test_gap_with_mlp_head_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ConversionError, match="several Linear"):
        convert(model, 32)


def test_wrong_input_size_refused_with_sizes():
    model = torchvision.models.alexnet(weights=None).eval()
    with pytest.raises(ConversionError, match="adaptive pool maps the 4×4 features to 6×6"):
        convert(model, 160)


def test_failed_exactness_refused_with_numbers():
    class Doubling(nn.Module):  # forward does something the layers don't say
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(4))
            self.classifier = nn.Sequential(nn.Linear(64, 3))

        def forward(self, x):
            return 2 * self.classifier(self.features(x).flatten(1)) + 1

    with pytest.raises(ConversionError, match=r"max \|Δlogit\| = .* of the largest logit"):
        convert(Doubling().eval(), 16)


def test_unsupported_head_layer():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 4), nn.Softmax(1))
    with pytest.raises(ConversionError, match="unsupported layer in the head: Softmax"):
        convert(model, 16)

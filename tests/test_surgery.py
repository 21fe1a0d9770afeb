"""Surgery is exact: converted nets reproduce the original logits."""

from __future__ import annotations

from collections import OrderedDict
from contextlib import nullcontext

import pytest
import torch
import torchvision
from conftest import NATIVE, randomize_batchnorm, small_vgg
from torch import nn

import fcn_cam
from fcn_cam import ConversionError, convert
from fcn_cam.registry import ARCHS


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



def test_converted_net_shares_weights_and_preparing_it_leaves_the_original_alone():
    """No second copy of the weights; ``prepare`` (dtype, channels-last) rebinds only the copy's."""
    model = torchvision.models.vgg16(weights=None).eval()
    fcn = convert(model)
    ptr = lambda t: t.untyped_storage().data_ptr()  # noqa: E731
    assert ptr(fcn.head[0].weight) == ptr(model.classifier[0].weight)
    assert ptr(fcn.features[0].weight) == ptr(model.features[0].weight)
    assert fcn.features[0] is not model.features[0] and fcn.features[0].weight is not model.features[0].weight
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning) if not fcn_cam.runtime.native_bf16(torch.device("cpu")) else nullcontext():
        fcn_cam.prepare(fcn, precision="bf16", device="cpu", copy=False)
    assert fcn.head[0].weight.dtype == torch.bfloat16
    assert fcn.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    after = model.state_dict()
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in after.values())
    assert all(torch.equal(before[k], after[k]) for k in before)

def test_unsupported_architecture_message():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 3, 3)

    with pytest.raises(ConversionError, match="torch.fx cannot trace Odd .*nn.Sequential"):
        convert(Odd())
    with pytest.raises(ConversionError, match="no point where the .* feature map becomes a .* vector"):
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
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 4), nn.LayerNorm(4),
                          nn.Linear(4, 2))
    with pytest.raises(ConversionError, match=r"head layer 1 \(LayerNorm\) does not act on \[B, C\] vectors"):
        convert(model, 16)


CHANNELWISE = [
    lambda c: nn.PReLU(), lambda c: nn.PReLU(c), lambda c: nn.LeakyReLU(0.1), lambda c: nn.ELU(),
    lambda c: nn.GELU(), lambda c: nn.GELU("tanh"), lambda c: nn.SiLU(), lambda c: nn.Hardswish(),
    lambda c: nn.Mish(), lambda c: nn.Softplus(2.0), lambda c: nn.ReLU6(), lambda c: nn.SELU(),
    lambda c: nn.CELU(0.5), lambda c: nn.Hardsigmoid(), lambda c: nn.Softsign(), lambda c: nn.Tanh(),
]


@pytest.mark.parametrize("make", CHANNELWISE, ids=lambda f: type(f(3)).__name__ + str(sum(
    p.numel() for p in f(3).parameters())))
def test_channelwise_head_layers_exact_and_saved(make, tmp_path):
    torch.manual_seed(0)
    act = make(16)
    for p in act.parameters():  # slopes that differ per channel
        p.data.uniform_(-0.5, 0.5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4),
                          nn.Flatten(), nn.Linear(64, 16), act, nn.Linear(16, 3)).eval()
    fcn = convert(model, 16)
    assert_exact(model, fcn, 16)
    assert fcn.info["head_layers"] == ["Conv2d", type(act).__name__, "Conv2d"]
    fcn_cam.save(fcn, tmp_path / "m.pt")
    back = fcn_cam.load(tmp_path / "m.pt")
    x = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        assert torch.equal(back(x), fcn(x))


@pytest.mark.parametrize("order", ["chw", "hwc", "whc", "cwh", "hcw", "wch"])
def test_flatten_order_from_permute(order, tmp_path):
    """Non-square 2×3 features, so a wrong order cannot pass by symmetry."""
    torch.manual_seed(0)
    dims = [0, *(1 + "chw".index(d) for d in order)]
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4), nn.MaxPool2d(4),
                          torchvision.ops.Permute(dims), nn.Flatten(), nn.Linear(24, 8), nn.PReLU(8),
                          nn.Linear(8, 3), nn.Softmax(1)).eval()
    fcn = convert(model, (8, 12))
    assert fcn.info["flatten_order"] == order and fcn.info["dropped"] == ["Softmax"]
    x = torch.randn(3, 3, 8, 12)
    with torch.no_grad():
        ref = model(x).log()  # log-probabilities: logits up to a constant per image
        got = fcn(x).mean((-2, -1)).log_softmax(1)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    fcn_cam.save(fcn, tmp_path / "m.pt")
    assert fcn_cam.load(tmp_path / "m.pt").info["flatten_order"] == order


def test_flatten_order_argument_and_wrong_order_hint():
    """Weights laid out for H, W, C with a chw nn.Flatten: the user states the order."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.MaxPool2d(4))
    keras = nn.Sequential(body, torchvision.ops.Permute([0, 2, 3, 1]), nn.Flatten(), nn.Linear(24, 3)).eval()
    with pytest.raises(ConversionError, match="Permute gives flatten order 'hwc' but flatten_order='whc'"):
        convert(keras, (8, 12), flatten_order="whc")
    plain = nn.Sequential(body, nn.Flatten(), keras[3]).eval()
    with pytest.raises(ConversionError, match="flatten_order 'xyz'"):
        convert(plain, (8, 12), flatten_order="xyz")
    fcn = convert(plain, (8, 12), flatten_order="chw")
    assert fcn.info["exactness"]["rel_diff"] <= 1e-5
    with pytest.raises(ConversionError, match="disagrees"):
        convert(plain, (8, 12), flatten_order="hwc")


def test_softmax_dropped_or_kept():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 4), nn.LogSoftmax(1)).eval()
    fcn = convert(model, 16)
    assert fcn.info["dropped"] == ["LogSoftmax"] and fcn.num_classes == 4
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits = model[2](model[1](model[0](x)))
        torch.testing.assert_close(fcn(x).mean((-2, -1)), logits, rtol=1e-5, atol=1e-6)
    kept = convert(model, 16, keep_softmax=True)
    assert kept.info["dropped"] == [] and kept.num_classes == 4
    with torch.no_grad():
        torch.testing.assert_close(kept(x).mean((-2, -1)), model(x), rtol=1e-5, atol=1e-6)
        big = kept(torch.randn(1, 3, 30, 24))
    torch.testing.assert_close(big.exp().sum(1), torch.ones_like(big[:, 0]))  # per-cell distribution


def test_unsaveable_layer_fails_at_save(tmp_path):
    class Swish(nn.Module):  # channel-wise, so convertible, but not a standard layer
        def forward(self, x):
            return x * torch.sigmoid(x)

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 8), Swish(),
                          nn.Linear(8, 2)).eval()
    fcn = convert(model, 16)
    with pytest.raises(fcn_cam.ModelFileError, match="cannot save: layer Swish"):
        fcn_cam.save(fcn, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_importers_in_order_and_a_layout_converts_as_given():
    """convert = first importer that reads the model → Layout → surgery; a Layout passes as it is."""
    from fcn_cam import errors, importers, surgery
    from fcn_cam.layout import Layout

    assert fcn_cam.ConversionError is errors.ConversionError is surgery.ConversionError
    assert [i.name for i in importers.IMPORTERS] == ["layout", "timm", "plain", "fx"]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 14 * 14, 4), nn.LogSoftmax(1)).eval()
    layout = importers.to_layout(model, (16, 16))
    assert layout.original is model and isinstance(layout.head[-1], nn.LogSoftmax)
    assert importers.plain.to_layout(model, (16, 16), output=0) is None  # output= is torch.fx's job
    assert importers.to_layout(model, (16, 16), output=0).arch == "GraphModule"
    head = list(layout.head)
    fcn = convert(layout, 16)
    assert layout.head == head  # the softmax is dropped from the conversion, not from the layout
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x), convert(model, 16)(x), rtol=0, atol=0)
    assert fcn.info["dropped"] == ["LogSoftmax"] and fcn.info["arch"] == "Sequential"
    with pytest.raises(ConversionError, match="a Layout has one: drop output="):
        convert(layout, 16, output=0)
    bare = Layout(layout.body, None, layout.head)
    with pytest.raises(ConversionError, match="no logits before its final softmax to check the maps against"):
        convert(bare, 16)
    unchecked = convert(bare, 16, verify=False)
    assert unchecked.info["exactness"] is None and unchecked.info["arch"] == "Sequential"

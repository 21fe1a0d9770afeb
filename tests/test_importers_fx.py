"""torch.fx importer: custom forwards rewritten and checked against the traced original."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fcn_cam
from fcn_cam import ConversionError, convert


class Detector(nn.Module):
    """A custom forward: functional pooling (ceil mode), an asymmetric F.pad, a Keras-style
    permute before the flatten, an affine on the hidden layer, and two heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc1, self.fc2, self.box = nn.Linear(6 * 4 * 3, 20), nn.Linear(20, 5), nn.Linear(20, 4)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.c1(x))), 2, ceil_mode=True)
        x = F.pad(x, (0, 1, 0, 1))
        x = F.avg_pool2d(F.leaky_relu(self.c2(x), 0.2), 2)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        h = F.gelu(self.fc1(x) * 1.5 + 0.2)
        return {"logits": F.softmax(self.fc2(h), dim=-1), "box": self.box(h)}


NATIVE = (16, 13)


def logits_of(model, x):
    with torch.no_grad():
        h = model.c2(F.pad(F.max_pool2d(F.relu(model.bn(model.c1(x))), 2, ceil_mode=True), (0, 1, 0, 1)))
        h = F.avg_pool2d(F.leaky_relu(h, 0.2), 2).permute(0, 2, 3, 1).flatten(1)
        return model.fc2(F.gelu(model.fc1(h) * 1.5 + 0.2))


def test_custom_forward_converted_exactly():
    model = Detector().eval()
    fcn = convert(model, NATIVE, output="logits")
    assert fcn.info["flatten_order"] == "hwc" and fcn.info["dropped"] == ["Softmax"]
    assert fcn.info["head_layers"] == ["Conv2d", "GELU", "Conv2d"]
    assert not fcn.info["head_piecewise_linear"]
    assert fcn.info["exactness"]["rel_diff"] <= 1e-5
    x = torch.randn(3, 3, *NATIVE, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        maps = fcn(x)
    assert maps.shape[-2:] == (1, 1)
    ref = logits_of(model, x)
    assert (maps.mean((-2, -1)) - ref).abs().max() <= 1e-5 * ref.abs().max()
    # geometry from the layers, pads and ceil mode included, matches the real map size
    for h, w in ((16, 13), (40, 33), (57, 64), (31, 30)):
        with torch.no_grad():
            assert tuple(fcn(torch.zeros(1, 3, h, w)).shape[-2:]) == fcn.map_size(h, w)


def test_keep_softmax_gives_probabilities():
    model = Detector().eval()
    fcn = convert(model, NATIVE, output="logits", keep_softmax=True)
    x = torch.randn(2, 3, *NATIVE)
    with torch.no_grad():
        torch.testing.assert_close(fcn(x).mean((-2, -1)), model(x)["logits"], rtol=1e-5, atol=1e-6)
    assert fcn.info["dropped"] == [] and fcn.info["head_layers"][-1] == "ChannelSoftmax"


def test_several_outputs_need_output():
    with pytest.raises(ConversionError, match=r"dict with keys \['logits', 'box'\]; pass output="):
        convert(Detector().eval(), NATIVE)


def test_round_trip_through_model_file(tmp_path):
    fcn = convert(Detector().eval(), NATIVE, output="logits")
    fcn_cam.save(fcn, tmp_path / "m.pt")
    back = fcn_cam.load(tmp_path / "m.pt")
    x = torch.randn(1, 3, 40, 37)
    with torch.no_grad():
        assert torch.equal(fcn(x), back(x))
    assert back.info["flatten_order"] == "hwc"


class TupleNet(nn.Module):
    def __init__(self, gap: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.PReLU(4), nn.MaxPool2d(4))
        self.fc = nn.Linear(4 if gap else 4 * 4 * 4, 3)
        self.gap = gap

    def forward(self, x):
        f = self.features(x)
        v = f.mean((2, 3)) if self.gap else torch.flatten(f, 1)
        return self.fc(v), f


def test_tuple_output_by_index_and_gap_head():
    torch.manual_seed(1)
    fcn = convert(TupleNet().eval(), 16, output=0)
    assert fcn.info["head"] == "fc" and fcn.info["flatten_order"] == "chw"
    with pytest.raises(ConversionError, match=r"returns 2 outputs; pass output=0…1"):
        convert(TupleNet().eval(), 16)
    model = TupleNet(gap=True).eval()
    cam = convert(model, 16, output=0)
    assert cam.info["head"] == "gap"
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():  # a GAP head is the CAM: the mean of the maps is the logit at any size
        torch.testing.assert_close(cam.logits(x), model(x)[0], rtol=1e-5, atol=1e-6)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.b(self.a(x)) + x, 1))


def test_refusals_name_the_node():
    with pytest.raises(ConversionError, match=r"node `add` .*combines 2 computed tensors"):
        convert(Residual().eval(), 8)

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            if x.sum() > 0:
                return self.c(x)
            return x

    with pytest.raises(ConversionError, match=r"torch.fx cannot trace Branchy"):
        convert(Branchy(), 8)

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.c, self.fc = nn.Conv2d(3, 2, 3), nn.Linear(2 * 6 * 6, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.cumsum(self.c(x), 2), 1))

    with pytest.raises(ConversionError, match=r"node `cumsum` .*no standard layer"):
        convert(Odd().eval(), 8)

    class NoFlatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return self.c(x)

    with pytest.raises(ConversionError, match=r"no point where the \[B, C, H, W\] feature map becomes"):
        convert(NoFlatten().eval(), 8)

"""Model files round-trip through torch.load(weights_only=True); weights come from one place."""

from __future__ import annotations

import hashlib
import urllib.error

import pytest
import torch
import torchvision
from conftest import NATIVE, small_vgg

import fcn_cam
from fcn_cam import zoo
from fcn_cam.modelfile import FORMAT


def same_maps(a: fcn_cam.FCN, b: fcn_cam.FCN, size: int) -> None:
    x = torch.randn(1, 3, size, size + 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


@pytest.mark.parametrize("output_stride", [None, 8])
def test_roundtrip_sequential(tmp_path, output_stride):
    fcn = fcn_cam.convert(small_vgg(), NATIVE, class_names=list("abcde"), output_stride=output_stride)
    path = fcn_cam.save(fcn, tmp_path / "m.pt")
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["info"]["class_names"] == list("abcde")
    back = fcn_cam.load(path)
    assert back.info == fcn.info and back.geometry == fcn.geometry
    same_maps(fcn, back, 2 * NATIVE)


@pytest.mark.parametrize("output_stride", [None, 16])
def test_roundtrip_resnet(tmp_path, output_stride):
    model = torchvision.models.resnet18(weights=None).eval()
    fcn = fcn_cam.convert(model, arch="resnet18", output_stride=output_stride)
    back = fcn_cam.load(fcn_cam.save(fcn, tmp_path / "r.pt"))
    assert back.info == fcn.info
    same_maps(fcn, back, 256)


def test_save_does_not_clobber(tmp_path):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    path = tmp_path / "m.pt"
    path.write_text("mine")
    with pytest.raises(FileExistsError):
        fcn_cam.save(fcn, path)
    assert path.read_text() == "mine"
    fcn_cam.save(fcn, path, overwrite=True)
    assert fcn_cam.load(path).info == fcn.info


def test_custom_layer_cannot_be_saved(tmp_path):
    class Swish(torch.nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Swish(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    fcn = fcn_cam.convert(model.eval(), 8)
    with pytest.raises(fcn_cam.ModelFileError, match="Swish is not a standard torch.nn layer"):
        fcn_cam.save(fcn, tmp_path / "s.pt")
    assert not list(tmp_path.iterdir())


def test_weights_local_file_and_errors(tmp_path):
    sd = torchvision.models.resnet18(weights=None).state_dict()
    good = tmp_path / "resnet18.pth"
    torch.save(sd, good)
    model, provenance = zoo.build("resnet18", str(good))
    assert provenance["weights"] == str(good) and provenance["num_classes"] == 1000
    assert provenance["weights_file"]["sha256"] == hashlib.sha256(good.read_bytes()).hexdigest()
    assert torch.equal(model.fc.weight, sd["fc.weight"])
    with pytest.raises(zoo.WeightsError, match=f"{good}: does not fit resnet34"):
        zoo.build("resnet34", str(good))
    with pytest.raises(zoo.WeightsError, match="weights file not found"):
        zoo.build("resnet18", str(tmp_path / "nope.pth"))
    with pytest.raises(zoo.WeightsError, match="unknown weights 'IMAGENET9K'"):
        zoo.build("resnet18", "IMAGENET9K")


def test_weights_from_torchvision_cache_offline(tmp_path, monkeypatch):
    """DEFAULT weights found in torchvision's cache load with no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    sd = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(sd, cache / url.rsplit("/", 1)[-1])
    fcn = zoo.load_arch("resnet18")
    assert fcn.info["weights"] == "DEFAULT" and fcn.class_names[0] == "tench"
    assert torch.equal(fcn.head[0].weight.flatten(1), sd["fc.weight"])


def test_offline_download_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", no_network)
    with pytest.raises(zoo.WeightsError) as e:
        zoo.build("resnet18", "IMAGENET1K_V1")
    msg = str(e.value)
    assert "could not download" in msg and "--weights" in msg
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg

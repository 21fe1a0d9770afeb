"""Shared fixtures: small models with known behaviour, and real photos as files."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcn_cam

NATIVE = 64  # planted model: three 2x2 pools -> 8x8 features at 64 px


@pytest.fixture(scope="session", autouse=True)
def default_output_folder(tmp_path_factory):
    """``fcn-cam explain`` without ``-o`` writes to ``$FCN_CAM_OUTPUT`` and caches converted
    architectures in ``$FCN_CAM_CACHE``: temporary folders here, never the working directory
    or the home folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FCN_CAM_OUTPUT", str(tmp_path_factory.mktemp("fcn-cam-out")))
    mp.setenv("FCN_CAM_CACHE", str(tmp_path_factory.mktemp("fcn-cam-cache")))  # converted archs: not ~/.cache
    yield
    mp.undo()


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def planted_model() -> nn.Sequential:
    """A VGG-shaped net whose class 1 fires when a red patch sits at its window's centre.

    features: channel 0 = relu(r - (g + b)/2 - 0.3) (a red detector), three 2x2/2 average
    pools -> 8x8 at 64 px. Head: Linear(8*8, 2); class 1 weighs the features with a
    Gaussian bump centred on the window, class 0 is a constant.
    """
    conv = nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -0.5, -0.5]).view(1, 3, 1, 1))
        conv.bias.fill_(-0.3)
    # Average pools keep the detector unbiased: a window's score is the red mass under a
    # symmetric bump, so the window centred nearest the patch wins.
    features = nn.Sequential(conv, nn.ReLU(), *[nn.AvgPool2d(2) for _ in range(3)])
    head = nn.Linear(64, 2)
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    bump = torch.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 4)
    with torch.no_grad():
        head.weight.copy_(torch.stack([torch.zeros(64), bump.flatten()]))
        head.bias.copy_(torch.tensor([0.05, 0.0]))
    return nn.Sequential(OrderedDict(features=features, flatten=nn.Flatten(), classifier=head)).eval()


def convert_planted() -> fcn_cam.FCN:
    return fcn_cam.convert(
        planted_model(), NATIVE, class_names=["background", "red"], mean=(0, 0, 0), std=(1, 1, 1)
    )


def small_vgg(num_classes: int = 5, bn: bool = True, seed: int = 0) -> nn.Sequential:
    """A miniature VGG: conv blocks -> 4x4 features at 64 px -> 3-Linear head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    c = 3
    for out in (8, 16, 16, 32):
        layers += [nn.Conv2d(c, out, 3, padding=1)]
        layers += [nn.BatchNorm2d(out)] if bn else []
        layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c = out
    head = nn.Sequential(
        nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Dropout(),
        nn.Linear(64, 64), nn.ReLU(inplace=True), nn.Dropout(), nn.Linear(64, num_classes),
    )
    model = nn.Sequential(OrderedDict(features=nn.Sequential(*layers), flatten=nn.Flatten(), classifier=head))
    return randomize_batchnorm(model).eval()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> dict[str, Path]:
    """Real photos from scikit-image in the formats users have."""
    import skimage.data as data

    root = tmp_path_factory.mktemp("photos")
    paths = {}
    Image.fromarray(data.chelsea()).save(root / "cat.jpg", quality=90)
    Image.fromarray(data.coffee()).save(root / "coffee.png")
    Image.fromarray(data.camera()).save(root / "gray.png")  # mode L
    rgba = np.dstack([data.astronaut(), np.full(data.astronaut().shape[:2], 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "astronaut_rgba.png")
    # EXIF orientation 6: stored landscape, displayed rotated 90° clockwise (portrait).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(data.rocket()).save(root / "rotated.jpg", exif=exif.tobytes())
    for p in root.iterdir():
        paths[p.stem] = p
    return paths


@pytest.fixture(scope="session")
def small_model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "small.pt"
    fcn = fcn_cam.convert(small_vgg(), NATIVE, class_names=[f"c{i}" for i in range(5)])
    fcn_cam.save(fcn, path)
    return path

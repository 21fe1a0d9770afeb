"""``fcn_cam.compare``: one figure per image with every available method; the missing extra
named in one line."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from conftest import NATIVE, small_vgg
from PIL import Image
from torch import nn

import fcn_cam
from fcn_cam.comparison import compare
from fcn_cam.peers import CAM, PEERS, available, peer_maps


def images(root, n=2):
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(64, 64), (80, 120)][:n]):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def gap_fcn() -> fcn_cam.FCN:
    torch.manual_seed(1)
    feats = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )
    model = nn.Sequential(
        OrderedDict(features=feats, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(16, 3))
    ).eval()
    return fcn_cam.convert(model, NATIVE, class_names=["a", "b", "c"], mean=(0, 0, 0), std=(1, 1, 1))


def panels(path):
    return json.loads(Image.open(path).text["Description"])


def test_one_figure_per_image_with_every_method(tmp_path):
    fcn = fcn_cam.convert(small_vgg(), NATIVE, class_names=[f"c{i}" for i in range(5)])
    paths = images(tmp_path)
    out = compare(fcn, paths, out_dir=tmp_path / "out", top_k=2)
    assert [p.name for p in out] == ["img0_compare.png", "img1_compare.png"]
    for p in out:
        rows = panels(p)
        assert len(rows) == 2  # top-2 classes, one row each
        for row in rows:
            assert [x["method"] for x in row] == ["fcn-cam (cells)", "fcn-cam (scores)", *PEERS]
            assert len({x["class"] for x in row}) == 1  # the peers explain fcn-cam's class
            assert all(x["seconds"] > 0 and len(x["box"]) == 4 for x in row)


def test_gap_head_adds_the_true_cam(tmp_path):
    fcn = gap_fcn()
    assert available(fcn)[-1] == CAM
    out = compare(fcn, images(tmp_path, 1), out_dir=tmp_path, methods=["Grad-CAM", "CAM"], target="b")
    assert [x["method"] for x in panels(out[0])[0]] == ["fcn-cam (cells)", "fcn-cam (scores)", "Grad-CAM", CAM]
    assert {x["class"] for x in panels(out[0])[0]} == {"b"}


def test_true_cam_is_the_native_score_map(tmp_path):
    """CAM = fcn-cam's score map at the native size (the 1x1 head is w_c^T f + b_c)."""
    fcn = gap_fcn()
    im = Image.fromarray(np.random.default_rng(3).integers(0, 255, (NATIVE, NATIVE, 3), dtype=np.uint8))
    got = peer_maps(fcn, [im], [2], ["CAM"])["CAM"].maps[0]
    with torch.no_grad():
        s = fcn(torch.from_numpy(np.array(im)).permute(2, 0, 1)[None].float() / 255)[0, 2]
    want = nn.functional.interpolate(s[None, None], size=(NATIVE, NATIVE), mode="bilinear")[0, 0].numpy()
    assert np.allclose(got, want, atol=1e-5)


def test_missing_extra_is_one_line(tmp_path, monkeypatch):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    with pytest.raises(ImportError) as e:
        compare(fcn, images(tmp_path, 1), out_dir=tmp_path / "out")
    assert str(e.value).count("\n") == 0 and "pip install 'fcn-cam[compare]'" in str(e.value)
    assert not list((tmp_path / "out").glob("*.png"))


def test_unknown_method_is_one_line(tmp_path):
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    with pytest.raises(ValueError, match="unknown method 'GradCam'.*did you mean 'Grad-CAM'"):
        compare(fcn, images(tmp_path, 1), out_dir=tmp_path, methods=["GradCam"])
    with pytest.raises(ValueError, match="needs a GAP head"):
        compare(fcn, images(tmp_path, 1), out_dir=tmp_path, methods=["CAM"])

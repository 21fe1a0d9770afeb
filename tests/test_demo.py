"""The demo scenes and the shipped twin classifiers."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fcn_cam import demo

# The shipped twins score 86.3 % (FC) and 91.9 % (GAP) on 2,000 held-out-writer scenes
# (benchmarks/results/twins.md); chance is 10 %.
MIN_ACCURACY = 0.8


@pytest.fixture(scope="module")
def many() -> demo.Scenes:
    return demo.scenes(1000, seed=7)


@pytest.fixture(scope="module")
def models() -> tuple[nn.Sequential, nn.Sequential]:
    return demo.twins()


# --- scenes ----------------------------------------------------------------------------------


def test_import_does_not_load_skimage_or_sklearn():
    code = (
        "import sys, fcn_cam.demo\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('skimage', 'sklearn')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scenes_deterministic_per_seed():
    a, b, c = demo.scenes(12, seed=3), demo.scenes(12, seed=3), demo.scenes(12, seed=4)
    for field in ("images", "labels", "boxes", "masks"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(a.boxes, c.boxes)


def test_scene_shapes_and_dtypes(many):
    s = demo.SCENE_SIZE
    assert s == demo.INPUT_SIZE
    assert len(many) == 1000
    assert many.images.shape == (1000, s, s, 3) and many.images.dtype == np.uint8
    assert many.labels.shape == (1000,) and many.labels.dtype == np.int64
    assert many.boxes.shape == (1000, 4) and np.issubdtype(many.boxes.dtype, np.integer)
    assert many.masks.shape == (1000, s, s) and many.masks.dtype == bool
    assert many.class_names == demo.CLASS_NAMES and len(many.class_names) >= 10


def test_boxes_inside_nonempty_and_tight(many):
    s = demo.SCENE_SIZE
    x0, y0, x1, y1 = many.boxes.T
    assert np.all((x0 >= 0) & (y0 >= 0) & (x1 <= s) & (y1 <= s))
    assert np.all((x1 > x0) & (y1 > y0))
    # the box is exactly the tight box of the object's drawn pixels
    for mask, box in zip(many.masks[:200], many.boxes[:200], strict=True):
        ys, xs = np.nonzero(mask)
        assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_all_classes_sizes_and_positions_vary(many):
    counts = np.bincount(many.labels, minlength=len(demo.CLASS_NAMES))
    assert np.all(counts > 50)
    heights = many.boxes[:, 3] - many.boxes[:, 1]
    assert heights.max() / heights.min() >= 3
    centres = (many.boxes[:, :2] + many.boxes[:, 2:]) / 2
    assert np.all(centres.max(0) - centres.min(0) > demo.SCENE_SIZE / 2)


def test_backgrounds_are_cluttered(many):
    # the background alone (object masked out) varies within and across images
    img = many.images[:100].astype(np.float64)
    bg = ~many.masks[:100]
    within = [img[i][bg[i]].std() for i in range(100)]
    assert np.median(within) > 15
    assert np.std([img[i][bg[i]].mean() for i in range(100)]) > 15


def test_object_contrasts_with_its_surroundings(many):
    # the digit is drawn in a colour far from the background under it
    img = many.images[:100].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    diffs = []
    for i in range(100):
        x0, y0, x1, y1 = many.boxes[i]
        inside = img[i, y0:y1, x0:x1][many.masks[i, y0:y1, x0:x1]]
        ring = img[i, y0:y1, x0:x1][~many.masks[i, y0:y1, x0:x1]]
        if ring.size:
            diffs.append(abs(inside.mean() - np.median(ring)))
    assert np.median(diffs) > 40


def test_split_and_argument_checks():
    a = demo.scenes(20, seed=1, split="train")
    b = demo.scenes(20, seed=1, split="test")
    assert not np.array_equal(a.images, b.images)
    with pytest.raises(ValueError):
        demo.scenes(5, split="validation")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        demo.scenes(5, object_size=(10, 500))
    assert len(demo.scenes(0)) == 0


def test_pair_scenes_two_different_digits_apart():
    p = demo.pair_scenes(60, seed=5, split="test")
    s = demo.SCENE_SIZE
    assert p.images.shape == (60, s, s, 3) and p.images.dtype == np.uint8
    assert p.labels.shape == (60, 2) and p.boxes.shape == (60, 2, 4) and p.masks.shape == (60, 2, s, s)
    assert np.all(p.labels[:, 0] != p.labels[:, 1])
    for masks, boxes in zip(p.masks, p.boxes, strict=True):
        assert not (masks[0] & masks[1]).any()
        for mask, box in zip(masks, boxes, strict=True):  # tight box of each digit
            ys, xs = np.nonzero(mask)
            assert tuple(box) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
        assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0  # disjoint halves
    again = demo.pair_scenes(60, seed=5, split="test")
    np.testing.assert_array_equal(p.images, again.images)
    with pytest.raises(ValueError):
        demo.pair_scenes(3, object_size=(20, 80))  # a digit must fit in half the image


# --- twins -----------------------------------------------------------------------------------

ALLOWED = (
    nn.Sequential,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.Linear,
    nn.Dropout,
    nn.Flatten,
    nn.AdaptiveAvgPool2d,
)


def test_twin_structure(models):
    fc, gap = models
    assert list(dict(fc.named_children())) == ["features", "flatten", "classifier"]
    assert [type(m) for m in fc.classifier] == [
        nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear,
    ]  # fmt: skip
    assert list(dict(gap.named_children())) == ["features", "pool", "flatten", "fc"]
    assert isinstance(gap.pool, nn.AdaptiveAvgPool2d) and isinstance(gap.fc, nn.Linear)
    for model in models:
        assert all(type(m) in ALLOWED for m in model.modules())
        assert not model.training and not any(m.training for m in model.modules())
    # same trunk architecture, different weights
    assert [type(m) for m in fc.features] == [type(m) for m in gap.features]
    assert not torch.equal(fc.features[0].weight, gap.features[0].weight)
    x = torch.zeros(1, 3, demo.INPUT_SIZE, demo.INPUT_SIZE)
    feat = fc.features(x)
    assert feat.shape[1:] == (demo.FEATURE_CHANNELS, demo.FEATURE_SIZE, demo.FEATURE_SIZE)
    assert demo.FEATURE_SIZE >= 5


def test_weights_file_is_plain(models):
    ckpt = torch.load(demo.WEIGHTS_PATH, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"fc", "gap", "meta"}
    meta = ckpt["meta"]
    assert meta["input_size"] == demo.INPUT_SIZE
    assert meta["class_names"] == demo.CLASS_NAMES
    np.testing.assert_allclose(meta["mean"], demo.MEAN)
    np.testing.assert_allclose(meta["std"], demo.STD)
    assert all(v.dtype == torch.float32 for v in ckpt["fc"].values() if v.is_floating_point())
    assert demo.WEIGHTS_PATH.stat().st_size <= 20 * 2**20
    assert demo.load_meta()["accuracy"].keys() == {"fc", "gap"}


def test_normalization_matches_training_statistics(many):
    x = many.images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(x.mean(0), demo.MEAN, atol=0.03)
    np.testing.assert_allclose(x.std(0), demo.STD, atol=0.03)


def test_preprocess():
    img = np.full((4, 4, 3), 255, dtype=np.uint8)
    x = demo.preprocess(img)
    assert x.shape == (1, 3, 4, 4) and x.dtype == torch.float32
    expected = (1 - torch.tensor(demo.MEAN)) / torch.tensor(demo.STD)
    torch.testing.assert_close(x[0, :, 0, 0], expected)


def test_twins_classify_unseen_scenes(models):
    s = demo.scenes(200, seed=424242, split="test")
    x = demo.preprocess(s.images)
    with torch.no_grad():
        outs = [m(x) for m in models]
        torch.manual_seed(0)
        untrained = demo.build_gap_twin().eval()(x)
    for out in outs:
        assert out.shape == (200, len(demo.CLASS_NAMES))
        assert (out.argmax(1).numpy() == s.labels).mean() > MIN_ACCURACY
    # the bound is not met by chance
    assert (untrained.argmax(1).numpy() == s.labels).mean() < MIN_ACCURACY / 2


# --- the demo --------------------------------------------------------------------------------


def test_demo_reports_the_truth(tmp_path):
    import json

    from PIL import Image

    from fcn_cam.demo.showcase import run
    from fcn_cam.metrics import iou
    from fcn_cam.settings import BOX_FRACTION, DEFAULT_CLAMP, DEFAULT_MAPS, DEFAULT_PAD, DEFAULT_SCALE

    res = run(tmp_path, n=4, seed=11)
    s = demo.scenes(4, seed=11, split="test")  # the same random sample, not a hand-picked one
    recs = [json.loads(x) for x in (tmp_path / "explanations.jsonl").read_text().splitlines()]
    said = [r["class_name"] for r in recs]
    assert res["correct"] == sum(c == demo.CLASS_NAMES[k] for c, k in zip(said, s.labels, strict=True))
    ious = [iou(r["box"], b) for r, b in zip(recs, s.boxes, strict=True)]
    assert res["mean_iou"] == pytest.approx(np.mean(ious))
    # explained with explain's defaults
    scales = [DEFAULT_SCALE] if isinstance(DEFAULT_SCALE, int | float) else list(DEFAULT_SCALE)
    assert res["settings"] == {"maps": DEFAULT_MAPS, "scale": scales, "pad": DEFAULT_PAD,
                               "clamp": DEFAULT_CLAMP, "box_fraction": BOX_FRACTION[DEFAULT_MAPS]}
    assert all(r["maps"] == DEFAULT_MAPS for r in recs)
    fig = Image.open(tmp_path / "comparison.png")
    assert fig.width / fig.height == pytest.approx(5 * 2.5 / (4 * 2.6), rel=0.1)  # 5 columns, 4 rows


# --- training crops --------------------------------------------------------------------------


def test_crop_windows_keep_the_digit_and_vary_the_scale():
    twins_mod = importlib.import_module("fcn_cam.demo.twins")
    s = demo.scenes(300, seed=11, split="train")
    win = twins_mod.crop_windows(s.boxes, np.random.default_rng(0))
    again = twins_mod.crop_windows(s.boxes, np.random.default_rng(0))
    np.testing.assert_array_equal(win, again)
    x0, y0, x1, y1 = win.T
    size = demo.SCENE_SIZE
    assert np.all((x0 >= 0) & (y0 >= 0) & (x1 <= size) & (y1 <= size))
    # the window holds the whole box, so every drawn pixel of the digit (the label stays valid)
    assert np.all((x0 <= s.boxes[:, 0]) & (y0 <= s.boxes[:, 1]))
    assert np.all((x1 >= s.boxes[:, 2]) & (y1 >= s.boxes[:, 3]))
    for mask, (a, b, c, d) in zip(s.masks, win, strict=True):
        assert mask[b:d, a:c].sum() == mask.sum()
    # within torchvision's ranges (up to rounding), and magnifying some scenes >= 2x
    area = (x1 - x0) * (y1 - y0) / size**2
    ratio = (x1 - x0) / (y1 - y0)
    assert area.min() >= 0.07 and np.all((ratio > 0.7) & (ratio < 1.4))
    assert np.mean(area <= 0.25) > 0.05 and np.mean(area > 0.7) > 0.1
    # a digit too big for any sampled window: the whole scene
    big = np.array([[2, 2, 110, 110]])
    np.testing.assert_array_equal(twins_mod.crop_windows(big, np.random.default_rng(1)),
                                  [[0, 0, size, size]])  # fmt: skip


def test_resized_crops():
    twins_mod = importlib.import_module("fcn_cam.demo.twins")
    size = demo.INPUT_SIZE
    x = torch.randn(3, 3, size, size)
    win = np.array([[0, 0, size, size], [10, 20, 66, 76], [0, 0, 56, 56]])
    out = twins_mod.resized_crops(x, win)
    assert out.shape == (3, 3, size, size)
    torch.testing.assert_close(out[0], x[0])  # the whole scene passes unchanged
    # a 2x magnification: each source pixel becomes a 2x2 block, up to bilinear blending
    ref = torch.nn.functional.interpolate(x[1:2, :, 20:76, 10:66], scale_factor=2, mode="bilinear")
    torch.testing.assert_close(out[1], ref[0])
    # constant stays constant
    c = twins_mod.resized_crops(torch.ones(1, 3, size, size), win[2:])
    torch.testing.assert_close(c, torch.ones_like(c))

"""The explain API: targets, ranking, batching of many files, bounded prefetch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NATIVE, small_vgg

import fcn_cam
from fcn_cam.explanation import prefetch


@pytest.fixture(scope="module")
def fcn():
    return fcn_cam.convert(small_vgg(), NATIVE, class_names=["cat", "dog", "car", "tree", "sky"])


def test_ranking_is_spatial_mean_and_target_by_name(fcn, photos):
    exp = fcn_cam.explain(fcn, photos["coffee"], scale=2, top_k=2, rank="mean", pad="none")
    x = fcn_cam.images.to_input(fcn_cam.images.load_image(photos["coffee"]), 2 * NATIVE, fcn.info["mean"],
                                fcn.info["std"])
    with torch.no_grad():
        maps = fcn(x[None])[0]
        means = maps.mean((-2, -1))
    assert [i for i, _, _ in exp.ranking] == means.argsort(descending=True).tolist()
    assert [t.index for t in exp.targets] == [i for i, _, _ in exp.ranking[:2]]
    auto = fcn_cam.explain(fcn, photos["coffee"], scale=2, top_k=5, pad="none")  # FC head: strongest window
    assert [i for i, _, _ in auto.ranking] == maps.amax((-2, -1)).argsort(descending=True).tolist()
    assert auto.targets[0].score == pytest.approx(maps.amax((-2, -1)).max().item(), rel=1e-5)
    assert fcn_cam.explain(fcn, photos["coffee"], target="DOG").targets[0].index == 1
    with pytest.raises(ValueError, match="did you mean .*'car'"):
        fcn_cam.explain(fcn, photos["coffee"], target="cart")
    with pytest.raises(ValueError, match="out of range"):
        fcn_cam.explain(fcn, photos["coffee"], target=7)


def test_array_input_and_heatmap_shape(fcn):
    img = (np.random.default_rng(0).random((90, 130, 3)) * 255).astype(np.uint8)
    exp = fcn_cam.explain(fcn, img, scale=3, pad=False, maps="scores")
    t = exp.targets[0]
    assert t.heatmap.shape == (90, 130) and exp.input_shapes == [(192, 277)] and exp.pads == [(0, 0)]
    assert exp.map_shapes == [fcn.map_size(192, 277)] and t.cams[0].shape == exp.map_shapes[0]
    padded = fcn_cam.explain(fcn, img, scale=3)
    (top, left), (h, w) = padded.pads[0], padded.map_shapes[0]
    assert top > 0 and left > 0 and h > 9 and w > 14
    # every image pixel now lies between two cell centres
    g = fcn.geometry.shifted(top, left)
    first = fcn_cam.geometry.cell_centre(g, (0, 0), (192, 277), (90, 130))
    last = fcn_cam.geometry.cell_centre(g, (h - 1, w - 1), (192, 277), (90, 130))
    assert first[0] <= 0 and first[1] <= 0 and last[0] >= 129 and last[1] >= 89


def test_explain_files_batches_and_reports_failures(fcn, photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    paths = [photos["cat"], bad, photos["cat"], photos["coffee"]]
    results = list(fcn_cam.explain_files(fcn, paths, scale=2, batch_size=2))
    assert sorted(str(r.path) for r in results) == sorted(str(p) for p in paths)
    errors = [r for r in results if r.error]
    assert len(errors) == 1 and str(bad) in errors[0].error
    one = fcn_cam.explain(fcn, photos["cat"], scale=2)
    for r in results:
        if r.path == photos["cat"]:  # batched result equals the single-image one
            np.testing.assert_allclose(r.explanation.targets[0].heatmap, one.targets[0].heatmap, atol=1e-5)


def test_prefetch_is_bounded_and_ordered():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    it = prefetch(lambda v: v * 2, source(), workers=2, depth=4)
    assert next(it) == 0
    assert len(pulled) <= 5
    assert list(it) == [2 * i for i in range(1, 100)]

"""``fcn_cam.evaluate``: a planted object is found, the numbers are explain's own, the peers
run on the original classifier, thresholds come from validation when asked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import NATIVE, convert_planted, planted_model, small_vgg
from PIL import Image

import fcn_cam
from fcn_cam import metrics
from fcn_cam.evaluation import (
    FCN_CAM,
    choose_fraction,
    energy,
    evaluate,
    resample_weights,
    weighted_stat,
)
from fcn_cam.peers import PEERS, original_model, target_layer

REQUIRED = {
    "box_acc",
    "pointing",
    "energy",
    "deletion_auc",
    "insertion_auc",
    "box_fraction",
    "seconds_per_image",
}


def planted_scenes(root, sizes=(64, 96, 128, 160, 64, 112), seed=0, class_column="red"):
    """Grey images with one red square each (the planted model's class 1) and a CSV of boxes."""
    rng = np.random.default_rng(seed)
    paths, rows = [], []
    for i, side in enumerate(sizes):
        sq = side // 5
        img = np.full((side, side, 3), 40, np.uint8)
        img += rng.integers(0, 12, img.shape, dtype=np.uint8)
        x0, y0 = (int(v) for v in rng.integers(0, side - sq, 2))
        img[y0 : y0 + sq, x0 : x0 + sq] = (230, 20, 20)
        p = root / f"im{i}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
        rows.append(f"im{i}.png,{x0},{y0},{x0 + sq},{y0 + sq}" + (f",{class_column}" if class_column else ""))
    csv = root / "boxes.csv"
    csv.write_text("image,x0,y0,x1,y1" + (",class" if class_column else "") + "\n" + "\n".join(rows) + "\n")
    return paths, csv


@pytest.fixture(scope="module")
def planted():
    return convert_planted()


def test_planted_object_is_found(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path)
    out = tmp_path / "out"
    r = evaluate(planted, paths, csv, methods=[FCN_CAM], faithfulness=False, out_dir=out)
    m = r["methods"][FCN_CAM]
    assert r["images"] == len(paths)
    assert m["box_acc"] == 1.0 and m["pointing"] == 1.0 and m["top1_loc"] == 1.0
    assert m["box_fraction_from"] == "default"
    data = json.loads((out / "evaluation.json").read_text())
    assert data["images"] == len(paths) and set(data["methods"][FCN_CAM]) >= REQUIRED
    assert len((out / "evaluation.jsonl").read_text().splitlines()) == len(paths)
    md = (out / "evaluation.md").read_text()
    assert "No validation split" in md and "| fcn-cam | 1.000" in md


def test_numbers_are_explains_own(planted, tmp_path):
    """Box, pointing and energy recomputed from ``explain_files``' records and heatmaps."""
    paths, csv = planted_scenes(tmp_path, seed=3)
    out = tmp_path / "out"
    r = evaluate(planted, paths, csv, methods=[FCN_CAM], faithfulness=False, out_dir=out, batch_size=4)
    lines = [json.loads(x) for x in (out / "evaluation.jsonl").read_text().splitlines()]
    boxes = [[int(v) for v in line.split(",")[1:5]] for line in csv.read_text().splitlines()[1:]]
    hits, points, energies = [], [], []
    for res, rec, box in zip(fcn_cam.explain_files(planted, paths, target="red"), lines, boxes):
        t = res.explanation.targets[0]
        got = rec["targets"][0]["methods"][FCN_CAM]
        assert got["box"] == res.explanation.record()["box"]
        hits.append(metrics.iou(t.box, box) >= 0.5)
        points.append(metrics.pointing_hit(t.heatmap, box))
        energies.append(metrics.energy_pointing(t.heatmap, box))
        assert got["energy"] == energies[-1]
    m = r["methods"][FCN_CAM]
    assert m["box_acc"] == np.mean(hits)
    assert m["pointing"] == metrics.class_mean_accuracy(points, [1] * len(points))
    assert m["energy"] == pytest.approx(np.mean(energies), abs=1e-15)


def test_faithfulness_scores_with_the_original_classifier(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path, sizes=(NATIVE, NATIVE, NATIVE))
    out = tmp_path / "out"
    evaluate(planted, paths, csv, methods=[FCN_CAM], steps=4, out_dir=out)
    model = planted_model()

    def prob(batch):
        with torch.no_grad():
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255  # mean 0, std 1
            return torch.softmax(model(x), 1)[:, 1].numpy()

    for p, line in zip(paths, (out / "evaluation.jsonl").read_text().splitlines()):
        got = json.loads(line)["targets"][0]["methods"][FCN_CAM]
        heat = fcn_cam.explain(planted, p, target=1).targets[0].heatmap
        img = np.asarray(Image.open(p).convert("RGB"))
        assert got["deletion_auc"] == pytest.approx(metrics.deletion_auc(img, heat, prob, steps=4), abs=1e-6)
        assert got["insertion_auc"] == pytest.approx(metrics.insertion_auc(img, heat, prob, steps=4), abs=1e-6)


def test_peers_and_split(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path, sizes=(64, 96, 128, 64, 80, 100, 120, 72))
    r = evaluate(planted, paths, csv, split=0.5, faithfulness=False, out_dir=tmp_path / "out")
    assert list(r["methods"]) == [FCN_CAM, *PEERS]
    assert r["validation_images"] == 4 and r["images"] == 4
    for m in r["methods"].values():
        assert set(m) >= REQUIRED and m["box_fraction_from"] == "validation"
        assert 0 <= m["box_acc"] <= 1 and m["seconds_per_image"] > 0
    parts = [json.loads(x)["part"] for x in (tmp_path / "out" / "evaluation.jsonl").read_text().splitlines()]
    assert sorted(parts) == ["test"] * 4 + ["validation"] * 4
    assert "validation images" in (tmp_path / "out" / "evaluation.md").read_text()


def test_unannotated_class_uses_the_classifiers_top1(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path, sizes=(64, 96), class_column=None)
    r = evaluate(planted, paths, csv, methods=[FCN_CAM, "Grad-CAM"], faithfulness=False)
    assert r["methods"][FCN_CAM]["top1_loc"] is None  # no class given: nothing to be right about
    assert r["methods"][FCN_CAM]["box_acc"] == 1.0


def test_choose_fraction_is_sweep_fractions_rule(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path, seed=5)
    heats = [fcn_cam.explain(planted, p, target=1).targets[0].heatmap for p in paths]
    boxes = [[int(v) for v in line.split(",")[1:5]] for line in csv.read_text().splitlines()[1:]]
    grid = metrics.FRACTIONS
    ious = np.array([[metrics.iou(metrics.threshold_box(h, f), b) for f in grid] for h, b in zip(heats, boxes)])
    sweep = metrics.sweep_fraction(heats, boxes, grid)
    assert choose_fraction(ious, grid) == (sweep.fraction, sweep.accuracy)


def test_bootstrap_weights_and_statistics():
    v = np.array([1.0, 0.0, 1.0, 1.0, np.nan])
    labels = np.array([0, 0, 1, 1, 1])
    ones = np.ones((1, 5))
    assert weighted_stat(v, ones)[0] == pytest.approx(0.75)
    assert weighted_stat(v, ones, labels)[0] == pytest.approx(metrics.class_mean_accuracy(v[:4], labels[:4]))
    w = resample_weights(np.array([0, 0, 1, 2, 3]), np.random.default_rng(0), n=50)
    assert w.shape == (50, 5) and np.all(w[:, 0] == w[:, 1])  # an image's items move together
    assert np.all(w[:, [0, 2, 3, 4]].sum(1) == 4)


def test_energy_of_several_boxes_counts_their_union():
    m = np.zeros((10, 10))
    m[0:2, 0:2] = 1
    m[5:7, 5:7] = 1
    assert energy(m, [(0, 0, 2, 2)]) == 0.5
    assert energy(m, [(0, 0, 2, 2), (5, 5, 7, 7), (0, 0, 1, 1)]) == 1.0


def test_original_model_and_its_layer():
    model = small_vgg()
    fcn = fcn_cam.convert(model, NATIVE)
    orig = original_model(fcn)
    x = torch.randn(3, 3, NATIVE, NATIVE)
    with torch.no_grad():
        assert torch.allclose(orig(x), model(x), atol=1e-5)
    name, layer = target_layer(orig)
    assert name == "features.15" and isinstance(layer, torch.nn.MaxPool2d)
    assert target_layer(orig, "features.13")[1] is fcn.features.features[13]
    with pytest.raises(ValueError, match="no layer named 'features.99'") as e:
        target_layer(orig, "features.99")
    assert "\n" not in str(e.value)


def test_reduced_stride_refused_for_peers():
    fcn = fcn_cam.convert(small_vgg(), NATIVE, output_stride=8)
    with pytest.raises(ValueError, match="native stride"):
        original_model(fcn)


def test_separate_validation_images_and_given_fractions(planted, tmp_path):
    paths, csv = planted_scenes(tmp_path)
    r = evaluate(planted, paths[:3], csv, validation=paths[3:], methods=[FCN_CAM], faithfulness=False)
    m = r["methods"][FCN_CAM]
    assert (r["images"], r["validation_images"], m["box_fraction_from"]) == (3, 3, "validation")
    r = evaluate(planted, paths, csv, methods=[FCN_CAM], faithfulness=False, fractions={FCN_CAM: 0.3})
    assert (r["methods"][FCN_CAM]["box_fraction"], r["methods"][FCN_CAM]["box_fraction_from"]) == (0.3, "given")
    with pytest.raises(ValueError, match="not among the methods"):
        evaluate(planted, paths, csv, methods=[FCN_CAM], fractions={"Grad-CAM": 0.3})


def test_chunks_bound_images_and_pixels(tmp_path):
    from fcn_cam.evaluation import _chunks

    paths = []
    for i, side in enumerate((10, 10, 30, 10, 10)):
        paths.append((tmp_path / f"{i}.png", []))
        Image.new("RGB", (side, side)).save(paths[-1][0])
    assert list(_chunks(range(5), paths, 8, pixels=999)) == [[0, 1], [2], [3, 4]]
    assert list(_chunks(range(5), paths, 2, pixels=10**6)) == [[0, 1], [2, 3], [4]]


def test_missing_extra_fails_before_any_work(planted, tmp_path, monkeypatch):
    import sys

    paths, csv = planted_scenes(tmp_path, sizes=(64,))
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(ImportError, match=r"pip install 'fcn-cam\[compare\]'"):
        evaluate(planted, paths, csv, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert evaluate(planted, paths, csv, methods=[FCN_CAM], faithfulness=False)["images"] == 1  # fcn-cam alone


def test_evaluate_and_compare_commands(planted, tmp_path):
    """`fcn-cam evaluate` prints the table it writes; `fcn-cam compare` one figure per image;
    a bad annotation file is one line."""
    from typer.testing import CliRunner

    from fcn_cam.cli import app

    model = fcn_cam.save(planted, tmp_path / "planted.pt")
    paths, csv = planted_scenes(tmp_path)
    run = CliRunner().invoke
    r = run(app, ["evaluate", *map(str, paths), "-m", str(model), "--annotations", str(csv), "-o",
                  str(tmp_path / "eval"), "--method", "Grad-CAM", "--no-faithfulness"])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["images"] == len(paths) and set(result["methods"]) == {FCN_CAM, "Grad-CAM"}
    assert result["methods"][FCN_CAM]["box_acc"] == 1.0
    assert (tmp_path / "eval" / "evaluation.md").read_text().strip() in r.stdout
    r = run(app, ["compare", str(paths[0]), str(paths[1]), "-m", str(model), "-o", str(tmp_path / "cmp"),
                  "--method", "Grad-CAM", "--scale", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "cmp").glob("*.png")) == ["im0_compare.png", "im1_compare.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("image,x0,y0,x1,y1\nim0.png,1,2,x,4\n")
    r = run(app, ["evaluate", str(paths[0]), "-m", str(model), "--annotations", str(bad),
                  "-o", str(tmp_path / "e")])
    assert r.exit_code == 2 and str(bad) in r.output and len(r.output.strip().splitlines()) == 1

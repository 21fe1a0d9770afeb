"""Every input a person might pass: one decoding path, explicit refusals, arguments checked
at the edge (issue 10: each test here failed before the fix)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NATIVE, small_vgg
from PIL import Image
from typer.testing import CliRunner

import fcn_cam
from fcn_cam.cli import app
from fcn_cam.images import ImageError, as_image, find_images, load_image

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def fcn() -> fcn_cam.FCN:
    return fcn_cam.convert(small_vgg(), NATIVE, class_names=[f"c{i}" for i in range(5)])


def one_line_error(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    return r.output


def test_16bit_gray_is_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    for f in ("g16.png", "g16.tif"):
        a = np.asarray(load_image(tmp_path / f))[..., 0].astype(int)
        assert (a == 255).mean() < 0.01  # was 99.6 % white
        assert np.abs(a - np.rint(ramp / 257)).max() <= 1
    u16 = as_image(ramp)[0]
    assert np.array_equal(np.asarray(u16), np.asarray(load_image(tmp_path / "g16.png")))


def test_pil_and_path_decode_the_same(fcn, photos, tmp_path):
    """EXIF rotation and alpha are applied to PIL images too (was: score 1.117 vs 3.946)."""
    for key in ("astronaut_rgba", "rotated"):
        by_path = fcn_cam.explain(fcn, photos[key], scale=1)
        by_pil = fcn_cam.explain(fcn, Image.open(photos[key]), scale=1)
        assert (by_pil.width, by_pil.height) == (by_path.width, by_path.height)
        assert by_pil.targets[0].score == by_path.targets[0].score
        np.testing.assert_array_equal(by_pil.targets[0].cams[0], by_path.targets[0].cams[0])


def test_upright_rgb_is_not_copied_and_callers_images_are_untouched(tmp_path, photos):
    """A 24-MP photo is 96 MB in PIL: an upright RGB image passes through as it is."""
    img = load_image(photos["cat"])
    assert as_image(img)[0] is img
    rotated = Image.open(photos["rotated"])  # EXIF orientation 6
    before = (rotated.size, rotated.getexif().get(0x0112))
    upright = as_image(rotated)[0]
    assert upright.size == before[0][::-1] and (rotated.size, rotated.getexif().get(0x0112)) == before
    gray = Image.fromarray(np.zeros((4, 6), np.uint8))
    assert as_image(gray)[0].mode == "RGB" and gray.mode == "L"


def test_arrays_and_tensors_follow_one_rule(fcn, photos):
    rgb = np.asarray(load_image(photos["cat"]))[::4, ::4].copy()
    ref = fcn_cam.explain(fcn, rgb, scale=1).targets[0].cams[0]
    f = rgb.astype(np.float32) / 255
    t = torch.from_numpy(f).permute(2, 0, 1)
    same = [rgb.transpose(2, 0, 1), f, f.transpose(2, 0, 1), (rgb.astype(np.uint16) * 257), t, t[None],
            rgb.astype(np.int64)]
    for x in same:
        np.testing.assert_allclose(fcn_cam.explain(fcn, x, scale=1).targets[0].cams[0], ref, atol=1e-6)
    gray = rgb[..., 0]
    assert as_image(gray)[0].mode == "RGB"
    assert as_image(gray[..., None])[0].size == (gray.shape[1], gray.shape[0])
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent -> background
    assert (np.asarray(as_image(rgba)[0]) == 255).all()
    for bad, why in [(f * 2, "must lie in"), (rgb.astype(np.int64) * 300, "0…255"),
                     (np.zeros((5, 8, 8)), "not an image"), (np.full((4, 4), np.nan), "NaN"),
                     (torch.zeros(2, 3, 8, 8), "B = 1"), ([1, 2, 3], "cannot use a list")]:
        with pytest.raises(ImageError, match=why):
            as_image(bad)


@pytest.mark.parametrize("kw,msg", [
    ({"top_k": 0}, "top_k must be a positive integer"), ({"top_k": -1}, "top_k must be a positive integer"),
    ({"target": 3.0}, "target must be a class index"), ({"target": True}, "target must be a class index"),
    ({"target": 7}, "out of range"), ({"scale": float("nan")}, "finite and positive"),
    ({"scale": [2, float("inf")]}, "finite and positive"), ({"scale": 0}, "finite and positive"),
])
def test_api_arguments_refused_with_reason(fcn, photos, kw, msg):
    with pytest.raises(ValueError, match=msg):
        fcn_cam.explain(fcn, photos["cat"], **kw)


def test_explain_files_keeps_input_order(fcn, photos, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("no")
    paths = [photos["cat"], photos["coffee"], bad, photos["gray"]]
    got = [r.path for r in fcn_cam.explain_files(fcn, paths, scale=1, batch_size=8)]
    assert got == paths


def test_special_files_refused_without_opening(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nothing.jpg")
    (tmp_path / "dir.jpg").mkdir()
    box: dict = {}

    def attempt():
        try:
            load_image(fifo)
        except ImageError as e:
            box["e"] = str(e)

    th = threading.Thread(target=attempt, daemon=True)
    th.start()
    th.join(10)
    assert not th.is_alive(), "load_image blocked on a FIFO"
    assert "not a regular file (a FIFO)" in box["e"]
    with pytest.raises(ImageError, match="symbolic link loop"):
        load_image(tmp_path / "loop.png")
    with pytest.raises(ImageError, match="dangling symbolic link"):
        load_image(tmp_path / "gone.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        load_image(tmp_path / "dir.jpg")
    found = {p.name for p in find_images([tmp_path])}
    assert found == {"pipe.png", "loop.png", "gone.jpg"}  # reported later, not skipped silently


def test_cli_links_and_fifo_reported(small_model_file, photos, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "cat.jpg").write_bytes(photos["cat"].read_bytes())
    os.mkfifo(d / "pipe.png")
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "gone.jpg").symlink_to(d / "nothing.jpg")
    r = run("explain", "-m", small_model_file, "--scale", "1", d)
    assert r.exit_code == 1
    for name, why in (("pipe.png", "FIFO"), ("loop.png", "link loop"), ("gone.jpg", "dangling")):
        assert f"{d / name}: " in r.output and why in r.output
    assert "3 of 4 images failed" in r.output


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf"])
def test_cli_scale_must_be_finite_positive(small_model_file, photos, value):
    out = one_line_error(run("explain", "-m", small_model_file, "--scale", value, photos["cat"]))
    assert "scales must be finite and positive" in out


def test_cli_memory_budget(small_model_file, photos, tmp_path):
    r = run("explain", "-m", small_model_file, "--scale", "60", "--max-memory", "64M", "-o", tmp_path / "o",
            photos["cat"])
    out = one_line_error(r)
    assert "needs about" in out and "over the limit of 64.0 MiB" in out and "--max-memory" in out
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4000, 50), "red").save(wide)
    # fp32 whatever the machine: --precision auto picks bf16 (half the bytes) where the CPU has bf16 units
    r = run("explain", "-m", small_model_file, "--scale", "2", "--max-memory", "100M", "--precision", "fp32",
            wide, photos["cat"])
    assert r.exit_code == 1 and f"{wide}: 4000×50" in r.output and "over the limit" in r.output
    assert sum(1 for line in r.stdout.splitlines() if line.startswith("{")) == 1  # the cat still ran
    assert run("explain", "-m", small_model_file, "--max-memory", "lots", photos["cat"]).exit_code == 2


def test_cli_top_k_clipped_with_note(small_model_file, photos):
    r = run("explain", "-m", small_model_file, "--top-k", "9", "--scale", "1", photos["cat"])
    assert r.exit_code == 0 and "explaining all 5" in r.output
    rec = json.loads(r.stdout.splitlines()[-1])
    assert len(rec["targets"]) == 5


def test_cli_unwritable_output_is_one_line(small_model_file, photos, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    out = one_line_error(run("explain", "-m", small_model_file, "-o", blocker / "sub", photos["cat"]))
    assert f"{blocker / 'sub'}: cannot use as output folder" in out


def test_nan_model_is_a_named_failure_and_json_stays_strict(photos, tmp_path):
    model = small_vgg()
    fcn = fcn_cam.convert(model, NATIVE)
    with torch.no_grad():
        fcn.head[-1].bias[2] = float("nan")
    path = fcn_cam.save(fcn, tmp_path / "nan.pt")
    out = tmp_path / "o"
    r = run("explain", "-m", path, "--scale", "1", "-o", out, photos["cat"])
    assert r.exit_code == 1 and "non-finite values (NaN/Inf)" in r.output and str(photos["cat"]) in r.output
    assert not (out / "explanations.jsonl").exists() or not (out / "explanations.jsonl").read_text()
    assert [p.name for p in out.iterdir()] == []
    r = run("explain", "-m", path, "--scale", "1", photos["cat"])  # without -o: nothing non-JSON printed
    assert r.exit_code == 1 and "NaN" not in r.stdout


def test_strict_json_line():
    from fcn_cam.files import dumps_strict

    line = dumps_strict({"score": float("nan"), "top_k": [{"score": float("inf")}]})
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict {c}"))
    assert rec["score"] is None and "score" in rec["error"] and "top_k[0].score" in rec["error"]


def test_output_inside_input_folder_and_collisions(small_model_file, photos, tmp_path):
    for d, out in ((tmp_path / "same", tmp_path / "same"), (tmp_path / "in", tmp_path / "in" / "out")):
        d.mkdir()
        for name in ("a.jpg", "a.png", "x_cam.png"):
            Image.open(photos["coffee"]).convert("RGB").resize((80, 60)).save(d / name)
        before = {p.name: p.read_bytes() for p in d.iterdir()}
        for _ in range(2):  # the second run must not read the first run's outputs as inputs
            r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, d)
            assert r.exit_code == 0, r.output
        recs = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
        assert sorted(Path(r["image"]).name for r in recs) == ["a.jpg", "a.png", "x_cam.png"]
        assert {n: (d / n).read_bytes() for n in before} == before  # inputs untouched
    out = d / "out"
    a_jpg = next(r for r in recs if r["image"].endswith("a.jpg"))
    jpg_files = {n: (out / n).read_bytes() for f in a_jpg["files"] for n in (f["overlay"], *f["maps"])}
    r = run("explain", "-m", small_model_file, "--scale", "1", "--overwrite", "-o", out, d / "a.png")
    assert r.exit_code == 0
    assert {n: (out / n).read_bytes() for n in jpg_files} == jpg_files  # a.jpg's outputs not touched
    assert len((out / "explanations.jsonl").read_text().splitlines()) == 3


def test_demo_models_from_the_cli(photos, tmp_path):
    for name in ("demo-fc", "demo-gap"):
        f = tmp_path / f"{name}.pt"
        r = run("convert", name, "-o", f)
        assert r.exit_code == 0, r.output
        r = run("explain", "-m", f, "--scale", "1", photos["cat"])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout.splitlines()[-1])["class_name"] in [str(d) for d in range(10)]


def test_decoding_needs_no_torch_and_reports_each_file(tmp_path, photos):
    """Ray's decoding tasks import only ``fcn_cam.images``: no torch (~4 s to import)."""
    import subprocess
    import sys

    code = "import sys, fcn_cam.images, fcn_cam; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert all(callable(getattr(fcn_cam, n)) for n in fcn_cam.__all__)  # the lazy names resolve
    from fcn_cam.images import NO_IMAGE, decode_batch

    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    paths = [str(photos["cat"]), str(tmp_path / "bad.jpg")]
    got = decode_batch({"path": np.array(["cat", "bad"]), "read": np.array(paths)})
    assert list(got["path"]) == ["cat", "bad"]
    assert np.array_equal(got["image"][0], np.asarray(load_image(photos["cat"]))) and got["error"][0] == ""
    assert got["image"][1] is NO_IMAGE and "not an image" in got["error"][1]

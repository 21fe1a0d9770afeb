"""The CLI end to end on real image files, and on broken ones."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import fcn_cam
from fcn_cam.cli import app

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def outputs(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()} if d.exists() else set()


def test_explain_real_photos(small_model_file, photos, tmp_path):
    out = tmp_path / "out"
    files = [photos[k] for k in ("cat", "coffee", "gray", "astronaut_rgba", "rotated")]
    r = run("explain", "--model", small_model_file, "--scale", "2", "--top-k", "1", "-o", out, *files)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(lines) == 5
    for rec, f in zip(lines, files):
        w, h = Image.open(f).size
        if f.stem == "rotated":  # EXIF orientation 6: shown rotated, so width/height swap
            w, h = h, w
        assert (rec["width"], rec["height"]) == (w, h)
        for key in ("image", "scale", "map_shape", "class_index", "class_name", "score", "top_k",
                    "peak", "box"):
            assert key in rec
        assert rec["class_index"] == rec["top_k"][0]["index"]
        assert [t["score"] for t in rec["top_k"]] == sorted((t["score"] for t in rec["top_k"]), reverse=True)
        assert 0 <= rec["peak"][0] < w and 0 <= rec["peak"][1] < h
        x0, y0, x1, y1 = rec["box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        (files,) = rec["files"]
        assert files["overlay"] == f"{f.stem}.{rec['key'][:12]}_cam.png"
        overlay = Image.open(out / files["overlay"])
        assert overlay.size == (w, h) and overlay.mode == "RGB"
        raw = np.load(out / files["maps"][0])
        assert list(raw.shape) == rec["map_shape"] and np.isfinite(raw).all()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_vgg16_main_job(photos, tmp_path):
    """The README's shape: convert vgg16, explain at scale 2 (random weights offline)."""
    model = tmp_path / "vgg16_fcn.pt"
    r = run("convert", "vgg16", "--weights", "random", "-o", model)
    assert r.exit_code == 0, r.output
    assert "same top-1: True" in r.output
    r = run("info", model)
    assert r.exit_code == 0 and "vgg16" in r.output and "1000 (tench" in r.output
    out = tmp_path / "out"
    r = run("explain", "--model", model, "--scale", "2", "--no-pad", "-o", out, photos["cat"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "explanations.jsonl").read_text())
    # cell maps (the default kind) are the feature map: 448 x 673 → 448//32, 673//32
    assert rec["maps"] == "cells" and rec["map_shape"] == [14, 21] and rec["pad"] == [0, 0]
    r = run("explain", "--model", model, "--scale", "2", "--maps", "scores", "--no-pad", photos["cat"])
    assert json.loads(r.stdout.splitlines()[-1])["map_shape"] == [8, 15]  # windows: 448//32 - 6, 673//32 - 6
    r = run("explain", "--model", model, "--scale", "2", photos["cat"])  # padded: cells cover the image
    padded = json.loads(r.stdout.splitlines()[-1])
    # default pad "features": 3 feature cells each side (4 on the right: 673 = 21·32 + 1),
    # recorded as the input padding it equals
    assert padded["pad"] == [96, 96] and padded["map_shape"] == [20, 28]
    assert rec["class_name"] == fcn_cam.load(model).class_names[rec["class_index"]]


def test_class_by_name_and_top_k(small_model_file, photos, tmp_path):
    out = tmp_path / "o"
    r = run("explain", "-m", small_model_file, "--class", "c3", "-o", out, photos["cat"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "explanations.jsonl").read_text())["class_index"] == 3
    r = run("explain", "-m", small_model_file, "--top-k", "3", "-o", tmp_path / "k", photos["cat"])
    rec = json.loads((tmp_path / "k" / "explanations.jsonl").read_text())
    assert len(rec["targets"]) == 3 and len(rec["files"]) == 3
    assert {f"cat.{rec['key'][:12]}.{t['index']}_cam.png" for t in rec["targets"]} <= outputs(tmp_path / "k")
    r = run("explain", "-m", small_model_file, "--class", "c33", photos["cat"])
    assert r.exit_code == 2 and "unknown class name 'c33'" in r.output


def test_directory_input_resume_and_overwrite(small_model_file, photos, tmp_path):
    out = tmp_path / "o"
    src = photos["cat"].parent
    r = run("explain", "-m", small_model_file, "-o", out, src)
    assert r.exit_code == 0, r.output
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run("explain", "-m", small_model_file, "-o", out, src)  # resume: all done, nothing rewritten
    assert r.exit_code == 0 and "skipped 5 of 5 images already done" in r.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = run("explain", "-m", small_model_file, "--scale", "3", "-o", out, src)  # another request: new records
    assert r.exit_code == 0
    recs = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
    scales = [r["scale"] for r in recs]  # the default fuses scales 1 and 2
    assert scales.count([1.0, 2.0]) == 5 and scales.count(3.0) == 5
    assert {k: v for k, v in before.items() if k != "explanations.jsonl"}.items() <= {
        p.name: p.read_bytes() for p in out.iterdir()}.items()
    r = run("explain", "-m", small_model_file, "--scale", "3", "--overwrite", "-o", out, photos["cat"])
    assert r.exit_code == 0
    after = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(after) == 10 and sorted(r["key"] for r in after) == sorted(r["key"] for r in recs)


def png_with_size(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares an absurd size (valid CRC, tiny body)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))


@pytest.fixture
def bad_images(tmp_path, photos) -> dict[str, Path]:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "text.jpg").write_text("this is not a JPEG\n")
    data = photos["cat"].read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (d / "empty.png").write_bytes(b"")
    png_with_size(d / "huge.png", 200_000, 200_000)
    return {p.stem: p for p in d.iterdir()}


@pytest.mark.parametrize("name,reason", [
    ("text", "not an image"), ("truncated", "truncated or corrupt"), ("empty", "empty file"),
    ("huge", "exceeds the limit"),
])
def test_bad_image_named_and_others_processed(small_model_file, photos, bad_images, tmp_path, name, reason):
    out = tmp_path / "o"
    bad = bad_images[name]
    r = run("explain", "-m", small_model_file, "-o", out, photos["cat"], bad, photos["coffee"])
    assert r.exit_code == 1
    assert f"{bad}: " in r.output and reason in r.output
    recs = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
    assert [r["image"] for r in recs] == [str(photos["cat"]), str(photos["coffee"])]
    assert outputs(out) == {"explanations.jsonl"} | {n for r in recs for f in r["files"]
                                                     for n in (f["overlay"], *f["maps"])}


def test_wrong_kind_of_model_file(tmp_path, photos):
    sd = tmp_path / "state_dict.pt"
    torch.save({"w": torch.zeros(3)}, sd)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for f, msg in ((sd, "not an fcn-cam model"), (text, "not a PyTorch file")):
        for cmd in (["info", f], ["explain", "-m", f, photos["cat"]]):
            r = run(*cmd)
            assert r.exit_code == 2 and str(f) in r.output and msg in r.output, r.output


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['FCN_CAM_MARKER'])}",))


def test_malicious_pickle_refused_not_run(tmp_path, monkeypatch, photos):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("FCN_CAM_MARKER", str(marker))
    evil = tmp_path / "evil.pt"
    torch.save({"format": "fcn-cam", "payload": Evil()}, evil)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    for f in (evil, raw):
        r = run("info", f)
        assert r.exit_code == 2 and str(f) in r.output
        assert "refused" in r.output or "not a PyTorch file" in r.output
        with pytest.raises(fcn_cam.ModelFileError):
            fcn_cam.load(f)
    assert not marker.exists()


def test_convert_refuses_to_clobber_and_unknown_arch(tmp_path):
    f = tmp_path / "m.pt"
    f.write_text("keep me")
    r = run("convert", "alexnet", "--weights", "random", "-o", f)
    assert r.exit_code == 2 and "already exists" in r.output and f.read_text() == "keep me"
    r = run("convert", "vgg17", "--weights", "random", "-o", tmp_path / "x.pt")
    assert r.exit_code == 2 and "unknown architecture 'vgg17'" in r.output
    assert not (tmp_path / "x.pt").exists()


def test_bad_options_fail_before_work(small_model_file, photos, tmp_path):
    r = run("explain", "-m", small_model_file, "--colormap", "nope", "-o", tmp_path / "o", photos["cat"])
    assert r.exit_code == 2 and "unknown colormap 'nope'" in r.output
    assert not (tmp_path / "o").exists()
    r = run("explain", "-m", small_model_file, tmp_path / "missing.jpg")
    assert r.exit_code == 1 and "missing.jpg: no such file" in r.output


def test_demo_command(tmp_path):
    out = tmp_path / "demo"
    r = run("demo", "-o", out, "--n", "3")
    assert r.exit_code == 0, r.output
    assert "comparison" in r.output
    names = outputs(out)
    assert {"comparison.png", "explanations.jsonl", "scene_00.png"} <= names
    assert any(n.startswith("scene_00.") and n.endswith("_cam.png") for n in names)
    recs = [json.loads(x) for x in (out / "explanations.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all((r["width"], r["height"]) == (112, 112) for r in recs)
    fig = Image.open(out / "comparison.png")
    assert fig.width > fig.height  # four columns, three rows
    before = (out / "comparison.png").read_bytes()
    r = run("demo", "-o", out, "--n", "3")
    assert r.exit_code == 2 and "already exists" in r.output
    assert (out / "comparison.png").read_bytes() == before and outputs(out) == names


def test_help_needs_no_torch():
    """The command line imports torch and the model code only when a command runs: its help
    (all commands' options and defaults) comes without them."""
    import subprocess
    import sys

    code = ("import sys; from fcn_cam.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['explain', '--help']); "
            "print(r.exit_code, 'torch' in sys.modules, 'features' in r.output, 'vgg16' in "
            "CliRunner().invoke(app, ['convert', '--help']).output)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False", "True", "True"], out.stdout + out.stderr

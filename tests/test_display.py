"""Notebook display: overlays equal to the CLI's files, figures and PNG previews, headless."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import display, render
from fcn_cam.cli import app


@pytest.fixture(scope="module")
def fcn(small_model_file):
    return fcn_cam.load(small_model_file)


@pytest.fixture(scope="module")
def cat(fcn, photos):
    exp = fcn_cam.explain(fcn, photos["cat"], top_k=3)
    return exp


def test_overlay_is_what_the_cli_writes(small_model_file, fcn, photos, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["explain", "--model", str(small_model_file), "-o", str(out),
                                 "--colormap", "viridis", "--alpha", "0.3", "--top-k", "2", "--device", "cpu",
                                 "--precision", "fp32", "--no-channels-last", str(photos["coffee"])])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "explanations.jsonl").read_text())
    exp = fcn_cam.explain(fcn, photos["coffee"], top_k=2)
    for i, f in enumerate(rec["files"]):
        assert exp.targets[i].index == f["index"]
        written = np.asarray(Image.open(out / f["overlay"]).convert("RGB"))
        ours = display.overlay(exp, i, colormap="viridis", alpha=0.3)  # reopens exp.image
        assert isinstance(ours, Image.Image) and ours.size == (exp.width, exp.height)
        assert np.array_equal(np.asarray(ours), written)


def test_overlay_pixels_targets_and_box(cat, photos):
    img = Image.open(photos["cat"]).convert("RGB")
    cat.pixels = img  # what explain will attach (the lead's Explanation.pixels)
    try:
        plain = display.overlay(cat, 1, alpha=0.7)
        assert np.array_equal(np.asarray(plain),
                              np.asarray(render.overlay(img, cat.targets[1].heatmap, "jet", 0.7)))
        assert np.array_equal(np.asarray(display.overlay(cat, cat.targets[2].name)),
                              np.asarray(display.overlay(cat, 2)))
        boxed = np.asarray(display.overlay(cat, 0, box=True)).astype(int)
        x0, y0, x1, y1 = cat.targets[0].box
        base = np.asarray(display.overlay(cat, 0)).astype(int)
        changed = np.abs(boxed - base).sum(-1) > 0
        assert changed[y0 + 1, (x0 + x1) // 2] and changed[(y0 + y1) // 2, x0 + 1]  # the frame
        assert not changed[(y0 + y1) // 2, (x0 + x1) // 2] or np.hypot(  # inside: untouched unless the peak
            (x0 + x1) / 2 - cat.targets[0].peak[0], (y0 + y1) / 2 - cat.targets[0].peak[1]) < 20
    finally:
        del cat.pixels


def test_no_pixels_or_wrong_image_is_one_line(cat, fcn):
    exp = fcn_cam.explain(fcn, np.zeros((40, 50, 3), np.uint8))
    exp.pixels = None  # an explanation without its pixels (e.g. rebuilt from elsewhere)
    assert exp.image is None
    with pytest.raises(ValueError, match="holds no pixels; pass image="):
        display.overlay(exp)
    with pytest.raises(ValueError, match=r"image is 30×20 but the explanation is for 50×40"):
        display.overlay(exp, image=Image.new("RGB", (30, 20)))
    with pytest.raises(ValueError, match="not explained"):
        display.overlay(cat, "no-such-class")
    with pytest.raises(ValueError, match="position in the 3 explained"):
        display.overlay(cat, 3)
    assert display.overlay(exp, image=np.zeros((40, 50, 3), np.uint8)).size == (50, 40)


def test_repr_png_is_a_captioned_preview(cat):
    data = display.repr_png(cat)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(io.BytesIO(data))
    assert im.mode == "RGB" and im.width == cat.width and im.height > cat.height  # caption strip below
    assert Image.open(io.BytesIO(display.repr_png(cat, side=200))).width == 200
    small = Image.open(io.BytesIO(display.repr_png(cat, side=2000, least=1000)))
    assert small.width == 2 * cat.width  # small images grow by whole pixels


def test_plot_is_a_headless_figure(cat):
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    before = plt.get_fignums()
    fig = display.plot(cat, top_k=2, colormap="magma")
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "cat.jpg" and titles[1] == display.label(cat.targets[0])
    assert f"{cat.targets[1].score:.2f}" in titles[2]
    shown = fig.axes[1].images[0].get_array()  # the panel shows the CLI's overlay, unchanged
    assert np.array_equal(np.asarray(shown), np.asarray(display.overlay(cat, 0, colormap="magma")))
    assert len(fig.axes[1].patches) == 4  # box and peak, each white on a dark rim
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert Image.open(buf).size[0] > 3 * 200
    assert plt.get_fignums() == before  # no pyplot state: nothing for plt.show() to show twice
    assert len(display.plot(cat).axes) == 4 and not display.plot(cat, boxes=False, peaks=False).axes[1].patches
    with pytest.raises(ValueError, match="top_k"):
        display.plot(cat, top_k=0)


def test_explanation_methods(fcn, photos):
    """The notebook's entry points on the Explanation itself delegate to fcn_cam.display."""
    exp = fcn_cam.explain(fcn, Image.open(photos["cat"]), top_k=2)  # in memory: explain keeps the pixels
    assert exp.image is None and exp.pixels is not None and "pixels" not in exp.record()
    assert np.array_equal(np.asarray(exp.overlay(1)), np.asarray(display.overlay(exp, 1)))
    assert exp._repr_png_() == display.repr_png(exp)
    assert len(exp.show(top_k=1).axes) == 2 and len(fcn_cam.plot(exp).axes) == 3
    from_file = fcn_cam.explain(fcn, photos["cat"])  # a path: the decoded pixels are kept too
    assert from_file.pixels.size == (from_file.width, from_file.height)
    exp.pixels = None
    assert exp._repr_png_() is None  # no pixels: the notebook falls back to the text repr

"""Rendering: per-image normalization with an epsilon, colormap on the heatmap alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fcn_cam.render import colorize, overlay


def test_constant_map_is_not_nan():
    c = colorize(np.full((5, 7), 3.0))
    assert c.dtype == np.uint8 and (c == c[0, 0]).all()


def test_overlay_blends_colormap_of_heatmap():
    img = Image.new("RGB", (4, 3), (0, 0, 0))
    heat = np.zeros((3, 4))
    heat[1, 2] = 5.0
    out = np.asarray(overlay(img, heat, "gray", alpha=1.0))
    assert out[1, 2].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]
    half = np.asarray(overlay(Image.new("RGB", (4, 3), (200, 100, 0)), heat, "gray", alpha=0.5))
    assert np.abs(half[1, 2].astype(int) - [227.5, 177.5, 127.5]).max() <= 1
    assert half[0, 0].tolist() == [100, 50, 0]
    with pytest.raises(ValueError, match="does not match"):
        overlay(img, np.zeros((4, 4)))

"""Helpers for the tests that are not part of the package."""

from __future__ import annotations

import torch
from torch import nn


def stretch(maps: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """The naive resize: stretch the ``h × w`` map over the image (cells evenly spread).

    Wrong for FCN score maps (VGG16 at 448: centres land at ``56·i + 27.5`` instead of
    ``(32·i + 111.5) / 2``); the tests compare :func:`fcn_cam.geometry.align` against it.
    """
    lead = maps.shape[:-2]
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = nn.functional.interpolate(flat, size=image_size, mode="bilinear", align_corners=False)
    return out.reshape(*lead, *image_size)

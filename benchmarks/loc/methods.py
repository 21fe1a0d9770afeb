"""The other methods' maps: Grad-CAM (torchcam and fcn-cam's own), true GAP-CAM, baselines.

Every function returns ``float32 [n, H, W]`` maps on the images for one class per image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import fcn_cam
from fcn_cam import metrics
from fcn_cam.demo.twins import INPUT_SIZE, preprocess
from fcn_cam.gradcam import grad_cam


def last_relu(model: nn.Module) -> tuple[str, nn.Module]:
    """The last ReLU of the convolutional features (Grad-CAM's usual layer)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n.startswith("features")][-1]


def _resize(cams: torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """Layer-grid maps to the image: their cells sit on the half-pixel grid of a stride-s
    layer, so a plain resize is the right resampling."""
    up = nn.functional.interpolate(
        cams[:, None].detach().float(), size=hw, mode="bilinear", align_corners=False
    )
    return up[:, 0].numpy()


def gradcam_torchcam(model: nn.Module, images: np.ndarray, classes: np.ndarray, batch: int = 64) -> np.ndarray:
    """torchcam's Grad-CAM at the native size, resized to the image."""
    from torchcam.methods import GradCAM

    out = []
    with GradCAM(model, target_layer=last_relu(model)[0], input_shape=(3, INPUT_SIZE, INPUT_SIZE)) as ex:
        for b0 in range(0, len(images), batch):
            scores = model(preprocess(images[b0 : b0 + batch]))
            cams = ex(np.asarray(classes[b0 : b0 + batch]).tolist(), scores, normalized=False)[0]
            out.append(_resize(cams, images.shape[1:3]))
    return np.concatenate(out)


def gradcam_ours(model: nn.Module, images: np.ndarray, classes: np.ndarray, batch: int = 64) -> np.ndarray:
    """``fcn_cam.gradcam.grad_cam`` at the same layer, resized the same way."""
    layer = last_relu(model)[1]
    return np.concatenate(
        [
            _resize(
                grad_cam(model, layer, preprocess(images[b0 : b0 + batch]), classes[b0 : b0 + batch].tolist()),
                images.shape[1:3],
            )
            for b0 in range(0, len(images), batch)
        ]
    )


def torchcam_cam_check(gap: nn.Module, cam: fcn_cam.FCN, images: np.ndarray, targets: np.ndarray) -> float:
    """Max |difference| between fcn-cam's GAP-CAM and torchcam's CAM (both min-max normalized)."""
    from torchcam.methods import CAM

    x = preprocess(images)
    with torch.no_grad():
        ours = cam(x)
    with CAM(gap, target_layer="features", fc_layer="fc", input_shape=(3, INPUT_SIZE, INPUT_SIZE)) as ex:
        theirs = ex(targets.tolist(), gap(x), normalized=True)[0]
    return max(
        float(np.abs(metrics.normalize(ours[j, t].numpy()) - theirs[j].numpy()).max())
        for j, t in enumerate(targets)
    )


def centre_maps(n: int, hw: tuple[int, int]) -> np.ndarray:
    """A Gaussian at the image centre (sigma = a quarter of the side) for every image."""
    h, w = hw
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * (h / 4) ** 2)))
    return np.broadcast_to(g.astype(np.float32), (n, h, w))


def random_maps(n: int, hw: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *hw), dtype=np.float32)


def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    """The model's top-1 classes at its native size."""
    with torch.no_grad():
        return torch.cat(
            [model(preprocess(images[i : i + 256])).argmax(1) for i in range(0, len(images), 256)]
        ).numpy()

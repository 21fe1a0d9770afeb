"""fcn_cam.compat.CAM in pytorch-grad-cam's pipelines: their targets, show_cam_on_image, ROAD."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import NATIVE, convert_planted, planted_model, small_vgg
from PIL import Image

import fcn_cam
from fcn_cam.compat import CAM
from fcn_cam.images import to_input
from fcn_cam.metrics import normalize

gradcam = pytest.importorskip("pytorch_grad_cam",
                              reason="pytorch-grad-cam missing: pip install 'fcn-cam[compat]'")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def red_patch_batch(n: int = 3, size: int = NATIVE, seed: int = 0) -> tuple[torch.Tensor, list]:
    """Gray noise with a red square at a random place per image: [n, 3, size, size] in [0, 1]."""
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.standard_normal((n, 3, size, size))).float()
    x = torch.full((n, 3, size, size), 0.4) + 0.05 * noise
    where = []
    for i in range(n):
        r, c = rng.integers(4, size - 16, 2)
        x[i, :, r:r + 12, c:c + 12] = torch.tensor([0.95, 0.05, 0.05])[:, None, None]
        where.append((r, c))
    return x.clamp(0, 1), where


def test_their_convention_shapes_and_targets():
    model = small_vgg()
    x = torch.randn(2, 3, NATIVE, NATIVE)
    with CAM(model, input_size=NATIVE) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(3), ClassifierOutputTarget(1)])
        assert maps.dtype == np.float32 and maps.shape == (2, NATIVE, NATIVE)
        assert maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
        assert np.allclose(maps.max(axis=(1, 2)), 1, atol=1e-5)
        with torch.no_grad():  # outputs: the original logits at the native size
            assert torch.allclose(cam.outputs, model(x), atol=1e-4, rtol=1e-4)
        assert np.array_equal(cam(x, [3, 1]), maps)  # plain ints, the same maps
        top = cam(x, None)
        assert np.array_equal(top, cam(x, cam.outputs.argmax(-1).tolist()))
        assert cam(x, [np.int64(3), torch.tensor(1)]).shape == (2, NATIVE, NATIVE)
        with pytest.raises(ValueError, match="2 targets for a batch of 1"):
            cam(x[:1], [3, 1])
        with pytest.raises(ValueError, match="out of range"):
            cam(x[:1], [5])
        with pytest.raises(ValueError, match="integer .category"):
            cam(x[:1], ["cat"])
        with pytest.raises(ValueError, match="eigen_smooth"):
            cam(x, None, eigen_smooth=True)
        big = cam(torch.randn(1, 3, 80, 96), [2])  # any input size: maps at that size
        assert big.shape == (1, 80, 96)
    with torch.no_grad():
        want = model(x)
    for kw in ({"scale": (1, 2)}, {"scale": 2}, {"pad": "cover"}, {"pad": "window", "maps": "scores"}):
        other = CAM(model, input_size=NATIVE, **kw)  # logits of the input as given, whatever the passes
        m = other(x, [3, 1])
        assert m.shape == (2, NATIVE, NATIVE) and m.min() >= 0 and m.max() <= 1, kw
        assert torch.allclose(other.outputs, want, atol=1e-4, rtol=1e-4), kw


def test_constant_map_is_zeros_not_nan():
    fcn = convert_planted()
    cam = CAM(fcn, maps="scores")  # an FCN passes as it is
    x = torch.zeros(1, 3, NATIVE, NATIVE)  # no red anywhere: class 1's map is constant
    m = cam(x, [1])
    assert np.isfinite(m).all() and (m == 0).all()


def test_equals_their_hirescam_at_the_native_size():
    """Cell maps at the native size, unpadded, are HiResCAM at the flatten input (README):
    their HiResCAM on the body's last layer gives the same maps after the same resizing."""
    from pytorch_grad_cam import HiResCAM

    model = small_vgg(bn=False)
    x = torch.randn(3, 3, NATIVE, NATIVE)
    targets = [ClassifierOutputTarget(c) for c in (0, 2, 4)]
    with HiResCAM(model, target_layers=[model.features[-1]]) as theirs:
        want = theirs(input_tensor=x, targets=targets)
    with CAM(model, input_size=NATIVE, pad="none") as ours:
        got = ours(input_tensor=x, targets=targets)
    assert np.abs(got - want).max() < 1e-4


def test_matches_fcn_cam_explain():
    """The same maps as fcn_cam.explain on the same input (relu before resampling aside)."""
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    img = Image.fromarray((np.random.default_rng(3).random((NATIVE, NATIVE + 16, 3)) * 255).astype(np.uint8))
    x = to_input(img, NATIVE, fcn.info["mean"], fcn.info["std"])[None]
    for maps in ("cells", "scores"):
        exp = fcn_cam.explain(fcn, img, scale=1, maps=maps, target=2)
        got = CAM(fcn, maps=maps, clamp=False)(x, [2])[0]
        assert np.abs(got - normalize(exp.targets[0].heatmap, eps=1e-7)).max() < 1e-4


def test_show_cam_on_image_and_road():
    """Their show_cam_on_image and ROAD metrics run on these maps unchanged, and ROAD sees
    what the maps show: removing the most relevant pixels (the red patch) costs the planted
    model's class "red" more than removing the least relevant ones."""
    from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirst, ROADMostRelevantFirst
    from pytorch_grad_cam.utils.image import show_cam_on_image

    model = planted_model()
    x, where = red_patch_batch(3)
    targets = [ClassifierOutputTarget(1)] * 3
    with CAM(model, input_size=NATIVE, mean=(0, 0, 0), std=(1, 1, 1), class_names=["bg", "red"]) as cam:
        maps = cam(input_tensor=x, targets=targets, aug_smooth=False)
        assert cam.outputs.argmax(-1).tolist() == [1, 1, 1]
    for m, (r, c) in zip(maps, where):  # the peak is on the patch
        pr, pc = np.unravel_index(m.argmax(), m.shape)
        assert r - 4 <= pr <= r + 16 and c - 4 <= pc <= c + 16
    rgb = x[0].permute(1, 2, 0).numpy().astype(np.float32)
    vis = show_cam_on_image(rgb, maps[0], use_rgb=True)
    assert vis.shape == (NATIVE, NATIVE, 3) and vis.dtype == np.uint8
    most = ROADMostRelevantFirst(percentile=80)(x, maps, targets, model)
    least = ROADLeastRelevantFirst(percentile=80)(x, maps, targets, model)
    assert most.shape == least.shape == (3,) and np.isfinite(most).all()
    assert (most < least).all(), (most, least)


def test_aug_smooth_is_their_augmentations_averaged():
    model = planted_model()
    x, _ = red_patch_batch(2, seed=1)
    cam = CAM(model, input_size=NATIVE, mean=(0, 0, 0), std=(1, 1, 1))
    smooth = cam(x, [1, 1], aug_smooth=True)
    with torch.no_grad():  # the logits of the input as given, not of an augmentation
        assert torch.allclose(cam.outputs, model(x), atol=1e-4)
    plain = [cam(x * f, [1, 1]) for f in (0.9, 1.0, 1.1)]
    flipped = [cam((x * f).flip(-1), [1, 1])[..., ::-1] for f in (0.9, 1.0, 1.1)]
    assert smooth.shape == (2, NATIVE, NATIVE) and smooth.dtype == np.float32
    assert np.allclose(smooth, np.mean(plain + flipped, axis=0), atol=1e-6)

"""Localization metrics on hand-made maps whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from fcn_cam import metrics as M


def cone(h: int, w: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """``max(0, 1 - d_inf / radius)``: thresholding at f gives a square of half-side r(1-f)."""
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.maximum(np.abs(xx - cx), np.abs(yy - cy))
    return np.clip(1 - d / radius, 0, None)


# --- normalize / threshold_box / iou ---------------------------------------------------------


def test_normalize_range_and_constant_map():
    m = M.normalize(np.array([[2.0, 4.0], [6.0, 10.0]]))
    assert m.min() == 0 and m.max() == pytest.approx(1.0)
    assert np.all(M.normalize(np.full((3, 3), 7.0)) == 0)


def test_threshold_box_picks_largest_component_not_the_peak():
    m = np.zeros((40, 40))
    m[2:4, 30:32] = 1.0  # tiny peak holding the maximum
    m[10:30, 5:20] = 0.5  # large plateau, above 20 % of the range
    assert M.threshold_box(m, 0.2) == (5, 10, 20, 30)
    # above 60 % only the peak survives
    assert M.threshold_box(m, 0.6) == (30, 2, 32, 4)


def test_threshold_box_counts_components_across_row_blocks():
    """Wide maps are counted in blocks of rows (memory): same box as counting at once."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    m = ndimage.gaussian_filter(rng.random((64, 20000)), 3)  # blocks of 52 rows: two blocks
    for fraction in (0.3, 0.5, 0.7):
        mask = m >= m.min() + fraction * (m.max() - m.min() + 1e-8)
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        biggest = np.argmax(np.bincount(labels.ravel())[1:]) + 1
        ys, xs = ndimage.find_objects(labels)[biggest - 1]
        assert M.threshold_box(m, fraction) == (xs.start, ys.start, xs.stop, ys.stop)
        assert ys.stop - ys.start > 1  # a real component, not one pixel


def test_threshold_box_constant_map_is_whole_image():
    assert M.threshold_box(np.ones((5, 7)), 0.2) == (0, 0, 7, 5)


def test_iou_known_values():
    assert M.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert M.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert M.iou((0, 0, 5, 5), (5, 5, 9, 9)) == 0.0


# --- box_correct / box_accuracy / sweep ------------------------------------------------------


def test_box_correct_on_object_and_off_object():
    m = np.zeros((50, 50))
    m[10:30, 10:30] = 1.0
    assert M.box_correct(m, (10, 10, 30, 30))
    assert not M.box_correct(m, (30, 30, 50, 50))
    # IoU of (10,10,30,30) with (15,10,35,30) is 15*20 / (25*20) = 0.6
    assert M.box_correct(m, (15, 10, 35, 30), iou_threshold=0.6)
    assert not M.box_correct(m, (15, 10, 35, 30), iou_threshold=0.61)


def test_fixed_fraction_too_loose_and_sweep_finds_the_right_one():
    # cone of radius 20.5 -> box half-side floor(20.5 (1 - f)) (never on an integer, so no
    # float ties at the threshold); the gt box has half-side 10
    maps = [cone(80, 80, cx, cy, 20.5) for cx, cy in [(30, 30), (50, 40), (40, 50)]]
    gts = [(cx - 10, cy - 10, cx + 11, cy + 11) for cx, cy in [(30, 30), (50, 40), (40, 50)]]
    # at 20 % the box has side 33 vs 21: IoU ~ 0.4 < 0.5
    assert M.box_accuracy(maps, gts, fraction=0.2) == 0.0
    sweep = M.sweep_fraction(maps, gts)
    assert sweep.accuracy == 1.0
    assert len(sweep.fractions) == len(sweep.accuracies) == 19
    # sides 31 (f=0.25) .. 29 (0.3) .. 15 (0.65) .. 13 (0.7) vs 21: IoU >= 0.5 for 0.3..0.65
    ok = [f for f, a in zip(sweep.fractions, sweep.accuracies, strict=True) if a == 1.0]
    assert ok == pytest.approx([0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65])
    assert sweep.fraction == pytest.approx(0.3)  # ties -> smallest


def test_sweep_respects_custom_grid_and_rejects_mismatch():
    maps = [cone(40, 40, 20, 20, 10)]
    gts = [(15, 15, 26, 26)]
    sweep = M.sweep_fraction(maps, gts, fractions=[0.9, 0.5, 0.1])
    assert sweep.fractions == (0.1, 0.5, 0.9)
    assert sweep.fraction == 0.5
    with pytest.raises(ValueError):
        M.sweep_fraction(maps, gts * 2)


# --- pointing game ---------------------------------------------------------------------------


def test_pointing_tolerance_scales_with_image():
    assert M.pointing_tolerance((224, 224)) == 15.0
    assert M.pointing_tolerance((112, 300, 3)) == 7.5


def test_pointing_peak_inside_outside_and_tolerance():
    box = (40, 40, 60, 60)  # last pixel inside is 59
    m = np.zeros((112, 112))
    m[50, 50] = 1
    assert M.pointing_hit(m, box)
    m = np.zeros((112, 112))
    m[50, 59 + 7] = 1  # 7 px right of the box, tolerance 7.5 at 112 px
    assert M.pointing_hit(m, box)
    assert not M.pointing_hit(m, box, tolerance=0)
    m = np.zeros((112, 112))
    m[50, 59 + 8] = 1  # 8 px: beyond the tolerance
    assert not M.pointing_hit(m, box)
    m = np.zeros((112, 112))
    m[59 + 6, 59 + 6] = 1  # diagonal: hypot(6, 6) = 8.5 > 7.5 although each axis is within
    assert not M.pointing_hit(m, box)


def test_pointing_ties_must_all_hit():
    box = (10, 10, 20, 20)
    m = np.zeros((100, 100))
    m[15, 15] = m[80, 80] = 1.0
    assert not M.pointing_hit(m, box)
    m[80, 80] = 0.999
    assert M.pointing_hit(m, box)
    assert not M.pointing_hit(np.ones((100, 100)), box)
    assert M.pointing_hit(np.ones((100, 100)), (0, 0, 100, 100))
    assert not M.pointing_hit(np.full((100, 100), np.nan), (0, 0, 100, 100))
    m = np.zeros((100, 100))
    m[15, 15], m[80, 80] = 1.0, np.nan  # NaNs are ignored, the finite maximum counts
    assert M.pointing_hit(m, box)


def test_class_mean_accuracy_weights_classes_equally():
    hits = [True, True, True, False]
    labels = [0, 0, 0, 1]
    assert M.class_mean_accuracy(hits, labels) == 0.5
    assert np.mean(hits) == 0.75
    with pytest.raises(ValueError):
        M.class_mean_accuracy([True], [0, 1])


# --- energy-based pointing game --------------------------------------------------------------


def test_energy_half_inside():
    m = np.zeros((20, 20))
    m[5, 5] = m[15, 15] = 2.0
    assert M.energy_pointing(m, (0, 0, 10, 10)) == 0.5
    assert M.energy_pointing(m, (0, 0, 20, 20)) == 1.0
    # exclusive end: the pixel at x = 15 lies outside [0, 15)
    assert M.energy_pointing(m, (0, 0, 15, 20)) == 0.5


def test_energy_clamps_negative_and_handles_zero_maps():
    m = np.full((10, 10), -5.0)
    m[0, 0] = 1.0
    # the -5s inside the box do not cancel anything: all positive mass is outside
    assert M.energy_pointing(m, (2, 2, 10, 10)) == 0.0
    assert M.energy_pointing(m, (0, 0, 1, 1)) == 1.0
    assert M.energy_pointing(np.zeros((10, 10)), (0, 0, 5, 5)) == 0.0
    assert M.energy_pointing(-np.ones((10, 10)), (0, 0, 5, 5)) == 0.0


# --- deletion / insertion --------------------------------------------------------------------


def kept_fraction(original: np.ndarray, region: np.ndarray | None = None):
    """score_fn: fraction of the (region's) pixels still equal to the original."""

    def score(batch: np.ndarray) -> np.ndarray:
        same = np.all(batch == original, axis=-1)
        if region is not None:
            same = same[:, region]
        return same.reshape(len(batch), -1).mean(axis=1)

    return score


@pytest.fixture
def image() -> np.ndarray:
    # strictly positive and non-smooth, so neither the zero nor the blur baseline equals it
    return np.random.default_rng(0).uniform(0.2, 1.0, (10, 10, 3))


def test_auc_trapezoid():
    assert M.auc([0, 0.5, 1], [1, 1, 0]) == 0.75
    assert M.auc([0, 1], [0, 1]) == 0.5


def test_deletion_and_insertion_of_uniform_score_is_half(image):
    sal = np.random.default_rng(1).random((10, 10))
    score = kept_fraction(image)
    assert M.deletion_auc(image, sal, score, steps=20) == pytest.approx(0.5)
    # insertion from the blur: the kept fraction rises linearly
    assert M.insertion_auc(image, sal, score, steps=20) == pytest.approx(0.5)


def test_deletion_insertion_reward_maps_on_the_object(image):
    region = np.zeros((10, 10), dtype=bool)
    region[2:6, 3:8] = True  # 20 of 100 pixels
    score = kept_fraction(image, region)
    good = region.astype(float)
    bad = 1.0 - good
    # one pixel per step: the object is gone after 20 % -> triangle of area 0.1
    assert M.deletion_auc(image, good, score, steps=100) == pytest.approx(0.1)
    assert M.deletion_auc(image, bad, score, steps=100) == pytest.approx(0.9)
    assert M.insertion_auc(image, good, score, steps=100) == pytest.approx(0.9)
    assert M.insertion_auc(image, bad, score, steps=100) == pytest.approx(0.1)


def test_curve_shape_batching_and_dtype(image):
    img8 = (image * 255).astype(np.uint8)
    seen: list[tuple[int, np.dtype]] = []

    def score(batch: np.ndarray) -> np.ndarray:
        seen.append((len(batch), batch.dtype))
        return batch.reshape(len(batch), -1).mean(axis=1).astype(float)

    x, y = M.perturbation_curve(img8, np.ones((10, 10)), score, "deletion", steps=10, batch_size=4)
    assert [n for n, _ in seen] == [4, 4, 3]
    assert all(d == np.uint8 for _, d in seen)
    assert x[0] == 0 and x[-1] == 1 and len(x) == len(y) == 11
    assert y[-1] == 0  # everything replaced by zeros
    # ties are broken in row-major order: the first deleted pixel is (0, 0)
    seen_batches: list[np.ndarray] = []
    M.perturbation_curve(
        img8,
        np.ones((10, 10)),
        lambda b: (seen_batches.append(b.copy()), np.zeros(len(b)))[1],
        steps=100,
    )
    first = seen_batches[0][1].reshape(100, 3)
    assert np.all(first[0] == 0) and np.all(first[1:] == img8.reshape(100, 3)[1:])


def test_mean_baseline_uint8_rounds():
    img = np.zeros((2, 2, 3), dtype=np.uint8)
    img[0, 0] = 3  # channel means 0.75 -> 1
    batches = []
    M.perturbation_curve(
        img, np.ones((2, 2)), lambda b: (batches.append(b.copy()), np.zeros(len(b)))[1],
        steps=4, baseline="mean",
    )  # fmt: skip
    assert np.all(batches[0][-1] == 1)


def test_blur_baseline_and_errors(image):
    score = kept_fraction(image)
    x, y = M.perturbation_curve(image, np.zeros((10, 10)), score, "insertion", steps=5)
    assert y[0] == 0 and y[-1] == 1
    with pytest.raises(ValueError):
        M.deletion_auc(image, np.zeros((5, 5)), score)
    with pytest.raises(ValueError):
        M.deletion_auc(image, np.zeros((10, 10)), lambda b: np.zeros(1), steps=5)
    with pytest.raises(ValueError):
        M.perturbation_curve(image, np.zeros((10, 10)), score, mode="sideways")


def test_threshold_box_equals_the_normalize_label_nonzero_reference():
    """The lean box (no normalized copy, find_objects) is the CAM paper's rule exactly."""
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for _ in range(30):
        m = ndimage.gaussian_filter(rng.standard_normal((60, 90)), 3).astype(np.float32)
        frac = float(rng.uniform(0.05, 0.95))
        norm = M.normalize(m)
        labels, n = ndimage.label(norm >= frac, structure=np.ones((3, 3), dtype=bool))
        big = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        ys, xs = np.nonzero(big)
        want = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        assert M.threshold_box(m, frac) == want


# --- class-discrimination pointing -----------------------------------------------------------


def test_discrimination_hit_needs_the_peak_on_its_own_object():
    a, b = (5, 5, 15, 15), (30, 30, 40, 40)
    on_a = cone(48, 48, 10, 10, 6)
    on_b = cone(48, 48, 35, 35, 6)
    assert M.discrimination_hit(on_a, a, [b])
    assert not M.discrimination_hit(on_b, a, [b])  # the other object's map
    assert M.discrimination_hit(on_b, b, [a])
    # a class-agnostic map peaking on b misses for a, even if a is also bright
    both = np.maximum(on_a * 0.9, on_b)
    assert not M.discrimination_hit(both, a, [b]) and M.discrimination_hit(both, b, [a])


def test_discrimination_hit_between_touching_boxes_is_strict():
    a, b = (0, 0, 10, 10), (10, 0, 20, 10)
    m = np.zeros((10, 20))
    m[5, 9] = 1.0  # inside a, 1 px from b
    assert M.discrimination_hit(m, a, [b])
    m[5, 9], m[5, 10] = 0.0, 1.0  # inside b: within the tolerance of a, yet nearer b
    assert M.pointing_hit(m, a, tolerance=2) and not M.discrimination_hit(m, a, [b], tolerance=2)
    # flat map: every tied maximum must be nearer its own box
    assert not M.discrimination_hit(np.ones((10, 20)), a, [b])

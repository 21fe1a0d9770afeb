"""Scoring maps: box accuracy (threshold from validation), pointing, energy, deletion /
insertion, and class discrimination on two-digit scenes.

Each map is scored by :mod:`fcn_cam.evaluation`'s own functions (``best_iou``, ``pointing``,
``energy``, the bootstrap over images), the code ``fcn-cam evaluate`` runs on a user's
images; only the bulk maps (many configurations from cached forwards) are the benchmark's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fcn_cam import evaluation, metrics
from fcn_cam.demo import Pairs, Scenes
from fcn_cam.demo.twins import preprocess

from .selection import sweep_fraction


def box_stats(maps: np.ndarray, boxes: np.ndarray, fraction: float) -> dict:
    """Box accuracy at ``fraction``, the share of boxes covering the whole image, and the
    median box area as a share of the image."""
    h, w = maps.shape[1:]
    scored = [evaluation.best_iou(m, [t], fraction) for m, t in zip(maps, boxes)]
    found = [f for _, f in scored]
    hits = np.array([v >= evaluation.IOU for v, _ in scored])
    areas = np.array([(b[2] - b[0]) * (b[3] - b[1]) / (h * w) for b in found])
    return {
        "hits": hits,
        "acc": float(hits.mean()),
        "whole": float((areas >= 0.999).mean()),
        "area": float(np.median(areas)),
    }


def intervals(columns: dict[str, np.ndarray], labels: np.ndarray, seed: int = 0) -> dict:
    """95 % percentile-bootstrap intervals over scenes, as ``fcn_cam.evaluation`` computes them
    (pointing: per class, then over classes)."""
    w = evaluation.resample_weights(np.arange(len(labels)), np.random.default_rng(seed))
    out = {}
    for key, v in columns.items():
        lab = labels if key == "pointing" else None
        stat = evaluation.weighted_stat(np.asarray(v, dtype=np.float64), w, lab)
        out[f"{key}_ci"] = [float(x) for x in np.nanpercentile(stat, [2.5, 97.5])]
    return out


def localization(val: np.ndarray, val_boxes: np.ndarray, test: np.ndarray, data: Scenes) -> dict:
    """Box accuracy at 20 % and at the fraction swept on ``val``; pointing; energy; their
    95 % intervals over scenes."""
    sweep = sweep_fraction(list(val), val_boxes)  # as for the defaults
    swept = box_stats(test, data.boxes, sweep.fraction)
    fixed = box_stats(test, data.boxes, 0.2)
    hits = [evaluation.pointing(m, [b]) for m, b in zip(test, data.boxes)]
    energies = [evaluation.energy(m, [b]) for m, b in zip(test, data.boxes)]
    return {
        "box_acc_20": fixed["acc"],
        "box_fraction_val": sweep.fraction,
        "box_acc_val": sweep.accuracy,
        "box_acc_swept": swept["acc"],
        "whole_image_boxes": swept["whole"],
        "median_box_area": swept["area"],
        "pointing": metrics.class_mean_accuracy(hits, data.labels),
        "energy": float(np.mean(energies)),
        **intervals({"box_acc_swept": swept["hits"], "pointing": hits, "energy": energies}, data.labels),
        "_box_hits": swept["hits"],
    }


def score_fn(model: nn.Module, target: int) -> Callable[[np.ndarray], np.ndarray]:
    """Softmax probability of ``target`` from ``model`` on a uint8 batch."""

    def f(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(preprocess(batch)), 1)[:, target].numpy()

    return f


def rise(maps: np.ndarray, data: Scenes, scorer: nn.Module, n: int, steps: int) -> dict:
    """Mean deletion and insertion AUC over the first ``n`` test images."""
    dele, ins = [], []
    for i in range(min(n, len(maps))):
        f = score_fn(scorer, int(data.labels[i]))
        dele.append(metrics.deletion_auc(data.images[i], maps[i], f, steps=steps))
        ins.append(metrics.insertion_auc(data.images[i], maps[i], f, steps=steps))
    return {"deletion_auc": float(np.mean(dele)), "insertion_auc": float(np.mean(ins))}


def discrimination(maps: list[np.ndarray], pairs: Pairs) -> dict:
    """Class-discrimination pointing on two-digit scenes: ``maps[j][i]`` is the map of
    ``pairs.labels[i, j]``; each must peak on its own digit, nearer it than the other."""
    hits = np.array(
        [
            [metrics.discrimination_hit(maps[j][i], pairs.boxes[i, j], [pairs.boxes[i, 1 - j]]) for j in (0, 1)]
            for i in range(len(pairs))
        ]
    )
    return {"discrimination": float(hits.mean()), "both_digits": float(hits.all(1).mean())}

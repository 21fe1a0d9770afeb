"""`fcn-cam demo`: the whole pipeline offline, on demo scenes with the shipped twins.

A random sample of held-out test scenes (fixed seed) is written as PNG files and explained
through the same path as user images, with ``explain``'s defaults
(:func:`fcn_cam.explain_files` → :class:`fcn_cam.outputs.OutputDir`); a comparison figure
puts FCN-CAM's score maps and cell maps next to the GAP twin's true CAM and Grad-CAM of the
FC twin, each with its box and its IoU with the true box.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..conversion import convert
from ..explanation import explain, explain_files, settings_for
from ..files import write_atomic
from ..gradcam import grad_cam
from ..outputs import OutputDir
from ..settings import Settings
from ..surgery import FCN
from .scenes import CLASS_NAMES, scenes
from .twins import INPUT_SIZE, MEAN, STD, preprocess, twins


def converted_twins(output_stride: int | None = None) -> tuple[FCN, FCN, nn.Module]:
    """``(fcn of the FC twin, CAM net of the GAP twin, the FC twin itself)``."""
    fc, gap = twins()
    meta = {"class_names": CLASS_NAMES, "mean": MEAN, "std": STD}
    fcn = convert(fc, INPUT_SIZE, output_stride=output_stride, arch="demo-fc-twin", weights="shipped", **meta)
    cam = convert(gap, INPUT_SIZE, arch="demo-gap-twin", weights="shipped", **meta)
    return fcn, cam, fc


def gradcam_heatmap(model: nn.Module, image: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM of ``model`` at its native size, resized to the image (right for a layer
    grid whose cells sit on the half-pixel grid)."""
    layer = [m for m in model.features.modules() if isinstance(m, nn.ReLU)][-1]
    x = preprocess(image[None])
    m = grad_cam(model, layer, x, [target])[0]
    h, w = image.shape[:2]
    return torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="bilinear",
                                           align_corners=False)[0, 0].numpy()


COLUMNS = ("image, true box", "FCN-CAM score maps (FC twin)", "FCN-CAM cell maps (FC twin)",
           "GAP-CAM (GAP twin)", "Grad-CAM (FC twin)")


def comparison_figure(rows: Sequence[dict], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    """One row per scene: the image with its true box (green), then one column per map in
    ``row["maps"]`` with its box (dashed white) and caption ``row["labels"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(columns)
    fig, axes = plt.subplots(len(rows), n, figsize=(2.5 * n, 2.6 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.imshow(row["image"])
            if c:
                ax.imshow(row["maps"][c - 1], cmap="jet", alpha=0.5)
                box, label = row["boxes"][c - 1], row["labels"][c - 1]
                ax.add_patch(plt.Rectangle((box[0] - .5, box[1] - .5), box[2] - box[0], box[3] - box[1],
                                           fill=False, ec="white", lw=1.2, ls="--"))
                ax.set_xlabel(label, fontsize=8)
            elif row.get("caption"):
                ax.set_xlabel(row["caption"], fontsize=8)
            x0, y0, x1, y1 = row["truth"]
            ax.add_patch(plt.Rectangle((x0 - .5, y0 - .5), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.2))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))


#: Box fractions of the comparison methods, chosen on the benchmark's validation scenes
#: (``benchmarks/results/localization.md``); FCN-CAM uses ``explain``'s own defaults.
GAP_CAM_FRACTION = 0.55
GRAD_CAM_FRACTION = 0.3


def run(out_dir: str | Path, n: int = 6, seed: int = 2026, overwrite: bool = False,
        settings: Settings | None = None) -> dict:
    """Run the demo on ``n`` random test scenes (``seed`` fixed, nothing hand-picked); return
    the paths written, a summary per scene, how many the FC twin classified right and the
    mean IoU of the boxes ``explain`` gives with its defaults (or ``settings``)."""
    from ..metrics import iou, threshold_box

    out_dir = Path(out_dir)
    paths = [out_dir / f"scene_{i:02d}.png" for i in range(n)]
    figure = out_dir / "comparison.png"
    taken = [p for p in (*paths, figure, out_dir / OutputDir.JSONL) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]}: already exists (pass --overwrite or another -o)")
    data = scenes(n, seed=seed, split="test")
    fcn, cam, fc = converted_twins()
    used = settings_for(fcn, settings)  # the defaults, resolved (fails before any work)
    out = OutputDir(out_dir, overwrite=overwrite)
    for p, img in zip(paths, data.images):
        write_atomic(p, lambda f, img=img: Image.fromarray(img).save(f, format="PNG"))
    rows, summary = [], []
    for i, r in enumerate(explain_files(fcn, paths, used)):
        if r.error:
            raise RuntimeError(r.error)
        record = out.write(r.explanation, r.image)
        img, truth, label = data.images[i], data.boxes[i], int(data.labels[i])
        t = r.explanation.targets[0]
        # The figure compares the methods on the true class (as the localization benchmark
        # does); the overlays above show the predicted class, as for any user image.
        kinds = {k: explain(fcn, img, settings, maps=k, target=label).targets[0]
                 for k in ("scores", "cells")}
        gap_exp = explain(cam, img, scale=1.0, pad="none", target=label)
        gc = gradcam_heatmap(fc, img, label)
        maps = [kinds["scores"].heatmap, kinds["cells"].heatmap, gap_exp.targets[0].heatmap, gc]
        boxes = [kinds["scores"].box, kinds["cells"].box, threshold_box(maps[2], GAP_CAM_FRACTION),
                 threshold_box(gc, GRAD_CAM_FRACTION)]
        rows.append({"image": img, "truth": truth, "maps": maps, "boxes": boxes,
                     "caption": f"true {CLASS_NAMES[label]}; FC twin says {t.name}",
                     "labels": [f"IoU {iou(b, truth):.2f}" for b in boxes]})
        summary.append({"scene": paths[i].name, "true_class": CLASS_NAMES[label],
                        "predicted": record["class_name"], "peak": record["peak"], "box": record["box"],
                        "true_box": [int(v) for v in truth], "iou": iou(record["box"], truth)})
    comparison_figure(rows, figure)
    correct = sum(s["predicted"] == s["true_class"] for s in summary)
    return {"out_dir": str(out_dir), "figure": str(figure), "jsonl": str(out.jsonl), "scenes": summary,
            "correct": correct, "mean_iou": float(np.mean([s["iou"] for s in summary])),
            "settings": {"maps": used.maps, "scale": list(used.scale), "pad": used.pad, "clamp": used.clamp,
                         "box_fraction": used.box_fraction}}

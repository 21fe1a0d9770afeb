"""Localization benchmark: FCN-CAM vs true GAP-CAM vs Grad-CAM on demo scenes.

    python benchmarks/localization.py                 # full run, writes benchmarks/results/
    python benchmarks/localization.py --quick         # smoke run

Maps are scored for the true class (GT-known localization, Choe et al. 2020); the
top-1 column also requires the predicted class to be right. Thresholds for the swept box
rule are chosen on a validation split and applied to the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import fcn_cam
from fcn_cam import metrics
from fcn_cam.demo import scenes
from fcn_cam.demo.showcase import comparison_figure, converted_twins
from fcn_cam.demo.twins import INPUT_SIZE, preprocess, twins
from fcn_cam.explain import class_scores, network_input, resolve_rank, score_maps, sides
from fcn_cam.geometry import align, stretch

RESULTS = Path(__file__).resolve().parent / "results"
Maps = list[np.ndarray]


def fcn_maps(fcn: fcn_cam.FCN, images: np.ndarray, targets: np.ndarray, scale: float, pad: bool = False,
             batch: int = 64) -> tuple[Maps, Maps, np.ndarray]:
    """Aligned and naively stretched heatmaps of the target classes, and the predictions
    (fcn-cam's default ranking). The stretch ignores the padding, as a naive user would not
    pad; compare it with the unpadded aligned maps."""
    from PIL import Image

    side = sides(fcn, [scale])[0]
    aligned, naive, preds = [], [], []
    h, w = images.shape[1:3]
    for b0 in range(0, len(images), batch):
        inputs = [network_input(fcn, Image.fromarray(im), side, pad) for im in images[b0:b0 + batch]]
        maps = score_maps(fcn, torch.stack([i.x for i in inputs]))
        preds.append(class_scores(maps, resolve_rank(fcn, "auto")).argmax(1).numpy())
        for j, m in enumerate(maps):
            t, inp = int(targets[b0 + j]), inputs[j]
            aligned.append(align(m[t], fcn.geometry.shifted(*inp.pad), inp.shape, (h, w)).numpy())
            naive.append(stretch(m[t], (h, w)).numpy())
    return aligned, naive, np.concatenate(preds)


def relu_layer_name(model: nn.Module) -> str:
    """The last ReLU of the convolutional features (Grad-CAM's usual layer)."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.ReLU) and n.startswith("features")][-1]


def gradcam_maps(model: nn.Module, images: np.ndarray, targets: np.ndarray, batch: int = 64) -> Maps:
    """torchcam's Grad-CAM at the native size, resized to the image (its layer grid sits on
    the half-pixel grid, so a plain resize is the right resampling)."""
    from torchcam.methods import GradCAM

    out = []
    h, w = images.shape[1:3]
    with GradCAM(model, target_layer=relu_layer_name(model), input_shape=(3, INPUT_SIZE, INPUT_SIZE)) as ex:
        for b0 in range(0, len(images), batch):
            x = preprocess(images[b0:b0 + batch])
            scores = model(x)
            cams = ex(targets[b0:b0 + batch].tolist(), scores, normalized=False)[0]
            up = torch.nn.functional.interpolate(cams[:, None].detach(), size=(h, w), mode="bilinear",
                                                 align_corners=False)[:, 0]
            out.extend(up.numpy())
    return out


def torchcam_cam_check(gap: nn.Module, cam: fcn_cam.FCN, images: np.ndarray, targets: np.ndarray) -> float:
    """Max |difference| between fcn-cam's GAP-CAM and torchcam's CAM (both min-max normalized)."""
    from torchcam.methods import CAM

    x = preprocess(images)
    with torch.no_grad():
        ours = cam(x)
    with CAM(gap, target_layer="features", fc_layer="fc", input_shape=(3, INPUT_SIZE, INPUT_SIZE)) as ex:
        scores = gap(x)
        theirs = ex(targets.tolist(), scores, normalized=True)[0]
    diff = 0.0
    for j, t in enumerate(targets):
        diff = max(diff, float(np.abs(metrics.normalize(ours[j, t].numpy()) - theirs[j].numpy()).max()))
    return diff


def score_fn(model: nn.Module, target: int) -> Callable[[np.ndarray], np.ndarray]:
    def f(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(preprocess(batch)), 1)[:, target].numpy()
    return f


def evaluate(name: str, val: Maps, test: Maps, val_boxes: np.ndarray, data, preds: np.ndarray | None,
             scorer: nn.Module, n_rise: int, steps: int) -> dict:
    """All metrics for one method's maps (the box threshold is swept on ``val``)."""
    boxes, labels = data.boxes, data.labels
    sweep = metrics.sweep_fraction(val, val_boxes)
    fixed = [metrics.box_correct(m, b, 0.2) for m, b in zip(test, boxes)]
    swept = [metrics.box_correct(m, b, sweep.fraction) for m, b in zip(test, boxes)]
    hits = [metrics.pointing_hit(m, b) for m, b in zip(test, boxes)]
    row = {
        "method": name,
        "box_acc_20": float(np.mean(fixed)),
        "box_fraction_val": sweep.fraction,
        "box_acc_swept": float(np.mean(swept)),
        "top1_loc_20": float(np.mean(np.array(fixed) & (preds == labels))) if preds is not None else None,
        "pointing": metrics.class_mean_accuracy(hits, labels),
        "energy": float(np.mean([metrics.energy_pointing(m, b) for m, b in zip(test, boxes)])),
    }
    if n_rise:
        dele, ins = [], []
        for i in range(n_rise):
            f = score_fn(scorer, int(labels[i]))
            dele.append(metrics.deletion_auc(data.images[i], test[i], f, steps=steps))
            ins.append(metrics.insertion_auc(data.images[i], test[i], f, steps=steps))
        row["deletion_auc"], row["insertion_auc"] = float(np.mean(dele)), float(np.mean(ins))
    print(f"  {name:<34} box@20 {row['box_acc_20']:.3f}  swept {row['box_acc_swept']:.3f} "
          f"(f={sweep.fraction})  point {row['pointing']:.3f}  energy {row['energy']:.3f}", flush=True)
    return row


def predict(model: nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(preprocess(images[i:i + 256])).argmax(1)
                          for i in range(0, len(images), 256)]).numpy()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == labels).mean())


def table(rows: list[dict], keys: list[tuple[str, str]]) -> str:
    head = "| method | " + " | ".join(k for _, k in keys) + " |"
    sep = "|---|" + "---|" * len(keys)
    lines = [head, sep]
    for r in rows:
        vals = [("—" if r.get(k) is None else f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]))
                for k, _ in keys]
        lines.append(f"| {r['method']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small smoke run")
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-val", type=int, default=300)
    ap.add_argument("--n-rise", type=int, default=100, help="test images scored by deletion/insertion")
    ap.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.n_test, args.n_val, args.n_rise, args.steps = 60, 40, 10, 8
    t0 = time.time()
    torch.manual_seed(0)
    val = scenes(args.n_val, seed=101, split="test")
    test = scenes(args.n_test, seed=202, split="test")
    fc, gap = twins()
    fcn, cam, _ = converted_twins()
    acc = {name: accuracy(m, test.images, test.labels) for name, m in (("fc_twin", fc), ("gap_twin", gap))}
    print(f"test accuracy: FC twin {acc['fc_twin']:.3f}, GAP twin {acc['gap_twin']:.3f}", flush=True)
    rows: list[dict] = []
    common = {"val_boxes": val.boxes, "data": test, "n_rise": args.n_rise, "steps": args.steps}

    for s in (1.0, 1.5, 2.0, 3.0):
        va = fcn_maps(fcn, val.images, val.labels, s, pad=True)
        te = fcn_maps(fcn, test.images, test.labels, s, pad=True)
        rows.append(evaluate(f"FCN-CAM (FC twin), scale {s:g}, aligned, padded (default)", va[0], te[0],
                             preds=te[2], scorer=fc, **common))
        va = fcn_maps(fcn, val.images, val.labels, s)
        te = fcn_maps(fcn, test.images, test.labels, s)
        rows.append(evaluate(f"FCN-CAM (FC twin), scale {s:g}, aligned", va[0], te[0], preds=te[2],
                             scorer=fc, **common))
        rows.append(evaluate(f"FCN-CAM (FC twin), scale {s:g}, naive stretch", va[1], te[1], preds=te[2],
                             scorer=fc, **common))
    for s in (1.0, 2.0):
        va = fcn_maps(cam, val.images, val.labels, s)
        te = fcn_maps(cam, test.images, test.labels, s)
        rows.append(evaluate(f"GAP-CAM (GAP twin), scale {s:g}", va[0], te[0], preds=te[2], scorer=gap,
                             **common))
    cam_diff = torchcam_cam_check(gap, cam, test.images[:32], test.labels[:32])
    print(f"GAP-CAM vs torchcam CAM (normalized, 32 images): max |diff| = {cam_diff:.2e}", flush=True)
    for label, model in (("FC twin", fc), ("GAP twin", gap)):
        rows.append(evaluate(f"Grad-CAM ({label}, torchcam)", gradcam_maps(model, val.images, val.labels),
                             gradcam_maps(model, test.images, test.labels),
                             preds=predict(model, test.images), scorer=model, **common))
    h, w = test.images.shape[1:3]
    yy, xx = np.mgrid[0:h, 0:w]
    centre = np.exp(-(((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (2 * (h / 4) ** 2)))
    rng = np.random.default_rng(0)
    rows.append(evaluate("centre baseline", [centre] * len(val.images), [centre] * len(test.images),
                         preds=None, scorer=fc, **common))
    rows.append(evaluate("random baseline", list(rng.random((len(val.images), h, w))),
                         list(rng.random((len(test.images), h, w))), preds=None, scorer=fc, **common))

    # comparison figure on the first test scenes
    fig_rows = []
    for i in range(6):
        img, t = test.images[i], int(test.labels[i])
        f_map = fcn_maps(fcn, img[None], np.array([t]), 2.0, pad=True)[0][0]
        g_map = fcn_maps(cam, img[None], np.array([t]), 1.0)[0][0]
        gc = gradcam_maps(fc, img[None], np.array([t]))[0]
        fig_rows.append({"image": img, "truth": test.boxes[i], "maps": [f_map, g_map, gc],
                         "boxes": [metrics.threshold_box(m) for m in (f_map, g_map, gc)],
                         "labels": ["scale 2, aligned, padded", "native", "native"]})
    args.out.mkdir(parents=True, exist_ok=True)
    comparison_figure(fig_rows, args.out / "localization_examples.png")

    elapsed = time.time() - t0
    cmd = "python " + " ".join(sys.argv)
    keys = [("box_acc_20", "box acc (20 %)"), ("box_acc_swept", "box acc (swept)"),
            ("box_fraction_val", "fraction (val)"), ("top1_loc_20", "top-1 loc (20 %)"),
            ("pointing", "pointing game"), ("energy", "energy pointing")]
    rise = [("deletion_auc", "deletion AUC ↓"), ("insertion_auc", "insertion AUC ↑")]
    md = [
        "# Localization benchmark (demo scenes)", "",
        f"Command: `{cmd}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{elapsed / 60:.1f} min; torch {torch.__version__}, {platform.machine()}, "
        f"{torch.get_num_threads()} threads.", "",
        f"Test split: {args.n_test} scenes (seed 202), validation: {args.n_val} (seed 101), "
        f"both from held-out digit images. Classification accuracy on the test split: FC twin "
        f"{acc['fc_twin']:.3f}, GAP twin {acc['gap_twin']:.3f}.", "",
        "Maps are for the true class. Box accuracy: IoU ≥ 0.5 between the true box and the box of "
        "the largest connected region above the fraction of the map's range; 'swept' uses the "
        "fraction chosen on the validation split. Top-1 loc also needs the predicted class right. "
        "Pointing game: class-averaged hits, tolerance 15 px × side / 224. Energy: share of the "
        "non-negative map inside the box.", "",
        table(rows, keys), "",
        f"Deletion / insertion AUC (RISE; softmax probability of the true class from the model "
        f"explained — the FC twin for the baselines; {args.n_rise} test images, {args.steps} steps; "
        "deletion to zeros, insertion from a blurred image):", "",
        table(rows, rise), "",
        f"GAP-CAM through `convert` vs torchcam's `CAM` on the GAP twin (both min-max normalized, "
        f"32 images): max |difference| = {cam_diff:.2e}.", "",
        "![examples](localization_examples.png)", "",
    ]
    (args.out / "localization.md").write_text("\n".join(md))
    (args.out / "localization.json").write_text(json.dumps(
        {"command": cmd, "accuracy": acc, "torchcam_cam_max_diff": cam_diff, "rows": rows}, indent=1))
    print(f"wrote {args.out / 'localization.md'} in {elapsed / 60:.1f} min")


if __name__ == "__main__":
    main()

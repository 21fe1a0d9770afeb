"""Explain a photo with an fcn-cam ONNX export and onnxruntime alone: numpy, PIL, matplotlib's
colormap — no torch, no fcn-cam.

    fcn-cam export vgg16 -o vgg16.onnx                # once, where torch is
    python examples/serve_onnx.py vgg16.onnx cat.jpg -o cat_overlay.png

Writes the overlay ``fcn-cam explain`` writes for the same settings (cell maps, the default
scales 1 and 2, ``pad="features"`` inside the graph, jet, alpha 0.5) and prints the class.
Everything needed to place the cells is in the file's metadata (``fcn_cam``): the
normalization, the resize rule, the class names and the cells' geometry in network-input
pixels, ``centre(i) = stride·i + offset``.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from PIL import Image, ImageOps


def read_metadata(session) -> dict:
    return json.loads(session.get_modelmeta().custom_metadata_map["fcn_cam"])


def to_input(image: Image.Image, side: int, mean, std) -> tuple[np.ndarray, tuple[int, int]]:
    """Shorter side to ``side`` (PIL bilinear, aspect kept), ``(x/255 − mean)/std``: ``[1, 3, H, W]``."""
    w, h = image.size
    hw = (round(h * side / w), side) if w <= h else (side, round(w * side / h))
    if hw != (h, w):
        image = image.resize((hw[1], hw[0]), Image.Resampling.BILINEAR)
    x = (np.asarray(image, np.float32) / 255.0 - np.float32(mean)) / np.float32(std)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32), hw


def interp(n_out: int, n_map: int, axis: dict, in_per_out: float) -> np.ndarray:
    """``[n_out, n_map]`` weights putting cell values at their centres, linear between them,
    constant beyond the outermost (fcn_cam.geometry.align's rule)."""
    u = ((np.arange(n_out, dtype=np.float64) + 0.5) * in_per_out - 0.5 - axis["offset"]) / axis["stride"]
    u = np.clip(u, 0, n_map - 1)
    lo = np.minimum(np.floor(u).astype(np.int64), max(n_map - 2, 0))
    frac = u - lo
    m = np.zeros((n_out, n_map))
    rows = np.arange(n_out)
    np.add.at(m, (rows, lo), 1 - frac)
    if n_map > 1:
        np.add.at(m, (rows, lo + 1), frac)
    return m


def align(cells: np.ndarray, geometry: dict, input_hw: tuple[int, int],
          image_hw: tuple[int, int]) -> np.ndarray:
    ay = interp(image_hw[0], cells.shape[0], geometry["y"], input_hw[0] / image_hw[0]).astype(np.float32)
    ax = interp(image_hw[1], cells.shape[1], geometry["x"], input_hw[1] / image_hw[1]).astype(np.float32)
    return ay @ cells.astype(np.float32) @ ax.T


def overlay(image: Image.Image, heat: np.ndarray, colormap: str = "jet", alpha: float = 0.5) -> Image.Image:
    """Min-max normalized heatmap through a 256-entry colormap, blended over the image."""
    import matplotlib

    lut = (matplotlib.colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    m = np.asarray(heat, np.float32)
    lo, hi = float(m.min()), float(m.max())
    m = m - lo
    m *= 1 / (hi - lo + 1e-8)
    m *= 255
    return Image.blend(image, Image.fromarray(lut[np.rint(m, out=m).astype(np.uint8)]), alpha)


def explain(session, image: Image.Image, scales=(1.0, 2.0), target: int = -1) -> tuple[int, float, np.ndarray]:
    """``(class, score, heatmap)``: class scores averaged over scales pick the class (or
    ``target``), its cell maps are aligned onto the image and averaged."""
    meta = read_metadata(session)
    side = min(meta["input_size"])
    inputs = [to_input(image, round(s * side), meta["mean"], meta["std"]) for s in scales]
    runs = [session.run(None, {"image": x, "target": np.array([target], np.int64)}) for x, _ in inputs]
    ranked = np.mean([r[1][0] for r in runs], axis=0)
    chosen = int(np.argmax(ranked)) if target < 0 else target
    heat = np.zeros((image.height, image.width), np.float32)
    for (x, hw), r in zip(inputs, runs):
        if int(r[2][0]) != chosen:  # this scale alone ranked another class first
            r = session.run(None, {"image": x, "target": np.array([chosen], np.int64)})
        heat += align(r[3][0], meta["cell_geometry"], hw, (image.height, image.width))
    return chosen, float(ranked[chosen]), heat / len(inputs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="an .onnx file written by `fcn-cam export`")
    p.add_argument("image")
    p.add_argument("-o", "--output", required=True, help="overlay PNG to write")
    p.add_argument("--scale", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--target", type=int, default=-1, help="class index (default: the top class)")
    p.add_argument("--heatmap", help="also save the heatmap as .npy here")
    args = p.parse_args(argv)
    import onnxruntime

    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    with Image.open(args.image) as im:
        image = ImageOps.exif_transpose(im).convert("RGB")
    chosen, score, heat = explain(session, image, args.scale, args.target)
    overlay(image, heat).save(args.output)
    if args.heatmap:
        np.save(args.heatmap, heat)
    names = read_metadata(session)["class_names"]
    print(json.dumps({"class_index": chosen, "class_name": names[chosen] if names else None, "score": score}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

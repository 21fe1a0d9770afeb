"""Figures for the README: geometry (aligned vs naive), and stride 32/16/8 on one photo.

    python benchmarks/figures.py            # writes docs/geometry.png, docs/strides.png
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

import fcn_cam  # noqa: E402
from fcn_cam.geometry import cell_centre  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"


def geometry_figure(path: Path) -> None:
    """VGG16 at scale 2 on a 224-px image: cell centres vs where a naive stretch puts them."""
    import skimage.data

    fcn = fcn_cam.convert(torchvision.models.vgg16(weights=None).eval())
    img = Image.fromarray(skimage.data.chelsea()).crop((80, 0, 380, 300)).resize((224, 224))
    n = fcn.map_size(448, 448)[0]
    aligned = np.array([cell_centre(fcn.geometry, (i, i), (448, 448), (224, 224))[0] for i in range(n)])
    naive = (np.arange(n) + 0.5) * 224 / n - 0.5  # F.interpolate(align_corners=False)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    for ax, xs, title, color in ((axes[0], aligned, "aligned (fcn-cam)", "lime"),
                                 (axes[1], naive, "naive stretch", "red")):
        ax.imshow(img)
        gx, gy = np.meshgrid(xs, xs)
        ax.scatter(gx, gy, s=14, c=color, edgecolors="black", linewidths=0.5)
        ax.set_title(f"{title}: 8×8 cell centres", fontsize=10)
        ax.set_xlim(-0.5, 223.5)
        ax.set_ylim(223.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    # one cell's nominal classifier window (224 px at 448 = 112 px here) and its centre
    x0 = (32 * 3) / 2
    axes[0].add_patch(plt.Rectangle((x0 - 0.5, x0 - 0.5), 112, 112, fill=False, ec="yellow", lw=1.5))
    axes[0].scatter([aligned[3]], [aligned[3]], s=60, c="yellow", edgecolors="black", zorder=3)
    axes[0].text(x0 + 2, x0 + 108, "window of cell (3, 3)", color="yellow", fontsize=8)
    fig.suptitle("VGG16, scale 2 (224 px image → 448 px input → 8×8 map): "
                 "centre(i) = (32·i + 111.5 + 0.5)/2 − 0.5", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strides_figure(path: Path) -> None:
    """The demo FC twin at output stride 32, 16 and 8 on a photo with a digit pasted in."""
    import skimage.data

    from fcn_cam import demo

    fc, _ = demo.twins()
    digits = demo.scenes(40, seed=123)
    k = int(np.argmax([(b[2] - b[0]) for b in digits.boxes]))
    x0, y0, x1, y1 = digits.boxes[k]
    patch = digits.images[k][y0:y1, x0:x1]
    photo = np.asarray(Image.fromarray(skimage.data.chelsea()).resize((300, 200))).copy()
    py, px = 60, 170
    ph, pw = patch.shape[:2]
    photo[py:py + ph, px:px + pw] = patch
    target = int(digits.labels[k])
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    axes[0].imshow(photo)
    axes[0].add_patch(plt.Rectangle((px - 0.5, py - 0.5), pw, ph, fill=False, ec="lime", lw=1.5))
    axes[0].set_title(f"photo + digit '{demo.CLASS_NAMES[target]}'", fontsize=10)
    for ax, stride in zip(axes[1:], (None, 8, 4)):
        net = fcn_cam.convert(fc, demo.INPUT_SIZE, output_stride=stride, class_names=demo.CLASS_NAMES,
                              mean=demo.MEAN, std=demo.STD)
        exp = fcn_cam.explain(net, photo, scale=2, target=target)
        t = exp.targets[0]
        ax.imshow(photo)
        ax.imshow(t.heatmap, cmap="jet", alpha=0.5)
        ax.plot(*t.peak, "w+", ms=12, mew=2)
        ax.set_title(f"stride {net.info['output_stride']}: {exp.map_shapes[0][0]}×{exp.map_shapes[0][1]} cells",
                     fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    torch.manual_seed(0)
    DOCS.mkdir(exist_ok=True)
    geometry_figure(DOCS / "geometry.png")
    try:
        strides_figure(DOCS / "strides.png")
    except (ImportError, FileNotFoundError) as e:
        print(f"skipped strides figure: {e}")
    print(f"wrote figures to {DOCS}")

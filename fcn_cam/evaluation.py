"""Localization and faithfulness of fcn-cam against the peers' methods, on the user's images.

For every annotated image and every annotated class in it (ground-truth class maps), each
method gives one map at the image's size; it is scored and dropped (a thousand image-sized
float32 maps are never held at once):

- box accuracy: the box of the largest connected region above ``fraction`` of the map's
  range (:func:`fcn_cam.metrics.threshold_box`) has IoU >= 0.5 with one of the class's
  boxes (ILSVRC's rule for several boxes);
- top-1 localization: the same and the method's ranking names the class (fcn-cam: its own
  ranking, ``rank``; the peers: the original classifier's logits at the native size);
- pointing game: the map's maximum within ``15 · min(H, W) / 224`` px of one of the boxes
  (:func:`fcn_cam.metrics.pointing_hit`), averaged per class then over classes
  (:func:`fcn_cam.metrics.class_mean_accuracy`), as Zhang et al. report it;
- energy: share of the non-negative map inside the union of the class's boxes
  (:func:`fcn_cam.metrics.energy_pointing` for one box);
- deletion / insertion AUC (RISE, :func:`fcn_cam.metrics.deletion_auc`): the original
  classifier's softmax probability of the class as the map's pixels are deleted (to zeros)
  or inserted (into a blurred image) in order; the same scorer for every method. They need no
  boxes.

Thresholds: with ``split``, a seeded random share of the images (validation) chooses each
method's box fraction (:func:`fcn_cam.metrics.sweep_fraction`'s rule: the fraction with the
best box accuracy, ties to the smaller) and only the other images are scored; without it,
fcn-cam uses its defaults (chosen on the demo scenes, ``fcn_cam.settings.BOX_FRACTION``) and
the peers the CAM paper's 0.2, and the report says so.

Intervals: 95 % percentile bootstrap over images (``BOOTSTRAP`` resamples, seeded), an image
taking all its classes with it.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import metrics
from .annotations import AnnotationError, Annotations, Box, match_images, read_annotations
from .explanation import explain_inputs, inputs_of
from .files import dumps_strict, write_atomic
from .images import ImageError, load_image
from .layers import eval_mode
from .peers import CAM, available, native_input, original_model, peer_maps, require_grad_cam, resolve_methods
from .settings import Settings
from .surgery import FCN

#: fcn-cam's own method (the defaults of ``explain``, or the options given).
FCN_CAM = "fcn-cam"
#: The peers' box fraction without a validation split: the CAM paper's 20 % of the range.
PEER_FRACTION = 0.2
IOU = 0.5
BOOTSTRAP = 2000
METRICS = ("box_acc", "top1_loc", "pointing", "energy", "deletion_auc", "insertion_auc")


# --- one map ---------------------------------------------------------------------------------


def best_iou(saliency: np.ndarray, boxes: Sequence[Sequence[int]], fraction: float) -> tuple[float, tuple]:
    """The map's box at ``fraction`` and its best IoU with any of ``boxes``."""
    found = metrics.threshold_box(saliency, fraction)
    return max(metrics.iou(found, b) for b in boxes), found


def pointing(saliency: np.ndarray, boxes: Sequence[Sequence[int]]) -> bool:
    """Pointing hit on any of the boxes."""
    return any(metrics.pointing_hit(saliency, b) for b in boxes)


def energy(saliency: np.ndarray, boxes: Sequence[Sequence[int]]) -> float:
    """``sum(m+ inside the union of the boxes) / sum(m+)``, ``m+ = max(m, 0)``."""
    if len(boxes) == 1:
        return metrics.energy_pointing(saliency, boxes[0])
    m = np.clip(np.asarray(saliency, dtype=np.float64), 0, None)
    total = float(m.sum())
    if total <= 0:
        return 0.0
    inside = np.zeros(m.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return float(m[inside].sum() / total)


def choose_fraction(ious: np.ndarray, fractions: Sequence[float]) -> tuple[float, float]:
    """``argmax_f mean_i [ious[i, f] >= 0.5]``, ties to the smallest ``f`` (the rule of
    :func:`fcn_cam.metrics.sweep_fraction`, on stored IoUs instead of maps): ``(f, acc)``."""
    acc = (np.asarray(ious) >= IOU).mean(axis=0)
    best = int(np.argmax(acc))
    return float(fractions[best]), float(acc[best])


def probability(fcn: FCN, model: torch.nn.Module, target: int) -> Callable[[np.ndarray], np.ndarray]:
    """``uint8 [N, H, W, 3]`` → the original classifier's softmax probability of ``target``
    (images resized to the native size as the peers' inputs are)."""

    def f(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(model(native_input(fcn, batch)).float(), 1)[:, target].cpu().numpy()

    return f


def faithfulness(image: np.ndarray, saliency: np.ndarray, score: Callable, steps: int) -> tuple[float, float]:
    """Deletion and insertion AUC, at most ~32 MB of perturbed uint8 images per scorer call
    (x4 once they are float for the network)."""
    batch = int(max(1, min(steps + 1, 2**25 // max(image.nbytes, 1))))
    return (
        metrics.deletion_auc(image, saliency, score, steps=steps, batch_size=batch),
        metrics.insertion_auc(image, saliency, score, steps=steps, batch_size=batch),
    )


# --- images and their targets ----------------------------------------------------------------


@dataclass
class Item:
    """One (image, class) pair to explain: the class's boxes in the image."""

    image: int  # index into the chunk
    cls: int | None
    name: str | None
    boxes: list[tuple[int, int, int, int]]
    given: bool = True  # the class came from the annotation (else: the classifier's top-1)


def targets_of(boxes: Sequence[Box]) -> list[tuple[int | None, str | None, list]]:
    """Boxes grouped by class, in order of first appearance (``None`` = class not given)."""
    out: dict = {}
    for b in boxes:
        out.setdefault(b.class_index, (b.class_name, []))[1].append(b.xyxy)
    return [(c, n, bs) for c, (n, bs) in out.items()]


class Progress:
    """A bar over images on stderr (only when asked: library code never forces one)."""

    def __init__(self, total: int, enabled: bool, label: str = "evaluate") -> None:
        self.total, self.enabled, self.label, self.n, self.t0 = total, enabled, label, 0, time.time()

    def update(self, n: int) -> None:
        self.n += n
        if self.enabled:
            frac = self.n / max(self.total, 1)
            bar = "#" * int(30 * frac)
            rate = self.n / max(time.time() - self.t0, 1e-9)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {self.n}/{self.total} {rate:.1f} img/s")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Run:
    """What one evaluation needs, checked once."""

    fcn: FCN
    methods: list[str]  # FCN_CAM and/or peer names
    settings: Settings  # fcn-cam's, before the class is set
    layer: str | None
    steps: int
    faithful: bool
    scorecam_batch: int
    model: torch.nn.Module = field(init=False)
    _settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = original_model(self.fcn)

    def settings_for(self, cls: int) -> Settings:
        if cls not in self._settings:
            self._settings[cls] = self.settings.replace(target=cls).for_model(self.fcn)
        return self._settings[cls]

    def predict(self, images: Sequence[Image.Image]) -> list[int]:
        with torch.no_grad(), eval_mode(self.fcn):
            return self.model(native_input(self.fcn, images)).argmax(1).tolist()

    def fcn_cam_maps(self, images: Sequence[Image.Image], items: Sequence[Item]) -> list[tuple]:
        """``(heatmap, top-1 class, seconds)`` per item: ``explain`` with the item's class as
        target, batched over items of one class whose inputs have the same shapes."""
        out: list = [None] * len(items)
        groups: dict = {}
        t0 = time.perf_counter()
        prepared = []
        for it in items:
            s = self.settings_for(it.cls)
            inputs = inputs_of(self.fcn, images[it.image], s)
            prepared.append(inputs)
            groups.setdefault((it.cls, tuple(tuple(i.x.shape) for i in inputs)), []).append(len(prepared) - 1)
        prep = (time.perf_counter() - t0) / max(len(items), 1)
        for (cls, _), idx in groups.items():
            t = time.perf_counter()
            exps = explain_inputs(
                self.fcn,
                [prepared[j] for j in idx],
                [images[items[j].image].size for j in idx],
                self.settings_for(cls),
            )
            each = (time.perf_counter() - t) / len(idx)
            for j, e in zip(idx, exps):
                out[j] = (e.targets[0].heatmap, e.ranking[0][0], each + prep)
        return out


#: Pixels of the images explained together: each method's maps of a chunk are float32 at
#: image size, so a chunk of large photos stays at a few hundred MB.
CHUNK_PIXELS = 2**24


def _pixels(path: Path) -> int:
    """Width × height from the file's header (no decoding); 0 if unreadable (the load says why)."""
    try:
        with Image.open(path) as im:
            return im.width * im.height
    except Exception:  # noqa: BLE001 - the real load reports the error
        return 0


def _chunks(indices: Sequence[int], pairs: Sequence, n: int, pixels: int = CHUNK_PIXELS) -> Iterable[list]:
    """Runs of at most ``n`` images and ``pixels`` pixels (at least one image each)."""
    chunk, total = [], 0
    for j in indices:
        p = _pixels(pairs[j][0])
        if chunk and (len(chunk) == n or total + p > pixels):
            yield chunk
            chunk, total = [], 0
        chunk.append(j)
        total += p
    if chunk:
        yield chunk


def _score_chunk(
    run: Run, pairs: Sequence[tuple[Path, list[Box]]], fractions: dict[str, float] | None, grid: Sequence[float]
) -> list[dict]:
    """Records of one chunk of images. ``fractions`` None: validation (IoUs over ``grid``
    only); else the scored part at each method's fraction."""
    recs: list[dict] = []
    images: list[Image.Image] = []
    for path, _ in pairs:
        try:
            images.append(load_image(path))
            recs.append(
                {"image": str(path), "width": images[-1].width, "height": images[-1].height, "targets": []}
            )
        except ImageError as e:
            images.append(None)
            recs.append({"image": str(path), "error": str(e), "targets": []})
    items = [
        Item(i, c, n, bs)
        for i, (_, boxes) in enumerate(pairs)
        if images[i] is not None
        for c, n, bs in targets_of(boxes)
    ]
    unknown = [it for it in items if it.cls is None]
    if unknown:  # no class in the annotation: every method explains the classifier's top-1
        for it, c in zip(unknown, run.predict([images[it.image] for it in unknown])):
            it.cls, it.name = c, (run.fcn.class_names or [None] * (c + 1))[c]
            it.given = False
    if not items:
        return recs
    maps: dict[str, list] = {}
    if FCN_CAM in run.methods:
        maps[FCN_CAM] = run.fcn_cam_maps(images, items)
    peers = [m for m in run.methods if m != FCN_CAM]
    if peers:
        got = peer_maps(
            run.fcn,
            [images[it.image] for it in items],
            [it.cls for it in items],
            peers,
            run.layer,
            run.scorecam_batch,
        )
        for name, pm in got.items():
            each = pm.seconds / len(items)
            maps[name] = [(m, int(np.argmax(lg)), each) for m, lg in zip(pm.maps, pm.logits)]
    for k, it in enumerate(items):
        given = it.given
        t = {
            "class_index": it.cls,
            "class_name": it.name,
            "class_given": given,
            "boxes": [list(b) for b in it.boxes],
            "methods": {},
        }
        arr = np.asarray(images[it.image]) if fractions is not None and run.faithful else None
        score = probability(run.fcn, run.model, it.cls) if arr is not None else None
        for name in run.methods:
            heat, top1, seconds = maps[name][k]
            r: dict = {"seconds": seconds}
            if fractions is None:
                r["ious"] = [best_iou(heat, it.boxes, f)[0] for f in grid]
            else:
                iou, found = best_iou(heat, it.boxes, fractions[name])
                r.update(
                    {
                        "box": list(found),
                        "iou": iou,
                        "box_hit": iou >= IOU,
                        "pointing": pointing(heat, it.boxes),
                        "energy": energy(heat, it.boxes),
                        "top1": (top1 == it.cls) if given else None,
                    }
                )
                if score is not None:
                    with eval_mode(run.fcn):
                        r["deletion_auc"], r["insertion_auc"] = faithfulness(arr, heat, score, run.steps)
            t["methods"][name] = r
        recs[it.image]["targets"].append(t)
    return recs


# --- summary ---------------------------------------------------------------------------------


def resample_weights(groups: np.ndarray, rng: np.random.Generator, n: int = BOOTSTRAP) -> np.ndarray:
    """Bootstrap over images as item weights ``[n, items]``: each resample draws the images
    with replacement (multinomial counts) and an item counts as often as its image is drawn."""
    images, inverse = np.unique(groups, return_inverse=True)
    k = len(images)
    counts = rng.multinomial(k, np.full(k, 1.0 / k), size=n).astype(np.float64)
    return counts[:, inverse]


def weighted_stat(v: np.ndarray, w: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Weighted mean of ``v`` (NaN entries left out) for each row of ``w`` ``[n, items]``;
    with ``labels``, the mean per class, then over the classes present (the pointing game's
    :func:`fcn_cam.metrics.class_mean_accuracy`). Rows with no weight give NaN."""
    ok = ~np.isnan(v)
    v0, w = np.where(ok, v, 0.0), w * ok

    def mean(cols: np.ndarray) -> np.ndarray:
        den = w[:, cols].sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, w[:, cols] @ v0[cols] / np.where(den > 0, den, 1), np.nan)

    if labels is None:
        return mean(np.arange(len(v)))
    per_class = np.stack([mean(np.flatnonzero(labels == c)) for c in np.unique(labels)], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: no class drawn
        return np.nanmean(per_class, 1)


def summarize(
    records: Sequence[dict],
    methods: Sequence[str],
    fractions: dict[str, float],
    sources: dict[str, str],
    seed: int = 0,
) -> dict:
    """Per method: each metric over the scored items (pointing per class, then over classes),
    its 95 % percentile-bootstrap interval over images, the box fraction used and the seconds
    per image."""
    scored = [r for r in records if r.get("part") != "validation" and not r.get("error")]
    rows = [(i, t) for i, r in enumerate(scored) for t in r["targets"]]
    groups = np.array([i for i, _ in rows], dtype=np.int64)
    labels = np.array([t["class_index"] for _, t in rows], dtype=np.int64)
    weights = resample_weights(groups, np.random.default_rng(seed)) if len(np.unique(groups)) > 1 else None
    out: dict = {}
    for name in methods:
        res = [t["methods"][name] for _, t in rows]
        m: dict = {"box_fraction": fractions[name], "box_fraction_from": sources[name]}

        def col(f, res=res):
            return np.array([np.nan if f(r) is None else float(f(r)) for r in res], dtype=np.float64)

        cols = {
            "box_acc": col(lambda r: r["box_hit"]),
            "top1_loc": col(lambda r: None if r["top1"] is None else r["box_hit"] and r["top1"]),
            "top1": col(lambda r: r["top1"]),
            "pointing": col(lambda r: r["pointing"]),
            "energy": col(lambda r: r["energy"]),
            "deletion_auc": col(lambda r: r.get("deletion_auc")),
            "insertion_auc": col(lambda r: r.get("insertion_auc")),
        }
        for key, v in cols.items():
            if not len(v) or np.isnan(v).all():
                m[key], m[f"{key}_ci"] = None, None
                continue
            lab = labels if key == "pointing" else None
            if key == "pointing":
                m[key] = metrics.class_mean_accuracy(v, labels)
            else:
                m[key] = float(np.nanmean(v))
            if weights is None:
                m[f"{key}_ci"] = [math.nan, math.nan]
            else:
                lo, hi = np.nanpercentile(weighted_stat(v, weights, lab), [2.5, 97.5])
                m[f"{key}_ci"] = [float(lo), float(hi)]
        per_image: dict[int, float] = {}
        for (i, _), r in zip(rows, res):
            per_image[i] = per_image.get(i, 0.0) + r["seconds"]
        m["seconds_per_image"] = float(np.mean(list(per_image.values()))) if per_image else None
        out[name] = m
    return out


def markdown(result: dict) -> str:
    """The table a person reads."""
    s = result["settings"]
    lines = [
        "# fcn-cam evaluation",
        "",
        f"{result['images']} images scored ({result['items']} image-class pairs), model `{result['model']}`; "
        f"maps for the annotated class (ground-truth class maps). fcn-cam: {s['fcn_cam']}. Peers "
        f"(pytorch-grad-cam) on the original classifier at its native {result['input_size']} input, hooked "
        f"at `{result['layer']}`.",
        "",
    ]
    if result["split"]:
        lines.append(
            f"Box fractions chosen on {result['validation_images']} validation images (seeded random "
            f"split, share {result['split']:g}, seed {result['split_seed']}); those images are not "
            "scored."
        )
    elif result["validation_images"]:
        lines.append(
            f"Box fractions chosen on {result['validation_images']} separate validation images, which "
            "are not scored."
        )
    elif any(m["box_fraction_from"] == "given" for m in result["methods"].values()):
        lines.append("Box fractions as given (`fractions`), not chosen on these images.")
    else:
        lines.append(
            "**No validation split**: box fractions are the defaults (fcn-cam's chosen on the demo "
            f"scenes, the peers' the CAM paper's {PEER_FRACTION}), not chosen on these images; pass "
            "`--split 0.3` to choose them on a held-out part."
        )
    lines += [
        "",
        "| method | box acc | top-1 loc | pointing | energy | deletion AUC ↓ | insertion AUC ↑ | box fraction "
        "| s / image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():

        def cell(k, m=m):
            if m.get(k) is None:
                return "–"
            lo, hi = m[f"{k}_ci"]
            return f"{m[k]:.3f} [{lo:.3f}, {hi:.3f}]" if not math.isnan(lo) else f"{m[k]:.3f}"

        lines.append(
            f"| {name} | "
            + " | ".join(cell(k) for k in METRICS)
            + f" | {m['box_fraction']:.2f} ({m['box_fraction_from']}) | {m['seconds_per_image']:.4f} |"
        )
    lines += [
        "",
        "Intervals: 95 % percentile bootstrap over images. Box accuracy: IoU ≥ 0.5 of the largest "
        "connected region above the box fraction of the map's range with one of the class's boxes; top-1 loc "
        "also needs the method's top class (fcn-cam: its ranking; peers: the classifier's logits) to be the "
        "annotated one. Pointing: the map's maximum within 15 px × min(H, W) / 224 of a box, averaged per "
        "class. Energy: share of the non-negative map inside the boxes. "
        + (f"Deletion / insertion: RISE AUCs of the classifier's softmax probability of the class "
           f"({result['steps']} steps; deletion to zeros, insertion from a blurred image)."
           if result["steps"] else "Deletion / insertion not computed."),
        "",
    ]
    if result.get("errors"):
        lines += [f"{len(result['errors'])} images could not be read and are left out:", ""]
        lines += [f"- {e}" for e in result["errors"][:20]] + [""]
    return "\n".join(lines)


def _write(out_dir: Path, result: dict, records: Sequence[dict]) -> None:
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    lines = "".join(dumps_strict(r) + "\n" for r in records).encode()
    write_atomic(out_dir / "evaluation.jsonl", lines)
    write_atomic(out_dir / "evaluation.md", markdown(result).encode())
    clean = json.loads(dumps_strict(result))  # non-finite -> null
    clean.pop("error", None)
    write_atomic(out_dir / "evaluation.json", (json.dumps(clean, indent=1) + "\n").encode())


def evaluate(
    fcn: FCN,
    paths: Iterable[str | os.PathLike],
    annotations: str | os.PathLike | Annotations,
    *,
    methods: Sequence[str] | None = None,
    split: float | None = None,
    split_seed: int = 0,
    validation: Iterable[str | os.PathLike] | None = None,
    fractions: dict[str, float] | None = None,
    out_dir: str | os.PathLike | None = None,
    progress: bool = False,
    layer: str | None = None,
    faithfulness: bool = True,
    steps: int = 16,
    batch_size: int = 8,
    scorecam_batch: int = 64,
    images_root: str | os.PathLike | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> dict:
    """Score fcn-cam and the peers' methods on annotated images.

    Args:
        fcn: the converted model; the peers run on the original classifier rebuilt from it.
        paths: image files; each must have an entry in ``annotations`` (by relative path or
            file name, :func:`fcn_cam.annotations.match_images`).
        annotations: a VOC folder, a COCO ``.json``, a ``.csv``, or what
            :func:`fcn_cam.annotations.read_annotations` returned.
        methods: ``"fcn-cam"`` and peer names (``Grad-CAM``, ``HiResCAM``, ``Grad-CAM++``,
            ``Score-CAM``, ``CAM`` for GAP heads); default all that apply.
        split: share of the images, drawn with ``split_seed``, that chooses every method's
            box fraction and is then left out of the scores; ``None``: the defaults.
        validation: instead of ``split``, other annotated images that choose the fractions
            (all of ``paths`` are then scored).
        fractions: box fractions given per method (e.g. chosen on other data); they replace
            the defaults and are not re-chosen.
        out_dir: where ``evaluation.json``, ``evaluation.md`` and ``evaluation.jsonl`` (one
            line per image) are written, each atomically; ``None`` writes nothing.
        progress: draw a bar over images on stderr.
        layer: the peers' hooked layer by name (default: the body's last module).
        faithfulness: compute deletion / insertion (``steps`` steps each).
        batch_size: images explained together.
        settings, **overrides: fcn-cam's options, as for :func:`fcn_cam.explain` (the
            class is each box's; ``target`` and ``top_k`` are not taken).

    Returns:
        ``{"images", "items", "methods": {name: {box_acc, top1_loc, top1, pointing, energy,
        deletion_auc, insertion_auc (each with ``_ci``), box_fraction, seconds_per_image}},
        ...}`` (also ``evaluation.json``).
    """
    paths = list(paths)
    if not paths:
        raise ValueError("no images to evaluate")
    if split is not None and not 0.0 < split < 1.0:
        raise ValueError(f"split must be a share in (0, 1), got {split}")
    validation = list(validation) if validation is not None else None
    if split is not None and validation is not None:
        raise ValueError("give split or validation images, not both")
    ann = annotations if isinstance(annotations, dict) else read_annotations(annotations, fcn.class_names)
    if isinstance(annotations, dict) and fcn.class_names:
        ann = {k: [_named(k, b, fcn.class_names) for b in v] for k, v in ann.items()}
    for k, boxes in ann.items():
        for b in boxes:
            if b.class_index is None and b.class_name is not None:
                raise AnnotationError(
                    f"{k}: class {b.class_name!r} is a name but the model has no class names; "
                    "give classes by index"
                )
    pairs = match_images(paths, ann, images_root)
    n_scored = len(pairs)
    if validation:
        pairs += match_images(validation, ann, images_root)
    names = [FCN_CAM, *available(fcn)] if methods is None else list(methods)
    peers = resolve_methods(fcn, [m for m in names if m != FCN_CAM]) if any(m != FCN_CAM for m in names) else []
    methods = ([FCN_CAM] if FCN_CAM in names else []) + peers
    if any(m != CAM for m in peers):
        require_grad_cam()  # before any work
    asked = (settings or Settings()).replace(**overrides)
    if asked.target is not None or asked.top_k != 1:
        raise ValueError("evaluate explains each annotated class; do not give target or top_k")
    base = asked.for_model(fcn)  # bad options fail before any work
    run = Run(fcn, methods, asked, layer, steps, faithfulness, scorecam_batch)
    from .peers import target_layer

    layer_name = target_layer(run.model, layer)[0]
    defaults = {m: (base.box_fraction if m == FCN_CAM else PEER_FRACTION) for m in methods}
    for m, f in (fractions or {}).items():
        if m not in defaults:
            raise ValueError(f"fractions names {m!r}, which is not among the methods ({', '.join(methods)})")
        if not 0.0 <= f <= 1.0:
            raise ValueError(f"box fraction for {m} must be in [0, 1], got {f}")
        defaults[m] = float(f)
    grid = sorted(set(metrics.FRACTIONS) | set(defaults.values()))

    order = np.arange(len(pairs))
    val = np.zeros(len(pairs), dtype=bool)
    if split is not None:
        n_val = max(1, min(len(pairs) - 1, round(split * len(pairs))))
        val[np.random.default_rng(split_seed).permutation(len(pairs))[:n_val]] = True
    val[n_scored:] = True
    choose = val.any()
    given = set(fractions or {})
    bar = Progress(len(pairs), progress)
    records: list[dict] = [None] * len(pairs)  # type: ignore[list-item]
    fractions = dict(defaults)
    sources = {m: "given" if m in given else "default" for m in methods}
    try:
        if choose:
            vi = order[val]
            for chunk in _chunks(vi, pairs, batch_size):
                for j, r in zip(chunk, _score_chunk(run, [pairs[j] for j in chunk], None, grid)):
                    records[j] = {**r, "part": "validation"}
                bar.update(len(chunk))
            for m in methods:
                ious = [t["methods"][m]["ious"] for j in vi for t in records[j]["targets"]]
                if ious and m not in given:
                    fractions[m], _ = choose_fraction(np.array(ious), grid)
                    sources[m] = "validation"
        for chunk in _chunks(order[~val], pairs, batch_size):
            for j, r in zip(chunk, _score_chunk(run, [pairs[j] for j in chunk], fractions, grid)):
                records[j] = {**r, "part": "test" if choose else "all"}
            bar.update(len(chunk))
    finally:
        bar.close()
    for r in records:
        for t in r["targets"]:
            for res in t["methods"].values():
                if "ious" in res:
                    res["ious"] = {f"{f:g}": round(v, 4) for f, v in zip(grid, res["ious"])}
    summary = summarize(records, methods, fractions, sources)
    scored = [r for r in records if r["part"] != "validation" and not r.get("error")]
    result = {
        "images": len(scored),
        "items": sum(len(r["targets"]) for r in scored),
        "validation_images": int(val.sum()),
        "split": split,
        "split_seed": split_seed if split is not None else None,
        "model": fcn.info.get("arch", "model"),
        "input_size": "×".join(str(v) for v in fcn.input_size),
        "layer": layer_name,
        "steps": steps if faithfulness else None,
        "settings": {
            "fcn_cam": _describe(base),
            **{k: v for k, v in asked.as_request().items() if k not in ("target", "top_k", "ranking_size")},
        },
        "methods": summary,
        "errors": [r["error"] for r in records if r.get("error")],
    }
    if out_dir is not None:
        _write(Path(out_dir), result, records)
    return result


def _named(key: str, b: Box, names: Sequence[str]) -> Box:
    from .annotations import _resolve

    return _resolve(f"{key}", b, names)


def _describe(s: Settings) -> str:
    sc = "+".join(f"{v:g}" for v in s.scale)
    return f"maps={s.maps}, scale {sc}, pad {s.pad}, {'clamped' if s.clamp else 'raw'}, rank {s.rank}"

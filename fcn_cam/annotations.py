"""Bounding-box annotations as people have them: Pascal VOC XML, COCO JSON, CSV.

Every reader returns ``{image key: [Box, ...]}`` with boxes in 0-based pixel coordinates,
``x1``/``y1`` exclusive (the convention of :mod:`fcn_cam.metrics`). The image key is the
file name relative to the annotation's own root (VOC ``<filename>``, COCO ``file_name``, the
CSV's ``image`` column), with ``/`` separators; :func:`match_images` pairs keys with image
paths by relative path first, then by file name.

Conversions:

- VOC: 1-based pixel indices with inclusive maxima, so ``x0 = xmin - 1``, ``x1 = xmax``
  (``[xmin - 1, xmax)`` covers the same pixels). Fractional values (some tools write them)
  are rounded.
- COCO: ``bbox = [x, y, w, h]`` in continuous pixel coordinates, so ``x0 = round(x)``,
  ``x1 = round(x + w)``.
- CSV: ``image,x0,y0,x1,y1[,class]`` taken as written (0-based, exclusive ends), an
  optional header row; ``class`` is an index (digits) or a name.

A malformed file raises :class:`AnnotationError` whose message is one line naming the file
and the entry.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import AnnotationError

__all__ = ["AnnotationError", "Box", "match_images", "read_annotations", "read_coco", "read_csv", "read_voc"]


@dataclass(frozen=True)
class Box:
    """One annotated object: ``[x0, y0, x1, y1]`` (0-based, ``x1``/``y1`` exclusive) and its
    class as an index, a name, or both (``None`` where the file does not say)."""

    x0: int
    y0: int
    x1: int
    y1: int
    class_index: int | None = None
    class_name: str | None = None

    @property
    def xyxy(self) -> tuple[int, int, int, int]:
        return (self.x0, self.y0, self.x1, self.y1)


Annotations = dict[str, list[Box]]


def _box(where: str, x0: float, y0: float, x1: float, y1: float, index: int | None, name: str | None) -> Box:
    b = Box(round(x0), round(y0), round(x1), round(y1), index, name)
    if b.x0 < 0 or b.y0 < 0 or b.x1 <= b.x0 or b.y1 <= b.y0:
        raise AnnotationError(f"{where}: box [{b.x0}, {b.y0}, {b.x1}, {b.y1}] is empty or negative")
    return b


def _resolve(where: str, box: Box, class_names: Sequence[str] | None) -> Box:
    """Fill in the class index from a name (case-insensitive) or the name from an index."""
    if class_names is None:
        return box
    lower = [n.lower() for n in class_names]
    if box.class_index is not None:
        if not 0 <= box.class_index < len(class_names):
            raise AnnotationError(
                f"{where}: class index {box.class_index} out of range [0, {len(class_names)})"
            )
        return Box(*box.xyxy, box.class_index, class_names[box.class_index])
    if box.class_name is not None:
        name = box.class_name.strip().lower()
        if name not in lower:
            raise AnnotationError(
                f"{where}: unknown class name {box.class_name!r} (the model has "
                f"{len(class_names)} classes, e.g. {class_names[0]!r})"
            )
        i = lower.index(name)
        return Box(*box.xyxy, i, class_names[i])
    return box


def _class_field(value: str | None) -> tuple[int | None, str | None]:
    """``"3"`` → index 3; ``"cat"`` → name; empty → neither."""
    v = (value or "").strip()
    if not v:
        return None, None
    return (int(v), None) if v.isdigit() else (None, v)


def _number(where: str, field: str, text: str | None) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise AnnotationError(f"{where}: {field} is not a number: {text!r}") from None


# --- Pascal VOC ------------------------------------------------------------------------------


def read_voc(folder: str | os.PathLike) -> Annotations:
    """Every ``*.xml`` in ``folder`` (recursively): one image per file, one box per ``<object>``.

    The key is the XML's ``<filename>`` (``<path>``'s base name if it has none, else the XML's
    stem), prefixed by the XML's folder relative to ``folder``.
    """
    root = Path(folder)
    files = sorted(root.rglob("*.xml"))
    if not files:
        raise AnnotationError(f"{root}: no .xml annotation files in this folder")
    out: Annotations = {}
    for f in files:
        key, boxes = _voc_file(f)
        rel = f.parent.relative_to(root).as_posix()
        out.setdefault(key if rel == "." else f"{rel}/{key}", []).extend(boxes)
    return out


def _voc_file(path: Path) -> tuple[str, list[Box]]:
    try:
        tree = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise AnnotationError(f"{path}: not valid XML ({e})") from None
    name = (tree.findtext("filename") or "").strip()
    if not name:
        name = Path((tree.findtext("path") or "").strip()).name or path.stem
    boxes = []
    for i, obj in enumerate(tree.iter("object")):
        where = f"{path}: object {i + 1}"
        bb = obj.find("bndbox")
        if bb is None:
            raise AnnotationError(f"{where}: no <bndbox>")
        v = [_number(where, k, bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        index, cname = _class_field(obj.findtext("name"))
        # 1-based inclusive [xmin, xmax] -> 0-based exclusive [xmin - 1, xmax)
        boxes.append(_box(where, v[0] - 1, v[1] - 1, v[2], v[3], index, cname))
    return name, boxes


# --- COCO ------------------------------------------------------------------------------------


def read_coco(path: str | os.PathLike) -> Annotations:
    """A COCO detection file: ``images``, ``annotations`` (``bbox = [x, y, w, h]``) and
    ``categories`` (``id``, ``name``); the class is the category's name. Images without
    annotations are kept with no boxes."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable JSON file ({e})") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("annotations"), list)
    ):
        raise AnnotationError(f"{path}: not a COCO file (needs 'images' and 'annotations' lists)")
    cats = {}
    for i, c in enumerate(data.get("categories") or []):
        try:
            cats[c["id"]] = str(c["name"])
        except (TypeError, KeyError):
            raise AnnotationError(f"{path}: categories[{i}] needs 'id' and 'name'") from None
    images: dict = {}
    out: Annotations = {}
    for i, im in enumerate(data["images"]):
        try:
            images[im["id"]] = str(im["file_name"]).replace("\\", "/")
        except (TypeError, KeyError):
            raise AnnotationError(f"{path}: images[{i}] needs 'id' and 'file_name'") from None
        out.setdefault(images[im["id"]], [])
    for i, a in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict) or "image_id" not in a or "bbox" not in a:
            raise AnnotationError(f"{where}: needs 'image_id' and 'bbox'")
        if a["image_id"] not in images:
            raise AnnotationError(f"{where}: image_id {a['image_id']!r} is not in 'images'")
        bbox = a["bbox"]
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise AnnotationError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_number(where, "bbox", v) for v in bbox)
        cid = a.get("category_id")
        if cid is not None and cats and cid not in cats:
            raise AnnotationError(f"{where}: category_id {cid!r} is not in 'categories'")
        name = cats.get(cid) if cats else None
        index = None if cats or cid is None else int(cid)
        out[images[a["image_id"]]].append(_box(where, x, y, x + w, y + h, index, name))
    return out


# --- CSV -------------------------------------------------------------------------------------

CSV_FIELDS = ("image", "x0", "y0", "x1", "y1")


def read_csv(path: str | os.PathLike) -> Annotations:
    """Rows ``image,x0,y0,x1,y1[,class]`` (0-based, exclusive ends); a first row naming the
    columns is skipped; several rows may name the same image."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: not a readable text file ({e})") from None
    out: Annotations = {}
    for line, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if line == 1 and [c.strip().lower() for c in row[:5]] == list(CSV_FIELDS):
            continue
        where = f"{path}: line {line}"
        if len(row) not in (5, 6):
            raise AnnotationError(f"{where}: expected image,x0,y0,x1,y1[,class], got {len(row)} fields")
        x0, y0, x1, y1 = (_number(where, f, v) for f, v in zip(CSV_FIELDS[1:], row[1:5]))
        index, name = _class_field(row[5] if len(row) == 6 else None)
        out.setdefault(row[0].strip().replace("\\", "/"), []).append(_box(where, x0, y0, x1, y1, index, name))
    if not out:
        raise AnnotationError(f"{path}: no annotation rows")
    return out


# --- any format ------------------------------------------------------------------------------


def read_annotations(path: str | os.PathLike, class_names: Sequence[str] | None = None) -> Annotations:
    """Read a VOC folder (or one VOC ``.xml``), a COCO ``.json`` or a ``.csv`` of boxes.

    Args:
        path: the annotation folder or file; the format follows from it.
        class_names: the model's classes; when given, every class name is resolved to its
            index (case-insensitive) and every index checked, so a typo fails here, naming
            the file and entry, not in the middle of an evaluation.

    Returns:
        ``{image key: [Box, ...]}`` (module docstring).
    """
    p = Path(path)
    if p.is_dir():
        raw = read_voc(p)
    elif not p.exists():
        raise AnnotationError(f"{p}: no such file or folder")
    elif p.suffix.lower() == ".xml":
        key, boxes = _voc_file(p)
        raw = {key: boxes}
    elif p.suffix.lower() == ".json":
        raw = read_coco(p)
    elif p.suffix.lower() in (".csv", ".txt"):
        raw = read_csv(p)
    else:
        raise AnnotationError(f"{p}: unknown annotation format (a VOC folder, .xml, COCO .json or .csv)")
    return {
        k: [_resolve(f"{p}: {k}, box {j + 1}", b, class_names) for j, b in enumerate(v)] for k, v in raw.items()
    }


def match_images(
    paths: Iterable[str | os.PathLike], annotations: Annotations, root: str | os.PathLike | None = None
) -> list[tuple[Path, list[Box]]]:
    """Pair image files with their annotations: by the path relative to ``root`` (default:
    the images' common folder), else by file name when that name is unique among the keys.

    Raises:
        AnnotationError: an image has no entry, or its file name matches several.
    """
    paths = [Path(p) for p in paths]
    if root is None and paths:
        root = Path(os.path.commonpath([str(p.parent.resolve()) for p in paths]))
    by_name: dict[str, list[str]] = {}
    for k in annotations:
        by_name.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    out = []
    for p in paths:
        try:
            rel = p.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            rel = p.name
        if rel in annotations:
            key = rel
        elif len(by_name.get(p.name, [])) == 1:
            key = by_name[p.name][0]
        elif p.name in by_name:
            raise AnnotationError(
                f"{p}: its file name matches {len(by_name[p.name])} annotation entries "
                f"({', '.join(by_name[p.name][:3])}); give the images' root folder"
            )
        else:
            raise AnnotationError(f"{p}: no annotation entry for this image (looked for {rel!r})")
        out.append((p, annotations[key]))
    return out

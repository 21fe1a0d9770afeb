"""Annotation readers: VOC folders, COCO JSON, CSV; several boxes; class by name and index;
malformed files fail in one line naming the file and the entry."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fcn_cam.annotations import AnnotationError, Box, match_images, read_annotations

NAMES = ["background", "red", "Blue Jay"]


def voc(name: str, objects: list[tuple[str, tuple]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return f"<annotation><filename>{name}</filename>{objs}</annotation>"


def test_voc_folder_converts_one_based_inclusive_and_keeps_every_box(tmp_path):
    (tmp_path / "a.xml").write_text(voc("a.jpg", [("red", (1, 1, 10, 20)), ("blue jay", (5, 6, 7, 8))]))
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "b.xml").write_text(voc("b.png", [("2", (11, 12, 30, 40))]))
    ann = read_annotations(tmp_path, NAMES)
    assert set(ann) == {"a.jpg", "more/b.png"}
    # 1-based inclusive [1, 10] -> 0-based exclusive [0, 10): the same ten pixels
    assert ann["a.jpg"] == [Box(0, 0, 10, 20, 1, "red"), Box(4, 5, 7, 8, 2, "Blue Jay")]
    assert ann["more/b.png"] == [Box(10, 11, 30, 40, 2, "Blue Jay")]


def test_voc_round_trip_of_the_benchmark_writer(tmp_path):
    spec = importlib.util.spec_from_file_location("voc", Path(__file__).parents[1] / "benchmarks/loc/voc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    voc_xml = mod.voc_xml
    (tmp_path / "s.xml").write_text(voc_xml("s.png", 112, 112, [("red", (3, 4, 50, 60))]))
    assert read_annotations(tmp_path, NAMES)["s.png"] == [Box(3, 4, 50, 60, 1, "red")]


def test_coco_boxes_by_category_name(tmp_path):
    data = {
        "images": [
            {"id": 7, "file_name": "x/cat.jpg", "width": 100, "height": 80},
            {"id": 8, "file_name": "empty.jpg"},
        ],
        "annotations": [
            {"image_id": 7, "category_id": 3, "bbox": [10, 5, 20.4, 30]},
            {"image_id": 7, "category_id": 1, "bbox": [0, 0, 5, 5]},
        ],
        "categories": [{"id": 1, "name": "background"}, {"id": 3, "name": "RED"}],
    }
    p = tmp_path / "coco.json"
    p.write_text(json.dumps(data))
    ann = read_annotations(p, NAMES)
    assert ann["x/cat.jpg"] == [Box(10, 5, 30, 35, 1, "red"), Box(0, 0, 5, 5, 0, "background")]
    assert ann["empty.jpg"] == []


def test_csv_index_name_header_and_no_class(tmp_path):
    p = tmp_path / "boxes.csv"
    p.write_text("image,x0,y0,x1,y1,class\na.png,1,2,30,40,1\na.png,5,5,9,9,blue jay\nb.png,0,0,8,8,\n")
    ann = read_annotations(p, NAMES)
    assert ann["a.png"] == [Box(1, 2, 30, 40, 1, "red"), Box(5, 5, 9, 9, 2, "Blue Jay")]
    assert ann["b.png"] == [Box(0, 0, 8, 8, None, None)]
    # without class names, indices and names stay as written
    raw = read_annotations(p)
    assert raw["a.png"][1] == Box(5, 5, 9, 9, None, "blue jay")


@pytest.mark.parametrize(
    "name, text, entry",
    [
        ("bad.csv", "a.png,1,2,3\n", "bad.csv: line 1"),
        ("bad.csv", "a.png,1,2,x,4\n", "bad.csv: line 1: x1 is not a number"),
        ("bad.csv", "a.png,1,2,30,40,1\nb.png,9,9,3,3,1\n", "bad.csv: line 2: box [9, 9, 3, 3] is empty"),
        ("bad.csv", "a.png,1,2,30,40,dog\n", "unknown class name 'dog'"),
        ("bad.csv", "a.png,1,2,30,40,9\n", "class index 9 out of range"),
        (
            "bad.json",
            '{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 2, "bbox": [0,0,1,1]}]}',
            "bad.json: annotations[0]: image_id 2",
        ),
        ("bad.json", '{"images": [], "annotations": [}', "bad.json: not a readable JSON file"),
        (
            "bad.json",
            '{"images": [{"id": 1, "file_name": "a"}], "annotations": [{"image_id": 1, "bbox": [0, 0]}]}',
            "bad.json: annotations[0]: bbox must be",
        ),
        (
            "bad.xml",
            "<annotation><filename>a</filename><object><name>red</name></object></annotation>",
            "bad.xml: object 1: no <bndbox>",
        ),
        ("bad.xml", "<annotation><object>", "bad.xml: not valid XML"),
    ],
)
def test_malformed_is_one_line_naming_file_and_entry(tmp_path, name, text, entry):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(AnnotationError) as e:
        read_annotations(p, NAMES)
    msg = str(e.value)
    assert "\n" not in msg and entry in msg and str(p) in msg


def test_match_images_by_relative_path_then_file_name(tmp_path):
    ann = {"more/b.png": [Box(0, 0, 1, 1)], "a.png": [Box(0, 0, 2, 2)]}
    (tmp_path / "more").mkdir()
    a, b = tmp_path / "a.png", tmp_path / "more" / "b.png"
    got = match_images([a, b], ann)
    assert [g[1] for g in got] == [ann["a.png"], ann["more/b.png"]]
    # an image elsewhere is matched by its (unique) file name
    assert match_images([tmp_path / "x" / "b.png"], ann)[0][1] == ann["more/b.png"]
    with pytest.raises(AnnotationError, match="no annotation entry"):
        match_images([tmp_path / "c.png"], ann)

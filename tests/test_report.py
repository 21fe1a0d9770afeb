"""`fcn-cam report`: the HTML gallery of an output folder, in a real (headless) browser."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from fcn_cam.explanation import Explanation, Target
from fcn_cam.outputs import OutputDir
from fcn_cam.report import INDEX, THUMBS, ReportError, script_json, write_report

CLASSES = ["cat", "dog", "car", "boat", "tree"]


def synthetic(i: int, root: Path, rng: np.random.Generator, size=(64, 48), top_k: int = 2,
              name: str | None = None) -> tuple[Explanation, Image.Image]:
    """An explanation with a blob heatmap at a random place (no model run), and its image."""
    w, h = size
    img = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
    yy, xx = np.mgrid[:h, :w]
    targets = []
    order = rng.permutation(len(CLASSES))[:top_k]
    scores = np.sort(rng.normal(5, 3, top_k))[::-1]
    for c, s in zip(order, scores):
        cx, cy = rng.uniform(8, w - 8), rng.uniform(8, h - 8)
        heat = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 60).astype(np.float32)
        box = (int(cx) - 6, int(cy) - 6, int(cx) + 6, int(cy) + 6)
        targets.append(Target(int(c), CLASSES[c], float(s), heat, [heat[::8, ::8]], (cx, cy), box))
    exp = Explanation(str(root / (name or f"img_{i:04d}.jpg")), w, h, [1.0], [(h, w)], [(6, 8)],
                      [(t.index, t.name, t.score) for t in targets], "max", [(0, 0)], "cells",
                      targets=targets)
    return exp, img


def make_folder(out: Path, n: int, seed: int = 0, **kw) -> list[dict]:
    """``n`` records written through :class:`OutputDir` (its own files and JSONL)."""
    rng = np.random.default_rng(seed)
    with OutputDir(out) as o:
        return [o.write(*synthetic(i, out.parent / "photos", rng, **kw)) for i in range(n)]


def keys(out: Path) -> list[str]:
    """The keys of the JSONL's complete lines (a torn last line is no record)."""
    found = []
    for line in (out / OutputDir.JSONL).read_text().splitlines(keepends=True):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if line.endswith("\n") and isinstance(rec, dict) and isinstance(rec.get("key"), str):
            found.append(rec["key"])
    return found


def blob(page: Path) -> list[dict]:
    text = page.read_text()
    start = text.index('<script type="application/json" id="records">') + len(
        '<script type="application/json" id="records">')
    return json.loads(text[start:text.index("</script>", start)])


# -- the page's content, without a browser ----------------------------------------------------

def test_cards_thumbnails_once_and_reruns_add(tmp_path):
    out = tmp_path / "out"
    make_folder(out, 5)
    page = write_report(out, thumb_size=32)
    assert page == out / INDEX
    cards = blob(page)
    assert [c["key"] for c in cards] == keys(out)
    thumbs = sorted((out / THUMBS).glob("*.jpg"))
    assert len(thumbs) == 5 and all(max(Image.open(t).size) == 32 for t in thumbs)
    stamps = {t.name: t.stat().st_mtime_ns for t in thumbs}
    with OutputDir(out) as o:  # more images explained: the rerun adds them, old thumbnails kept
        rng = np.random.default_rng(9)
        for i in range(5, 8):
            o.write(*synthetic(i, tmp_path / "photos", rng))
    cards = blob(write_report(out, thumb_size=32))
    assert len(cards) == 8 and [c["key"] for c in cards] == keys(out)
    now = {t.name: t.stat().st_mtime_ns for t in (out / THUMBS).glob("*.jpg")}
    assert len(now) == 8 and all(now[n] == s for n, s in stamps.items())
    assert all(c["thumb"] and (out / c["thumb"]).is_file() for c in cards)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    # a record redone (--overwrite) gets a new thumbnail, the old one goes; a killed
    # writer's temporary file is removed
    killed = out / THUMBS / ".0123456789abcdef0123.jpg.x1y2.tmp"
    killed.write_bytes(b"half")
    first = cards[0]
    with OutputDir(out, overwrite=True) as o:
        exp, img = synthetic(0, tmp_path / "photos", np.random.default_rng(99))
        o.write(exp, img)
    cards = {c["key"]: c for c in blob(write_report(out, thumb_size=32))}
    assert len(cards) == 8 and cards[first["key"]]["thumb"] != first["thumb"]
    assert not (out / first["thumb"]).exists() and not killed.exists()
    assert len(list((out / THUMBS).glob("*.jpg"))) == 8


def test_torn_foreign_and_odd_lines_never_break_it(tmp_path):
    out = tmp_path / "out"
    recs = make_folder(out, 3)
    (out / recs[1]["files"][0]["overlay"]).unlink()  # a record whose overlay is gone
    with open(out / OutputDir.JSONL, "a") as f:
        f.write("not json\n")
        f.write('{"no": "key"}\n')
        f.write(json.dumps({"key": "foreign</script><b>", "image": "<img src=x onerror=alert(1)>.jpg",
                            "score": "high", "class_index": True, "files": "nope", "box": [1, 2],
                            "width": float("nan"), "peak": [float("inf"), 0],
                            "targets": [None, 3]}) + "\n")
        f.write('{"key": "torn", "image": "half')  # a line still being written
    cards = {c["key"]: c for c in blob(write_report(out))}
    # the folder's own rules (the record schema) make the foreign line absent: no card
    assert set(cards) == {r["key"] for r in recs}
    gone = cards[recs[1]["key"]]
    assert gone["thumb"] is None and gone["missing"] == [recs[1]["files"][0]["overlay"]]
    assert gone["targets"][0]["url"] is None
    text = (out / INDEX).read_text()
    assert "<img src=x" not in text and "onerror" not in text and "</script><b>" not in text
    assert text.count("</script>") == 3  # meta, records, the code


def test_names_are_escaped_and_urls_encoded(tmp_path):
    out = tmp_path / "out"
    rng = np.random.default_rng(1)
    with OutputDir(out) as o:
        rec = o.write(*synthetic(0, tmp_path, rng, name='a "b" <c> #1 % é.jpg'))
    c = blob(write_report(out))[0]
    assert c["name"] == 'a "b" <c> #1 % é.jpg'
    url = c["targets"][0]["url"]
    assert not set(url) & set(' "<>#') and unquote(c["targets"][0]["url"]) == rec["files"][0]["overlay"]
    s = script_json({"n": "</script><!-- \u2028 \udc80 &"})
    assert s.isascii() and "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"n": "</script><!-- \u2028 \udc80 &"}


def test_not_an_output_folder(tmp_path):
    with pytest.raises(ReportError, match="no such folder"):
        write_report(tmp_path / "nope")
    with pytest.raises(ReportError, match="no explanations.jsonl"):
        write_report(tmp_path)
    with pytest.raises(ReportError, match="thumb_size"):
        write_report(tmp_path, thumb_size=0)
    assert not (tmp_path / INDEX).exists()


# -- in a real browser ------------------------------------------------------------------------

def chromium() -> str | None:
    return os.environ.get("FCN_CAM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    exe = chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); the report's browser test "
                    "did NOT run")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install 'fcn-cam[test]' (Chromium is here: the test must run)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, path: Path, width: int = 1280, height: int = 900):
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(path.as_uri())
    page.wait_for_function("window.fcnReport && window.fcnReport.ready > 0")
    return page, problems


def visible(page) -> list[dict]:
    return page.eval_on_selector_all(
        ".card:not([hidden])", "cs => cs.map(c => ({key: c.dataset.key, cls: c.dataset.class, "
        "score: c.dataset.score === '' ? null : Number(c.dataset.score)}))")


@pytest.mark.slow
def test_report_in_chromium(browser, tmp_path):
    out = tmp_path / "out"
    recs = make_folder(out, 200)
    (out / recs[7]["files"][0]["overlay"]).unlink()  # a card marked, not a broken page
    with open(out / OutputDir.JSONL, "a") as f:
        f.write('{"torn": ')
    page, problems = open_page(browser, write_report(out))
    cards = visible(page)
    assert len(cards) == 200 == page.locator(".card").count()
    assert {c["key"] for c in cards} == set(keys(out))
    assert page.locator(".card.bad").count() == 1
    assert page.locator(f'.card[data-key="{recs[7]["key"]}"] .badge').text_content() == "1 file(s) missing"

    scores = [c["score"] for c in cards]  # default order: score, high to low
    assert scores == sorted(scores, reverse=True)
    page.select_option("#sort", "score-asc")
    scores = [c["score"] for c in visible(page)]
    assert scores == sorted(scores) and len(scores) == 200

    by_class = {}
    for r in recs:
        by_class.setdefault(r["class_index"], set()).add(r["key"])
    for c, want in by_class.items():
        page.select_option("#cls", str(c))
        got = visible(page)
        assert {g["key"] for g in got} == want and {g["cls"] for g in got} == {str(c)}
        assert [g["score"] for g in got] == sorted(g["score"] for g in got)  # still sorted
        assert page.inner_text("#count") == f"{len(want)} of 200 records"
    page.select_option("#cls", "")

    page.fill("#q", "img_0042")
    got = visible(page)
    assert [g["key"] for g in got] == [r["key"] for r in recs if r["image"].endswith("img_0042.jpg")]
    page.click(f'.card[data-key="{got[0]["key"]}"]')  # the detail: every target, ranking, JSON
    assert page.locator("#detail").is_visible()
    assert page.locator("#detail .target").count() == 2
    assert json.loads(page.inner_text("#detail pre"))["key"] == got[0]["key"]
    page.wait_for_function("[...document.querySelectorAll('#detail img')].every(i => i.complete "
                           "&& i.naturalWidth > 0)")
    page.keyboard.press("Escape")
    page.fill("#q", "")
    shot = Path(os.environ.get("FCN_CAM_ARTIFACTS", tmp_path)) / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    loaded = page.evaluate("[...document.querySelectorAll('.card img')].filter(i => i.complete "
                           "&& i.naturalWidth > 0).length")
    assert loaded > 0  # the thumbnails in view load (from the relative links)
    assert problems == []

"""`fcn-cam report DIR`: a static, self-contained HTML gallery of an output folder.

``DIR/index.html`` opens from the disk in any browser (no server, no network, no external
script, style or font). One card per record — the overlay thumbnail with the box and peak
drawn on it, the image name, class, score and box — with a class filter, sorting by score
or name and a search by name; a click opens the full-size overlays of every explained
class, the ranking and the record's JSON.

Made to stay responsive with thousands of records:

- thumbnails are written once, to ``DIR/.report/thumbs/<digest>.jpg``, where the digest
  covers the record key, the overlay's size and modification time and the thumbnail size,
  so a rerun only makes those of new (or redone) records and removes those of records gone;
- the records travel as one JSON blob in a ``<script type="application/json">`` that a small
  script turns into cards; images load lazily (``loading="lazy"``), and cards outside the
  viewport are neither laid out nor painted (``content-visibility: auto``).

Records are read with the output folder's own rules (:meth:`fcn_cam.outputs.OutputDir.records`:
a torn or foreign line is not a record); each field is checked before use, so a record with
odd or missing fields, or whose files are gone, still gets a card, marked, and never breaks
the page. File names are used only when they are plain names of files in ``DIR``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

from PIL import Image

from .errors import ReportError
from .files import finite_json, stale_temporaries, write_atomic
from .outputs import OutputDir
from .render import draw_box, line_width

INDEX = "index.html"
THUMBS = Path(".report") / "thumbs"
MANIFEST = "sizes.json"  # thumbnail name -> [width, height]: a rerun opens none of them
_THUMB_NAME = re.compile(r"[0-9a-f]{20}\.jpg$")


# -- reading records safely ---------------------------------------------------------------

def _num(v: Any) -> float | None:
    ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    return float(v) if ok else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def _coords(v: Any, n: int) -> list[float] | None:
    if isinstance(v, list) and len(v) == n and all(_num(x) is not None for x in v):
        return [float(x) for x in v]
    return None


def _plain_file(root: Path, name: Any, present: set[str] | None = None) -> Path | None:
    """``root / name`` when ``name`` is a plain file name (no folder, no ``..``) of a file
    (one of ``present``, the folder's files, when given: one listing instead of a stat each)."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        return None
    p = root / name
    return p if (name in present if present is not None else p.is_file()) else None


def _url(name: str) -> str:
    """A relative URL for a file name in the folder (any bytes, percent-encoded)."""
    return quote(os.fsencode(name), safe="")


def _targets(rec: dict) -> list[dict]:
    """The record's targets paired with their files (by position: how they are written)."""
    targets = rec.get("targets") if isinstance(rec.get("targets"), list) else []
    files = rec.get("files") if isinstance(rec.get("files"), list) else []
    out = []
    for i in range(max(len(targets), len(files))):
        t = targets[i] if i < len(targets) and isinstance(targets[i], dict) else {}
        f = files[i] if i < len(files) and isinstance(files[i], dict) else {}
        out.append({"index": _int(t.get("index", f.get("index"))), "name": _str(t.get("name")),
                    "score": _num(t.get("score")), "box": _coords(t.get("box"), 4),
                    "peak": _coords(t.get("peak"), 2), "overlay": _str(f.get("overlay")),
                    "maps": [m for m in f.get("maps", []) if isinstance(m, str)]
                    if isinstance(f.get("maps"), list) else []})
    return out


def card(rec: dict, root: Path, present: set[str] | None = None) -> dict:
    """What the page shows of one record: checked fields, the files present and missing."""
    image = _str(rec.get("image"))
    targets = _targets(rec)
    missing = []
    for t in targets:
        for name in filter(None, [t["overlay"], *t["maps"]]):
            if _plain_file(root, name, present) is None:
                missing.append(name)
        t["url"] = _url(t["overlay"]) if _plain_file(root, t["overlay"], present) else None
        del t["maps"]
    first = targets[0] if targets else {}
    return {
        "key": rec["key"],
        "name": os.path.basename(image) if image else "(in-memory image)",
        "path": image or "",
        "class": _int(rec.get("class_index")),
        "class_name": _str(rec.get("class_name")),
        "score": _num(rec.get("score")),
        "box": _coords(rec.get("box"), 4),
        "peak": _coords(rec.get("peak"), 2),
        "width": _int(rec.get("width")), "height": _int(rec.get("height")),
        "targets": targets,
        "overlay": first.get("overlay"),
        "missing": missing,
        "error": _str(rec.get("error")),
        "record": rec,
    }


# -- thumbnails -------------------------------------------------------------------------------

def _thumb_name(c: dict, overlay: Path, size: int) -> str:
    st = overlay.stat()
    ident = json.dumps([c["key"], overlay.name, st.st_size, st.st_mtime_ns, size, c["box"], c["peak"]])
    return hashlib.sha256(ident.encode("utf-8", "surrogatepass")).hexdigest()[:20] + ".jpg"


def make_thumb(overlay: Path, dest: Path, size: int, box: list[float] | None,
               peak: list[float] | None) -> tuple[int, int]:
    """Shrink an overlay to fit ``size`` × ``size``, draw its box and peak, write a JPEG
    atomically; return its size."""
    with Image.open(overlay) as im:
        im.draft("RGB", (size, size))
        img = im.convert("RGB")
        w0 = im.width
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    if box is not None:
        f = img.width / w0
        img = draw_box(img, [v * f for v in box], [v * f for v in peak] if peak else None,
                       width=max(1, line_width(*img.size) // 2))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    write_atomic(dest, buf.getvalue())
    return img.size


def _thumb(c: dict, root: Path, size: int, known: dict[str, list[int]]) -> None:
    """Set ``c["thumb"]`` (relative URL) and its size, making the file if it is not there
    (``known``: the sizes of the thumbnails made before, from the manifest)."""
    c["thumb"] = c["thumb_size"] = None
    overlay = _plain_file(root, c["overlay"])
    if overlay is None:
        return
    name = _thumb_name(c, overlay, size)
    dest = root / THUMBS / name
    try:
        if dest.is_file():
            got = known.get(name)
            if not (isinstance(got, list) and len(got) == 2 and all(_int(v) for v in got)):
                with Image.open(dest) as im:
                    got = list(im.size)
            c["thumb_size"] = got
        else:
            c["thumb_size"] = list(make_thumb(overlay, dest, size, c["box"], c["peak"]))
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        c["unreadable"] = f"{overlay.name}: {e}"
        return
    c["thumb"] = f"{THUMBS.as_posix()}/{name}"


# -- the page ---------------------------------------------------------------------------------

def script_json(value: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ASCII only (lone surrogates and
    U+2028 escaped), and no ``<``, ``>`` or ``&``, so ``</script>`` or ``<!--`` in a name
    cannot end or change the script element."""
    text = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def write_report(out_dir: str | os.PathLike, *, thumb_size: int = 256, workers: int = 4) -> Path:
    """Write ``out_dir/index.html`` (and the thumbnails it shows); return its path.

    Args:
        out_dir: an output folder of ``fcn-cam explain -o`` (its ``explanations.jsonl``).
        thumb_size: the thumbnails' longest side, in pixels.
        workers: threads making thumbnails (decoding and resizing release the GIL).

    Raises:
        ReportError: the folder or its JSONL is missing.
        OutputError: the folder is not writable.
    """
    root = Path(out_dir)
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or not 16 <= thumb_size <= 2048:
        raise ReportError(f"thumb_size must be an integer from 16 to 2048, got {thumb_size!r}")
    if not root.is_dir():
        raise ReportError(f"{root}: no such folder")
    if not (root / OutputDir.JSONL).is_file():
        raise ReportError(f"{root}: no {OutputDir.JSONL}; not an output folder of fcn-cam explain -o")
    with OutputDir(root) as out:
        records = out.records()
    thumbs = root / THUMBS
    thumbs.mkdir(parents=True, exist_ok=True)
    with _locked(root / THUMBS.parent):  # one report writer at a time per folder
        for p in stale_temporaries(thumbs, lambda n: n == MANIFEST or bool(_THUMB_NAME.match(n))) \
                + stale_temporaries(root, lambda n: n == INDEX):
            p.unlink(missing_ok=True)  # left by a killed writer
        return _write(root, records, thumb_size, workers)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _manifest(path: Path) -> dict[str, list[int]]:
    try:
        known = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _write(root: Path, records: list[dict], thumb_size: int, workers: int) -> Path:
    thumbs = root / THUMBS
    present = {e.name for e in os.scandir(root) if e.is_file()}
    cards = [card(r, root, present) for r in records]
    known = _manifest(thumbs / MANIFEST)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(lambda c: _thumb(c, root, thumb_size, known), cards))
    sizes = {c["thumb"].rsplit("/", 1)[1]: c["thumb_size"] for c in cards if c["thumb"]}
    for entry in os.scandir(thumbs):  # thumbnails of records redone or gone
        if _THUMB_NAME.match(entry.name) and entry.name not in sizes:
            Path(entry.path).unlink(missing_ok=True)
    write_atomic(thumbs / MANIFEST, json.dumps(sizes, sort_keys=True).encode())
    try:
        data = script_json(cards)
    except ValueError:  # NaN or Infinity in a foreign line: null in the page (strict JSON)
        data = script_json(finite_json(cards)[0])
    title = f"fcn-cam report: {root.resolve().name}".encode("utf-8", "replace").decode()
    meta = {"title": title, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "thumb": thumb_size}
    page = (PAGE.replace("__TITLE__", html.escape(title))
            .replace("__META__", script_json(meta))
            .replace("__DATA__", data))
    path = root / INDEX
    write_atomic(path, page.encode("utf-8"))
    return path


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
:root { --bg: #f4f5f7; --fg: #1d2430; --muted: #5d6778; --card: #fff; --line: #dde1e7;
        --accent: #2f6fde; --bad: #c62828; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       background: var(--bg); color: var(--fg); }
header { position: sticky; top: 0; z-index: 2; background: #1d2430; color: #fff;
         padding: 10px 18px; display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center; }
header h1 { font-size: 16px; margin: 0 12px 0 0; font-weight: 600; }
header label { display: flex; gap: 6px; align-items: center; color: #c9d1de; }
header select, header input { font: inherit; padding: 4px 8px; border-radius: 6px;
         border: 1px solid #48536a; background: #2a3344; color: #fff; }
header input[type=search] { width: 16em; }
#count { margin-left: auto; color: #c9d1de; }
main { padding: 16px 18px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(210px, 1fr)); gap: 14px; }
.card { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 10px;
        overflow: hidden; cursor: pointer; content-visibility: auto; contain-intrinsic-size: 210px 300px;
        transition: box-shadow .12s, transform .12s; }
.card:hover, .card:focus { box-shadow: 0 4px 14px rgba(20, 30, 50, .16); transform: translateY(-1px);
        outline: none; }
.card[hidden] { display: none; }
.thumb { aspect-ratio: 1; background: #222a36; display: flex; align-items: center; justify-content: center; }
.thumb img { width: 100%; height: 100%; object-fit: contain; display: block; }
.thumb .none { color: #e9b0b0; font-size: 13px; padding: 10px; text-align: center; }
figcaption { padding: 8px 10px 10px; display: grid; gap: 2px; }
.name { font-weight: 600; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.row { display: flex; justify-content: space-between; gap: 8px; color: var(--muted); }
.cls { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; color: var(--fg); }
.score { font-variant-numeric: tabular-nums; font-weight: 600; color: var(--accent); }
.boxtxt { font-size: 12px; color: var(--muted); font-variant-numeric: tabular-nums; }
.badge { font-size: 12px; color: #fff; background: var(--bad); border-radius: 4px; padding: 0 6px;
         justify-self: start; }
.empty { color: var(--muted); padding: 40px; text-align: center; }
dialog { width: min(1100px, 96vw); max-height: 94vh; border: 0; border-radius: 12px; padding: 0;
         box-shadow: 0 10px 40px rgba(0, 0, 0, .35); }
dialog::backdrop { background: rgba(10, 14, 22, .6); }
.dhead { display: flex; align-items: center; gap: 10px; padding: 12px 16px;
         border-bottom: 1px solid var(--line); position: sticky; top: 0; background: #fff; z-index: 1; }
.dhead h2 { font-size: 16px; margin: 0; flex: 1; overflow-wrap: anywhere; }
.dhead button { font: inherit; border: 1px solid var(--line); background: #f7f8fa; border-radius: 6px;
         padding: 4px 10px; cursor: pointer; }
.dbody { padding: 14px 16px; display: grid; gap: 16px; }
.targets { display: grid; grid-template-columns: repeat(auto-fill, minmax(320px, 1fr)); gap: 14px; }
.target { margin: 0; }
.frame { position: relative; width: 100%; line-height: 0; background: #222a36; }
.frame img { width: 100%; height: auto; }  /* the frame is the image's box: the box's % are the image's */
.frame .box { position: absolute; border: 2px solid #fff; outline: 1px solid #000; pointer-events: none; }
.target figcaption { padding: 6px 0 0; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
td, th { padding: 2px 12px 2px 0; text-align: left; }
pre { background: #f4f5f7; border-radius: 8px; padding: 10px; overflow: auto; max-height: 40vh; margin: 0;
      font-size: 12px; }
</style>
</head>
<body>
<header>
  <h1 id="title">__TITLE__</h1>
  <label>Class <select id="cls"><option value="">all classes</option></select></label>
  <label>Sort <select id="sort">
    <option value="score-desc">score, high to low</option>
    <option value="score-asc">score, low to high</option>
    <option value="name">name</option>
    <option value="order">as written</option>
  </select></label>
  <label>Search <input id="q" type="search" placeholder="image name" autocomplete="off"></label>
  <span id="count"></span>
</header>
<main><div id="grid"></div><p class="empty" id="empty" hidden>No record matches.</p></main>
<dialog id="detail">
  <div class="dhead"><h2 id="dname"></h2>
    <button id="prev" title="previous (&larr;)">&larr;</button>
    <button id="next" title="next (&rarr;)">&rarr;</button>
    <button id="close" title="close (Esc)">&times;</button></div>
  <div class="dbody" id="dbody"></div>
</dialog>
<script type="application/json" id="meta">__META__</script>
<script type="application/json" id="records">__DATA__</script>
<script>
"use strict";
(function () {
  const META = JSON.parse(document.getElementById("meta").textContent);
  const DATA = JSON.parse(document.getElementById("records").textContent);
  const grid = document.getElementById("grid"), cls = document.getElementById("cls");
  const sort = document.getElementById("sort"), q = document.getElementById("q");
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") e.textContent = v;
      else if (k in e) e[k] = v;
      else e.setAttribute(k, v);
    }
    for (const c of kids) if (c != null) e.append(c);
    return e;
  };
  const className = (i, n) => n != null ? (i != null ? n + " (" + i + ")" : n)
    : (i != null ? "class " + i : "no class");
  const fmt = (s) => s == null ? "n/a" : s.toFixed(2);
  const boxText = (b) => b ? "box [" + b.map((v) => Math.round(v)).join(", ") + "]" : "no box";

  const cards = DATA.map((d, i) => {
    const thumb = el("div", {className: "thumb"});
    if (d.thumb) {
      thumb.append(el("img", {src: d.thumb, loading: "lazy", decoding: "async", alt: d.name,
                              width: d.thumb_size[0], height: d.thumb_size[1]}));
    } else {
      const why = d.unreadable ? "overlay unreadable" : "overlay missing";
      thumb.append(el("div", {className: "none", text: why}));
    }
    const bad = d.missing.length || d.unreadable || d.error;
    const badge = bad ? el("span", {className: "badge", title: [d.error, d.unreadable, ...d.missing]
      .filter(Boolean).join("\\n"), text: d.missing.length ? d.missing.length + " file(s) missing"
      : (d.unreadable ? "unreadable overlay" : "error")}) : null;
    const c = el("figure", {className: "card" + (bad ? " bad" : ""), tabIndex: 0,
                            "data-key": d.key, "data-class": d.class == null ? "" : String(d.class),
                            "data-score": d.score == null ? "" : String(d.score)},
      thumb,
      el("figcaption", {},
        el("span", {className: "name", title: d.path || d.name, text: d.name}),
        el("span", {className: "row"}, el("span", {className: "cls", text: className(d.class, d.class_name)}),
           el("span", {className: "score", text: fmt(d.score)})),
        el("span", {className: "boxtxt", text: boxText(d.box)}), badge));
    c.addEventListener("click", () => open(i));
    c.addEventListener("keydown", (e) => { if (e.key === "Enter") open(i); });
    return c;
  });
  const hay = DATA.map((d) => (d.name + "\\u0000" + d.path).toLowerCase());

  const counts = new Map();
  DATA.forEach((d) => {
    const k = d.class == null ? "" : String(d.class);
    const c = counts.get(k) || {n: 0, label: d.class == null ? "no class" : className(d.class, d.class_name)};
    c.n += 1; counts.set(k, c);
  });
  [...counts.entries()].sort((a, b) => b[1].n - a[1].n || a[1].label.localeCompare(b[1].label))
    .forEach(([k, c]) => cls.append(el("option", {value: k === "" ? "none" : k,
                                                 text: c.label + " \\u2014 " + c.n})));

  const order = {
    "score-desc": (a, b) => (DATA[b].score ?? -Infinity) - (DATA[a].score ?? -Infinity) || a - b,
    "score-asc": (a, b) => (DATA[a].score ?? Infinity) - (DATA[b].score ?? Infinity) || a - b,
    "name": (a, b) => DATA[a].name.localeCompare(DATA[b].name) || a - b,
    "order": (a, b) => a - b,
  };
  let shown = [];
  function update() {
    const want = cls.value, needle = q.value.trim().toLowerCase();
    const idx = DATA.map((_, i) => i).sort(order[sort.value] || order.order);
    const frag = document.createDocumentFragment();
    shown = [];
    for (const i of idx) {
      const d = DATA[i], k = d.class == null ? "none" : String(d.class);
      const ok = (want === "" || want === k) && (!needle || hay[i].includes(needle));
      cards[i].hidden = !ok;
      if (ok) shown.push(i);
      frag.append(cards[i]);
    }
    grid.append(frag);
    document.getElementById("count").textContent = shown.length + " of " + DATA.length + " records";
    document.getElementById("empty").hidden = shown.length > 0;
  }
  cls.addEventListener("change", update);
  sort.addEventListener("change", update);
  q.addEventListener("input", update);

  const dialog = document.getElementById("detail"), body = document.getElementById("dbody");
  let current = -1;
  function frame(t, d) {
    const f = el("div", {className: "frame"});
    if (!t.url) return el("div", {className: "thumb"}, el("div", {className: "none", text: "overlay missing"}));
    const img = el("img", {src: t.url, alt: className(t.index, t.name)});
    f.append(img);
    if (t.box && d.width && d.height) {
      const [x0, y0, x1, y1] = t.box;
      f.append(el("div", {className: "box", style: "left:" + 100 * x0 / d.width + "%;top:" + 100 * y0 / d.height
        + "%;width:" + 100 * (x1 - x0) / d.width + "%;height:" + 100 * (y1 - y0) / d.height + "%"}));
    }
    return f;
  }
  function open(i) {
    current = i;
    const d = DATA[i];
    document.getElementById("dname").textContent = d.path || d.name;
    body.replaceChildren();
    const ts = el("div", {className: "targets"});
    for (const t of d.targets) {
      ts.append(el("figure", {className: "target"}, frame(t, d), el("figcaption", {},
        el("span", {className: "row"}, el("span", {className: "cls", text: className(t.index, t.name)}),
          el("span", {className: "score", text: fmt(t.score)})),
        el("span", {className: "boxtxt",
                    text: boxText(t.box) + (t.peak ? ", peak (" + t.peak.join(", ") + ")" : "")}))));
    }
    if (!d.targets.length) ts.append(el("p", {text: "This record names no targets."}));
    body.append(ts);
    const r = d.record, top = Array.isArray(r.top_k) ? r.top_k : [];
    if (top.length) {
      const row = (tag, ...cells) => el("tr", {}, ...cells.map((text) => el(tag, {text})));
      const tb = el("table", {}, row("th", "rank", "class", "score"));
      top.forEach((e, j) => e && typeof e === "object" && tb.append(row("td", String(j + 1),
        className(e.index, e.name), typeof e.score === "number" ? e.score.toFixed(3) : "n/a")));
      body.append(el("div", {}, el("strong", {text: "Ranking"}), tb));
    }
    if (d.missing.length) body.append(el("p", {className: "badge", text: "missing: " + d.missing.join(", ")}));
    body.append(el("div", {}, el("strong", {text: "Record"}), el("pre", {text: JSON.stringify(r, null, 2)})));
    if (!dialog.open) dialog.showModal();
  }
  function step(s) {
    const at = shown.indexOf(current);
    if (shown.length && at >= 0) open(shown[(at + s + shown.length) % shown.length]);
  }
  document.getElementById("prev").addEventListener("click", () => step(-1));
  document.getElementById("next").addEventListener("click", () => step(1));
  document.getElementById("close").addEventListener("click", () => dialog.close());
  dialog.addEventListener("click", (e) => { if (e.target === dialog) dialog.close(); });
  dialog.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") step(-1); else if (e.key === "ArrowRight") step(1);
  });
  document.title = META.title;
  update();
  window.fcnReport = {ready: performance.now(), records: DATA.length, generated: META.generated};
})();
</script>
</body>
</html>
"""

"""Reliability suite: a hostile corpus, interrupted runs (SIGINT and SIGKILL at random points)
and concurrent runs into one folder, all through the real CLI in subprocesses with a tiny
random-weight model. After every run the folder must be consistent:

* every JSONL line parses as strict JSON (no NaN/Infinity), is a record by the schema
  (:func:`fcn_cam.outputs.record_problem`) and has a unique key;
* every record's files exist, and the primary map's max equals the recorded score;
* no input changed; no temporary file survives the next run;
* once a run completes, the records are exactly the good images.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import NATIVE, small_vgg
from PIL import Image

import fcn_cam
from fcn_cam.outputs import record_problem

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
JSONL = "explanations.jsonl"


def build_corpus(d: Path, copies: int = 24) -> tuple[set[str], set[str]]:
    """Write the corpus; return (good image paths, bad image paths) as resolved strings."""
    import skimage.data as data

    d.mkdir()
    rng = np.random.default_rng(0)
    cat = data.chelsea()
    good, bad = [], []

    def keep(p: Path) -> None:
        good.append(p)

    for i in range(copies):  # plenty of ordinary work so that signals land mid-run
        p = d / f"photo_{i:02d}.jpg"
        Image.fromarray(np.roll(cat, 7 * i, axis=1)[::2, ::2]).save(p, quality=85)
        keep(p)
    sub = d / "nested"
    sub.mkdir()
    ramp = np.linspace(0, 65535, 96 * 128).reshape(96, 128).astype(np.uint16)
    Image.fromarray(ramp).save(sub / "gray16.png")
    Image.fromarray(ramp).save(sub / "gray16.tif")
    Image.fromarray(cat[::3, ::3]).convert("CMYK").save(d / "cmyk.jpg")
    pal = Image.fromarray(cat[::3, ::3]).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    frames = [Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(d / "animated.gif", save_all=True, append_images=frames[1:], duration=50)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(cat[::3, ::3]).save(d / "exif_rot.jpg", exif=exif.tobytes())
    rgba = np.dstack([cat[::3, ::3], rng.integers(0, 255, cat[::3, ::3].shape[:2], dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "alpha.png")
    Image.new("RGB", (1, 1), "red").save(d / "one.png")
    Image.fromarray(rng.integers(0, 255, (50, 4000, 3), dtype=np.uint8)).save(d / "wide.png")
    Image.fromarray(cat[::4, ::4]).save(d / "ñandú 猫 é.png")
    Image.fromarray(cat[::4, ::4]).save(d / "same.png")  # same stem, other suffix
    Image.fromarray(cat[::5, ::5]).save(d / "same.jpg")
    for name in ("gray16.png", "gray16.tif"):
        keep(sub / name)
    for name in ("cmyk.jpg", "palette.png", "animated.gif", "exif_rot.jpg", "alpha.png", "one.png", "wide.png",
                 "ñandú 猫 é.png", "same.png", "same.jpg"):
        keep(d / name)
    # bad ones
    jpg = (d / "photo_00.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image\n")
    from test_cli import png_with_size

    png_with_size(d / "bomb.png", 100_000, 100_000)
    (d / "loop.png").symlink_to(d / "loop.png")
    (d / "dangling.jpg").symlink_to(d / "gone.jpg")
    os.mkfifo(d / "fifo.png")
    (d / "folder.jpg").mkdir()
    bad += [d / n for n in ("truncated.jpg", "empty.png", "text.jpg", "bomb.png", "loop.png", "dangling.jpg",
                            "fifo.png")]
    return {str(p.resolve()) for p in good}, {str(p) for p in bad}


def snapshot(d: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(d):
        for n in files:
            p = Path(dirpath) / n
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def check_folder(out: Path, good: set[str] | None = None) -> list[dict]:
    """The invariants; with ``good``, also that the records are exactly the good images."""
    if not (out / JSONL).exists():
        return []
    recs = []
    for line in (out / JSONL).read_text().splitlines():
        rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
        assert record_problem(rec) is None, line  # the schema every reader checks
        recs.append(rec)
        f = rec["files"][0]
        for name in (f["overlay"], *f["maps"]):
            assert (out / name).is_file(), f"{name} of {rec['image']} missing"
        assert f["index"] == rec["class_index"]
        m = np.load(out / f["maps"][0])
        assert list(m.shape) == rec["map_shape"]
        assert float(m.max()) == rec["score"]  # FC head, rank max, one scale: score = map max
        assert Image.open(out / f["overlay"]).size == (rec["width"], rec["height"])
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)), "duplicate records"
    if good is not None:
        assert {str(Path(r["image"]).resolve()) for r in recs} == good
    return recs


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fcn_cam.cli", *map(str, args)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel")
    model = root / "tiny.pt"
    fcn_cam.save(fcn_cam.convert(small_vgg(num_classes=4), NATIVE, class_names=list("abcd")), model)
    good, bad = build_corpus(root / "corpus")
    return root, model, good, bad


def explain_args(model: Path, corpus: Path, out: Path, *extra: str) -> list[str]:
    # score maps: the invariant below (map max = recorded score) holds for them
    return cli("explain", "-m", model, "--scale", "3", "--maps", "scores", "--batch-size", "2", "-o", out,
               corpus, *extra)


def test_interrupted_runs_lose_nothing(setup):
    root, model, good, bad = setup
    corpus, out = root / "corpus", root / "out_int"
    inputs = snapshot(corpus)
    rng = random.Random(int(os.environ.get("FCN_CAM_SEED", "0")) or None)
    tried = []
    for i, sig in enumerate([signal.SIGINT, signal.SIGKILL, signal.SIGINT, signal.SIGKILL, signal.SIGINT]):
        extra = ["--overwrite"] if i == 2 else []  # an interrupted --overwrite must not lose records
        p = subprocess.Popen(explain_args(model, corpus, out, *extra), env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline()  # wait until it writes, then strike at a random moment
        if first:
            time.sleep(rng.uniform(0, 1.0))
        p.send_signal(sig)
        rest, err = p.communicate(timeout=120)
        printed = [json.loads(x) for x in (first + rest).splitlines() if x.startswith("{")]
        tried.append((sig.name, p.returncode, len(printed)))
        recs = check_folder(out)
        assert {r["key"] for r in printed} <= {r["key"] for r in recs}  # every printed record is kept
        if sig == signal.SIGINT and p.returncode == 130:
            assert "interrupted:" in err and "run the same command again to resume" in err
            assert f"{len(printed)} written" in err  # every record written was printed
        assert snapshot(corpus) == inputs
    # the next, complete run: cleans temporaries, skips what is done, finishes the rest
    r = subprocess.run(explain_args(model, corpus, out), env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # the bad images fail
    for b in bad:
        assert f"{b}: " in r.stderr
    assert "Traceback" not in r.stderr
    check_folder(out, good)
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert snapshot(corpus) == inputs
    # a rerun of a finished folder decodes nothing and is not a failure of the good images
    r = subprocess.run(explain_args(model, corpus, out), env=env(), capture_output=True, text=True, timeout=300)
    assert f"skipped {len(good)} of {len(good) + len(bad)} images already done" in r.stderr
    assert r.stdout == "" and f"{len(bad)} of {len(good) + len(bad)} images failed" in r.stderr
    print("interrupted runs (signal, exit code, records printed):", tried)


def test_concurrent_runs_cooperate(setup):
    root, model, good, bad = setup
    corpus = root / "corpus"
    inputs = snapshot(corpus)
    for extra in ([], ["--overwrite"]):
        out = root / f"out_conc{'_ow' if extra else ''}"
        procs = [subprocess.Popen(explain_args(model, corpus, out, *extra), env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        for p, (_, se) in zip(procs, outs):
            assert p.returncode == 1 and "Traceback" not in se, se
        recs = check_folder(out, good)
        assert len(recs) == len(good)
        printed = [json.loads(x)["key"] for so, _ in outs for x in so.splitlines()]
        if not extra:  # each image written by exactly one of the runs, the others skip it
            assert sorted(printed) == sorted(r["key"] for r in recs)
        assert snapshot(corpus) == inputs

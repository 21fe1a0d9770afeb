"""Ray Data: the same explanation as the local CLI, on a local 2-CPU Ray instance."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import skimage.data as data
from PIL import Image
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import distributed
from fcn_cam.cli import app
from fcn_cam.settings import DEFAULT_SCALE

pytestmark = pytest.mark.slow  # starts Ray and its workers: ~30-60 s on 2 cores
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # loopback only
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, list[Path], list[Path]]:
    """32 small images (photos at three sizes, grayscale, RGBA, noise) and two broken files."""
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    good = []
    for i in range(32):
        size = [(96, 72), (72, 96), (80, 80)][i % 3]
        if i % 8 == 7:
            im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        else:
            im = Image.fromarray(photos[i % 4]).resize(size)
            im = im.convert("L") if i % 8 == 3 else im.convert("RGBA") if i % 8 == 5 else im
        p = root / ("sub" if i % 2 else "") / f"img{i:02d}{'.jpg' if i % 4 == 0 else '.png'}"
        p.parent.mkdir(exist_ok=True)
        im.save(p)
        good.append(p)
    bad = [root / "truncated.jpg", root / "empty.png"]
    bad[0].write_bytes(good[0].read_bytes()[:300])
    bad[1].write_bytes(b"")
    return root, good, bad


def records(folder: Path) -> dict[str, dict]:
    lines = (folder / "explanations.jsonl").read_text().splitlines()
    out = {r["image"]: r for r in map(json.loads, lines)}
    assert len(out) == len(lines), "one JSONL line per image"
    return out


def test_cli_ray_equals_local_cli(local_ray, dataset, small_model_file, tmp_path):
    root, good, bad = dataset
    args = ["explain", "--model", str(small_model_file), "--top-k", "2", "--batch-size", "4", str(root)]
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local")])
    # Ray is already up in this process: the address is not used to start another one.
    dist = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--ray", "auto"])
    for r in (local, dist):
        assert r.exit_code == 1, r.output  # the broken files fail, the run goes on
        assert "2 of 34 images failed" in r.output
        for b in bad:
            assert f"error: {b}" in r.output
    want, got = records(tmp_path / "local"), records(tmp_path / "ray")
    assert set(got) == {str(p) for p in good}
    assert got == want  # same records (the JSONL order may differ), floats bit for bit
    printed = [json.loads(x) for x in dist.stdout.splitlines() if x.startswith("{")]
    assert {r["image"]: r for r in printed} == got
    names = {p.name for p in (tmp_path / "local").iterdir()}
    assert names == {p.name for p in (tmp_path / "ray").iterdir()}
    # JSONL + per image, for 2 classes: an overlay and one map per default scale
    assert len(names) == 1 + 2 * (1 + len(DEFAULT_SCALE)) * len(good)
    for name in sorted(names - {"explanations.jsonl"}):
        a, b = tmp_path / "local" / name, tmp_path / "ray" / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))
        else:
            np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_api_list_file_and_glob(local_ray, dataset, small_model_file, tmp_path):
    """explain_dataset of a model object on a list file plus a glob, records only, one actor: same records as
    the local path; errors come back per file."""
    root, good, bad = dataset
    listed = [p for p in good if p.parent == root] + bad
    listing = tmp_path / "images.txt"
    listing.write_text("# images at the top level\n" + "".join(f"{p}\n" for p in listed) + "\n")
    options = {"scale": [1.0, 2.0], "rank": "mean"}
    model = fcn_cam.load(small_model_file)  # an object: through the object store (the CLI passes the file)
    results = list(distributed.explain_dataset(model, [listing, root / "sub" / "*.png"], actors=1, **options))
    expected = {*listed, *(p for p in good if p.parent.name == "sub" and p.suffix == ".png")}
    assert sorted(str(r.path) for r in results) == sorted(map(str, expected))
    errors = {str(r.path): r.error for r in results if r.error}
    assert set(errors) == {str(p) for p in bad}
    assert "empty file" in errors[str(bad[1])]
    local = runner.invoke(app, ["explain", "--model", str(small_model_file), "--scale", "1", "--scale", "2",
                                "--rank", "mean", *map(str, sorted(expected))])
    want = {r["image"]: r for r in map(json.loads, (x for x in local.stdout.splitlines() if x.startswith("{")))}
    assert {str(r.path): r.record for r in results if not r.error} == want


def test_image_paths(dataset, tmp_path):
    root, good, _ = dataset
    listing = tmp_path / "l.txt"
    listing.write_text(f"{good[0]}\n\n# comment\n{good[2].relative_to(root)}\n")
    (tmp_path / good[2].name).write_bytes(good[2].read_bytes())  # relative to the list's folder
    assert distributed.image_paths([listing]) == [good[0], tmp_path / good[2].name]
    assert distributed.image_paths(str(root / "**" / "img0[0-3].*")) == sorted(good[:4])
    assert len(distributed.image_paths(root)) == len(good) + 2  # folders: as the local CLI
    with pytest.raises(ValueError, match="no file matches"):
        distributed.image_paths([root / "*.tiff"])


def test_missing_ray_is_a_clear_error(monkeypatch, dataset, small_model_file):
    _, good, _ = dataset
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"pip install 'fcn-cam\[ray\]'"):
        distributed.explain_dataset(small_model_file, good[:1])
    r = runner.invoke(app, ["explain", "--model", str(small_model_file), str(good[0]), "--ray", "local"])
    assert r.exit_code == 2 and "fcn-cam[ray]" in r.output


def test_relative_paths_give_the_local_records(local_ray, dataset, small_model_file, tmp_path, monkeypatch):
    """Records are keyed by the image's real path: the actors resolve relative paths from
    the driver's folder, as the local CLI does."""
    root, good, _ = dataset
    monkeypatch.chdir(root)
    rel = [str(p.relative_to(root)) for p in good[:6]]
    args = ["explain", "--model", str(small_model_file), *rel]
    local = runner.invoke(app, [*args, "-o", str(tmp_path / "local")])
    dist = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--ray", "auto"])
    assert local.exit_code == 0 and dist.exit_code == 0, dist.output
    assert records(tmp_path / "ray") == records(tmp_path / "local")
    assert sorted(records(tmp_path / "ray")) == sorted(rel)
    again = runner.invoke(app, [*args, "-o", str(tmp_path / "ray"), "--ray", "auto"])  # resume: all done
    assert again.exit_code == 0 and "skipped 6 of 6 images already done" in again.output

"""Settings as data, the jobs layer under the CLI: per-image failures, signals, budgets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import explanation, jobs
from fcn_cam.cli import app
from fcn_cam.settings import BOX_FRACTION, Output, Runtime, Settings

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def jsonl(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "explanations.jsonl").read_text().splitlines()]


# -- Settings ------------------------------------------------------------------------------


def test_settings_checked_when_built_and_resolved_on_the_model(small_model_file):
    s = Settings(scale=2, pad=True)
    assert s.scale == (2.0,) and s.pad == "cover"
    for bad, match in (({"scale": 0}, "finite and positive"), ({"maps": "grads"}, "maps must be one of"),
                       ({"top_k": 0}, "positive integer"), ({"box_fraction": 1.5}, r"\[0, 1\]"),
                       ({"rank": "median"}, "rank must be one of"), ({"target": 1.5}, "class index")):
        with pytest.raises(ValueError, match=match):
            Settings(**bad)
    with pytest.raises(TypeError, match="unknown explain option"):
        Settings().replace(scales=2)
    fcn = fcn_cam.load(small_model_file)
    r = Settings(target="C3", top_k=9).for_model(fcn)
    assert (r.target, r.top_k, r.rank, r.box_fraction) == (3, fcn.num_classes, "max", BOX_FRACTION["cells"])
    assert r.for_model(fcn) == r  # resolving twice changes nothing: equal requests, equal keys
    assert Settings(maps="scores").for_model(fcn).box_fraction == BOX_FRACTION["scores"]


def test_explain_takes_settings_or_overrides(small_model_file, photos):
    fcn = fcn_cam.load(small_model_file)
    a = fcn_cam.explain(fcn, photos["cat"], Settings(scale=1.5, maps="scores"))
    b = fcn_cam.explain(fcn, photos["cat"], scale=1.5, maps="scores")
    assert a.record() == b.record() and a.pixels.size == (a.width, a.height)
    c = fcn_cam.explain(fcn, photos["cat"], Settings(scale=1.5), maps="scores")  # overrides win
    assert c.record() == a.record()


def test_record_key_comes_from_settings_and_model(small_model_file):
    spec = jobs.ModelSpec(str(small_model_file))
    fcn = fcn_cam.load(small_model_file)
    key = jobs.request_of(Settings(target="c3").for_model(fcn), spec, Runtime())
    assert key == jobs.request_of(Settings(target=3).for_model(fcn), spec, Runtime())
    assert key != jobs.request_of(Settings(target=2).for_model(fcn), spec, Runtime())
    assert key["model"]["file"] == str(small_model_file.resolve())


# -- budgets -------------------------------------------------------------------------------


@pytest.mark.parametrize("text,value", [("none", None), ("NONE", None), ("4G", 4 * 2**30),
                                        ("512M", 512 * 2**20), ("2.5GB", int(2.5 * 2**30)), ("1GiB", 2**30),
                                        ("1000", 1000)])
def test_max_memory_sizes(text, value):
    assert jobs.parse_bytes(text) == value


@pytest.mark.parametrize("text", ["0", "inf", "-1G", "lots", "", "nan"])
def test_max_memory_refusals_are_one_line(text, small_model_file, photos):
    with pytest.raises(ValueError, match="expected a size such as 4G"):
        jobs.parse_bytes(text)
    r = run("explain", "-m", small_model_file, "--max-memory", text, photos["cat"])
    assert r.exit_code == 2 and "--max-memory" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


# -- failures stay per image ---------------------------------------------------------------


def test_memory_error_fails_one_image_and_the_run_goes_on(small_model_file, photos, tmp_path, monkeypatch):
    real = explanation.explain_inputs

    def flaky(fcn, inputs, sizes, settings, names=None):
        if any(n and n.endswith("coffee.png") for n in names or []):
            raise MemoryError("cannot allocate 40 GB")
        return real(fcn, inputs, sizes, settings, names)

    monkeypatch.setattr(explanation, "explain_inputs", flaky)
    out = tmp_path / "o"
    files = [photos["cat"], photos["coffee"], photos["gray"]]
    r = run("explain", "-m", small_model_file, "--scale", "1", "--batch-size", "8", "-o", out, *files)
    assert r.exit_code == 1
    assert f"error: {photos['coffee']}: out of memory" in r.output and "1 of 3 images failed" in r.output
    assert [rec["image"] for rec in jsonl(out)] == [str(photos["cat"]), str(photos["gray"])]
    assert "Traceback" not in r.output


def test_unexpected_error_is_named(small_model_file, photos, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("a decoder bug\nsecond line")

    monkeypatch.setattr(explanation, "explain_inputs", broken)
    r = run("explain", "-m", small_model_file, "--scale", "1", photos["cat"])
    assert r.exit_code == 1 and f"{photos['cat']}: RuntimeError: a decoder bug" in r.output
    assert "second line" not in r.output


def test_inputs_named_like_outputs_are_said(small_model_file, photos, tmp_path):
    out = tmp_path / "o"
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, photos["cat"])
    assert r.exit_code == 0
    overlay = out / jsonl(out)[0]["files"][0]["overlay"]
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, overlay)
    assert r.exit_code == 2 and "no images found" in r.output and "inside the output folder" in r.output


def test_jobs_api_without_the_cli(small_model_file, photos, tmp_path):
    job = jobs.plan_explain([photos["cat"], photos["gray"]], jobs.ModelSpec(str(small_model_file)),
                            Settings(scale=1), Runtime(device="cpu"), Output(tmp_path / "o"))
    events = []
    tally = jobs.run(job, events.append)
    assert (tally.written, tally.failed, tally.skipped) == (2, 0, 0)
    written = [e.record["image"] for e in events if e.kind == "record"]
    assert written == [str(photos["cat"]), str(photos["gray"])]
    assert [e.done for e in events if e.kind == "progress"] == [1, 2]
    again = jobs.plan_explain([photos["cat"]], jobs.ModelSpec(str(small_model_file)), Settings(scale=1),
                              Runtime(device="cpu"), Output(tmp_path / "o"))
    assert again.todo == [] and again.tally.skipped == 1


# -- signals -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_terminating_signal_summary_and_consistent_folder(sig, small_model_file, photos, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        shutil.copy(photos["cat"], src / f"cat{i:02d}.jpg")
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "fcn_cam.cli", "explain", "-m", str(small_model_file), "--scale", "2",
           "--batch-size", "1", "-o", str(out), str(src)]
    env = {**os.environ, "PYTHONPATH": str(Path(fcn_cam.__file__).parents[1])}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    first = p.stdout.readline()  # one record written: the run is under way
    assert first.startswith("{"), p.stderr.read()
    p.send_signal(sig)
    try:
        rest, err = p.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        raise
    assert p.returncode == 128 + sig, err
    assert "interrupted:" in err and "run the same command again to resume" in err and "Traceback" not in err
    printed = [json.loads(x)["key"] for x in (first + rest).splitlines()]
    recs = jsonl(out)
    assert sorted(printed) == sorted(r["key"] for r in recs) and 0 < len(recs) < 40
    for rec in recs:  # every line's files are complete
        assert all((out / f["overlay"]).is_file() and all((out / m).is_file() for m in f["maps"])
                   for f in rec["files"])
    r = run("explain", "-m", small_model_file, "--scale", "2", "-o", out, src)  # resume completes the set
    assert r.exit_code == 0 and len(jsonl(out)) == 40


def test_second_signal_exits_at_once():
    code = ("import os, signal, time\n"
            "from fcn_cam.jobs import terminating_signals, Interrupted\n"
            "with terminating_signals():\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
            "    except Interrupted as e:\n"
            "        print('first', e.code, flush=True)\n"
            "        os.kill(os.getpid(), signal.SIGHUP); time.sleep(5)\n"
            "print('not reached')\n")
    t = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(Path(fcn_cam.__file__).parents[1])}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30)
    assert p.stdout.split() == ["first", "143"] and p.returncode == 128 + signal.SIGHUP
    assert time.monotonic() - t < 5
    old = signal.getsignal(signal.SIGTERM)
    with jobs.terminating_signals():
        pass
    assert signal.getsignal(signal.SIGTERM) is old  # restored


def test_without_o_a_default_folder_is_written_and_said(small_model_file, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FCN_CAM_OUTPUT")
    for _ in range(2):  # the images given are redone each time: same line, same files
        r = run("explain", "-m", small_model_file, "--scale", "1", photos["cat"])
        assert r.exit_code == 0, r.output
        (line,) = r.stdout.splitlines()
        assert set(json.loads(line)) >= {"image", "class_index", "box"} and "files" not in json.loads(line)
        assert "wrote overlays and maps of 1 image(s) to fcn-cam-out/" in r.stderr
        (rec,) = jsonl(tmp_path / "fcn-cam-out")
        assert (tmp_path / "fcn-cam-out" / rec["files"][0]["overlay"]).is_file()
    r = run("explain", "-m", small_model_file, "--scale", "1", "--no-save", photos["gray"])
    assert r.exit_code == 0 and json.loads(r.stdout)["image"] == str(photos["gray"]) and r.stderr == ""
    assert len(jsonl(tmp_path / "fcn-cam-out")) == 1
    r = run("explain", "-m", small_model_file, "--no-save", "-o", tmp_path / "x", photos["gray"])
    assert r.exit_code == 2 and "--no-save" in r.output


def test_an_unusable_default_folder_says_what_to_do(small_model_file, photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FCN_CAM_OUTPUT")
    (tmp_path / "fcn-cam-out").write_text("a file where the default folder would go")
    r = run("explain", "-m", small_model_file, "--scale", "1", photos["cat"])
    assert r.exit_code == 2 and "fcn-cam-out" in r.output and "-o DIR" in r.output and "--no-save" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_review_findings_on_model_names_files_and_sizes(small_model_file, photos, tmp_path, monkeypatch):
    """A folder named like an architecture does not shadow it; a misspelled name says what
    fcn-cam knows; a missing --weights file is one line; --max-memory 0.5 is refused; the
    record key follows the weights file's content; an explicit input outside the output
    folder is never said to be inside it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-fc").mkdir()
    assert not jobs.ModelSpec("demo-fc").is_file()
    r = run("explain", "-m", "demo-fc", "--scale", "1", "--no-save", photos["cat"])
    assert r.exit_code == 0, r.output
    r = run("explain", "-m", "vgg61", photos["cat"])
    assert r.exit_code == 2 and "vgg61: no such model file" in r.output and "vgg16" in r.output
    r = run("explain", "-m", "alexnet", "--weights", tmp_path / "missing.pt", "--no-save", photos["cat"])
    assert r.exit_code == 2 and "missing.pt: weights file not found" in r.output and "Traceback" not in r.output
    with pytest.raises(ValueError, match="expected a size"):
        jobs.parse_bytes("0.5")
    ckpt = tmp_path / "w.pt"
    ckpt.write_bytes(b"1")
    before = jobs.ModelSpec("alexnet", str(ckpt)).identity()
    time.sleep(0.01)
    ckpt.write_bytes(b"22")  # retrained over the old file
    assert jobs.ModelSpec("alexnet", str(ckpt)).identity() != before
    notes: list[str] = []
    from fcn_cam.outputs import OutputDir

    with OutputDir(tmp_path / "o") as out:
        paths = jobs.find_inputs([photos["cat"]], out, False, notes)
    assert paths == [photos["cat"]] and notes == []


def test_threads_are_set_for_the_run_and_restored(small_model_file, photos, tmp_path):
    import torch

    old = torch.get_num_threads()
    seen = []
    job = jobs.plan_explain([photos["cat"]], jobs.ModelSpec(str(small_model_file)), Settings(scale=1),
                            Runtime(device="cpu", threads=1), Output())
    jobs.run(job, lambda e: seen.append(torch.get_num_threads()) if e.kind == "record" else None)
    assert seen == [1] and torch.get_num_threads() == old


def test_ray_ships_a_file_only_when_it_is_the_whole_model(small_model_file, tmp_path):
    assert jobs.ModelSpec(str(small_model_file)).ships_as_file()
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"n{i}" for i in range(5)))
    assert not jobs.ModelSpec(str(small_model_file), classes=str(names)).ships_as_file()
    assert not jobs.ModelSpec("vgg16").ships_as_file()


def test_explain_dataset_keys_records_by_settings_and_model(small_model_file):
    from fcn_cam import distributed

    a = distributed._request(str(small_model_file), {"scale": 2})
    b = distributed._request(str(small_model_file), {"scale": 1})
    assert a != b and a["model"]["file"] == str(small_model_file.resolve())
    assert a["settings"]["scale"] == [2.0]

"""Fault injection over every write of the output folder's commit path (issue 20).

Every filesystem operation of a commit goes through ``fcn_cam.files.fs``. :class:`Faulty`
replaces it and makes the i-th operation fail in turn, each way a disk or a process can
fail: ``ENOSPC``, ``EIO``, a short write (continued), a full disk mid-write (part of the
bytes, then ``ENOSPC``) and a crash right after the operation or in the middle of a write
(:class:`Crash`: nothing after it runs, not even cleanup; the folder is then reopened by a
fresh :class:`OutputDir`, as the next process would). After each fault:

* every line of ``explanations.jsonl`` is strict JSON ending in a newline, and every valid
  record's files are complete; lines the scenario planted as damaged are unchanged or moved
  to a side file, never lost; a torn fragment is in a ``.torn`` file or still a line;
* no record was returned ("printed") for an image whose commit failed, and a failed commit
  left no line for it (an ``--overwrite`` that failed leaves the old record or none);
* no temporary file survives reopening;
* a rerun completes the set: one valid line per image, no duplicate, nothing invalid.

Then the same on a real full filesystem (a tmpfs mounted by the test; root only), and the
failures the hostile probe found, each through the real CLI.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import re
import subprocess
import sys
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from conftest import NATIVE, small_vgg
from PIL import Image
from typer.testing import CliRunner

import fcn_cam
from fcn_cam import files
from fcn_cam.images import ImageError, header_size, load_image
from fcn_cam.outputs import OutputDir, OutputError, record_problem

JSONL = OutputDir.JSONL
REQUEST = {"model": "tiny", "scale": [1.0, 1.5]}
ROOT = Path(__file__).resolve().parents[1]


class Crash(BaseException):
    """The process died right after an operation (a BaseException: no handler runs)."""


KINDS = ("ENOSPC", "EIO", "crash")
WRITE_KINDS = ("ENOSPC", "EIO", "short", "full", "cut", "crash")


def _label(name: str) -> str:
    """A temporary file's target: ``.<name>.<random>.tmp`` -> ``<name> (tmp)``."""
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)
    return f"{m.group(1)} (tmp)" if m else name


def _fd_name(fd: int) -> str:
    return _label(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))


class Faulty(files.FileSystem):
    """Counts and names every operation; the ``at``-th fails as ``kind``."""

    def __init__(self, at: int | None = None, kind: str | None = None) -> None:
        self.at, self.kind = at, kind
        self.ops: list[tuple[str, str]] = []
        self.fired = self.dead = self.full = False

    def _go(self, op: str, target: str, do):
        if self.dead:  # after a crash nothing runs (the close below is the kernel's)
            raise Crash(f"{op} after the crash")
        i = len(self.ops)
        self.ops.append((op, target))
        if i != self.at:
            return do()
        self.fired = True
        if self.kind in ("ENOSPC", "EIO"):
            code = getattr(errno, self.kind)
            raise OSError(code, os.strerror(code))
        assert self.kind == "crash"
        do()
        self.dead = True
        raise Crash(f"killed after {op} {target}")

    def mkstemp(self, prefix, suffix, dir):  # noqa: A002
        return self._go("mkstemp", _label(prefix + "x" + suffix),
                        lambda: super(Faulty, self).mkstemp(prefix, suffix, dir))

    def open(self, path, flags, mode=0o666):
        return self._go("open", Path(path).name, lambda: super(Faulty, self).open(path, flags, mode))

    def write(self, fd, data):
        if self.full and not self.dead:  # the disk filled up after a partial write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if len(self.ops) == self.at and self.kind in ("short", "full", "cut"):
            self.ops.append(("write", _fd_name(fd)))
            self.fired = True
            self.full = self.kind == "full"
            n = os.write(fd, data[: max(1, len(data) // 2)])  # fewer bytes than asked
            if self.kind == "cut":  # killed in the middle of a write
                self.dead = True
                raise Crash(f"killed after {n} of {len(data)} bytes")
            return n
        return self._go("write", _fd_name(fd), lambda: os.write(fd, data))

    def truncate(self, fd, size):
        return self._go("truncate", _fd_name(fd), lambda: os.ftruncate(fd, size))

    def close(self, fd):
        if self.dead:
            os.close(fd)  # a dead process's descriptors are closed by the kernel
            raise Crash("close after the crash")
        return self._go("close", _fd_name(fd), lambda: os.close(fd))

    def replace(self, src, dst):
        return self._go("rename", Path(dst).name, lambda: os.replace(src, dst))

    def unlink(self, path):
        return self._go("unlink", _label(Path(path).name), lambda: Path(path).unlink(missing_ok=True))


@contextmanager
def using(fs: files.FileSystem):
    saved, files.fs = files.fs, fs
    try:
        yield fs
    finally:
        files.fs = saved


# -- the images, explained once -----------------------------------------------------------


@pytest.fixture(scope="module")
def exps(tmp_path_factory):
    """Three explained images (two scales: a PNG and two NPY files each)."""
    d = tmp_path_factory.mktemp("imgs")
    fcn = fcn_cam.convert(small_vgg(), NATIVE)
    rng = np.random.default_rng(0)
    out = []
    for name in ("a", "b", "c"):
        p = d / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        out.append((fcn_cam.explain(fcn, p, scale=[1, 1.5]), load_image(p)))
    return out


def strict(raw: bytes):
    return json.loads(raw.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def folder_state(root: Path, planted: set[bytes] = frozenset()) -> dict[str, dict]:
    """Check the invariants of a folder; return its valid records by key."""
    data = (root / JSONL).read_bytes() if (root / JSONL).exists() else b""
    assert data == b"" or data.endswith(b"\n"), "the JSONL ends in a torn line"
    recs: dict[str, dict] = {}
    for raw in data.split(b"\n")[:-1]:
        if raw in planted or not raw.strip():
            continue  # a damaged line the scenario planted: kept byte for byte
        rec = strict(raw)
        assert record_problem(rec) is None, raw
        assert rec["key"] not in recs, "duplicate record"
        for f in rec["files"]:
            for name in (f["overlay"], *f["maps"]):
                assert (root / name).is_file(), f"{name} missing"
            assert np.load(root / f["maps"][0]).ndim == 2
            Image.open(root / f["overlay"]).verify()
        recs[rec["key"]] = rec
    assert not [p.name for p in root.iterdir() if p.name.endswith(".tmp")], "temporaries survived"
    return recs


# -- scenarios: a folder prepared without faults, then one commit under them ---------------


def commit(root: Path, item, overwrite: bool = False) -> dict:
    with OutputDir(root, overwrite=overwrite, request=REQUEST) as out:
        return out.write(*item)


def key_of(item) -> str:
    exp, _ = item
    return fcn_cam.outputs.record_key(fcn_cam.outputs.image_identity(exp.image), {
        "colormap": "jet", "alpha": 0.5, **REQUEST})


def torn_fragment(exps) -> bytes:
    # the line b would have: its first 490 bytes, as the full disk of the issue left it
    return (files.dumps_strict({"key": key_of(exps[1]), **exps[1][0].record()}) + "\n").encode()[:490]


def damaged_line(exps) -> bytes:
    rec = {"key": key_of(exps[1]), **exps[1][0].record(), "request": {},
           "files": [{"index": 0, "overlay": "x.png"}]}  # no maps
    return (json.dumps(rec) + "\n").encode()


def prepare(root: Path, scenario: str, exps) -> tuple[set[bytes], dict[str, dict]]:
    """Make the folder the scenario starts from; return the damaged lines it planted and
    the valid records."""
    root.mkdir()
    commit(root, exps[0])
    if scenario == "overwrite":
        commit(root, exps[1])
    before = folder_state(root)
    planted: set[bytes] = set()
    if scenario == "torn":
        with open(root / JSONL, "ab") as f:
            f.write(torn_fragment(exps))
    if scenario == "invalid":
        with open(root / JSONL, "ab") as f:
            f.write(damaged_line(exps))
        planted = {damaged_line(exps)[:-1]}
    return planted, before


SCENARIOS = {  # what is committed under faults: (image, overwrite)
    "new": (1, False),  # a new image: temp file per output, rename, JSONL append
    "overwrite": (0, True),  # --overwrite: the JSONL rewritten without the old line first
    "torn": (1, False),  # opening repairs a torn last line (side file, truncate), then commits
    "invalid": (1, False),  # the key's damaged line moved to a side file in the rewrite
}


def attempt(root: Path, scenario: str, exps, fs: Faulty) -> tuple[dict | None, str | None]:
    i, overwrite = SCENARIOS[scenario]
    printed = error = None
    with using(fs):
        try:
            out = OutputDir(root, overwrite=overwrite, request=REQUEST)
            try:
                printed = out.write(*exps[i])
            finally:
                out.close()
        except OutputError as e:
            error = str(e)
        except Crash:
            pass
    return printed, error


def test_every_write_of_the_commit_path_fails_in_turn(exps, tmp_path):
    tally = Counter()
    ops_of: dict[str, list[tuple[str, str]]] = {}
    records_checked = 0
    for scenario, (i, overwrite) in SCENARIOS.items():
        dry = Faulty()
        prepare(tmp_path / f"{scenario}-dry", scenario, exps)
        printed, error = attempt(tmp_path / f"{scenario}-dry", scenario, exps, dry)
        assert printed is not None and error is None
        ops_of[scenario] = dry.ops
        for at, (op, _) in enumerate(dry.ops):
            for kind in WRITE_KINDS if op == "write" else KINDS:
                root = tmp_path / f"{scenario}-{at}-{kind}"
                planted, before = prepare(root, scenario, exps)
                fs = Faulty(at, kind)
                printed, error = attempt(root, scenario, exps, fs)
                assert fs.fired
                where = f"{scenario}: {kind} at {fs.ops[at]}"
                tally[kind] += 1
                key = key_of(exps[i])
                # reopen, as the next process would: repairs, removes temporaries
                with OutputDir(root, request=REQUEST) as again:
                    assert not again.repaired or scenario == "torn" or kind in ("crash", "cut"), where
                after = folder_state(root, planted)
                records_checked += len(after)
                if kind == "short":  # a short write is continued: nothing failed
                    assert error is None and printed is not None and printed["key"] in after
                if printed is not None:
                    assert after[printed["key"]] == printed
                if error is not None:
                    assert "\n" not in error and (exps[i][0].image in error or JSONL in error), error
                    assert printed is None
                    assert after.get(key) in (None, before.get(key) if overwrite else None), where
                if scenario == "torn":
                    frag = torn_fragment(exps)
                    kept = [p for p in root.glob("*.torn") if p.read_bytes() == frag]
                    assert kept or frag + b"\n" in (root / JSONL).read_bytes(), "the fragment was lost"
                for k, rec in before.items():  # other records are never touched
                    if k != key:
                        assert after[k] == rec
                # the rerun completes the set, no duplicate, nothing left invalid
                with OutputDir(root, request=REQUEST) as out:
                    for item in exps:
                        if not out.done(item[0].image):
                            out.write(*item)
                with OutputDir(root, request=REQUEST) as out:
                    assert out.invalid == [] and out.repaired == []
                final = folder_state(root)
                assert set(final) == {key_of(x) for x in exps}
                records_checked += len(final)
                tally["runs"] += 1
                if scenario == "invalid":
                    aside = b"".join(p.read_bytes() for p in root.glob("*.invalid"))
                    assert damaged_line(exps) in aside, "the damaged line was dropped, not moved aside"
    print(f"\nfault injection: {sum(v for k, v in tally.items() if k != 'runs')} faults "
          f"({dict((k, v) for k, v in tally.items() if k != 'runs')}), {tally['runs']} runs, "
          f"{records_checked} records checked; operations:")
    for scenario, ops in ops_of.items():
        named = (re.sub(r"\.\d{8}T[\d.]+\.", ".<stamp>.", re.sub(r"[0-9a-f]{12}", "<key>", f"{op} {t}"))
                 for op, t in ops)
        print(f"  {scenario} ({len(ops)}): " + ", ".join(named))
    # every kind of write of the commit path was hit
    kinds_of_op = {op for ops in ops_of.values() for op, _ in ops}
    assert {"mkstemp", "write", "close", "rename", "open", "truncate"} <= kinds_of_op
    targets = {t for ops in ops_of.values() for _, t in ops}
    assert any(t.endswith(".png (tmp)") for t in targets) and any(t.endswith(".npy (tmp)") for t in targets)
    assert {JSONL, f"{JSONL} (tmp)"} <= targets and any(t.endswith(".torn (tmp)") for t in targets)
    assert any(t.endswith(".invalid (tmp)") for t in targets)


def test_a_failed_rollback_is_repaired_by_the_next_refresh(exps, tmp_path):
    """Full disk mid-append and the truncate fails too (EIO): the torn line stays until the
    next refresh under the lock moves it aside; the next commit appends onto a clean end."""
    root = tmp_path / "o"
    prepare(root, "new", exps)

    class Both(Faulty):
        def write(self, fd, data):
            if _fd_name(fd) == JSONL:
                self.fired = True
                os.write(fd, data[:100])
                raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, data)

        def truncate(self, fd, size):
            raise OSError(errno.EIO, "Input/output error")

    with OutputDir(root, request=REQUEST) as out:
        with using(Both()), pytest.raises(OutputError, match="b.png: cannot write explanations.jsonl"):
            out.write(*exps[1])
        assert not (root / JSONL).read_bytes().endswith(b"\n")  # torn: the rollback could not run
        rec = out.write(*exps[2])  # the refresh under the lock repairs first
        assert len(out.repaired) == 1 and "moved to" in out.repaired[0] and "line 2" in out.repaired[0]
    recs = folder_state(root)
    assert set(recs) == {key_of(exps[0]), rec["key"]}
    assert [p.stat().st_size for p in root.glob("*.torn")] == [100]


# -- a real full filesystem ---------------------------------------------------------------


@contextmanager
def tmpfs(path: Path, size: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def fill(d: Path) -> Path:
    """Fill the filesystem of ``d`` to the last byte."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_real_full_disk_during_the_append_loses_no_record(exps, tmp_path):
    """The probe's case on a real tmpfs: the image's files fit, its line did not (490 bytes
    of it fit in the JSONL's last page). Before: exit 0, a 490-byte fragment, and the
    rerun's line appended onto it."""
    with tmpfs(tmp_path / "mnt", "1m") as root:
        commit(root, exps[0])
        size = (root / JSONL).stat().st_size
        with open(root / JSONL, "ab") as f:  # a blank line so that only 490 bytes fit
            f.write(b" " * (4096 - size % 4096 - 490 - 1) + b"\n")
        jsonl_before = (root / JSONL).read_bytes()
        filler = []

        class FillsUp(files.FileSystem):  # the disk fills up just before the line is appended
            def open(self, path, flags, mode=0o666):
                if Path(path).name == JSONL and flags & os.O_APPEND and not filler:
                    filler.append(fill(root))
                return super().open(path, flags, mode)

            def write(self, fd, data):
                n = os.write(fd, data)
                writes.append((len(data), n))
                return n

        writes: list[tuple[int, int]] = []
        with (OutputDir(root, request=REQUEST) as out, using(FillsUp()),
              pytest.raises(OutputError, match="No space left on device")):
            out.write(*exps[1])
        assert filler and any(n < want for want, n in writes), writes  # the kernel's short write
        assert (root / JSONL).read_bytes() == jsonl_before  # rolled back whole
        filler[0].unlink()
        commit(root, exps[1])  # the rerun: a clean line
        with OutputDir(root, request=REQUEST) as out:
            assert out.repaired == [] and out.invalid == []
        assert set(folder_state(root)) == {key_of(exps[0]), key_of(exps[1])}


def test_real_full_disk_through_the_cli(small_model_file, tmp_path):
    """``explain -o`` onto a 2 MB tmpfs: images fail one by one with a line each, the folder
    stays valid; after the disk grows, the same command completes the set."""
    from fcn_cam.cli import app

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):  # noise: ~120 kB overlays, 24 of them do not fit in 2 MB
        Image.fromarray(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(corpus / f"n{i:02d}.png")
    with tmpfs(tmp_path / "mnt", "2m") as root:
        args = ["explain", "-m", str(small_model_file), "--scale", "1", "-o", str(root), str(corpus)]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        errors = [x for x in r.stderr.splitlines() if x.startswith("error: ")]
        assert errors and all("No space left on device" in x and str(corpus) in x for x in errors), r.stderr
        printed = [json.loads(x) for x in r.stdout.splitlines()]
        recs = folder_state(root)
        assert {p["key"] for p in printed} == set(recs)  # every line printed, nothing else
        failed = {Path(x.split(": ")[1]).name for x in errors}
        assert failed.isdisjoint(Path(p["image"]).name for p in printed)
        subprocess.run(["mount", "-o", "remount,size=16m", str(root)], check=True)
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        recs = folder_state(root)
        assert sorted(Path(x["image"]).name for x in recs.values()) == sorted(p.name for p in corpus.iterdir())
        print(f"\ntmpfs: {len(printed)} written and {len(errors)} failed on 2 MB; rerun wrote "
              f"{len(r.stdout.splitlines())}, {len(recs)} records checked")


# -- the probe's other failures, through the CLI ------------------------------------------


def run(*args):
    from fcn_cam.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def pair(photos):  # noqa: N802
    return photos["cat"], photos["coffee"]


@pytest.fixture
def done_folder(small_model_file, photos, tmp_path):
    out = tmp_path / "o"
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, photos["cat"], photos["coffee"])
    assert r.exit_code == 0, r.output
    return out


DAMAGE = {
    "files lacks maps": lambda rec: rec["files"][0].pop("maps"),
    "files null": lambda rec: rec.update(files=None),
    "no files": lambda rec: rec.pop("files"),
    "index a string": lambda rec: rec["files"][0].update(index="0"),
    "path out of the folder": lambda rec: rec["files"][0].update(overlay="../cat.jpg"),
    "width a bool": lambda rec: rec.update(width=True),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_records_are_redone_not_a_traceback(damage, small_model_file, photos, done_folder):
    """Was: KeyError/TypeError tracebacks, or a record without files skipped for ever."""
    jsonl = done_folder / JSONL
    lines = jsonl.read_bytes().split(b"\n")[:-1]
    rec = json.loads(lines[0])
    DAMAGE[damage](rec)
    bad = json.dumps(rec).encode()
    jsonl.write_bytes(b"\n".join([bad, lines[1], b"not json {", b""]))
    with OutputDir(done_folder, request={}) as out:  # the notes: once, with line numbers
        assert len(out.invalid) == 2 and "line 1: " in out.invalid[0]
        assert "line 3: not strict JSON" in out.invalid[1]
        assert len(out.records()) == 1
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", done_folder, *pair(photos))
    assert r.exit_code == 0 and "Traceback" not in r.output, r.output
    assert [json.loads(x)["image"] for x in r.stdout.splitlines()] == [str(photos["cat"])]  # redone
    data = jsonl.read_bytes()
    assert lines[1] + b"\n" in data and b"not json {\n" in data  # the others, byte for byte
    assert bad + b"\n" not in data  # moved aside, not dropped:
    assert bad + b"\n" in b"".join(p.read_bytes() for p in done_folder.glob("*.invalid"))
    assert len(folder_state(done_folder, {b"not json {"})) == 2


def test_jsonl_that_is_not_a_file_is_one_line(small_model_file, photos, tmp_path):
    """Was: a 61-line IsADirectoryError traceback."""
    out = tmp_path / "o"
    (out / JSONL).mkdir(parents=True)
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, photos["cat"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == [
        f"error: {out / JSONL}: not a regular file (a directory); move it away to use this output folder"]
    (out / JSONL).rmdir()
    os.mkfifo(out / JSONL)
    with pytest.raises(OutputError, match="not a regular file \\(a FIFO\\)"):
        OutputDir(out)


def test_a_torn_line_is_moved_aside_and_the_rerun_appends_cleanly(small_model_file, photos, done_folder):
    """Was: the rerun appended its line onto the fragment (invalid JSON again)."""
    jsonl = done_folder / JSONL
    lines = jsonl.read_bytes().split(b"\n")[:-1]
    jsonl.write_bytes(lines[0] + b"\n" + lines[1][:490])  # coffee's line torn
    with OutputDir(done_folder, request={}) as out:
        assert len(out.repaired) == 1 and "line 2: incomplete (490 bytes" in out.repaired[0]
        torn = list(done_folder.glob("*.torn"))
        assert [p.read_bytes() for p in torn] == [lines[1][:490]] and torn[0].name in out.repaired[0]
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", done_folder, *pair(photos))
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["image"] for x in r.stdout.splitlines()] == [str(photos["coffee"])]
    assert len(folder_state(done_folder)) == 2


def test_names_that_are_not_utf8(small_model_file, photos, tmp_path):
    """Was: "'utf-8' codec can't encode characters … surrogates not allowed", naming no file;
    without -o, raw 0xFF bytes on stdout."""
    d = tmp_path / "in"
    d.mkdir()
    names = [b"\xff\xfe.png", b"caf\xe9.png"]
    for n in names:
        Image.open(photos["coffee"]).convert("RGB").resize((80, 60)).save(os.fsdecode(bytes(d) + b"/" + n))
    bad = os.fsdecode(bytes(d) + b"/bad\xe9.jpg")
    Path(bad).write_bytes(b"not a jpeg")
    out = tmp_path / "o"
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, d)
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert f"error: {d}/bad\\xe9.jpg: not an image" in r.stderr  # readable, and typeable as $'…'
    stdout = r.stdout_bytes.decode("utf-8")  # strict: valid UTF-8
    jsonl = (out / JSONL).read_bytes().decode("utf-8")
    recs = [json.loads(x) for x in jsonl.splitlines()]
    assert [json.loads(x) for x in stdout.splitlines()] == recs
    got = sorted(base64.b64decode(rec["image_b64"]) for rec in recs)  # lossless
    assert got == sorted(bytes(d) + b"/" + n for n in names)
    assert sorted(rec["image"] for rec in recs) == sorted(f"{d}/{n.decode('utf-8', 'replace')}" for n in names)
    for rec in recs:
        assert files.from_json_name(rec, "image") in {os.fsdecode(bytes(d) + b"/" + n) for n in names}
        for f in rec["files"]:
            for name in (f["overlay"], *f["maps"]):
                assert name.isprintable() and (out / name).is_file()
                name.encode("utf-8")
    assert all(files.is_utf8(os.fsdecode(n)) for n in os.listdir(bytes(out)))  # outputs: UTF-8 names
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", out, d)  # resumes: both done
    assert r.exit_code == 1 and r.stdout == "" and "skipped 2 of 3" in r.stderr
    r = run("explain", "-m", small_model_file, "--scale", "1", d)  # without -o
    assert len([json.loads(x) for x in r.stdout_bytes.decode("utf-8").splitlines()]) == 2


def test_decompression_bomb_is_one_line_with_one_limit(tmp_path):
    """Was: PIL's DecompressionBombWarning on stderr (a site-packages path), and two limits
    (89,478,485 and 178956970) quoted in one message."""
    from test_cli import png_with_size

    for w, h in ((10_000, 10_000), (200_000, 200_000)):  # PIL: a warning; PIL: an error
        p = tmp_path / f"bomb{w}.png"
        png_with_size(p, w, h)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(ImageError) as e:
                load_image(p)
            assert header_size(p) == (w, h)
        assert caught == []
        msg = str(e.value)
        assert msg == (f"{p}: {w}×{h} = {w * h:,} pixels exceeds the limit of 89,478,485 pixels (a possible "
                       "decompression bomb; --max-pixels N (max_pixels= in the API) raises it)")
        assert len(re.findall(r"\d[\d,]{6,}", msg)) == 2  # the size and the one limit
    # the decoding threads: PIL's global limit is switched under a lock and always restored
    from concurrent.futures import ThreadPoolExecutor

    limit = Image.MAX_IMAGE_PIXELS
    ok = tmp_path / "ok.png"
    Image.new("RGB", (32, 24)).save(ok)
    with warnings.catch_warnings(record=True) as caught, ThreadPoolExecutor(4) as pool:
        warnings.simplefilter("always")

        def one(path):
            try:
                return load_image(path).size
            except ImageError as e:
                return str(e)

        got = list(pool.map(one, [tmp_path / "bomb10000.png", ok] * 16))
    assert caught == [] and limit == Image.MAX_IMAGE_PIXELS
    assert got[1::2] == [(32, 24)] * 16 and all("exceeds the limit of 89,478,485" in g for g in got[::2])
    png_with_size(tmp_path / "big.png", 10_000, 10_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="truncated or corrupt"):  # allowed: decoded (no pixels)
            load_image(tmp_path / "big.png", max_pixels=10**9)
    assert caught == []


def test_cli_prints_no_pil_warning(small_model_file, tmp_path):
    from test_cli import png_with_size

    png_with_size(tmp_path / "bomb.png", 10_000, 10_000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "fcn_cam.cli", "explain", "-m", str(small_model_file),
                        str(tmp_path / "bomb.png")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "exceeds the limit of 89,478,485 pixels" in r.stderr
    assert "Warning" not in r.stderr and "site-packages" not in r.stderr, r.stderr


def test_cli_notes_repairs_and_invalid_lines(small_model_file, photos, done_folder):
    jsonl = done_folder / JSONL
    lines = jsonl.read_bytes().split(b"\n")[:-1]
    jsonl.write_bytes(b"not json {\n" + lines[0] + b"\n" + lines[1][:490])
    r = run("explain", "-m", small_model_file, "--scale", "1", "-o", done_folder, *pair(photos))
    assert r.exit_code == 0, r.output
    notes = [x for x in r.stderr.splitlines() if x.startswith("note: ")]
    assert len(notes) == 2 and "line 3: incomplete (490 bytes" in notes[0]
    assert "line 1: not strict JSON" in notes[1]

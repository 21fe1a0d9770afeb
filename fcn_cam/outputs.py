"""The output folder: a small database of explanation records and the files they name.

Every record has a **key**: a hash of the image's identity (its resolved path, or its
pixels for an in-memory image) and of the *request* (every option that changes the outputs:
model identity, scales, class or top-k, rank, padding, map kind, colours …; whatever the
caller passes). Output names come from the key — ``<stem>.<key>_cam.png`` and
``<stem>.<key>_cam.npy`` (``.<class>`` before ``_cam`` with several targets, ``.s<scale>``
before ``.npy`` with several scales) — so they never depend on the run or on other images.

Commit protocol, all under an exclusive ``flock`` on the folder itself (held only while
committing one image; PNG/NPY bytes are encoded before taking it):

1. if the key already has a line: without ``overwrite`` the image is already done
   (:class:`AlreadyDone`); with it, the JSONL is rewritten without that line
   (temporary file + rename) before any of its files is touched;
2. the image's files are written, each to a temporary file renamed into place;
3. one strict-JSON line is appended to ``explanations.jsonl``; every write is continued
   until all its bytes are written (:func:`fcn_cam.files.write_all`), and a line that could
   not be written whole is rolled back (the file truncated to its length before the append).

A line is therefore only ever present when all its files are complete and belong to it.
Opening a folder takes the lock and removes temporary files a killed writer left behind.

Reading is defensive, because other programs (and crashes) can damage the folder: a last
line without its newline (a crash or a full disk mid-append, another program) is *torn*: it
is moved to ``explanations.jsonl.<time>.<pid>.torn`` and cut off, under the lock
(:attr:`OutputDir.repaired` says so). Every line is checked against :data:`RECORD_SCHEMA`;
one that fails is noted once with its line number (:attr:`OutputDir.invalid`) and treated as
absent, so its image is redone; it stays in the file byte for byte until then, and is moved
to ``explanations.jsonl.<time>.<pid>.invalid`` when its key is written again.

Names are carried as the OS gives them (``surrogateescape`` strings); a name that is not
valid UTF-8 is stored readable (U+FFFD per undecodable byte) with ``"image_b64"``, base64
of its bytes (:func:`fcn_cam.files.finite_json`), so every line stays valid UTF-8.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from . import files as _files
from .errors import AlreadyDone, NonFiniteError, OutputError
from .explanation import Explanation
from .files import dumps_strict, os_bytes, shown, stale_temporaries, write_all, write_atomic
from .render import overlay
from .settings import DEFAULT_ALPHA, DEFAULT_COLORMAP

KEY_CHARS = 12  # hex digits of the key in file names (48 bits)
_OUTPUT_NAME = re.compile(rf".+\.[0-9a-f]{{{KEY_CHARS}}}(\.\d+)?_cam(\.s[0-9.e+-]+)?\.(png|npy)$")


_HEX_KEY = re.compile(r"[0-9a-f]{64}")
#: What every line of ``explanations.jsonl`` must hold, by type (other keys are free):
#: the fields the folder relies on (key, files) and the record's core fields.
RECORD_SCHEMA: dict[str, tuple[type, ...]] = {
    "key": (str,), "image": (str, type(None)), "width": (int,), "height": (int,),
    "class_index": (int,), "score": (int, float, type(None)), "request": (dict,), "files": (list,),
}
FILE_SCHEMA: dict[str, tuple[type, ...]] = {"index": (int,), "overlay": (str,), "maps": (list,)}


def _type_problem(obj: dict, schema: Mapping[str, tuple[type, ...]], where: str) -> str | None:
    for k, types in schema.items():
        if k not in obj:
            return f"{where}has no {k!r}"
        v = obj[k]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):  # True is an int
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            return f"{where}{k!r} is {type(v).__name__ if v is not None else 'null'}, not {want}"
    return None


def _bad_name(name: object) -> bool:
    """A file name a record may hold: one plain entry of the folder (never a path out of it)."""
    return not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\x00" in name


def record_problem(rec: object) -> str | None:
    """Why ``rec`` (a parsed JSONL line) is not a record of this folder, or None.

    The schema: :data:`RECORD_SCHEMA` (a 64-hex ``key``), and ``files`` a non-empty list of
    :data:`FILE_SCHEMA` objects whose ``overlay`` and ``maps`` (non-empty) are plain names.
    """
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    why = _type_problem(rec, RECORD_SCHEMA, "")
    if why:
        return why
    if not _HEX_KEY.fullmatch(rec["key"]):
        return "'key' is not 64 hex digits"
    if not rec["files"]:
        return "'files' is empty"
    for i, f in enumerate(rec["files"]):
        if not isinstance(f, dict):
            return f"files[{i}] is not an object"
        why = _type_problem(f, FILE_SCHEMA, f"files[{i}] ")
        if why:
            return why
        if not f["maps"]:
            return f"files[{i}] 'maps' is empty"
        bad = [n for n in (f["overlay"], *f["maps"]) if _bad_name(n)]
        if bad:
            return f"files[{i}] names {bad[0]!r}, not a file of the folder"
    return None


def _strict_loads(raw: bytes) -> Any:
    def refuse(c: str) -> Any:
        raise ValueError(f"non-strict JSON constant {c}")

    return json.loads(raw, parse_constant=refuse)


def _key_of(raw: bytes) -> str | None:
    try:
        rec = json.loads(raw)
    except ValueError:
        return None
    return rec.get("key") if isinstance(rec, dict) and isinstance(rec.get("key"), str) else None


def _stamp() -> str:
    """Part of a side file's name: when and by whom (two processes never share one)."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"


def is_output_name(name: str) -> bool:
    """Whether ``name`` is one of the files :class:`OutputDir` writes (never an input)."""
    return bool(_OUTPUT_NAME.match(name))


def image_identity(image: str | os.PathLike | None, pixels: Image.Image | None = None) -> str:
    """What identifies an image across runs: its resolved path, else a hash of its pixels."""
    if image is not None:
        return os.path.realpath(image)  # no error on link loops
    if pixels is None:
        raise ValueError("an in-memory image needs its pixels to be identified")
    h = hashlib.sha256(f"{pixels.mode}{pixels.size}".encode())
    h.update(pixels.tobytes())
    return "sha256:" + h.hexdigest()


def record_key(identity: str, request: Mapping[str, Any]) -> str:
    """The stable key of one (image, request): sha256 of canonical JSON."""
    blob = json.dumps({"image": identity, "request": request}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _safe_stem(image: str | None) -> str:
    """A file-name stem from any image name: undecodable bytes, control characters and
    separators become ``_`` (output names are always valid UTF-8)."""
    stem = Path(image).stem if image else "image"
    stem = os_bytes(stem).decode("utf-8", "replace").replace("\ufffd", "_")
    stem = re.sub(r"[\x00-\x1f/\\]", "_", stem).strip() or "image"
    while len(stem.encode()) > 100:  # names stay far below NAME_MAX (255 bytes) with suffixes
        stem = stem[:-1]
    return stem


def check_finite(exp: Explanation) -> None:
    """Raise :class:`NonFiniteError` naming the image when any map or score is NaN/Inf."""
    bad = [t.index for t in exp.targets
           if not (np.isfinite(t.score) and np.isfinite(t.heatmap).all()
                   and all(np.isfinite(c).all() for c in t.cams))]
    if bad or not all(np.isfinite(s) for _, _, s in exp.ranking):
        which = f"class {', '.join(map(str, bad))}" if bad else "the class scores"
        name = shown(exp.image) if exp.image else "image"
        raise NonFiniteError(f"{name}: the model produced non-finite values (NaN/Inf) for {which}; "
                             "nothing written for it")


def record_of(out: OutputDir | None, exp: Explanation, image: Image.Image) -> dict:
    """One image's record: written through ``out``, or without a folder only checked (finite)."""
    if out is not None:
        return out.write(exp, image)
    check_finite(exp)
    return exp.record()


class OutputDir:
    """Records and files of explanations in one folder (module docstring: the guarantees).

    Args:
        root: the folder (created if missing).
        overwrite: replace the records (and files) of the images written through this
            object; other records are never touched.
        request: every option that changes the outputs; part of each record's key.
        protect: paths that must never be written (the inputs).

    Attributes:
        cleaned: temporary files of killed writers, removed when the folder was opened.
        repaired: one line per torn last line moved aside (at opening or a later refresh).
        invalid: one line per JSONL line that is not a record (:func:`record_problem`),
            with its line number; each is noted once and treated as absent.

    Raises:
        OutputError: the folder cannot be created or written, or ``explanations.jsonl`` is
            not a regular file (one line).

    Safe for several processes at once: commits are serialized by ``flock`` on the folder,
    and each process refreshes its view of the JSONL under that lock.
    """

    JSONL = "explanations.jsonl"

    def __init__(self, root: str | os.PathLike, *, overwrite: bool = False,
                 request: Mapping[str, Any] | None = None, colormap: str = DEFAULT_COLORMAP,
                 alpha: float = DEFAULT_ALPHA, protect: frozenset[Path] | set[Path] = frozenset()) -> None:
        self.root = Path(root)
        self.overwrite, self.colormap, self.alpha = overwrite, colormap, alpha
        self.request = {"colormap": colormap, "alpha": alpha, **(request or {})}
        self.protect = {Path(os.path.realpath(p)) for p in protect}
        self.jsonl = self.root / self.JSONL
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise OutputError(f"{shown(self.root)}: cannot use as output folder ({e.strerror or e})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            os.close(self._dir_fd)
            raise OutputError(f"{shown(self.root)}: output folder is not writable")
        self._index: dict[str, dict] = {}  # key -> record, as of the last refresh
        self._file: io.BufferedReader | None = None  # the JSONL we have read up to _pos
        self._pos = self._line = 0  # bytes and lines read
        self._invalid_keys: set[str] = set()  # keys whose only lines are invalid
        self._noted: set[bytes] = set()  # invalid lines already noted
        self.cleaned: list[Path] = []
        self.repaired: list[str] = []
        self.invalid: list[str] = []
        try:
            with self._locked():
                self.cleaned = stale_temporaries(self.root, self._ours)
                for p in self.cleaned:
                    p.unlink(missing_ok=True)
        except BaseException:
            self.close()
            raise

    def _ours(self, name: str) -> bool:
        """Whether ``name`` is a file this class writes (for its temporaries)."""
        return name.startswith(self.JSONL) or bool(_OUTPUT_NAME.match(name))

    # -- keys and state ---------------------------------------------------------------------

    def key(self, image: str | os.PathLike | None, pixels: Image.Image | None = None) -> str:
        return record_key(image_identity(image, pixels), self.request)

    def done(self, image: str | os.PathLike) -> bool:
        """Whether ``image`` has a complete record for this request (checked before decoding;
        always False with ``overwrite``, which redoes what it is given)."""
        if self.overwrite:
            return False
        with self._locked():
            rec = self._index.get(self.key(image))
        return rec is not None and self._complete(rec)

    def records(self) -> list[dict]:
        """Every valid record (:func:`record_problem`), one per key, as of now."""
        with self._locked():
            return list(self._index.values())

    def _complete(self, rec: dict) -> bool:
        return all((self.root / name).is_file() for name in _file_names(rec))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._dir_fd, fcntl.LOCK_EX)
        try:
            self._refresh()
            yield
        finally:
            fcntl.flock(self._dir_fd, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Read what other processes appended (or reread a rewritten JSONL), checking each
        line, and repair a torn last line. Only ever called under the lock. Holding the old
        file open means its inode cannot be reused, so an equal inode is the same file."""
        try:
            fd = os.open(self.jsonl, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block
        except FileNotFoundError:
            self._reset(None)
            return
        except OSError as e:
            raise OutputError(f"{shown(self.jsonl)}: cannot read ({e.strerror or e})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) \
                else "a special file"
            raise OutputError(f"{shown(self.jsonl)}: not a regular file ({kind}); move it away to use "
                              "this output folder")
        if self._file is None or os.fstat(self._file.fileno()).st_ino != st.st_ino or st.st_size < self._pos:
            self._reset(os.fdopen(fd, "rb"))  # noqa: SIM115 - kept open on purpose
        else:
            os.close(fd)
        assert self._file is not None
        self._file.seek(self._pos)
        *lines, tail = self._file.read().split(b"\n")
        for raw in lines:
            self._pos += len(raw) + 1
            self._line += 1
            self._take(raw)
        if tail:
            try:
                self._repair(tail)
            except OSError as e:
                raise OutputError(f"{shown(self.jsonl)}: its last line is incomplete and cannot be moved "
                                  f"aside ({e.strerror or e}); nothing written") from None

    def _take(self, raw: bytes) -> None:
        """Index one complete line, or note once why it is not a record."""
        if not raw.strip():
            return
        try:
            rec = _strict_loads(raw)
            why = record_problem(rec)
        except ValueError as e:  # (UnicodeDecodeError included)
            rec, why = None, f"not strict JSON ({e})"
        if why is None:
            self._index[rec["key"]] = rec
            self._invalid_keys.discard(rec["key"])
            return
        key = _key_of(raw)
        if key is not None and key not in self._index:
            self._invalid_keys.add(key)
        if raw not in self._noted:
            self._noted.add(raw)
            self.invalid.append(f"{shown(self.jsonl)} line {self._line}: {why}; ignored (its image is redone)")

    def _repair(self, tail: bytes) -> None:
        """Move a torn last line (no newline) to a side file and cut it off; under the
        lock, so no writer of ours is appending. The side file is written first: a crash
        in between leaves the fragment in both places, never in neither."""
        side = self._side_file("torn")
        write_atomic(side, tail)
        self._cut(self._pos)
        self.repaired.append(f"{shown(self.jsonl)} line {self._line + 1}: incomplete ({len(tail)} bytes, "
                             "no newline: a crash or a full disk mid-append, or another program); "
                             f"moved to {side.name}")

    def _side_file(self, kind: str) -> Path:
        """A new ``explanations.jsonl.<time>.<pid>[.<n>].<kind>`` (under the lock: no other
        writer of ours picks the same name; an existing one is never replaced)."""
        base = f"{self.JSONL}.{_stamp()}"
        n = 0
        while (side := self.root / f"{base}{f'.{n}' if n else ''}.{kind}").exists():
            n += 1
        return side

    def _reset(self, file: io.BufferedReader | None) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._pos, self._line, self._index, self._invalid_keys = file, 0, 0, {}, set()

    def _drop_line(self, key: str) -> None:
        """Rewrite the JSONL without ``key``'s lines (atomically; other lines byte for byte).
        Invalid lines of that key are moved to a ``.invalid`` side file, not dropped."""
        keep, aside = [], []
        for raw in self.jsonl.read_bytes().split(b"\n")[:-1]:  # (it ends with a newline: refreshed)
            if _key_of(raw) != key:
                keep.append(raw + b"\n")
            elif self._index.get(key) is None or _strict_loads_or_none(raw) != self._index[key]:
                aside.append(raw + b"\n")
        if aside:
            write_atomic(self._side_file("invalid"), b"".join(aside))
        write_atomic(self.jsonl, b"".join(keep))
        self._refresh()

    # -- writing ----------------------------------------------------------------------------

    def plan(self, exp: Explanation, key: str) -> list[tuple[Any, str, list[str]]]:
        """``(target, overlay name, map names)`` per target, all derived from the key."""
        base = f"{_safe_stem(exp.image)}.{key[:KEY_CHARS]}"
        many = len(exp.targets) > 1
        out = []
        for t in exp.targets:
            b = f"{base}.{t.index}" if many else base
            maps = [f"{b}_cam.npy"] if len(exp.scales) == 1 else [f"{b}_cam.s{s:g}.npy" for s in exp.scales]
            out.append((t, f"{b}_cam.png", maps))
        return out

    def write(self, exp: Explanation, image: Image.Image) -> dict:
        """Write one image's overlays, raw maps and JSON line; return the record.

        Raises:
            AlreadyDone: the key has a complete record and ``overwrite`` is off (nothing
                written; another process may have just written it).
            NonFiniteError: the maps contain NaN/Inf (nothing written).
            OutputError: a target path is an input, or the disk refused.
        """
        check_finite(exp)
        key = self.key(exp.image, None if exp.image else image)
        plans = self.plan(exp, key)
        payload: list[tuple[Path, bytes]] = []
        files = []
        for t, png, maps in plans:  # encode outside the lock
            buf = io.BytesIO()
            overlay(image, t.heatmap, self.colormap, self.alpha).save(buf, format="PNG")
            payload.append((self.root / png, buf.getvalue()))
            for name, cam in zip(maps, t.cams):
                b = io.BytesIO()
                np.save(b, cam.astype(np.float32))
                payload.append((self.root / name, b.getvalue()))
            files.append({"index": t.index, "overlay": png, "maps": maps})
        for path, _ in payload:
            if Path(os.path.realpath(path)) in self.protect:
                raise OutputError(f"{shown(exp.image)}: refusing to write {shown(path)}: it is an input")
        record = {"key": key, **exp.record(), "request": self.request, "files": files}
        line = dumps_strict(record)  # valid UTF-8 whatever the names (files.finite_json)
        name = shown(exp.image) if exp.image else "image"
        with self._locked():
            old = self._index.get(key)
            if old is not None and not self.overwrite and self._complete(old):
                raise AlreadyDone(f"{name}: already done in {shown(self.root)} (pass --overwrite to redo)")
            target = self.jsonl
            try:
                if old is not None or key in self._invalid_keys:
                    self._drop_line(key)
                for target, data in payload:  # noqa: B007 - named in the error
                    write_atomic(target, data)
                target = self.jsonl
                self._append((line + "\n").encode())
            except OSError as e:
                raise OutputError(f"{name}: cannot write {target.name} in {shown(self.root)} "
                                  f"({e.strerror or e}); no record written for it") from None
        return json.loads(line)

    def _append(self, data: bytes) -> None:
        """Append one line whole, or roll back: truncate to the length before (under the
        lock). A failing ``close`` after a complete write is rolled back too (the caller
        reports a failure, so no line may stay)."""
        fd = _files.fs.open(self.jsonl, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        whole = False
        try:
            start = os.fstat(fd).st_size
            try:
                write_all(fd, data)
            except BaseException:
                _files.fs.truncate(fd, start)  # (if this fails too, the next refresh repairs the torn line)
                raise
            whole = True
        finally:
            try:
                _files.fs.close(fd)
            except OSError:
                if whole:
                    self._cut(start)
                raise

    def _cut(self, size: int) -> None:
        fd = _files.fs.open(self.jsonl, os.O_WRONLY)
        try:
            _files.fs.truncate(fd, size)
        finally:
            _files.fs.close(fd)

    def close(self) -> None:
        self._reset(None)
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_names(rec: dict) -> list[str]:
    """The files a (valid: :func:`record_problem`) record names."""
    return [n for f in rec["files"] for n in (f["overlay"], *f["maps"])]


def _strict_loads_or_none(raw: bytes) -> Any:
    try:
        return _strict_loads(raw)
    except ValueError:
        return None

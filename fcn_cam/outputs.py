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
3. one strict-JSON line is appended to ``explanations.jsonl`` (one ``write``).

A line is therefore only ever present when all its files are complete and belong to it.
Opening a folder takes the lock and removes temporary files a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .explanation import Explanation
from .files import dumps_strict, stale_temporaries, write_atomic
from .render import overlay

KEY_CHARS = 12  # hex digits of the key in file names (48 bits)
_OUTPUT_NAME = re.compile(rf".+\.[0-9a-f]{{{KEY_CHARS}}}(\.\d+)?_cam(\.s[0-9.e+-]+)?\.(png|npy)$")


def is_output_name(name: str) -> bool:
    """Whether ``name`` is one of the files :class:`OutputDir` writes (never an input)."""
    return bool(_OUTPUT_NAME.match(name))


class OutputError(OSError):
    """The output folder cannot be used (not writable, not a folder); one line."""


class AlreadyDone(FileExistsError):  # noqa: N818 - a state, not a failure
    """The record exists (maybe written meanwhile by another process) and ``overwrite`` is off."""


class NonFiniteError(ValueError):
    """The model produced NaN or infinite scores for this image."""


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
    stem = Path(image).stem if image else "image"
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
        raise NonFiniteError(f"{exp.image or 'image'}: the model produced non-finite values (NaN/Inf) "
                             f"for {which}; nothing written for it")


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

    Safe for several processes at once: commits are serialized by ``flock`` on the folder,
    and each process refreshes its view of the JSONL under that lock.
    """

    JSONL = "explanations.jsonl"

    def __init__(self, root: str | os.PathLike, *, overwrite: bool = False,
                 request: Mapping[str, Any] | None = None, colormap: str = "jet", alpha: float = 0.5,
                 protect: frozenset[Path] | set[Path] = frozenset()) -> None:
        self.root = Path(root)
        self.overwrite, self.colormap, self.alpha = overwrite, colormap, alpha
        self.request = {"colormap": colormap, "alpha": alpha, **(request or {})}
        self.protect = {Path(os.path.realpath(p)) for p in protect}
        self.jsonl = self.root / self.JSONL
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._dir_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise OutputError(f"{self.root}: cannot use as output folder ({e.strerror or e})") from None
        if not os.access(self.root, os.W_OK | os.X_OK):
            os.close(self._dir_fd)
            raise OutputError(f"{self.root}: output folder is not writable")
        self._index: dict[str, dict] = {}  # key -> record, as of the last refresh
        self._file: io.BufferedReader | None = None  # the JSONL we have read up to _pos
        self._pos = 0
        self.cleaned: list[Path] = []
        with self._locked():
            self.cleaned = stale_temporaries(
                self.root, lambda n: n == self.JSONL or bool(_OUTPUT_NAME.match(n)))
            for p in self.cleaned:
                p.unlink(missing_ok=True)

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
        """Every record with a key, as of now."""
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
        """Read what other processes appended (or reread a rewritten JSONL). Holding the
        old file open means its inode cannot be reused, so an equal inode is the same file."""
        try:
            st = os.stat(self.jsonl)
        except FileNotFoundError:
            self._reset(None)
            return
        if self._file is None or os.fstat(self._file.fileno()).st_ino != st.st_ino:
            self._reset(open(self.jsonl, "rb"))  # noqa: SIM115 - kept open on purpose
        assert self._file is not None
        self._file.seek(self._pos)
        for raw in self._file.read().splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break  # cannot happen under the lock; never index half a line
            self._pos += len(raw)
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("key"), str):
                self._index[rec["key"]] = rec

    def _reset(self, file: io.BufferedReader | None) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._pos, self._index = file, 0, {}

    def _drop_line(self, key: str) -> None:
        """Rewrite the JSONL without ``key``'s line (atomically; other lines byte for byte)."""
        lines = self.jsonl.read_bytes().splitlines(keepends=True)
        keep = []
        for raw in lines:
            try:
                k = json.loads(raw).get("key")
            except (ValueError, AttributeError):
                k = None
            if k != key:
                keep.append(raw)
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
                raise OutputError(f"{exp.image}: refusing to write {path}: it is an input")
        record = {"key": key, **exp.record(), "request": self.request, "files": files}
        line = dumps_strict(record)
        with self._locked():
            old = self._index.get(key)
            if old is not None:
                if not self.overwrite and self._complete(old):
                    raise AlreadyDone(f"{exp.image}: already done in {self.root} (pass --overwrite to redo)")
                self._drop_line(key)
            try:
                for path, data in payload:
                    write_atomic(path, data)
                fd = os.open(self.jsonl, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
                try:
                    os.write(fd, (line + "\n").encode())
                finally:
                    os.close(fd)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
                    raise OutputError(f"{exp.image}: cannot write to {self.root}: {e.strerror}") from None
                raise
        return json.loads(line)

    def close(self) -> None:
        self._reset(None)
        with contextlib.suppress(OSError):
            os.close(self._dir_fd)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _file_names(rec: dict) -> list[str]:
    return [n for f in rec.get("files", []) for n in (f["overlay"], *f["maps"])]

"""Checked, atomic file writes shared by model files and explanation outputs; strict JSON;
file names as the OS gives them.

Every write of the output folder goes through :data:`fs` (a small seam: tests replace it to
make each operation fail in turn, see ``tests/test_faults.py``) and through :func:`write_all`,
which loops until every byte is written: ``os.write`` may write fewer bytes than asked (a
full disk writes what fits, then fails).
"""

from __future__ import annotations

import base64
import errno
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"


class FileSystem:
    """The file operations of a commit, one method each (a test double overrides them)."""

    def mkstemp(self, prefix: str, suffix: str, dir: Path) -> tuple[int, str]:  # noqa: A002
        return tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=dir)

    def open(self, path: Path, flags: int, mode: int = 0o666) -> int:
        return os.open(path, flags, mode)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def close(self, fd: int) -> None:
        os.close(fd)

    def replace(self, src: str | Path, dst: str | Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)


#: The file operations every writer goes through (replaced only by tests).
fs = FileSystem()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` or raise ``OSError``: short writes are
    continued; a write that makes no progress is a full disk (``ENOSPC``)."""
    view = memoryview(data)
    while view:
        n = fs.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (a write stored 0 of {len(view)} bytes)")
        view = view[n:]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[BinaryIO], None] | bytes) -> None:
    """Write through a temporary file in the same directory, then rename into place:
    readers see the old file or the whole new one, never half of it. Bytes are written
    with :func:`write_all` (every byte or an error); a callable gets a buffered file (whose
    ``flush`` also writes every byte or raises). A killed process leaves only a hidden
    ``.<name>.*.tmp`` file (:func:`stale_temporaries` finds them)."""
    fd, tmp = fs.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        if isinstance(write, bytes | bytearray | memoryview):
            try:
                write_all(fd, bytes(write))
            finally:
                fs.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        fs.replace(tmp, path)
    except BaseException:
        fs.unlink(tmp)
        raise


def stale_temporaries(root: Path, names: Callable[[str], bool]) -> list[Path]:
    """The temporary files :func:`write_atomic` left in ``root`` for targets whose name
    satisfies ``names`` (a killed writer cannot clean up after itself)."""
    out = []
    for entry in os.scandir(root):
        n = entry.name
        if n.startswith(".") and n.endswith(TMP_SUFFIX) and entry.is_file(follow_symlinks=False):
            target = n[1:].rsplit(".", 2)[0]  # ".<name>.<random>.tmp" -> "<name>"
            if names(target):
                out.append(Path(entry.path))
    return out


# -- names as the OS gives them ------------------------------------------------------------
#
# On POSIX a file name is bytes; Python carries undecodable bytes as lone surrogates
# (``surrogateescape``: byte 0xE9 -> "\udce9"). Such a str cannot be written as UTF-8.


def os_bytes(name: str | os.PathLike) -> bytes:
    """The name's bytes as the OS has them (undoes ``surrogateescape``)."""
    s = os.fspath(name)
    if isinstance(s, bytes):
        return s
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no OS gave (from JSON, say): keep it visible
        return s.encode("utf-8", "surrogatepass")


def is_utf8(name: str) -> bool:
    """Whether ``name`` is valid Unicode text (no lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(name: str | os.PathLike) -> str:
    """The name for a message: undecodable bytes as ``\\xNN`` escapes (what a shell's
    ``$'...'`` quoting accepts), everything else as it is."""
    s = os.fspath(name)
    if isinstance(s, str) and is_utf8(s):
        return s
    return os_bytes(s).decode("utf-8", "backslashreplace")


def readable(name: str) -> str:
    """``name`` as valid UTF-8 text: each undecodable byte becomes U+FFFD."""
    return name if is_utf8(name) else os_bytes(name).decode("utf-8", "replace")


#: Suffix of the key that holds a non-UTF-8 string losslessly (base64 of its bytes).
B64_SUFFIX = "_b64"


def from_json_name(rec: dict, key: str) -> str | None:
    """The original (OS) string of ``rec[key]``: decoded from ``<key>_b64`` when present."""
    raw = rec.get(key + B64_SUFFIX)
    if isinstance(raw, str):
        return base64.b64decode(raw).decode("utf-8", "surrogateescape")
    return rec.get(key)


# -- strict JSON ---------------------------------------------------------------------------


def finite_json(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by ``None`` and every string made
    valid UTF-8, and the JSON paths of the replaced numbers (so the caller can say what was
    wrong). A string that is not valid UTF-8 (a file name with undecodable bytes) becomes
    :func:`readable` text, and a dict holding it gains ``"<key>_b64"``: base64 of its bytes."""
    bad: list[str] = []

    def walk(v: Any, where: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(where or "$")
            return None
        if isinstance(v, str):
            return readable(v)
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                out[k] = walk(x, f"{where}.{k}" if where else str(k))
                if isinstance(x, str) and not is_utf8(x):
                    out[f"{k}{B64_SUFFIX}"] = base64.b64encode(os_bytes(x)).decode("ascii")
            return out
        if isinstance(v, list | tuple):
            return [walk(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    return walk(value, ""), bad


def dumps_strict(record: dict) -> str:
    """One line of strict JSON (RFC 8259: no NaN/Infinity), always valid UTF-8 when encoded.
    Non-finite numbers become ``null`` and the record gains an ``"error"`` naming them;
    non-UTF-8 names are kept losslessly as ``"<key>_b64"`` (:func:`finite_json`)."""
    clean, bad = finite_json(record)
    if bad:
        clean["error"] = "; ".join(filter(None, [clean.get("error"), f"non-finite values at {', '.join(bad)}"]))
    return json.dumps(clean, allow_nan=False, ensure_ascii=False)


def append_line(path: Path, record: dict) -> None:
    """Append one strict JSON line to ``path``, whole or not at all: the bytes are written
    with :func:`write_all`, and a failure truncates the file back to its length before."""
    data = (dumps_strict(record) + "\n").encode()
    fd = fs.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            write_all(fd, data)
        except BaseException:
            fs.truncate(fd, start)
            raise
    finally:
        fs.close(fd)


def torch_file_problem(path: Path) -> tuple[str, str] | None:
    """Why ``path`` cannot be a file ``torch.save`` wrote, from its first bytes alone:
    ``("missing" | "special" | "not torch", detail)``, or None when it may be one (a zip
    archive, or a legacy raw pickle stream)."""
    if not path.is_file():
        return ("missing", "not found") if not path.exists() else ("special", "not a regular file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return None
    return "not torch", "empty" if not head else f"starts with {head!r}"


def file_identity(path: Path) -> dict:
    """A file as a record key knows it: where it is, how big, when it last changed (a file
    rewritten in place, such as a retrained checkpoint, gives new records)."""
    st = path.stat()
    return {"file": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}

"""Atomic file writes shared by model files and explanation outputs, and strict JSON."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write: Callable[[BinaryIO], None] | bytes) -> None:
    """Write through a temporary file in the same directory, then rename into place:
    readers see the old file or the whole new one, never half of it. A killed process
    leaves only a hidden ``.<name>.*.tmp`` file (:func:`stale_temporaries` finds them)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(write, bytes | bytearray | memoryview):
                f.write(write)
            else:
                write(f)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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


def finite_json(value: Any) -> tuple[Any, list[str]]:
    """``value`` with every non-finite float replaced by ``None``, and the JSON paths of
    the replaced numbers (so the caller can say what was wrong)."""
    bad: list[str] = []

    def walk(v: Any, where: str) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            bad.append(where or "$")
            return None
        if isinstance(v, dict):
            return {k: walk(x, f"{where}.{k}" if where else str(k)) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x, f"{where}[{i}]") for i, x in enumerate(v)]
        return v

    return walk(value, ""), bad


def dumps_strict(record: dict) -> str:
    """One line of strict JSON (RFC 8259: no NaN/Infinity). Non-finite numbers become
    ``null`` and the record gains an ``"error"`` naming them."""
    clean, bad = finite_json(record)
    if bad:
        clean["error"] = "; ".join(filter(None, [clean.get("error"), f"non-finite values at {', '.join(bad)}"]))
    return json.dumps(clean, allow_nan=False, ensure_ascii=False)


def append_line(path: Path, record: dict) -> None:
    """Append one strict JSON line with a single ``write`` on an O_APPEND descriptor."""
    data = (dumps_strict(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

"""Converted architectures cached once, so that ``explain -m vgg16`` converts only the first time.

The folder is ``$FCN_CAM_CACHE``, else ``$XDG_CACHE_HOME/fcn-cam``, else ``~/.cache/fcn-cam``.
A file's name holds ``sha256(arch, weights, weights file's sha256, output stride, overrides,
fcn-cam's version and model-file format, torchvision's version for named weights)``; it is
written atomically by :func:`fcn_cam.modelfile.save` and read back by
:func:`fcn_cam.modelfile.load`, validated like any model file. A file that does not load is
ignored with a one-line warning and converted again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from . import __version__, registry
from .importers.checkpoint import file_digest, open_checkpoint, read_class_names
from .settings import DEFAULT_WEIGHTS
from .zoo import RANDOM, is_weights_file


def cache_dir() -> Path:
    """Where converted architectures are kept."""
    if os.environ.get("FCN_CAM_CACHE"):
        return Path(os.environ["FCN_CAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fcn-cam"


def cache_key(arch: str, weights: str = DEFAULT_WEIGHTS, output_stride: int | None = None, **overrides) -> str:
    """The hex digest naming the cached conversion of ``arch`` with ``weights``.

    A weights file counts by its sha256 (not its path); a torchvision weights name by the
    name and torchvision's version; the conversion by fcn-cam's version and file format.
    """
    from .modelfile import VERSION

    parts: dict = {"arch": arch, "weights": weights, "output_stride": output_stride,
                   "fcn_cam": __version__, "format": VERSION}
    if is_weights_file(weights) and Path(weights).is_file():  # (a missing file: load_arch says so)
        parts["weights"], parts["weights_sha256"] = "file", file_digest(weights)["sha256"]
    elif weights != RANDOM:
        parts["torchvision"] = importlib.metadata.version("torchvision")
    names = overrides.get("class_names")
    if isinstance(names, str | os.PathLike):  # a names file counts by the names it holds
        overrides["class_names"] = read_class_names(names)
    parts["overrides"] = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(overrides.items())
                          if v is not None}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def cached_arch(
    arch: str, weights: str = DEFAULT_WEIGHTS, output_stride: int | None = None,
    device: str | torch.device = "cpu", *, trust_pickle: bool = False,
    class_names: Sequence[str] | str | os.PathLike | None = None,
    input_size: int | tuple[int, int] | None = None, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
):
    """:func:`fcn_cam.zoo.load_arch`, converted once and then read from the cache.

    Returns:
        ``(fcn, from_cache)``: the converted model on ``device``, and whether it came from
        the cache.

    A weights file holding a pickled model is refused without ``trust_pickle`` whether or
    not its conversion is cached, so that a command behaves the same on every run.
    """
    from . import zoo
    from .modelfile import ModelFileError, load, save
    from .runtime import resolve_device

    registry.entry(arch)  # an unknown name fails before anything is hashed
    overrides = {"class_names": class_names, "input_size": input_size, "mean": mean, "std": std}
    path = cache_dir() / f"{arch}-{cache_key(arch, weights, output_stride, **overrides)[:32]}.pt"
    dev = resolve_device(device)
    if path.is_file():
        try:
            fcn = load(path, map_location=dev)
            if fcn.info.get("arch") not in (arch, f"{arch}-twin"):
                raise ModelFileError(f"{path}: holds {fcn.info.get('arch')!r}, not {arch}")
            form = (fcn.info.get("weights_file") or {}).get("form")
            if form == "pickle" and not trust_pickle:
                open_checkpoint(weights)  # the first run's refusal, before anything is unpickled
            return fcn, True
        except ModelFileError as e:
            warnings.warn(f"ignoring the cached model ({e}); converting again", stacklevel=2)
    fcn = zoo.load_arch(arch, weights, output_stride=output_stride, device=dev, trust_pickle=trust_pickle,
                        **overrides)
    try:
        save(fcn, path, overwrite=True)
    except OSError as e:  # a read-only home: the model is still usable, only not kept
        warnings.warn(f"could not cache the converted {arch} at {path} ({e})", stacklevel=2)
    return fcn, False

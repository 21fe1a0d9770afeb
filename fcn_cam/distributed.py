"""Many machines: the local explain path over a Ray Data dataset of image paths.

A leaf over :func:`fcn_cam.explain_files` and :class:`fcn_cam.outputs.OutputDir`, not a second
copy of them. Ray tasks read and decode the images; a pool of actors, each holding one copy
of the model, runs :func:`~fcn_cam.explain_files` on the decoded pixels (same batching, same
:func:`~fcn_cam.explanation.summarize_one`) and writes through ``OutputDir.write`` exactly as
``fcn-cam explain -o`` does, so records, ``.npy`` maps and overlays are the local CLI's.
Records come back in completion order, not input order.

Every node must see the image paths and the output folder at the same place (a shared
filesystem); a model file is read by each actor from there, a model object travels through
Ray's object store. Install with ``pip install 'fcn-cam[ray]'``.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import RayRunError
from .explanation import Result, explain_files, failure, prefetch
from .files import file_identity
from .images import ImageError, decode_batch, find_images
from .modelfile import load
from .outputs import OutputDir
from .records import commit
from .runtime import prepare
from .settings import MAX_PIXELS, Runtime, Settings
from .surgery import FCN

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


def require_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401  (needs the data extra: pyarrow, pandas)
    except ImportError as e:
        raise ImportError(
            f"distributed explain needs Ray Data ({e}); install it with: pip install 'fcn-cam[ray]'"
        ) from None
    return ray


def image_paths(inputs: str | os.PathLike | Iterable[str | os.PathLike],
                exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Expand a dataset of image paths: folders (recursively, as the local CLI does), list
    files (``.txt``/``.lst``/``.list``: one path per line, ``#`` comments, relative to the
    list's folder), glob patterns (``photos/**/*.jpg``, quoted from the shell), plain files.
    Folders skip anything under ``exclude`` (the output folder), as the local CLI's do.

    Raises:
        ValueError: a glob pattern that matches no file.
    """
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file() and p.suffix.lower() in LIST_SUFFIXES:
            lines = (s.strip() for s in p.read_text().splitlines())
            out += image_paths([p.parent / s for s in lines if s and not s.startswith("#")], exclude)
        elif not p.exists() and glob.has_magic(str(item)):
            matches = sorted(m for m in glob.glob(str(item), recursive=True) if Path(m).is_file())
            if not matches:
                raise ValueError(f"{item}: no file matches this pattern")
            out += map(Path, matches)
        else:
            out += find_images([p], exclude=exclude)
    return out


def _request(model: FCN | str | os.PathLike, options: Mapping[str, Any]) -> dict[str, Any]:
    """The record key's request when the caller gave none (``fcn-cam explain`` gives its own):
    the settings asked for and the model's identity, so that another request or another model
    writes new records instead of finding these done."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    asked = (options.get("settings") or Settings()).replace(**{k: v for k, v in options.items() if k in fields})
    if isinstance(model, FCN):
        who = {k: model.info.get(k) for k in ("arch", "weights", "weights_file", "exactness")}
    else:
        who = file_identity(Path(model))
    return {"settings": asked.as_request(), "model": who}


class Explainer:
    """Ray actor: one model load, then the local explain path on each batch of decoded images.

    Args:
        model: an :class:`FCN`, its reference in the object store, or a model file path.
        output_dir: where to write, or None for records only.
        runtime: keyword arguments of :func:`fcn_cam.prepare` (precision, device, …), applied
            here so that each actor resolves ``auto`` on its own hardware.
        output: keyword arguments of :class:`OutputDir` (overwrite, colormap, alpha).
        options: keyword arguments of :func:`fcn_cam.explain_files` (``settings``, ``batch_size``, …).
    """

    def __init__(self, model: FCN | str | os.PathLike, output_dir: str | None, cwd: str,
                 runtime: Mapping[str, Any], output: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        if not isinstance(model, FCN | str | os.PathLike):  # an ObjectRef from explain_dataset
            model = require_ray().get(model)
        fcn = model if isinstance(model, FCN) else load(model)
        self.fcn = prepare(fcn, **{"copy": False, **runtime})  # this copy is the actor's own
        self.options, self.cwd = dict(options), cwd
        # Several processes may write into one OutputDir: its commits are locked (flock).
        self.out = OutputDir(output_dir, **output) if output_dir is not None else None

    def _explain(self, names: list[Path], lookup) -> Iterator[Result]:
        results = explain_files(self.fcn, names, load=lookup, **self.options)
        return prefetch(lambda r: commit(self.out, r), results, workers=1, depth=4)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        names = [Path(p) for p in batch["path"]]
        decoded = dict(zip(names, zip(batch["image"], batch["error"])))

        def lookup(path: Path) -> Image.Image:
            pixels, error = decoded[path]
            if error:
                raise ImageError(error)
            return Image.fromarray(np.asarray(pixels))

        done: list[Result] = []
        with _cwd(self.cwd):  # names (and record keys) are paths as the driver gave them
            self._run(names, lookup, done)
        return {
            "path": [str(r.path) for r in done],
            "record": [json.dumps(r.record) if r.record is not None else "" for r in done],
            "error": [r.error or "" for r in done],
            "skipped": [r.skipped or "" for r in done],
        }

    def _run(self, names: list[Path], lookup, done: list[Result]) -> None:
        try:
            done += self._explain(names, lookup)
        except Exception:
            # Unexpected: redo the rest one by one so that only the culprit fails.
            for name in names[len(done):]:
                try:
                    done += self._explain([name], lookup)
                except Exception as e:  # noqa: BLE001 - this image's failure
                    done.append(Result(name, error=failure(name, e)))


@contextmanager
def _cwd(path: str) -> Iterator[None]:
    """Work in the driver's folder (every node sees it on the shared filesystem); restored after."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def explain_dataset(
    model: FCN | str | os.PathLike,
    images: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    *,
    address: str | None = None,
    actors: int | None = None,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    decode_cpus: float = 0,
    runtime: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
    max_pixels: int = MAX_PIXELS,
    **options: Any,
) -> Iterator[Result]:
    """Explain a dataset of images on a Ray cluster; yield one :class:`Result` per image as
    it completes (a record, or the error that stopped that image).

    Args:
        model: a model file every node can read (each actor loads it: the fastest start), or
            an unprepared :class:`FCN` (put into the object store once).
        images: folders, list files, glob patterns or files (:func:`image_paths`).
        output_dir: write overlays, maps and ``explanations.jsonl`` here (as ``fcn-cam
            explain -o``); None: records only.
        address: the cluster (``ray.init(address=…)``: ``auto``, ``HOST:PORT``,
            ``ray://HOST:10001``; None connects to a running local cluster or starts one).
            Ignored when Ray is already initialized in this process.
        actors: size of the model actor pool (default: as many as the cluster's CPUs, or
            GPUs with ``num_gpus``, allow).
        num_cpus: CPUs of each model actor, which are also its torch threads (default: the
            cluster's CPUs, at most 4: one actor per small machine; fewer, bigger actors hold
            fewer model copies, and intra-op threads scale about as well as more actors).
        num_gpus: GPUs of each model actor (``num_gpus=1``: GPU actors, where ``prepare``'s
            default ``device="auto"`` picks CUDA).
        decode_cpus: CPUs reserved by each decoding task (default 0: decoding shares the
            actors' cores, as the local CLI's decoding threads share the forward's; a
            positive value needs as many CPUs left over by the actors).
        runtime: keyword arguments of :func:`fcn_cam.prepare` (``precision``, ``device``, …),
            applied in each actor.
        output: keyword arguments of :class:`OutputDir` (``overwrite``, ``colormap``, ``alpha``).
        max_pixels: images declaring more pixels are refused before decoding.
        **options: keyword arguments of :func:`fcn_cam.explain_files` (``settings``,
            ``batch_size``, or any :class:`~fcn_cam.settings.Settings` field), passed through unchanged.

    Raises:
        ImportError: Ray Data is not installed.
        ValueError: no images, or a glob that matches nothing.
    """
    ray = require_ray()
    paths = image_paths(images)
    if not paths:
        raise ValueError("no images found in the given paths")
    output = dict(output or {})
    if output_dir is not None and "request" not in output:  # the key: what was asked, of which model
        output["request"] = _request(model, options)
    root = None
    if output_dir is not None:
        with OutputDir(output_dir, **output):  # usable? (one clear error here, not in every actor)
            root = str(Path(output_dir).resolve())
    # Arguments are checked above, now; Ray starts when the first result is asked for.
    return _run(ray, address, model, paths, root, actors, num_cpus, num_gpus, (decode_cpus, max_pixels),
                dict(runtime or {}), output, options)


def _reason(e: BaseException) -> str:
    """One line for a failed run: the last line of the innermost exception that says anything
    (Ray wraps an actor's ``ValueError`` in a few layers, whose text ends with the original)."""
    chain, seen = [], set()
    while isinstance(e, BaseException) and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    for x in reversed(chain):
        lines = [line.strip() for line in str(x).splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return type(chain[0]).__name__


@contextmanager
def _quiet(ray) -> Iterator[None]:
    """No progress bars or per-dataset INFO lines on the driver; restored afterwards."""
    ctx = ray.data.DataContext.get_current()
    log = logging.getLogger("ray.data")
    bars, level = ctx.enable_progress_bars, log.level
    ctx.enable_progress_bars = False
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        ctx.enable_progress_bars = bars
        log.setLevel(level)


def _run(ray, address, model, paths, root, actors, num_cpus, num_gpus, decode, runtime, output,
         options) -> Iterator[Result]:
    started = not ray.is_initialized()
    try:
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     logging_level=logging.WARNING)
        with _quiet(ray):
            yield from _stream(ray, model, paths, root, actors, num_cpus, num_gpus, decode, runtime,
                               output, options)
    except (ray.exceptions.RayError, ConnectionError) as e:
        raise RayRunError(f"the Ray run failed: {_reason(e)}") from e
    finally:
        if started and ray.is_initialized():
            ray.shutdown()


def _stream(ray, model, paths, root, actors, num_cpus, num_gpus, decode, runtime, output, options):
    decode_cpus, max_pixels = decode  # CPUs of each decoding task, the images' pixel limit
    cpus = ray.cluster_resources().get("CPU", 1)
    if num_cpus is None:
        num_cpus = 1 if num_gpus else max(1, min(4, int(cpus)))
    if actors is None:
        gpus = ray.cluster_resources().get("GPU", 0)
        actors = max(1, int(gpus / num_gpus if num_gpus else (cpus - decode_cpus) / num_cpus))
    batch_size = int(options.get("batch_size", Runtime.batch_size))
    rows = [{"path": str(p), "read": str(p.resolve())} for p in paths]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, -(-len(rows) // batch_size)))
    # As many decoding tasks at a time as actors: with no CPUs reserved Ray would start one per
    # block at once, each in its own process, and starve the actors (measured: first record
    # after 221 s instead of ~70 s for 96 images).
    try:
        decoders = {"compute": ray.data.TaskPoolStrategy(size=actors)}
    except TypeError:  # Ray < 2.51 bounds tasks with concurrency=
        decoders = {"concurrency": actors}
    ds = ds.map_batches(decode_batch, batch_size=batch_size, num_cpus=decode_cpus,
                        fn_kwargs={"max_pixels": max_pixels}, **decoders)
    # A model object goes into the object store once (not pickled into every actor's constructor);
    # a file is read by each actor itself, which is faster still (no 0.5 GB through the store).
    model = ray.put(model) if isinstance(model, FCN) else str(Path(model).resolve())
    ds = ds.map_batches(
        Explainer, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=num_cpus, num_gpus=num_gpus,
        fn_constructor_kwargs={"model": model,
                               "output_dir": root, "cwd": os.getcwd(), "runtime": runtime, "output": output,
                               "options": options},
    )
    # Each block as soon as it is done (iter_rows prefetches one: a block's records waited for the next)
    for out in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        for path, record, error, skipped in zip(out["path"], out["record"], out["error"], out["skipped"]):
            record = json.loads(str(record)) if str(record) else None
            yield Result(Path(str(path)), error=str(error) or None, record=record, skipped=str(skipped) or None)

"""Runs: a command's work planned, then carried out by one executor and one writer.

``fcn-cam explain`` is :func:`plan_explain` then :func:`run`; the command line only parses
options, prints what these report and sets the exit code.

- **Plan** (:func:`plan_explain`): the model opened (a file, or an architecture converted
  on the fly) and prepared, the :class:`~fcn_cam.settings.Settings` resolved on it, the
  inputs found, images already done in the output folder skipped before anything is
  decoded, and every image's activation memory checked against the budget from its header
  (:func:`fcn_cam.geometry.input_activation_bytes`, the layers' own formulas).
- **Run** (:func:`run`): the images go through an executor — :func:`fcn_cam.explain_files`
  here, or Ray actors (:mod:`fcn_cam.distributed`) — and every result through one writer
  (:func:`fcn_cam.records.commit`, in a thread that overlaps the next forward), which also
  counts it and reports it, so nothing written goes unsaid.
- **Signals** (:func:`terminating_signals`): SIGTERM, SIGHUP and SIGINT end a run the same
  way — the writer finishes what it started, the folder stays consistent, a summary is
  printed and the exit code is 128 + the signal's number; a second signal exits at once.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .settings import DEFAULT_MODEL, DEFAULT_WEIGHTS, Output, Runtime, Settings

if TYPE_CHECKING:
    from .explanation import Result
    from .outputs import OutputDir
    from .surgery import FCN


# -- convert, info -------------------------------------------------------------------------


def convert_file(
    source: str, output: Path, *, weights: str = DEFAULT_WEIGHTS, output_stride: int | None = None,
    overwrite: bool = False, device: str = "cpu", trust_pickle: bool = False, classes: Path | None = None,
    input_size: tuple[int, int] | None = None, mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None, model_output: str | None = None, **onnx: Any,
) -> FCN:
    """``fcn-cam convert``: a registry name (with ``weights`` in any checkpoint form), an ONNX
    file, or a file holding a model (TorchScript; pickled with ``trust_pickle``), converted,
    checked against the original and saved to ``output`` (never over a file without
    ``overwrite``). ``onnx``: ``flatten_order``, ``keep_softmax`` (ONNX files only)."""
    from . import zoo
    from .modelfile import save
    from .registry import NAMES

    if output.exists() and not overwrite:
        raise FileExistsError(f"{output}: already exists (pass --overwrite)")
    said = {"input_size": input_size, "mean": mean, "std": std}
    if source.lower().endswith(".onnx"):
        from .importers.checkpoint import read_class_names
        from .importers.onnx import convert_onnx

        selected = int(model_output) if model_output is not None and model_output.lstrip("-").isdigit() \
            else model_output
        fcn = convert_onnx(source, input_size, class_names=read_class_names(classes) if classes else None,
                           output=selected, output_stride=output_stride,
                           **{k: v for k, v in {**said, **onnx}.items() if v is not None and k != "input_size"})
    elif onnx or model_output is not None:
        raise ValueError("--flatten-order, --model-output and --keep-softmax apply to ONNX files; "
                         "a Python model states them in its own layers")
    elif source in NAMES or not Path(source).exists():
        fcn = zoo.load_arch(source, weights, output_stride=output_stride, device=device,
                            trust_pickle=trust_pickle, class_names=classes, **said)
    else:
        fcn = zoo.load_checkpoint(source, trust_pickle=trust_pickle, output_stride=output_stride, device=device,
                                  class_names=classes, **{k: v for k, v in said.items() if v is not None})
    save(fcn, output, overwrite=overwrite)
    return fcn


def export_file(spec: ModelSpec, output: Path, *, check_sizes: Sequence[tuple[int, int]] | None = None,
                **options: Any) -> dict[str, Any]:
    """``fcn-cam export``: the model's forward-only CAM graph (:func:`fcn_cam.export.export`:
    ONNX or ``torch.export``), written only once the file agrees with PyTorch at the check
    sizes."""
    from .export import CHECK_SIZES, export

    fcn = spec.open("cpu")
    return export(fcn, output, check_sizes=tuple(check_sizes or CHECK_SIZES), **options)


def _images_and_model(images: Sequence[Path], exclude: Path | None, spec: ModelSpec, runtime: Runtime | None,
                      notes: list[str] | None) -> tuple[list[Path], FCN]:
    """The image files under ``images`` (none from ``exclude``) and the prepared model (fp32
    unless told otherwise: the peers' gradients run on it too, and are compared at full precision)."""
    from .images import find_images

    paths = list(find_images(images, exclude=[exclude] if exclude else []))
    if not paths:
        raise ValueError("no images found in the given paths")
    return paths, _open_prepared(spec, runtime or Runtime(precision="fp32"), False,
                                 notes if notes is not None else [])


def compare_files(images: Sequence[Path], spec: ModelSpec, settings: Settings, out_dir: Path, *,
                  runtime: Runtime | None = None, notes: list[str] | None = None, **options: Any) -> list[Path]:
    """``fcn-cam compare``: one figure per image, fcn-cam's maps beside the peers'
    (:func:`fcn_cam.comparison.compare`); ``options``: ``methods``, ``layer``, ``progress``…"""
    from .comparison import compare

    paths, fcn = _images_and_model(images, out_dir, spec, runtime, notes)
    return compare(fcn, paths, out_dir=out_dir, settings=settings, **options)


def evaluate_files(images: Sequence[Path], spec: ModelSpec, settings: Settings, annotations: Path, *,
                   peers: Sequence[str] | None = None, runtime: Runtime | None = None,
                   notes: list[str] | None = None, **options: Any) -> dict[str, Any]:
    """``fcn-cam evaluate``: localization and faithfulness of fcn-cam and ``peers`` (default:
    every one that applies) on the user's annotated images (:func:`fcn_cam.evaluation.evaluate`)."""
    from .evaluation import FCN_CAM, evaluate

    paths, fcn = _images_and_model(images, options.get("out_dir"), spec, runtime, notes)
    methods = [FCN_CAM, *peers] if peers else None
    return evaluate(fcn, paths, annotations, settings=settings, methods=methods, **options)


def describe_file(path: Path) -> dict[str, Any]:
    """``fcn-cam info``: a model file's metadata, read without running any code from it,
    with where its weights came from (the file, its form and sha256) next to their label."""
    from .modelfile import read, validate

    obj = read(path)
    validate(obj, path)
    meta = {}
    for key, value in obj["info"].items():
        if key == "weights_file":
            continue
        meta[key] = value
        wf = obj["info"].get("weights_file")
        if key == "weights" and wf:
            url = f", from {wf['url']}" if wf.get("url") else ""
            meta["weights_file"] = (f"{wf['path']} ({wf.get('form') or 'file'}, {wf['bytes']:,} bytes{url}), "
                                    f"sha256 {wf['sha256']}")
    names = meta.pop("class_names") or []
    meta["classes"] = f"{len(names)} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
    meta["format"] = f"{obj['format']} v{obj['version']}"
    meta["parameters"] = sum(t.numel() for t in obj["state_dict"].values())
    return meta


# -- memory budget -------------------------------------------------------------------------


def parse_bytes(text: str) -> int | None:
    """``4G``, ``512M``, ``2.5GB``, ``1.5GiB``, a plain byte count, or ``none`` (no limit).

    Raises:
        ValueError: anything else (``0``, ``inf``, negative numbers, words), in one line.
    """
    t = text.strip().upper()
    if t == "NONE":
        return None
    t = t.removesuffix("B").removesuffix("I")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or int(value) <= 0:
        raise ValueError(f"--max-memory {text!r}: expected a size such as 4G or 512M, or none for no limit")
    return int(value)


def default_memory() -> int:
    """Three quarters of the machine's physical memory."""
    return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def budget_of(max_memory: str | int | None) -> int | None:
    """The activation budget in bytes: ``"auto"`` (:func:`default_memory`), a size
    (:func:`parse_bytes`), bytes, or None (no limit)."""
    if max_memory is None or isinstance(max_memory, int):
        return max_memory
    return default_memory() if max_memory == "auto" else parse_bytes(max_memory)


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


# -- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which model a run uses: a model file, or a name of :mod:`fcn_cam.registry` (converted
    once, then read from the cache: :func:`fcn_cam.cache.cached_arch`), with what a user may
    say about it: its weights (any checkpoint form, :mod:`fcn_cam.importers.checkpoint`),
    whether a pickled file may be unpickled, class names, input size and normalization."""

    model: str = DEFAULT_MODEL
    weights: str = DEFAULT_WEIGHTS
    output_stride: int | None = None
    trust_pickle: bool = False
    classes: str | None = None  # a names file: one per line, or a JSON list
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def is_file(self) -> bool:
        return Path(self.model).is_file()

    def ships_as_file(self) -> bool:
        """Whether a Ray actor can read the model file itself and get the same model: an
        fcn-cam model file said nothing more about (a TorchScript or pickled file, or one with
        overrides, is converted once here and sent as an object)."""
        from .importers.checkpoint import is_torchscript

        return (self.is_file() and not self.trust_pickle and not is_torchscript(Path(self.model))
                and all(v is None for v in self.overrides().values()))

    def overrides(self) -> dict[str, Any]:
        """What the user says about the model, as :func:`fcn_cam.zoo.load_arch` takes it."""
        return {"class_names": self.classes, "input_size": self.input_size, "mean": self.mean, "std": self.std}

    def identity(self) -> dict[str, Any]:
        """What identifies the model across runs (part of the record key)."""
        from .files import file_identity

        said = {k: v for k, v in self.overrides().items() if v is not None}
        if said.get("class_names"):  # a names file counts by the names it holds
            from .importers.checkpoint import read_class_names

            said["class_names"] = read_class_names(said["class_names"])
        if self.is_file():
            return {**file_identity(Path(self.model)), **said}
        weights = file_identity(Path(self.weights)) if Path(self.weights).is_file() else self.weights
        return {"arch": self.model, "weights": weights, "output_stride": self.output_stride, **said}

    def open(self, device: str = "cpu", notes: list[str] | None = None) -> FCN:
        """The converted model on ``device``; what was done to get it goes into ``notes``."""
        from . import cache, zoo
        from .registry import NAMES
        from .runtime import resolve_device

        dev = resolve_device(device)
        if not self.is_file() and self.model not in NAMES and not Path(self.model).exists():
            raise ValueError(f"{self.model}: no such model file, and not a model fcn-cam knows by name "
                             f"({', '.join(NAMES)})")
        if self.model in NAMES and not self.is_file():
            kw = {"trust_pickle": self.trust_pickle, **self.overrides()}
            if self.weights == zoo.RANDOM:  # nothing worth keeping
                return zoo.load_arch(self.model, self.weights, output_stride=self.output_stride, device=dev,
                                     **kw)
            fcn, cached = cache.cached_arch(self.model, self.weights, self.output_stride, dev, **kw)
            if not cached and notes is not None:
                notes.append(f"note: converted {self.model} ({fcn.info.get('weights')} weights) once; later "
                             f"runs start from the cache in {cache.cache_dir()}")
            return fcn
        return self._file(dev)

    def _file(self, device) -> FCN:
        from .modelfile import ModelFileError, load
        from .zoo import apply_overrides

        try:
            fcn = load(self.model, map_location=device)
        except ModelFileError:
            fcn = self._checkpoint(device)
        if self.output_stride is not None and self.output_stride != fcn.info["output_stride"]:
            raise ValueError(
                f"{self.model}: was converted with output stride {fcn.info['output_stride']}; "
                f"re-run `fcn-cam convert` with --output-stride {self.output_stride}"
            )
        return apply_overrides(fcn, self.model, **self.overrides())

    def _checkpoint(self, device) -> FCN:
        """A file holding a model rather than an fcn-cam file (TorchScript; a pickled model with
        ``trust_pickle``): converted as a Python model; anything else keeps the model file's refusal."""
        from .importers.checkpoint import open_checkpoint
        from .modelfile import ModelFileError, read
        from .zoo import WeightsError, load_checkpoint

        try:
            form = open_checkpoint(self.model, trust_pickle=self.trust_pickle).form
        except WeightsError as e:
            if "--trust-pickle" in str(e):
                raise
            form = None
        if form not in ("torchscript", "pickle"):
            read(self.model)  # the model file's own one-line refusal
            raise ModelFileError(f"{self.model}: not an fcn-cam model file")
        return load_checkpoint(self.model, trust_pickle=self.trust_pickle, output_stride=self.output_stride,
                               device=device, **{k: v for k, v in self.overrides().items() if v is not None})


# -- planning ------------------------------------------------------------------------------


@dataclass
class Tally:
    """What a run did so far."""

    total: int = 0
    written: int = 0
    failed: int = 0
    skipped: int = 0

    @property
    def not_done(self) -> int:
        return self.total - self.written - self.failed - self.skipped


@dataclass
class Event:
    """Something a run reports: ``record`` (a written image's JSON line), ``error``,
    ``skipped`` or ``note`` (one line each), ``progress`` (``done`` of ``todo``, the image's name)."""

    kind: str
    text: str = ""
    record: dict | None = None
    done: int = 0
    todo: int = 0


@dataclass
class ExplainJob:
    """A planned ``explain`` run (:func:`plan_explain`); carried out by :func:`run`."""

    fcn: FCN
    spec: ModelSpec
    settings: Settings  # resolved on fcn
    runtime: Runtime
    output: Output
    todo: list[Path]
    refused: list[str]  # one line per image over the memory budget
    out: OutputDir | None
    notes: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    folder_notes: int = 0  # how many of the folder's repair / invalid-line notes were reported
    ray: dict[str, Any] | None = None  # address, actors, num_gpus


def request_of(settings: Settings, spec: ModelSpec, runtime: Runtime) -> dict[str, Any]:
    """Every option that changes what is written, for the record key (:mod:`fcn_cam.outputs`
    adds the overlay colours): the resolved settings, the model's identity, the precision."""
    return {"settings": settings.as_request(), "model": spec.identity(), "precision": runtime.precision}


def _open_prepared(spec: ModelSpec, runtime: Runtime, ray: bool, notes: list[str]) -> FCN:
    from .runtime import prepare

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fcn = spec.open("cpu" if ray else runtime.device, notes)
        if not ray:  # with Ray each actor prepares its own copy, on its own device
            fcn = prepare(fcn, copy=False, **runtime.prepare_kwargs())
    notes += [f"warning: {w.message}" for w in caught]
    return fcn


def _check_square(fcn: FCN, s: Settings, budget: int | None) -> None:
    """Refuse scales whose smallest input (a square image) is already over the budget."""
    from .explanation import sides
    from .geometry import input_activation_bytes

    if budget is None:
        return
    side_list = sides(fcn, s.scale)
    need = max(input_activation_bytes(fcn, (n, n), [n], s.pad) for n in side_list)
    if need > budget:
        raise ValueError(
            f"--scale {' '.join(f'{x:g}' for x in s.scale)} needs about {gib(need)} of activations "
            f"even for a square image (network input {max(side_list)} px), over the limit of "
            f"{gib(budget)}; use a smaller scale or raise --max-memory")


def find_inputs(images: Sequence[Path], out: OutputDir | None, ray: bool, notes: list[str]) -> list[Path]:
    """The image files under ``images`` (folders recursively; with Ray also list files and
    globs), without anything inside the output folder (its files are never inputs)."""
    from . import distributed
    from .images import find_images
    from .outputs import is_output_name

    expand = distributed.image_paths if ray else find_images
    paths = list(expand(images, exclude=[out.root] if out else []))
    if out:
        root = os.path.realpath(out.root)  # (a folder that is also the output folder holds our files)
        paths = [p for p in paths if not (os.path.realpath(p.parent) == root and is_output_name(p.name))]
        kept = set(paths)
        ours = [p for p in map(Path, images)
                if p.is_file() and p not in kept and Path(root) in Path(os.path.realpath(p)).parents]
        if ours:
            notes.append(f"note: skipped {len(ours)} input(s) inside the output folder {out.root} (e.g. "
                         f"{ours[0].name}): what is there is fcn-cam's own output, never an input")
        out.protect = {Path(os.path.realpath(p)) for p in paths}
    if not paths:
        inside = notes and "inside the output folder" in notes[-1]
        why = f" ({notes[-1].removeprefix('note: ')})" if inside else ""
        raise ValueError(f"no images found in the given paths{why}")
    return paths


def _open_folder(output: Output, request: dict[str, Any], notes: list[str]) -> OutputDir | None:
    """The output folder, or None (``--no-save``); a default folder that cannot be used says
    how to choose another."""
    from .errors import OutputError
    from .outputs import OutputDir

    if output.dir is None:
        return None
    try:
        out = OutputDir(output.dir, request=request, **output.folder_kwargs())
    except OutputError as e:
        if output.implicit:
            raise OutputError(f"{e}; pass -o DIR to write elsewhere, or --no-save") from None
        raise
    if out.cleaned:
        notes.append(f"note: removed {len(out.cleaned)} temporary files left by an interrupted run in "
                     f"{output.dir}")
    return out


def plan_explain(
    images: Sequence[Path], spec: ModelSpec, settings: Settings, runtime: Runtime, output: Output, *,
    max_memory: str | int | None = "auto", ray: dict[str, Any] | None = None,
) -> ExplainJob:
    """Everything ``explain`` decides before the first image is decoded.

    Raises:
        ValueError, ModelFileError, WeightsError, ConversionError, OutputError: one line each.
    """
    from .explanation import sides
    from .files import shown
    from .geometry import input_activation_bytes
    from .images import header_size
    from .render import check_colormap

    check_colormap(output.colormap)
    budget = budget_of(max_memory)
    if ray is not None:  # missing Ray: one line now, not after the model is loaded
        from .distributed import require_ray

        require_ray()
    notes: list[str] = []
    fcn = _open_prepared(spec, runtime, ray is not None, notes)
    s = settings.for_model(fcn)
    if s.top_k < settings.top_k:
        notes.append(f"note: --top-k {settings.top_k} is more than the model's {fcn.num_classes} classes; "
                     f"explaining all {fcn.num_classes}")
    _check_square(fcn, s, budget)
    out = _open_folder(output, request_of(s, spec, runtime), notes)
    try:
        paths = find_inputs(images, out, ray is not None, notes)
    except BaseException:
        if out:
            out.close()
        raise
    job = ExplainJob(fcn, spec, s, runtime, output, [], [], out, notes, Tally(total=len(paths)), ray=ray)
    side_list = sides(fcn, s.scale)
    for p in paths:  # resume and budget: decided before anything is decoded
        if out and out.done(p):
            job.tally.skipped += 1
            continue
        size = header_size(p) if budget is not None else None  # (quiet: no PIL warning)
        need = input_activation_bytes(fcn, size, side_list, s.pad) if size else 0
        if budget is not None and need > budget:
            job.refused.append(
                f"{shown(p)}: {size[0]}×{size[1]} at --scale {' '.join(f'{x:g}' for x in s.scale)} needs about "
                f"{gib(need)} of activations, over the limit of {gib(budget)} (--max-memory)")
            continue
        job.todo.append(p)
    folder_notes(job)
    if job.tally.skipped:
        notes.append(f"skipped {job.tally.skipped} of {len(paths)} images already done in {output.dir} "
                     "(--overwrite redoes them)")
    return job


def folder_notes(job: ExplainJob) -> list[str]:
    """The output folder's notes not reported yet (a torn line moved aside, an invalid line
    to be redone: :attr:`OutputDir.repaired`, :attr:`OutputDir.invalid`), added to the job's."""
    if job.out is None:
        return []
    new = [f"note: {line}" for line in [*job.out.repaired, *job.out.invalid][job.folder_notes:]]
    job.folder_notes += len(new)
    job.notes += new
    return new


# -- running -------------------------------------------------------------------------------


def _results(job: ExplainJob) -> Iterator[Result]:
    """The executor: the local explain path, or the same over a Ray cluster."""
    from .explanation import explain_files
    from .images import load_image

    if job.ray is None or not job.todo:  # (nothing left to do: no need to start Ray)
        return explain_files(job.fcn, job.todo, job.settings, batch_size=job.runtime.batch_size,
                             load=functools.partial(load_image, max_pixels=job.runtime.max_pixels))
    from . import distributed

    out = job.out
    writing = {**job.output.folder_kwargs(), "request": request_of(job.settings, job.spec, job.runtime),
               "protect": out.protect} if out else {}
    # a model file is read by each actor; an architecture goes through the object store
    shipped = job.spec.model if job.spec.ships_as_file() else job.fcn
    return distributed.explain_dataset(
        shipped, job.todo, job.output.dir if out else None, address=job.ray.get("address"),
        actors=job.ray.get("actors"), num_gpus=job.ray.get("num_gpus", 0),
        runtime=job.runtime.prepare_kwargs(), output=writing, max_pixels=job.runtime.max_pixels,
        settings=job.settings, batch_size=job.runtime.batch_size)


@contextlib.contextmanager
def _torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (None: as they are) for the block, restored after."""
    if n is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


#: What a folder's record adds to the explanation's own (:mod:`fcn_cam.outputs`).
STORAGE_FIELDS = ("key", "request", "files")


def run(job: ExplainJob, emit: Callable[[Event], None]) -> Tally:
    """Carry out ``job``: every result committed (:func:`fcn_cam.records.commit`) and
    reported through ``emit`` by the writer thread, in input order (Ray: completion order).

    ``emit`` receives ``error`` events for the images refused by the budget first, then a
    ``record``, ``error`` or ``skipped`` event per image and a ``progress`` event after each.
    An interruption (:class:`Interrupted`, KeyboardInterrupt) lets the writer finish what it
    has started, closes the folder and propagates; ``job.tally`` says what was done.
    """
    from .explanation import prefetch
    from .files import shown
    from .records import commit

    tally = job.tally
    for line in job.refused:
        tally.failed += 1
        emit(Event("error", line))

    def finish(r: Result) -> Result:
        commit(job.out, r)
        if r.skipped is not None:
            tally.skipped += 1
            emit(Event("skipped", r.skipped))
        elif r.error is not None:
            tally.failed += 1
            emit(Event("error", r.error))
        else:
            tally.written += 1
            record = r.record
            if job.output.implicit:  # the plain record, as without a folder
                record = {k: v for k, v in record.items() if k not in STORAGE_FIELDS}
            emit(Event("record", record=record))
        return r

    with _torch_threads(job.runtime.threads):
        stream = prefetch(finish, _results(job), workers=1, depth=4)
        try:
            for i, r in enumerate(stream, 1):
                emit(Event("progress", shown(r.path.name), done=i, todo=len(job.todo)))
            stream.close()
            if job.output.report and job.out:  # also after failures: what was written is there to browse
                _report(job, emit)
        finally:
            stream.close()  # lets the writer finish (and report) what it has started
            for line in folder_notes(job):  # lines another process damaged meanwhile
                emit(Event("note", line))
            if job.out:
                job.out.close()
    return tally


def _report(job: ExplainJob, emit: Callable[[Event], None]) -> None:
    """Write the folder's HTML gallery (:func:`fcn_cam.report.write_report`); a failure to
    write it counts as a failure of the run."""
    from .report import ReportError, write_report

    try:
        emit(Event("note", f"report: {write_report(job.output.dir)}"))
    except (ReportError, OSError) as e:
        job.tally.failed += 1
        emit(Event("error", f"report: {e}"))


def where_written(job: ExplainJob) -> str | None:
    """The line that says where a run without ``-o`` put what it wrote."""
    if not (job.output.implicit and job.tally.written):
        return None
    return (f"wrote overlays and maps of {job.tally.written} image(s) to {job.output.dir}/ (records in "
            f"{job.out.jsonl}); -o DIR writes elsewhere, --no-save only prints")


def summary(job: ExplainJob, interrupted: bool = False) -> str | None:
    """The closing line of a run, or None when every image was written or skipped."""
    t = job.tally
    if interrupted:
        where = f"; records in {job.out.jsonl}; run the same command again to resume" if job.out else ""
        return (f"interrupted: {t.written} written, {t.failed} failed, {t.skipped} skipped, "
                f"{t.not_done} not done{where}")
    if t.failed:
        done = f" ({t.skipped} skipped as done)" if t.skipped else ""
        return f"{t.failed} of {t.total} images failed{done}"
    return None


# -- signals -------------------------------------------------------------------------------


class Interrupted(KeyboardInterrupt):  # noqa: N818 - it is a KeyboardInterrupt, by any signal
    """A terminating signal arrived; ``code`` is the exit status to end with (128 + signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.code = signum, 128 + signum


TERMINATING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def terminating_signals(signals: Sequence[int] = TERMINATING) -> Iterator[None]:
    """Within the block the first of ``signals`` raises :class:`Interrupted` (so that the run
    ends as after Ctrl-C: summary, consistent folder) and a second exits at once with
    128 + its number. The previous handlers are restored on exit. Only the main thread can
    receive signals; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        if seen:
            os._exit(128 + signum)
        seen.append(signum)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)

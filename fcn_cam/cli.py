"""The ``fcn-cam`` command: parses options, calls the API, prints, sets the exit code.

Every command is an API function first (:mod:`fcn_cam.jobs`, :mod:`fcn_cam.zoo`, …); this
module imports neither torch nor the model code at import time, so ``fcn-cam --help`` is
instant and shows the defaults of :mod:`fcn_cam.settings`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .errors import EXPECTED
from .registry import NAMES
from .settings import DEFAULT_MODEL, DEFAULT_OUTPUT, DEFAULT_SCALE, DEFAULT_WEIGHTS, Output, Runtime, Settings

if TYPE_CHECKING:
    from .jobs import Event

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings are wrapped by hand: join their lines
    no_args_is_help=True,
    help="Class Activation Maps for CNNs with fully-connected heads (VGG, AlexNet, …) "
    "by exact FC→conv surgery.",
)


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line (bad input, not a bug)."""
    return EXPECTED


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def echo_err(text: str) -> None:
    typer.echo(text, err=True)


# -- option parsing (strings → values; the API checks the values) -------------------------


def floats3(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(
            f"--{name} {text!r}: expected three comma-separated numbers, e.g. 0.485,0.456,0.406"
        ) from None
    if len(values) != 3:
        raise ValueError(f"--{name} {text!r}: expected three values (R, G, B), got {len(values)}")
    return values


def size_option(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"--input-size {text!r}: expected N or HxW, e.g. 224 or 224x224")
    return (parts[0], parts[-1])


def normalization(mean: str | None, std: str | None, scale_01: bool) -> dict:
    if scale_01 and (mean or std):
        raise ValueError("--scale-01 means mean 0 and std 1; do not combine it with --mean/--std")
    if scale_01:
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    out = {}
    if mean is not None:
        out["mean"] = floats3(mean, "mean")
    if std is not None:
        out["std"] = floats3(std, "std")
    return out


# -- convert -------------------------------------------------------------------------------

Arch = Annotated[str, typer.Argument(
    help=f"One of: {', '.join(NAMES)}; an ONNX file (model.onnx); or a file holding a whole model "
    "(TorchScript, or torch.save(model) with --trust-pickle).")]
OutFile = Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")]
Weights = Annotated[str, typer.Option(
    help="torchvision weights name (DEFAULT, IMAGENET1K_V1, …), 'random', or a checkpoint file: a state "
    "dict in torchvision's layout (any class count; DataParallel, torch.compile, Lightning prefixes; nested "
    "in a training checkpoint), TorchScript, or a pickled model with --trust-pickle.")]
TrustPickle = Annotated[bool, typer.Option(
    "--trust-pickle", help="Allow a file holding a pickled model (torch.save(model)): unpickling runs code "
    "from the file; use only for files you trust.")]
Stride = Annotated[int | None, typer.Option(
    help="Score-map stride in input pixels (32 native; 16 or 8 by dilation).")]
InputSize = Annotated[str | None, typer.Option(
    help="The size the model was trained at (N or HxW); default: the architecture's (224), or the ONNX "
    "graph's.")]
Mean = Annotated[str | None, typer.Option(
    help="Per-channel mean of [0, 1] RGB pixels the model expects (default ImageNet's).")]
Std = Annotated[str | None, typer.Option(help="Per-channel std (default ImageNet's).")]
Scale01 = Annotated[bool, typer.Option(
    "--scale-01", help="The model takes [0, 1] pixels as they are (Keras models rescaled by 1/255).")]
FlattenOrder = Annotated[str | None, typer.Option(
    help="ONNX: assert the order the graph flattens its features in (chw, hwc, whc, …); read from the "
    "graph's Transpose.")]
ModelOutput = Annotated[str | None, typer.Option(
    help="ONNX: the graph output holding the class scores (name or index), if there are several.")]
KeepSoftmax = Annotated[bool, typer.Option(
    help="Keep a final Softmax as a softmax over the class maps (default: dropped, maps are logits).")]
Classes = Annotated[Path | None, typer.Option(
    help="Class names: a text file (one per line) or a JSON list; must match the head's class count.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing output file.")]
ConvertDevice = Annotated[str, typer.Option(help="Convert and check on: auto, cpu, cuda, cuda:N, mps.")]


@app.command()
def convert(
    arch: Arch, output: OutFile, weights: Weights = DEFAULT_WEIGHTS, output_stride: Stride = None,
    trust_pickle: TrustPickle = False, classes: Classes = None, input_size: InputSize = None, mean: Mean = None,
    std: Std = None, scale_01: Scale01 = False, flatten_order: FlattenOrder = None,
    model_output: ModelOutput = None, keep_softmax: KeepSoftmax = False, overwrite: Overwrite = False,
    device: ConvertDevice = "cpu",
) -> None:
    """Convert a torchvision classifier (with any checkpoint), an ONNX file or a saved model,
    check it against the original, save it."""
    from .jobs import convert_file

    onnx = {k: v for k, v in (("flatten_order", flatten_order), ("keep_softmax", keep_softmax)) if v}
    try:
        fcn = convert_file(arch, output, weights=weights, output_stride=output_stride, overwrite=overwrite,
                           device=device, trust_pickle=trust_pickle, classes=classes,
                           input_size=size_option(input_size), model_output=model_output,
                           **normalization(mean, std, scale_01), **onnx)
    except (*expected_errors(), OSError) as e:
        raise fail(str(e)) from None
    ex = fcn.info["exactness"]
    dropped = f", dropped {', '.join(fcn.info['dropped'])}" if fcn.info.get("dropped") else ""
    typer.echo(
        f"wrote {output}: {fcn.info['arch']} ({fcn.info['weights']} weights), {fcn.info['head']} head, "
        f"{fcn.num_classes} classes, flatten order {fcn.info['flatten_order']}, output stride "
        f"{fcn.info['output_stride']}{dropped}; logits reproduced to {ex['max_abs_diff']:.2g} "
        f"({ex['rel_diff']:.2g} relative), same top-1: {ex['top1_agree']}"
    )


# -- explain -------------------------------------------------------------------------------

Images = Annotated[list[Path], typer.Argument(help="Image files and/or directories.")]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="A model file from `fcn-cam convert`, or an architecture name (converted once, "
    "then read from the cache; with --weights as for `convert`).")]
ScaleOpt = Annotated[list[float] | None, typer.Option(
    help="Shorter side = scale × input size; repeat to fuse several scales "
    f"(default: {' and '.join(f'{v:g}' for v in DEFAULT_SCALE)}, fused).")]
ClassOpt = Annotated[str | None, typer.Option(
    "--class", help="Target class index or name (default: the best class).")]
TopK = Annotated[int, typer.Option(help="Explain the K best classes.", min=1)]
MapsOpt = Annotated[str, typer.Option(
    help="'scores': the window score maps; 'cells': their exact decomposition over feature cells (one "
    "backward pass through the head only).")]
PadOpt = Annotated[str, typer.Option(
    help="'features': zero-pad the feature map until the windows cover the whole image (cheap: the body "
    "sees the unpadded image); or pad the input with the mean colour: 'cover' just enough that the map's "
    "cells cover the whole image, 'window' as for score maps; 'none' (the outer band repeats its "
    "neighbour).")]
NoPad = Annotated[bool, typer.Option("--no-pad", help="Same as --pad none.")]
Clamp = Annotated[bool, typer.Option(help="Clamp heatmaps at 0 (no negative evidence).")]
Rank = Annotated[str, typer.Option(
    help="Rank classes by the spatial 'mean' or 'max' of their maps; 'auto': mean for GAP heads (= the "
    "logits), max (the strongest window) for FC heads.")]
OutDir = Annotated[Path | None, typer.Option(
    "-o", "--output-dir", help="Write overlays, raw maps and explanations.jsonl here (default: "
    f"./{DEFAULT_OUTPUT}, or $FCN_CAM_OUTPUT, redoing the images given).")]
NoSave = Annotated[bool, typer.Option("--no-save", help="Write nothing: only print the JSON lines.")]
Colormap = Annotated[str, typer.Option(help="Matplotlib colormap for overlays.")]
Alpha = Annotated[float, typer.Option(help="Heatmap opacity in overlays.", min=0, max=1)]
BoxFraction = Annotated[float | None, typer.Option(
    help="Box = largest region above this fraction of the heatmap's range (default per map kind, chosen on "
    "validation).", min=0, max=1)]
BatchSize = Annotated[int, typer.Option(help="Images per forward pass.", min=1)]
ArchWeights = Annotated[str, typer.Option(
    help="Weights when --model is an architecture name: as `fcn-cam convert --weights`.")]
ArchStride = Annotated[int | None, typer.Option(help="Score-map stride when --model is an architecture name.")]
Precision = Annotated[str, typer.Option(
    help="auto (bf16 only where the hardware has bf16 units, else fp32), fp32, bf16, or fp16 (GPU).")]
Device = Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:N, mps.")]
ChannelsLast = Annotated[bool, typer.Option(help="Channels-last memory format.")]
Threads = Annotated[int | None, typer.Option(
    help="torch's CPU threads for the run (default: torch's own).", min=1)]
MaxMemory = Annotated[str, typer.Option(
    help="Refuse an image whose estimated activation memory (from the layers' channel counts and the input "
    "size) exceeds this: e.g. 4G, 512M, or none. Default: 3/4 of the RAM.")]
MaxPixels = Annotated[int, typer.Option(
    help="Refuse images whose header declares more pixels than this (decompression bombs).", min=1)]
OverwriteRecords = Annotated[bool, typer.Option(
    help="Redo the given images, replacing their records and files (others are kept).")]
Ray = Annotated[str | None, typer.Option(
    metavar="ADDRESS",
    help="Run on Ray (pip install 'fcn-cam\\[ray]'): 'local' starts a Ray instance on this machine, 'auto' "
    "joins the cluster running here, HOST:6379 or ray://HOST:10001 a remote one. IMAGES may then also be "
    "list files (.txt) and quoted globs.")]
RayActors = Annotated[int | None, typer.Option(
    help="With --ray: model actors (default: one per 4 CPUs of the cluster, at most).", min=1)]
RayGpus = Annotated[float, typer.Option(help="With --ray: GPUs per model actor.", min=0)]
ReportOpt = Annotated[bool, typer.Option(
    "--report", help="Write OUTPUT_DIR/index.html at the end: a gallery of every record in the folder, to "
    "open in a browser (as `fcn-cam report`).")]


def explained_settings(scale, class_, top_k, maps, pad, no_pad, clamp, rank, box_fraction) -> Settings:
    """explain's options as :class:`Settings` (``compare`` and ``evaluate`` take the same)."""
    return Settings(scale=tuple(scale or DEFAULT_SCALE), maps=maps, pad="none" if no_pad else pad, clamp=clamp,
                    target=class_, top_k=top_k, box_fraction=box_fraction, rank=rank)


def printer(progress: bool):
    """What ``explain`` shows of a run's events: records on stdout, the rest on stderr."""

    def emit(ev: Event) -> None:
        if ev.kind == "record":
            from .files import dumps_strict

            typer.echo(dumps_strict(ev.record))
        elif ev.kind == "progress":
            if progress:
                typer.echo(f"\r[{ev.done}/{ev.todo}] {ev.text[:40]:<40}", err=True, nl=False)
        else:
            prefix = {"error": "error: ", "skipped": "skipped: "}.get(ev.kind, "")
            echo_err(("\n" if progress else "") + prefix + ev.text)

    return emit


def run_job(job) -> None:
    """Run a planned job with the terminal's printer; exit 1 if an image failed, 128 + the
    signal's number if interrupted."""
    from .jobs import Interrupted, run, summary, terminating_signals, where_written

    progress = sys.stderr.isatty()
    try:
        with terminating_signals():
            run(job, printer(progress))
    except KeyboardInterrupt as e:
        echo_err("\n" + summary(job, interrupted=True))
        raise typer.Exit(e.code if isinstance(e, Interrupted) else 130) from None
    except expected_errors() as e:  # the executor as a whole failed (a Ray cluster, say)
        raise fail(str(e), 1) from None
    if progress:
        echo_err("")
    where = where_written(job)
    if where:
        echo_err(where)
    line = summary(job)
    if line:
        echo_err(line)
        raise typer.Exit(1)


@app.command()
def explain(
    images: Images, model: ModelOpt = DEFAULT_MODEL, scale: ScaleOpt = None, class_: ClassOpt = None,
    top_k: TopK = Settings.top_k, maps: MapsOpt = Settings.maps, pad: PadOpt = Settings.pad,
    no_pad: NoPad = False, clamp: Clamp = Settings.clamp, rank: Rank = Settings.rank,
    output_dir: OutDir = None, no_save: NoSave = False, colormap: Colormap = Output.colormap,
    alpha: Alpha = Output.alpha,
    box_fraction: BoxFraction = None, batch_size: BatchSize = Runtime.batch_size,
    weights: ArchWeights = DEFAULT_WEIGHTS, output_stride: ArchStride = None, trust_pickle: TrustPickle = False,
    classes: Classes = None, input_size: InputSize = None, mean: Mean = None, std: Std = None,
    precision: Precision = Runtime.precision, device: Device = Runtime.device,
    channels_last: ChannelsLast = Runtime.channels_last, threads: Threads = Runtime.threads,
    max_memory: MaxMemory = "auto", max_pixels: MaxPixels = Runtime.max_pixels,
    overwrite: OverwriteRecords = False, report: ReportOpt = False, ray: Ray = None,
    ray_actors: RayActors = None, ray_gpus: RayGpus = 0,
) -> None:
    """Explain images: one forward pass per image and scale gives every class's map.

    Prints one JSON line per image and writes `<stem>.<key>_cam.png` (overlay at the image's
    size), `<stem>.<key>_cam.npy` (raw map, one per scale) and a line in `explanations.jsonl`
    into the -o folder (default ./fcn-cam-out, said at the end; --no-save writes nothing). In
    an -o folder, images already done are skipped before decoding (run the same command again
    to resume). A file that fails is reported and the rest go on; the exit code is then 1.
    """
    from .jobs import ModelSpec, plan_explain

    try:
        settings = explained_settings(scale, class_, top_k, maps, pad, no_pad, clamp, rank, box_fraction)
        runtime = Runtime(device=device, precision=precision, channels_last=channels_last,
                          batch_size=batch_size, threads=threads, max_pixels=max_pixels)
        look = {"colormap": colormap, "alpha": alpha, "report": report}
        if no_save and (output_dir is not None or report):
            raise ValueError("--no-save writes nothing; do not combine it with -o or --report")
        output = Output.default(**look) if output_dir is None and not no_save else \
            Output(output_dir, overwrite=overwrite, **look)
        ray_opts = {"address": ray, "actors": ray_actors, "num_gpus": ray_gpus} if ray is not None else None
        spec = ModelSpec(model, weights, output_stride, trust_pickle, str(classes) if classes else None,
                         size_option(input_size), **normalization(mean, std, False))
        job = plan_explain(images, spec, settings, runtime, output,
                           max_memory=max_memory, ray=ray_opts)
    except (*expected_errors(), ImportError, OSError) as e:
        raise fail(str(e)) from None
    for note in job.notes:
        echo_err(note)
    run_job(job)


# -- compare, evaluate --------------------------------------------------------------------

Methods = Annotated[list[str] | None, typer.Option(
    "--method", help="A peer to show (Grad-CAM, HiResCAM, Grad-CAM++, Score-CAM, CAM for GAP heads); "
    "repeatable; default: every one that applies.")]
Layer = Annotated[str | None, typer.Option(
    help="The layer the peers hook, by name in the original model (default: the last conv block's output).")]
ProgressOpt = Annotated[bool | None, typer.Option(help="A progress bar on stderr (default: on a terminal).")]
CompareDir = Annotated[Path, typer.Option("-o", "--output-dir", help="Where the figures go.")]
EvalDir = Annotated[Path, typer.Option(
    "-o", "--output-dir", help="Where evaluation.json, evaluation.md and evaluation.jsonl go.")]
Annotations_ = Annotated[Path, typer.Option(
    help="Boxes: a Pascal VOC XML folder, a COCO JSON file, or a CSV (image,x0,y0,x1,y1[,class]).")]
Split = Annotated[float | None, typer.Option(
    help="This share of the images (drawn at random) chooses every method's box fraction and is not "
    "scored; default: the defaults, and the report says so.", min=0, max=1)]
Faithful = Annotated[bool, typer.Option(help="Deletion and insertion AUC (slower).")]


@app.command()
def compare(
    images: Images, model: ModelOpt = DEFAULT_MODEL, output_dir: CompareDir = Path("fcn-cam-compare"),
    method: Methods = None, layer: Layer = None, scale: ScaleOpt = None, class_: ClassOpt = None,
    top_k: TopK = Settings.top_k, maps: MapsOpt = Settings.maps, pad: PadOpt = Settings.pad,
    no_pad: NoPad = False, clamp: Clamp = Settings.clamp, rank: Rank = Settings.rank,
    box_fraction: BoxFraction = None, weights: ArchWeights = DEFAULT_WEIGHTS, device: Device = Runtime.device,
    progress: ProgressOpt = None,
) -> None:
    r"""One figure per image: fcn-cam's map and its other map kind beside Grad-CAM, HiResCAM,
    Grad-CAM++ and Score-CAM (pip install 'fcn-cam\[compare]') for the same class on the
    same model, each with its box, peak, score and time."""
    from .jobs import ModelSpec, compare_files

    notes: list[str] = []
    try:
        s = explained_settings(scale, class_, top_k, maps, pad, no_pad, clamp, rank, box_fraction)
        written = compare_files(images, ModelSpec(model, weights), s, output_dir,
                                runtime=Runtime(device=device, precision="fp32"), notes=notes, methods=method,
                                layer=layer,
                                progress=sys.stderr.isatty() if progress is None else progress)
    except (*expected_errors(), ImportError, OSError) as e:
        raise fail(str(e)) from None
    for line in [*notes, *map(str, written)]:
        typer.echo(line)


@app.command()
def evaluate(
    images: Images, annotations: Annotations_, model: ModelOpt = DEFAULT_MODEL,
    output_dir: EvalDir = Path("fcn-cam-evaluation"), split: Split = None, method: Methods = None,
    layer: Layer = None, faithfulness: Faithful = True, scale: ScaleOpt = None,
    maps: MapsOpt = Settings.maps, pad: PadOpt = Settings.pad, no_pad: NoPad = False,
    clamp: Clamp = Settings.clamp, rank: Rank = Settings.rank, box_fraction: BoxFraction = None,
    weights: ArchWeights = DEFAULT_WEIGHTS, device: Device = Runtime.device, progress: ProgressOpt = None,
) -> None:
    """Localization (box accuracy, pointing, energy) and faithfulness (deletion, insertion)
    of fcn-cam against the peers on your annotated images, with 95 % intervals; writes
    evaluation.md, evaluation.json and one line per image in evaluation.jsonl."""
    from .jobs import ModelSpec, evaluate_files

    notes: list[str] = []
    try:
        s = explained_settings(scale, None, 1, maps, pad, no_pad, clamp, rank, box_fraction)
        evaluate_files(images, ModelSpec(model, weights), s, annotations, peers=method,
                       runtime=Runtime(device=device, precision="fp32"), notes=notes, out_dir=output_dir,
                       split=split, layer=layer, faithfulness=faithfulness,
                       progress=sys.stderr.isatty() if progress is None else progress)
    except (*expected_errors(), ImportError, OSError) as e:
        raise fail(str(e)) from None
    for line in notes:
        echo_err(line)
    typer.echo((output_dir / "evaluation.md").read_text())


# -- export --------------------------------------------------------------------------------

ExportModel = Annotated[str, typer.Argument(
    help="A model file from `fcn-cam convert`, or an architecture name (as for `explain --model`).")]
ExportFile = Annotated[Path, typer.Option("-o", "--output", help="File to write: .onnx, or .pt2 with "
                                          "--format torch-export.")]
ExportFormat = Annotated[str, typer.Option("--format", help="onnx or torch-export.")]
Opset = Annotated[int | None, typer.Option(help="ONNX opset (default: the exporter's).")]
CheckSize = Annotated[list[str] | None, typer.Option(
    "--check-size", help="N or HxW network input the written file is checked at against PyTorch "
    "(repeatable; default 448x448 and 480x672).")]
ExportPad = Annotated[str, typer.Option(help="features (explain's default, inside the graph) or none.")]
ExportRank = Annotated[str, typer.Option(help="How target -1 picks the class: auto, mean, max.")]


@app.command("export")
def export_cmd(
    model: ExportModel, output: ExportFile, format: ExportFormat = "onnx", opset: Opset = None,
    check_size: CheckSize = None, pad: ExportPad = Settings.pad, rank: ExportRank = Settings.rank,
    weights: ArchWeights = DEFAULT_WEIGHTS, output_stride: ArchStride = None, overwrite: Overwrite = False,
) -> None:
    """Export the forward-only CAM graph — score maps, class scores and the cell map of the
    class asked for (or the top one), no autograd — to ONNX or torch.export, with dynamic
    batch and size; the file is kept only if it matches PyTorch when run."""
    from .jobs import ModelSpec, export_file

    try:
        sizes = [size_option(s) for s in check_size] if check_size else None
        r = export_file(ModelSpec(model, weights, output_stride), output, check_sizes=sizes, format=format,
                        opset=opset, overwrite=overwrite, pad=pad, rank=rank)
    except (*expected_errors(), OSError) as e:
        raise fail(str(e)) from None
    worst = max(max(c["scores"], c["class_scores"], c["cells"]) for c in r["check"])
    at = ", ".join(f"{c['size'][0]}×{c['size'][1]}" for c in r["check"])
    opset_txt = f", opset {r['opset']}" if r["opset"] else ""
    typer.echo(f"wrote {output}: {r['bytes'] / 1e6:.1f} MB {format}{opset_txt}; it matches the PyTorch module "
               f"at {at} to {worst:.2g} relative")


# -- report, info, demo ------------------------------------------------------------------------------


@app.command()
def report(
    output_dir: Annotated[Path, typer.Argument(help="An output folder of `fcn-cam explain`.")],
    thumb_size: Annotated[int, typer.Option(
        help="Thumbnails' longest side, in pixels.", min=16, max=2048)] = 256,
) -> None:
    """Write OUTPUT_DIR/index.html: a self-contained gallery of the folder's records, with a
    class filter, sorting and search (open it in a browser; no server, no network). Rerun it
    after more images were explained: only the new thumbnails are made."""
    from .report import ReportError, write_report

    try:
        path = write_report(output_dir, thumb_size=thumb_size)
    except (ReportError, OSError) as e:
        raise fail(str(e)) from None
    typer.echo(str(path))


@app.command()
def info(file: Annotated[Path, typer.Argument(help="A model file from `fcn-cam convert`.")]) -> None:
    """Print a model file's metadata (no code is run to read it)."""
    from .jobs import describe_file
    from .modelfile import ModelFileError

    try:
        meta = describe_file(file)
    except ModelFileError as e:
        raise fail(str(e)) from None
    for key, value in meta.items():
        typer.echo(f"{key:>14}: {json.dumps(value) if isinstance(value, dict | list) else value}")


@app.command()
def demo(
    output_dir: Annotated[Path, typer.Option("-o", "--output-dir", help="Where to write.")] = Path("demo-out"),
    n: Annotated[int, typer.Option("--n", help="Number of scenes.", min=1, max=64)] = 6,
    seed: Annotated[int, typer.Option(help="Scene seed (the scenes are a random sample).")] = 2026,
    scale: Annotated[list[float] | None, typer.Option(
        help="Explain at this scale (repeat to fuse); default: explain's default.")] = None,
    maps: Annotated[str | None, typer.Option(help="scores or cells; default: explain's default.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Offline demo: random held-out scenes, the shipped twin models, overlays and a comparison
    figure, explained with the defaults of `fcn-cam explain`."""
    try:
        from .demo.showcase import run
    except ImportError as e:
        raise fail(f"{e} (install the demo extras: pip install 'fcn-cam[demo]')") from None
    try:
        settings = Settings().replace(**{k: v for k, v in (("scale", scale), ("maps", maps)) if v})
        result = run(output_dir, n=n, seed=seed, overwrite=overwrite, settings=settings)
    except (FileExistsError, ImportError, ValueError) as e:
        raise fail(str(e)) from None
    for s in result["scenes"]:
        typer.echo(f"{s['scene']}: true {s['true_class']}, predicted {s['predicted']}, "
                   f"box {s['box']} (true box {s['true_box']}, IoU {s['iou']:.2f})")
    st = result["settings"]
    typer.echo(f"settings: maps={st['maps']}, scale={st['scale']}, pad={st['pad']}, clamp={st['clamp']}, "
               f"box_fraction={st['box_fraction']}")
    typer.echo(f"FC twin classified {result['correct']} of {len(result['scenes'])} scenes correctly; "
               f"mean IoU of the boxes with the true boxes: {result['mean_iou']:.2f}")
    typer.echo(f"overlays and raw maps: {result['out_dir']}/  records: {result['jsonl']}")
    typer.echo(f"comparison (image | score maps | cell maps | GAP-CAM | Grad-CAM): {result['figure']}")


if __name__ == "__main__":
    app()

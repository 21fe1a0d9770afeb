"""The ``fcn-cam`` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

# Only what the help needs at import: torch and the model code load when a command runs.
from .defaults import DEFAULT_CLAMP, DEFAULT_MAPS, DEFAULT_PAD, DEFAULT_SCALE
from .registry import NAMES

if TYPE_CHECKING:
    from .explanation import Result
    from .surgery import FCN

app = typer.Typer(
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings are wrapped by hand: join their lines
    no_args_is_help=True,
    help="Class Activation Maps for CNNs with fully-connected heads (VGG, AlexNet, …) "
    "by exact FC→conv surgery.",
)


def expected_errors() -> tuple[type[Exception], ...]:
    """The errors a command reports as one line (bad input, not a bug)."""
    from .modelfile import ModelFileError
    from .outputs import OutputError
    from .surgery import ConversionError
    from .zoo import WeightsError

    return ModelFileError, WeightsError, ConversionError, ValueError, FileExistsError, OutputError


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def ray_guarded(results: Iterator[Result]) -> Iterator[Result]:
    """A Ray run that fails as a whole (not one image) ends the command with one line."""
    from .distributed import RayRunError

    try:
        yield from results
    except RayRunError as e:
        raise fail(str(e), 1) from None


def open_model(model: str, weights: str, output_stride: int | None, device: str = "cpu") -> FCN:
    """A model file, or an architecture name converted on the fly."""
    from . import zoo
    from .modelfile import load
    from .runtime import resolve_device

    if model in NAMES and not Path(model).exists():
        return zoo.load_arch(model, weights, output_stride=output_stride, device=resolve_device(device))
    fcn = load(model, map_location=resolve_device(device))
    if output_stride is not None and output_stride != fcn.info["output_stride"]:
        raise ValueError(
            f"{model}: was converted with output stride {fcn.info['output_stride']}; "
            f"re-run `fcn-cam convert` with --output-stride {output_stride}"
        )
    return fcn


def _floats(text: str | None, name: str) -> tuple[float, ...] | None:
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


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise ValueError(f"--input-size {text!r}: expected N or HxW, e.g. 224 or 224x224")
    return (parts[0], parts[-1])


def _normalization(mean: str | None, std: str | None, scale_01: bool) -> dict:
    if scale_01 and (mean or std):
        raise ValueError("--scale-01 means mean 0 and std 1; do not combine it with --mean/--std")
    if scale_01:
        return {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    out = {}
    if mean is not None:
        out["mean"] = _floats(mean, "mean")
    if std is not None:
        out["std"] = _floats(std, "std")
    return out


@app.command()
def convert(
    arch: Annotated[str, typer.Argument(
        help=f"One of: {', '.join(NAMES)}; or an ONNX file (model.onnx).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    weights: Annotated[str, typer.Option(
        help="torchvision weights name (DEFAULT, IMAGENET1K_V1, …), a local state-dict "
        "file in torchvision's layout, or 'random'.")] = "DEFAULT",
    output_stride: Annotated[int | None, typer.Option(
        help="Score-map stride in input pixels (32 native; 16 or 8 by dilation).")] = None,
    input_size: Annotated[str | None, typer.Option(
        help="ONNX: the size the model was trained at (N or HxW), when the graph leaves it free.")] = None,
    mean: Annotated[str | None, typer.Option(
        help="ONNX: per-channel mean of [0, 1] RGB pixels the model expects (default ImageNet's).")] = None,
    std: Annotated[str | None, typer.Option(
        help="ONNX: per-channel std (default ImageNet's).")] = None,
    scale_01: Annotated[bool, typer.Option(
        "--scale-01",
        help="ONNX: the model takes [0, 1] pixels as they are (Keras models rescaled by 1/255).")] = False,
    flatten_order: Annotated[str | None, typer.Option(
        help="ONNX: assert the order the graph flattens its features in (chw, hwc, whc, …); read from "
        "the graph's Transpose.")] = None,
    model_output: Annotated[str | None, typer.Option(
        help="ONNX: the graph output holding the class scores (name or index), if there are several.")] = None,
    keep_softmax: Annotated[bool, typer.Option(
        help="Keep a final Softmax as a softmax over the class maps (default: dropped, maps are "
        "logits).")] = False,
    classes: Annotated[Path | None, typer.Option(
        help="ONNX: a text file with one class name per line.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    device: Annotated[str, typer.Option(help="Convert and check on: auto, cpu, cuda, cuda:N, mps.")] = "cpu",
) -> None:
    """Convert a torchvision classifier or an ONNX file, check it against the original, save it."""
    if output.exists() and not overwrite:
        raise fail(f"{output}: already exists (pass --overwrite)")
    onnx_file = arch.lower().endswith(".onnx")
    if not onnx_file and any(v not in (None, False) for v in (
            input_size, mean, std, scale_01, flatten_order, model_output, classes, keep_softmax)):
        raise fail("--input-size, --mean, --std, --scale-01, --flatten-order, --model-output, "
                   "--keep-softmax and --classes apply to ONNX files; torchvision models carry their own")
    from . import zoo
    from .modelfile import save

    try:
        if onnx_file:
            from .importers.onnx import convert_onnx

            names = None
            if classes is not None:
                names = [line.strip() for line in classes.read_text().splitlines() if line.strip()]
            selected = int(model_output) if model_output is not None and model_output.lstrip("-").isdigit() \
                else model_output
            fcn = convert_onnx(
                arch, _size(input_size), class_names=names, flatten_order=flatten_order,
                output=selected, keep_softmax=keep_softmax, output_stride=output_stride,
                **_normalization(mean, std, scale_01),
            )
        else:
            fcn = zoo.load_arch(arch, weights, output_stride=output_stride, device=device)
        save(fcn, output, overwrite=overwrite)
    except (*expected_errors(), OSError) as e:
        raise fail(str(e)) from None
    ex = fcn.info["exactness"]
    dropped = f", dropped {', '.join(fcn.info['dropped'])}" if fcn.info.get("dropped") else ""
    typer.echo(
        f"wrote {output}: {fcn.info['arch']} ({fcn.info['weights']} weights), {fcn.info['head']} head, "
        f"flatten order {fcn.info['flatten_order']}, output stride {fcn.info['output_stride']}{dropped}; "
        f"logits reproduced to {ex['max_abs_diff']:.2g} ({ex['rel_diff']:.2g} relative), "
        f"same top-1: {ex['top1_agree']}"
    )


def activation_bytes(fcn: FCN, height: int, width: int) -> int:
    """Estimated peak activation memory of one ``height × width`` network input: the largest
    input + output pair of any conv/pool layer (channel counts × sizes from the layers'
    geometry), times 2 for the framework's workspace and residual branches."""
    from torch import nn

    from .geometry import layer_padding, layer_params, spatial_layers

    itemsize = next(fcn.parameters()).element_size()
    size, channels = [height, width], 3
    peak = channels * height * width
    for layer in spatial_layers(fcn):
        k, s, d = layer_params(layer)
        p = [sum(pair) for pair in layer_padding(layer)]  # total padding per axis
        rnd = math.ceil if getattr(layer, "ceil_mode", False) else math.floor
        new = [rnd((size[a] + p[a] - d[a] * (k[a] - 1) - 1) / s[a]) + 1 for a in (0, 1)]
        if min(new) <= 0:
            break
        c = layer.out_channels if isinstance(layer, nn.Conv2d) else channels
        peak = max(peak, channels * size[0] * size[1] + c * new[0] * new[1])
        size, channels = new, c
    return 2 * peak * itemsize


def parse_bytes(text: str) -> int | None:
    """``4G``, ``512M``, ``2.5GB``, a plain byte count, or ``none`` (no limit)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    if t in ("NONE", "0"):
        return None
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if mult > 1 else t) * mult
    except ValueError:
        raise ValueError(f"--max-memory: cannot read {text!r} (use e.g. 4G, 512M or none)") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--max-memory must be positive, got {text!r}")
    return int(value)


def default_memory() -> int:
    """Three quarters of the machine's physical memory."""
    return int(0.75 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**27 else f"{n / 2**20:.1f} MiB"


def input_bytes(fcn: FCN, size: tuple[int, int], sides: list[int], pad: str) -> int:
    """Estimated peak memory to explain an image of ``size`` (width, height) at ``sides``."""
    from .geometry import cover_padding
    from .images import input_shape

    worst = 0
    for side in sides:
        h, w = input_shape(size, side)
        if pad != "none":  # the score maps' cover padding: the larger one
            top, bottom, left, right = cover_padding(fcn, h, w)
            h, w = h + top + bottom, w + left + right
        worst = max(worst, activation_bytes(fcn, h, w))
    return worst


def header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header only, or None (the decoder will say what is wrong)."""
    from PIL import Image

    from .images import check_file

    try:
        check_file(path)
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any problem is reported when the image is decoded
        return None


def model_identity(model: str, weights: str, output_stride: int | None) -> dict:
    p = Path(model)
    if p.is_file():
        st = p.stat()
        return {"file": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return {"arch": model, "weights": weights, "output_stride": output_stride}


# explain options that do not change what is written (everything else is part of the key)
NOT_IN_KEY = frozenset({"images", "output_dir", "overwrite", "batch_size", "channels_last", "max_memory",
                        "model", "weights", "output_stride", "device", "no_pad", "ray", "ray_actors",
                        "ray_gpus"})


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or directories.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="A model file from `fcn-cam convert`, or an architecture name.")],
    scale: Annotated[list[float] | None, typer.Option(
        help="Shorter side = scale × input size; repeat to fuse several scales "
        f"(default: {' and '.join(f'{v:g}' for v in DEFAULT_SCALE)}, fused).")] = None,
    class_: Annotated[str | None, typer.Option(
        "--class", help="Target class index or name (default: the best class).")] = None,
    top_k: Annotated[int, typer.Option(help="Explain the K best classes.", min=1)] = 1,
    maps: Annotated[str, typer.Option(
        help="'scores': the window score maps; 'cells': their exact decomposition over "
        "feature cells (one backward pass through the head only).")] = DEFAULT_MAPS,
    pad: Annotated[str, typer.Option(
        help="'features': zero-pad the feature map until the windows cover the whole image "
        "(cheap: the body sees the unpadded image); or pad the input with the mean colour: "
        "'cover' just enough that the map's cells cover the whole image, 'window' as for score "
        "maps; 'none' (the outer band repeats its neighbour).")] = DEFAULT_PAD,
    no_pad: Annotated[bool, typer.Option("--no-pad", help="Same as --pad none.")] = False,
    clamp: Annotated[bool, typer.Option(help="Clamp heatmaps at 0 (no negative evidence).")] = DEFAULT_CLAMP,
    rank: Annotated[str, typer.Option(
        help="Rank classes by the spatial 'mean' or 'max' of their maps; 'auto': mean for GAP "
        "heads (= the logits), max (the strongest window) for FC heads.")] = "auto",
    output_dir: Annotated[Path | None, typer.Option(
        "-o", "--output-dir", help="Write overlays, raw maps and explanations.jsonl here.")] = None,
    colormap: Annotated[str, typer.Option(help="Matplotlib colormap for overlays.")] = "jet",
    alpha: Annotated[float, typer.Option(help="Heatmap opacity in overlays.", min=0, max=1)] = 0.5,
    box_fraction: Annotated[float | None, typer.Option(
        help="Box = largest region above this fraction of the heatmap's range "
        "(default per map kind, chosen on validation).", min=0, max=1)] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.", min=1)] = 8,
    weights: Annotated[str, typer.Option(help="Weights when --model is an architecture name.")] = "DEFAULT",
    output_stride: Annotated[int | None, typer.Option(
        help="Score-map stride when --model is an architecture name.")] = None,
    precision: Annotated[str, typer.Option(
        help="auto (bf16 only where the hardware has bf16 units, else fp32), fp32, bf16, "
        "or fp16 (GPU).")] = "auto",
    device: Annotated[str, typer.Option(help="auto (CUDA if available), cpu, cuda, cuda:N, mps.")] = "auto",
    channels_last: Annotated[bool, typer.Option(help="Channels-last memory format.")] = True,
    max_memory: Annotated[str, typer.Option(
        help="Refuse an image whose estimated activation memory (from the layers' channel counts "
        "and the input size) exceeds this: e.g. 4G, 512M, or none. Default: 3/4 of the RAM.")] = "auto",
    overwrite: Annotated[bool, typer.Option(
        help="Redo the given images, replacing their records and files (others are kept).")] = False,
    ray: Annotated[str | None, typer.Option(
        metavar="ADDRESS",
        help="Run on Ray (pip install 'fcn-cam\\[ray]'): 'local' starts a Ray instance on this machine, "
        "'auto' joins the cluster running here, HOST:6379 or ray://HOST:10001 a remote one. IMAGES "
        "may then also be list files (.txt) and quoted globs.")] = None,
    ray_actors: Annotated[int | None, typer.Option(
        help="With --ray: model actors (default: one per 4 CPUs of the cluster, at most).", min=1)] = None,
    ray_gpus: Annotated[float, typer.Option(help="With --ray: GPUs per model actor.", min=0)] = 0,
) -> None:
    """Explain images: one forward pass per image and scale gives every class's map.

    Prints one JSON line per image written; with -o also writes `<stem>.<key>_cam.png`
    (overlay at the image's size), `<stem>.<key>_cam.npy` (raw map, one per scale) and a line in
    `explanations.jsonl`; images already done there are skipped before decoding (run the same
    command again to resume). A file that fails is reported and the rest go on; the exit
    code is then 1.
    """
    pad = "none" if no_pad else pad
    params = {k: v for k, v in locals().items() if k not in NOT_IN_KEY}  # (the options only: before imports)
    from . import distributed
    from .explanation import Settings, explain_files, prefetch, resolve_pad, sides
    from .files import dumps_strict
    from .images import find_images
    from .outputs import AlreadyDone, OutputDir, is_output_name, record_of
    from .render import check_colormap
    from .runtime import prepare

    try:
        check_colormap(colormap)
        params["pad"] = pad = resolve_pad(pad)
        budget = default_memory() if max_memory == "auto" else parse_bytes(max_memory)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fcn = open_model(model, weights, output_stride, "cpu" if ray is not None else device)
            if ray is None:  # with --ray each actor prepares its own copy, on its own device
                fcn = prepare(fcn, precision, device, channels_last, copy=False)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        settings = Settings.make(fcn, scale=scale or DEFAULT_SCALE, maps=maps, pad=pad, clamp=clamp,
                                 target=class_, top_k=top_k, box_fraction=box_fraction, rank=rank)
        scales = list(settings.scales)
        k = fcn.num_classes
        if top_k > k:
            typer.echo(f"note: --top-k {top_k} is more than the model's {k} classes; explaining all {k}",
                       err=True)
            top_k = params["top_k"] = k
        side_list = sides(fcn, scales)
        if budget is not None:  # the smallest input these scales can give: a square image
            need = max(input_bytes(fcn, (s, s), [s], pad) for s in side_list)
            if need > budget:
                raise ValueError(
                    f"--scale {' '.join(f'{x:g}' for x in scales)} needs about {gib(need)} of activations "
                    f"even for a square image (network input {max(side_list)} px), over the limit of "
                    f"{gib(budget)}; use a smaller scale or raise --max-memory")
        params.update(scale=scales, model=model_identity(model, weights, output_stride))
        out = OutputDir(output_dir, overwrite=overwrite, request=params, colormap=colormap,
                        alpha=alpha) if output_dir else None
    except expected_errors() as e:
        raise fail(str(e)) from None
    if out and out.cleaned:
        typer.echo(f"note: removed {len(out.cleaned)} temporary files left by an interrupted run in "
                   f"{output_dir}", err=True)
    try:
        expand = distributed.image_paths if ray is not None else find_images
        paths = list(expand(images, exclude=[output_dir] if output_dir else []))
    except ValueError as e:
        raise fail(str(e)) from None
    if out:
        root = os.path.realpath(out.root)
        ours = [p for p in paths if os.path.realpath(p.parent) == root and is_output_name(p.name)]
        paths = [p for p in paths if p not in set(ours)]
        out.protect = {Path(os.path.realpath(p)) for p in paths}
    if not paths:
        raise fail("no images found in the given paths")
    n = len(paths)
    stats = {"written": 0, "failed": 0, "skipped": 0}
    todo = []
    for p in paths:  # resume and budget: decided before anything is decoded
        if out and out.done(p):
            stats["skipped"] += 1
            continue
        size = header_size(p) if budget is not None else None
        need = input_bytes(fcn, size, side_list, pad) if size else 0
        if need > (budget or 0) and budget is not None:
            stats["failed"] += 1
            typer.echo(f"error: {p}: {size[0]}×{size[1]} at --scale {' '.join(f'{x:g}' for x in scales)} "
                       f"needs about {gib(need)} of activations, over the limit of {gib(budget)} "
                       "(--max-memory)", err=True)
            continue
        todo.append(p)
    if stats["skipped"]:
        typer.echo(f"skipped {stats['skipped']} of {n} images already done in {output_dir} "
                   "(--overwrite redoes them)", err=True)
    progress = sys.stderr.isatty()
    options = {"scale": scales, "maps": maps, "target": class_, "top_k": top_k, "box_fraction": box_fraction,
               "batch_size": batch_size, "rank": rank, "pad": pad, "clamp": clamp}
    if ray is None or not todo:  # (nothing left to do: no need to start Ray)
        results = explain_files(fcn, todo, **options)
    else:  # the same explanation over a Ray cluster: actors write through the same OutputDir
        writing = {"overwrite": overwrite, "request": params, "colormap": colormap, "alpha": alpha,
                   "protect": out.protect} if out else {}
        try:
            # a model file is read by each actor; an architecture goes through the object store
            shipped = model if Path(model).is_file() else fcn
            results = ray_guarded(distributed.explain_dataset(
                shipped, todo, output_dir if out else None, address=ray, actors=ray_actors, num_gpus=ray_gpus,
                runtime={"precision": precision, "device": device, "channels_last": channels_last},
                output=writing, **options))
        except ImportError as e:
            raise fail(str(e)) from None

    def finish(r: Result) -> Result:
        """Render, write and print one result (in a writer thread, overlapping the next
        forward); a result is counted and printed only here, so nothing written goes unsaid."""
        if r.error is None and r.record is None:  # (with --ray an actor has written it)
            try:
                r.record = record_of(out, r.explanation, r.image)
            except AlreadyDone as e:
                stats["skipped"] += 1
                typer.echo(f"skipped: {e}", err=True)
                r.image = r.explanation = None
                return r
            except (OSError, ValueError) as e:
                r.error = str(e)
        r.image = r.explanation = None  # keep memory bounded on big folders
        if r.error is not None:
            stats["failed"] += 1
            typer.echo(("\n" if progress else "") + f"error: {r.error}", err=True)
        else:
            stats["written"] += 1
            typer.echo(dumps_strict(r.record))
        return r

    stream = prefetch(finish, results, workers=1, depth=4)
    try:
        for i, r in enumerate(stream, 1):
            if progress:
                typer.echo(f"\r[{i}/{len(todo)}] {r.path.name[:40]:<40}", err=True, nl=False)
    except KeyboardInterrupt:
        stream.close()  # lets the writer finish (and print) what it has started
        where = f"; records in {out.jsonl}; run the same command again to resume" if out else ""
        typer.echo(f"\ninterrupted: {stats['written']} written, {stats['failed']} failed, "
                   f"{stats['skipped']} skipped, {n - sum(stats.values())} not done{where}", err=True)
        raise typer.Exit(130) from None
    finally:
        if out:
            out.close()
    if progress:
        typer.echo("", err=True)
    if stats["failed"]:
        typer.echo(f"{stats['failed']} of {n} images failed"
                   + (f" ({stats['skipped']} skipped as done)" if stats["skipped"] else ""), err=True)
        raise typer.Exit(1)


@app.command()
def info(file: Annotated[Path, typer.Argument(help="A model file from `fcn-cam convert`.")]) -> None:
    """Print a model file's metadata (no code is run to read it)."""
    from .modelfile import ModelFileError, read, validate

    try:
        obj = read(file)
        validate(obj, file)
    except ModelFileError as e:
        raise fail(str(e)) from None
    meta = {}
    for key, value in obj["info"].items():
        if key == "weights_file":
            continue
        meta[key] = value
        wf = obj["info"].get("weights_file")
        if key == "weights" and wf:  # where the weights came from, next to their label
            url = f", from {wf['url']}" if wf.get("url") else ""
            meta["weights_file"] = (f"{wf['path']} ({wf.get('form') or 'file'}, {wf['bytes']:,} bytes{url}), "
                                    f"sha256 {wf['sha256']}")
    names = meta.pop("class_names") or []
    meta["classes"] = f"{len(names)} ({', '.join(names[:3])}{', …' if len(names) > 3 else ''})"
    meta["format"] = f"{obj['format']} v{obj['version']}"
    meta["parameters"] = sum(t.numel() for t in obj["state_dict"].values())
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
    settings = {k: v for k, v in (("scale", scale), ("maps", maps)) if v}
    try:
        result = run(output_dir, n=n, seed=seed, overwrite=overwrite, **settings)
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

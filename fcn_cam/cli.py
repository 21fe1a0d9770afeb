"""The ``fcn-cam`` command: a thin layer over the Python API."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from . import zoo
from .explain import (
    DEFAULT_CLAMP,
    DEFAULT_MAPS,
    DEFAULT_PAD,
    DEFAULT_SCALE,
    Result,
    Settings,
    explain_files,
    prefetch,
)
from .images import find_images
from .modelfile import ModelFileError, load, read, save
from .outputs import OutputDir
from .render import check_colormap
from .runtime import prepare, resolve_device
from .surgery import FCN, ConversionError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Class Activation Maps for CNNs with fully-connected heads (VGG, AlexNet, …) "
    "by exact FC→conv surgery.",
)

EXPECTED = (ModelFileError, zoo.WeightsError, ConversionError, ValueError, FileExistsError)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def open_model(model: str, weights: str, output_stride: int | None, device: str = "cpu") -> FCN:
    """A model file, or an architecture name converted on the fly."""
    if model in zoo.ARCHS and not Path(model).exists():
        return zoo.load_arch(model, weights, output_stride=output_stride, device=resolve_device(device))
    fcn = load(model, map_location=resolve_device(device))
    if output_stride is not None and output_stride != fcn.info["output_stride"]:
        raise ValueError(
            f"{model}: was converted with output stride {fcn.info['output_stride']}; "
            f"re-run `fcn-cam convert` with --output-stride {output_stride}"
        )
    return fcn


@app.command()
def convert(
    arch: Annotated[str, typer.Argument(help=f"One of: {', '.join(zoo.ARCHS)}.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Model file to write.")],
    weights: Annotated[str, typer.Option(
        help="torchvision weights name (DEFAULT, IMAGENET1K_V1, …), a local state-dict "
        "file in torchvision's layout, or 'random'.")] = "DEFAULT",
    output_stride: Annotated[int | None, typer.Option(
        help="Score-map stride in input pixels (32 native; 16 or 8 by dilation).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output file.")] = False,
    device: Annotated[str, typer.Option(help="Convert and check on: auto, cpu, cuda, cuda:N, mps.")] = "cpu",
) -> None:
    """Build a torchvision classifier, convert its head to convolutions, check it, save it."""
    if output.exists() and not overwrite:
        raise fail(f"{output}: already exists (pass --overwrite)")
    try:
        fcn = zoo.load_arch(arch, weights, output_stride=output_stride, device=device)
        save(fcn, output, overwrite=overwrite)
    except EXPECTED as e:
        raise fail(str(e)) from None
    ex = fcn.info["exactness"]
    typer.echo(
        f"wrote {output}: {arch} ({fcn.info['weights']} weights), {fcn.info['head']} head, "
        f"output stride {fcn.info['output_stride']}; logits reproduced to "
        f"{ex['max_abs_diff']:.2g} ({ex['rel_diff']:.2g} relative), same top-1: {ex['top1_agree']}"
    )


@app.command()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files and/or directories.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", help="A model file from `fcn-cam convert`, or an architecture name.")],
    scale: Annotated[list[float] | None, typer.Option(
        help="Shorter side = scale × input size; repeat to fuse several scales.")] = None,
    class_: Annotated[str | None, typer.Option(
        "--class", help="Target class index or name (default: the best class).")] = None,
    top_k: Annotated[int, typer.Option(help="Explain the K best classes.", min=1)] = 1,
    maps: Annotated[str, typer.Option(
        help="'scores': the window score maps; 'cells': their exact decomposition over "
        "feature cells (one backward pass through the head only).")] = DEFAULT_MAPS,
    pad: Annotated[str, typer.Option(
        help="Pad the input with the mean colour: 'cover' just enough that the map's cells "
        "cover the whole image, 'window', or 'none' (the outer band repeats its neighbour).")] = DEFAULT_PAD,
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
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> None:
    """Explain images: one forward pass per image and scale gives every class's map.

    Prints one JSON line per image; with -o also writes `<stem>_cam.png` (overlay at the
    image's size), `<stem>_cam.npy` (raw score map) and `explanations.jsonl`. A file that
    fails is reported and the rest go on; the exit code is then 1.
    """
    pad = "none" if no_pad else pad
    try:
        check_colormap(colormap)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fcn = prepare(open_model(model, weights, output_stride, device), precision, device, channels_last,
                          copy=False)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        Settings.make(fcn, scale=scale or DEFAULT_SCALE, maps=maps, pad=pad, clamp=clamp, target=class_,
                      top_k=top_k, box_fraction=box_fraction, rank=rank)
        out = OutputDir(output_dir, overwrite=overwrite, colormap=colormap, alpha=alpha) if output_dir else None
    except EXPECTED as e:
        raise fail(str(e)) from None
    paths = list(find_images(images))
    if not paths:
        raise fail("no images found in the given paths")
    progress = sys.stderr.isatty()
    failed = 0
    results = explain_files(
        fcn, paths, scale=scale or DEFAULT_SCALE, maps=maps, target=class_, top_k=top_k,
        box_fraction=box_fraction, batch_size=batch_size, rank=rank, pad=pad, clamp=clamp,
    )

    def finish(r: Result) -> Result:
        """Render and write one result (in a writer thread, overlapping the next forward)."""
        if r.error is None:
            try:
                r.record = out.write(r.explanation, r.image) if out else r.explanation.record()
            except (OSError, FileExistsError) as e:
                r.error = str(e)
        r.image = r.explanation = None  # keep memory bounded on big folders
        return r

    for i, r in enumerate(prefetch(finish, results, workers=1, depth=4), 1):
        if progress:
            typer.echo(f"\r[{i}/{len(paths)}] {r.path.name[:40]:<40}", err=True, nl=False)
        if r.error is not None:
            failed += 1
            typer.echo(("\n" if progress else "") + f"error: {r.error}", err=True)
        else:
            typer.echo(json.dumps(r.record))
    if progress:
        typer.echo("", err=True)
    if failed:
        typer.echo(f"{failed} of {len(paths)} images failed", err=True)
        raise typer.Exit(1)


@app.command()
def info(file: Annotated[Path, typer.Argument(help="A model file from `fcn-cam convert`.")]) -> None:
    """Print a model file's metadata (no code is run to read it)."""
    try:
        obj = read(file)
    except ModelFileError as e:
        raise fail(str(e)) from None
    meta = dict(obj["info"])
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

"""Reading images and turning them into network inputs.

Every input — a path, a PIL image, a numpy array or a tensor — goes through one decoding
path (:func:`as_image`): EXIF orientation applied, alpha composited over white, 16-bit
samples scaled to 8 bits (not clipped), palette/CMYK/gray/bilevel converted to RGB.

Arrays (the rule): ``[H, W]`` is gray; a 3-D numpy array is ``[H, W, C]`` (channels last,
PIL's layout) unless only its first dimension is a channel count (1, 3 or 4), then
``[C, H, W]``; a 3-D tensor is ``[C, H, W]`` and a 4-D one ``[1, C, H, W]`` (torch's layout).
C = 1 gray, 3 RGB, 4 RGBA. uint8 is 0…255, uint16 0…65535, floats must lie in [0, 1].

The shorter side is resized to ``scale × input_size`` keeping the aspect ratio, with
PIL's antialiased bilinear filter; PIL's pixel convention (pixel ``j`` covers
``[j, j + 1)``) is the one :mod:`fcn_cam.geometry` maps back with.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError
from .files import shown
from .settings import MAX_PIXELS

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: How a person lifts :data:`MAX_PIXELS` (named in the refusal).
MAX_PIXELS_HINT = "--max-pixels N (max_pixels= in the API) raises it"
BACKGROUND = (255, 255, 255)  # what transparent pixels become, for every kind of input

ImageLike = "Image.Image | np.ndarray | torch.Tensor | str | os.PathLike"


def check_file(path: Path) -> None:
    """Refuse, without opening it, anything that is not a regular file (a FIFO would block
    forever, a device could be endless); name dangling links and link loops."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        what = "dangling symbolic link" if os.path.islink(path) else "no such file"
        raise ImageError(f"{shown(path)}: {what}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageError(f"{shown(path)}: symbolic link loop") from None
        raise ImageError(f"{shown(path)}: cannot read ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageError(f"{shown(path)}: is a directory")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
        raise ImageError(f"{shown(path)}: not a regular file ({kind}); refused without reading it")
    if st.st_size == 0:
        raise ImageError(f"{shown(path)}: empty file")


ORIENTATION = 0x0112  # the EXIF tag


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as upright 8-bit RGB: EXIF orientation, alpha over :data:`BACKGROUND`,
    16/32-bit integer gray scaled to 8 bits (``/ 257``), float gray taken as [0, 1].

    An upright RGB image is returned as it is, not copied (a 24-MP photo is 96 MB in PIL):
    the caller's image is never modified, only read.
    """
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)  # animated: the first frame
    if im.getexif().get(ORIENTATION, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im, dtype=np.float64)
        if im.mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            raise ImageError(f"32-bit integer samples outside 0…65535 (min {a.min():g}, max {a.max():g})")
        im = Image.fromarray(np.rint(a / 257.0).astype(np.uint8), "L")
    elif im.mode == "F":
        im = Image.fromarray(_float_to_u8(np.asarray(im)), "L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba)
    if im.mode == "RGB":
        im.load()  # a file's pixels are read before the file closes
        return im
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageError(f"cannot convert mode {im.mode} to RGB ({e})") from None


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    if not np.isfinite(a).all():
        raise ImageError("float image with NaN or infinite values")
    if a.size and (a.min() < 0 or a.max() > 1):
        raise ImageError(f"float image values must lie in [0, 1] (found {a.min():g} … {a.max():g})")
    return np.rint(a * 255).astype(np.uint8)


def _is_tensor(a: Any) -> bool:
    """Whether ``a`` is a torch tensor, without importing torch (none exists unless it was)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(a, torch.Tensor)


def array_to_image(a: np.ndarray | torch.Tensor) -> Image.Image:
    """An array or tensor as a PIL image, by the module's layout and range rule."""
    if _is_tensor(a):
        torch = sys.modules["torch"]
        t = a.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ImageError(f"a [B, C, H, W] tensor needs B = 1 (got shape {tuple(t.shape)}); "
                                 "pass images one at a time or use explain_files")
            t = t[0]
        if t.ndim == 3:
            t = t.permute(1, 2, 0)
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()
        a = t.numpy()
    else:
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[0] in (1, 3, 4):
            a = np.moveaxis(a, 0, -1)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ImageError(f"array of shape {a.shape} is not an image ([H, W], [H, W, 1|3|4] or [1|3|4, H, W])")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageError(f"array of shape {a.shape} has no pixels")
    if a.dtype == np.uint8:
        u8 = a
    elif a.dtype == np.uint16:
        u8 = np.rint(a / 257.0).astype(np.uint8)
    elif a.dtype == np.bool_:
        u8 = a.astype(np.uint8) * 255
    elif np.issubdtype(a.dtype, np.floating):
        u8 = _float_to_u8(a)
    elif np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageError(f"{a.dtype} values must lie in 0…255 (found {a.min()} … {a.max()}); "
                             "use uint16 for 16-bit data")
        u8 = a.astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {a.dtype}")
    return to_rgb(Image.fromarray(np.ascontiguousarray(u8)))  # L, RGB or RGBA by shape


_PIL_LIMIT = threading.Lock()


@contextlib.contextmanager
def _our_limit() -> Iterator[None]:
    """PIL's global decompression-bomb check off inside, the limit being ours: one limit
    and one message instead of PIL's warning (printed with a site-packages path, at a
    threshold half of the error's). A lock, since the global is shared by the decoding
    threads, and restored on exit. ``warnings.catch_warnings`` is not thread-safe."""
    with _PIL_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def too_many_pixels(path: str | os.PathLike | None, width: int, height: int, max_pixels: int) -> str:
    """The one-line refusal of an image larger than ``max_pixels``."""
    where = f"{shown(path)}: " if path is not None else ""
    return (f"{where}{width}×{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} "
            f"pixels (a possible decompression bomb; {MAX_PIXELS_HINT})")


def open_checked(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """``Image.open`` (the header only) under our pixel limit, not PIL's.

    Raises:
        ImageError: the declared size exceeds ``max_pixels`` (:func:`too_many_pixels`).
        PIL's errors: not an image (``UnidentifiedImageError``), unreadable header.
    """
    with _our_limit():
        im = Image.open(path)
    w, h = im.size
    if w * h > max_pixels:
        im.close()
        raise ImageError(too_many_pixels(path, w, h, max_pixels))
    return im


def header_size(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int] | None:
    """(width, height) from the header only, or None when it cannot be read (the decoder
    will say why); no warning is ever printed. With ``max_pixels``, a larger image is None."""
    try:
        check_file(Path(path))
        with open_checked(path, max_pixels or sys.maxsize) as im:
            return im.size
    except Exception:  # noqa: BLE001 - any problem is reported when the image is decoded
        return None


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file as RGB through :func:`to_rgb`.

    Raises:
        ImageError: missing, not a regular file, empty, not an image, truncated, or a
            declared size over ``max_pixels`` (:func:`too_many_pixels`); the message starts
            with the path (undecodable bytes of the name as ``\\xNN``).
    """
    path = Path(path)
    name = shown(path)
    check_file(path)
    try:
        im = open_checked(path, max_pixels)
        keep = False
        try:
            # Decoding may check frame sizes against PIL's global limit again: above PIL's
            # own limit, only our (explicitly raised) limit applies, so keep PIL's off.
            pil = Image.MAX_IMAGE_PIXELS
            ours = _our_limit() if pil is not None and max_pixels > pil else contextlib.nullcontext()
            with ours:
                out = _checked(to_rgb(im), max_pixels)
            if out is im and getattr(im, "n_frames", 1) > 1:
                out = im.copy()  # the file stays open for the other frames: let it go
            # closing an image also drops its pixels: the file's own image (single frame,
            # loaded, its file already closed by PIL) is returned unclosed
            keep = out is im
            return out
        finally:
            if not keep:
                im.close()
    except ImageError as e:
        raise ImageError(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{name}: not an image PIL can read ({path.stat().st_size} bytes)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # (a frame larger than the image)
        raise ImageError(f"{name}: a frame exceeds the limit of {max_pixels:,} pixels "
                         f"(a possible decompression bomb; {MAX_PIXELS_HINT})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: truncated or corrupt image ({e})") from None


def _checked(im: Image.Image, max_pixels: int = MAX_PIXELS) -> Image.Image:
    if im.width * im.height > max_pixels:
        raise ImageError(too_many_pixels(None, im.width, im.height, max_pixels))
    return im


def as_image(image: Any) -> tuple[Image.Image, str | None]:
    """Any supported input as ``(RGB image, name)``; the name is the path for files.

    Raises:
        ImageError: anything else, with the reason.
    """
    if isinstance(image, str | os.PathLike):
        return load_image(image), str(image)
    if isinstance(image, Image.Image):
        return _checked(to_rgb(image)), None
    if isinstance(image, np.ndarray) or _is_tensor(image):
        return _checked(array_to_image(image)), None
    raise ImageError(f"cannot use a {type(image).__name__} as an image: pass a path, a PIL image, "
                     "a numpy array or a torch.Tensor")


def input_shape(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(H, W) of the network input for an image of ``size`` = (width, height)."""
    w, h = size
    if w <= h:
        return round(h * side / w), side
    return side, round(w * side / h)


def to_input(
    image: Image.Image, side: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Resize the shorter side to ``side`` and normalize: ``[3, H, W]`` float32."""
    import torch

    h, w = input_shape(image.size, side)
    resized = image if (h, w) == (image.height, image.width) else image.resize(
        (w, h), Image.Resampling.BILINEAR
    )
    x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0).permute(2, 0, 1)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


def _inside(p: Path, roots: Sequence[Path]) -> bool:
    return any(p == r or r in p.parents for r in roots)


def find_images(
    inputs: Iterable[str | os.PathLike], exclude: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Expand directories (recursively, sorted, image suffixes only; symbolic links to
    directories are not followed); files pass as given, so that missing, dangling or
    special files are reported by :func:`load_image`. Anything under ``exclude`` (the output
    folder) is left out, so outputs are never read back as inputs."""
    skip = [Path(os.path.realpath(e)) for e in exclude]
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = []
            for dirpath, dirnames, filenames in os.walk(p):  # links, FIFOs … land in filenames
                d = Path(dirpath)
                dirnames[:] = [n for n in dirnames if not _inside(Path(os.path.realpath(d / n)), skip)]
                found += [d / n for n in filenames if Path(n).suffix.lower() in IMAGE_SUFFIXES]
            yield from sorted(found)
        elif not (skip and _inside(Path(os.path.realpath(p)), skip)):
            yield p


#: The pixels of a file that failed to decode (:func:`decode_batch`).
NO_IMAGE = np.zeros((0, 0, 3), np.uint8)


def decode_batch(batch: dict[str, Any], max_pixels: int = MAX_PIXELS) -> dict[str, Any]:
    """Read and decode a batch of files: ``{"path", "read"}`` columns (the name to report,
    the path to open) → ``{"path", "image", "error"}``, an ``[H, W, 3]`` uint8 array or
    :data:`NO_IMAGE` with the reason per file; a failure is that file's, never the batch's.

    Ray's decoding tasks run this: this module imports no torch, so they start fast.
    """
    images, errors = [], []
    for name, path in zip(batch["path"], batch["read"]):
        try:
            images.append(np.asarray(load_image(path, max_pixels)))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - any failure is this file's record, never the run's end
            images.append(NO_IMAGE)
            errors.append(str(e) if isinstance(e, ImageError) else f"{shown(name)}: {type(e).__name__}: {e}")
    return {"path": batch["path"], "image": images, "error": np.array(errors, dtype=object)}

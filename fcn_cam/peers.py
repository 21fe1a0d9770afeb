"""The peers' methods, from pytorch-grad-cam, on the original classifier.

The peers run as their users run them: the original classifier, the image resized to its
native input size, the layer hooked the last convolutional block's output. At its native
input size the converted net *is* the original classifier (the score map has one cell and
equals the logits; for GAP heads its spatial mean does), so :func:`original_model` rebuilds
it from any converted file: ``logits(x) = mean_{h,w} FCN(x)``, the head run as plain
convolutions so that autograd and hooks see ordinary modules.

Maps come back from pytorch-grad-cam at the input size, each min-max scaled to [0, 1]; they
sit on the layer's own grid, so a plain bilinear resize to the original image's size is the
right resampling (as for any layer-grid map).

The true CAM (Zhou et al. 2016) exists only for GAP heads: there the converted head is one
1x1 convolution and the FCN's score map at the native size *is* the CAM,
``M_c = w_c^T f + b_c`` (fcn-cam's ``maps="scores"`` at the native size); pytorch-grad-cam
has no CAM, so it comes from fcn-cam and is named ``CAM``.

pytorch-grad-cam is an optional dependency: ``pip install 'fcn-cam[compare]'``.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from .head import run_head
from .surgery import FCN, eval_mode

#: Name → pytorch-grad-cam class, in the order figures and tables show them.
PEERS: dict[str, str] = {
    "Grad-CAM": "GradCAM",
    "HiResCAM": "HiResCAM",
    "Grad-CAM++": "GradCAMPlusPlus",
    "Score-CAM": "ScoreCAM",
}
#: fcn-cam's own map of the true CAM (GAP heads only).
CAM = "CAM"
#: Images per Score-CAM forward (it runs one forward per feature channel and image).
SCORECAM_BATCH = 64
MISSING = "the peers' methods need pytorch-grad-cam: pip install 'fcn-cam[compare]'"


def require_grad_cam():
    """The ``pytorch_grad_cam`` module, or one line naming the extra."""
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError(MISSING) from None
    return pytorch_grad_cam


def available(fcn: FCN) -> list[str]:
    """The peer methods that apply to this model: the four gradient / score methods, and
    ``CAM`` for GAP heads."""
    return [*PEERS, *([CAM] if fcn.info.get("head") == "gap" else [])]


def resolve_methods(fcn: FCN, methods: Sequence[str] | None) -> list[str]:
    """Check method names (case-insensitive); ``None`` = every available one."""
    avail = available(fcn)
    if methods is None:
        return avail
    lower = {m.lower(): m for m in avail}
    out = []
    for m in methods:
        if m.lower() not in lower:
            if m.lower() == CAM.lower():
                raise ValueError(
                    "method 'CAM' needs a GAP head (global average pool + one Linear); "
                    "this model's head is fully connected"
                )
            close = difflib.get_close_matches(m.lower(), list(lower), n=2)
            hint = f"; did you mean {', '.join(repr(lower[c]) for c in close)}?" if close else ""
            raise ValueError(f"unknown method {m!r} (choose from {', '.join(avail)}){hint}")
        if lower[m.lower()] not in out:
            out.append(lower[m.lower()])
    return out


class Original(nn.Module):
    """The original classifier rebuilt from a converted net: ``[B, 3, H, W]`` at the native
    size → ``[B, K]`` logits, the spatial mean of the score maps (one cell for FC heads).

    ``features`` and ``head`` are the FCN's own modules (shared, not copied).
    """

    def __init__(self, fcn: FCN) -> None:
        super().__init__()
        self.features = fcn.features
        self.head = fcn.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_head(self.head, self.features(x), "conv").mean(dim=(-2, -1))


def original_model(fcn: FCN) -> Original:
    """The original classifier (:class:`Original`). Refuses a net converted with a reduced
    output stride (its body's layers are dilated: the peers would hook a denser grid than
    their users see) or whose native map has several cells without a GAP head."""
    h, w = fcn.input_size
    stride, native = fcn.info.get("output_stride"), fcn.info.get("native_stride")
    if stride != native or (fcn.info.get("head") != "gap" and tuple(fcn.map_size(h, w)) != (1, 1)):
        raise ValueError(
            f"the peers need the original classifier, but this net was converted with output "
            f"stride {stride} (native {native}); convert it at its native stride"
        )
    return Original(fcn)


def target_layer(model: Original, layer: str | None = None) -> tuple[str, nn.Module]:
    """The layer the peers hook, named as in the original classifier (the converted body
    keeps its module names, e.g. ``features.29`` for torchvision's VGG16): ``layer`` by
    name, else the body's last module — the last conv block's output (VGG: pool5, the
    layer pytorch-grad-cam's README hooks on VGG)."""
    named = {n: m for n, m in model.features.named_modules() if n}
    if layer is not None:
        if layer not in named:
            close = difflib.get_close_matches(layer, list(named), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"no layer named {layer!r} in the model's body{hint}")
        return layer, named[layer]
    leaves = [(n, m) for n, m in named.items() if not list(m.children())]
    return leaves[-1] if leaves else ("features", model.features)


def native_input(fcn: FCN, images: Sequence[Image.Image] | np.ndarray) -> torch.Tensor:
    """Images resized to the native input size (bilinear, antialiased) and normalized with
    the model's mean and std: ``[B, 3, H_in, W_in]`` on the model's device.

    ``images`` are PIL images or a ``uint8 [B, H, W, 3]`` batch (the perturbed images of
    deletion / insertion go through the same function).
    """
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        xs = [x]
    else:
        xs = [torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None] for im in images]
    size = tuple(fcn.input_size)
    out = []
    for x in xs:
        x = x.float().div_(255)
        if tuple(x.shape[-2:]) != size:
            x = nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        out.append(x)
    x = torch.cat(out)
    mean = torch.tensor(fcn.info.get("mean", (0.0, 0.0, 0.0)), dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(fcn.info.get("std", (1.0, 1.0, 1.0)), dtype=x.dtype).view(1, 3, 1, 1)
    device = next(fcn.parameters()).device
    return ((x - mean) / std).to(device)


def to_image_size(maps: np.ndarray | torch.Tensor, hw: tuple[int, int]) -> np.ndarray:
    """``[B, h, w]`` layer-grid maps → ``float32 [B, H, W]`` by a plain bilinear resize."""
    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    if tuple(m.shape[-2:]) != tuple(hw):
        m = nn.functional.interpolate(m[:, None], size=tuple(hw), mode="bilinear", align_corners=False)[:, 0]
    return m.numpy().astype(np.float32, copy=False)


@contextlib.contextmanager
def _quiet_score_cam(module) -> Iterator[None]:
    """Score-CAM draws a tqdm bar per image; silence it for the call only (restored after)."""
    sc = module.score_cam
    real = sc.tqdm

    class _NoBar:
        @staticmethod
        def tqdm(it, *a, **k):
            return it

    sc.tqdm = _NoBar
    try:
        yield
    finally:
        sc.tqdm = real


@dataclass
class PeerMaps:
    """One method's maps for a batch: ``float32 [B, H, W]`` per image at its own size (a list,
    since image sizes differ), the explained model's logits ``[B, K]`` and the seconds taken."""

    maps: list[np.ndarray]
    logits: np.ndarray
    seconds: float


def peer_maps(
    fcn: FCN,
    images: Sequence[Image.Image],
    classes: Sequence[int],
    methods: Sequence[str] | None = None,
    layer: str | None = None,
    scorecam_batch: int = SCORECAM_BATCH,
) -> dict[str, PeerMaps]:
    """Maps of the peers' methods for ``classes[b]`` on image ``b``, on the original classifier.

    All images go in as one batch at the native size (pytorch-grad-cam batches the gradient
    methods; Score-CAM loops over images inside, ``scorecam_batch`` masked copies per
    forward). Each map is resized back to its image's size. The model's training flags and
    head mode are restored; hooks live only inside the call.

    Returns:
        ``{method name: PeerMaps}`` in ``methods`` order.
    """
    names = resolve_methods(fcn, methods)
    if not images:
        return {n: PeerMaps([], np.zeros((0, fcn.num_classes), np.float32), 0.0) for n in names}
    out: dict[str, PeerMaps] = {}
    sizes = [(im.height, im.width) for im in images]
    model = original_model(fcn)
    if any(n != CAM for n in names):
        require_grad_cam()  # imported before the clock starts
    t = time.perf_counter()
    x = native_input(fcn, images)
    prep = time.perf_counter() - t
    with eval_mode(fcn):
        for name in names:
            t = time.perf_counter()
            if name == CAM:
                with torch.no_grad():
                    s = fcn(x)
                raw = s[torch.arange(len(images)), torch.as_tensor(list(classes))].float().cpu()
                logits = s.mean(dim=(-2, -1)).float().cpu().numpy()
            else:
                raw, logits = _grad_cam(model, name, x, classes, layer, scorecam_batch)
            maps = [to_image_size(raw[b : b + 1], hw)[0] for b, hw in enumerate(sizes)]
            out[name] = PeerMaps(maps, logits, time.perf_counter() - t + prep)
    return out


def _grad_cam(
    model: Original, name: str, x: torch.Tensor, classes: Sequence[int], layer: str | None, scorecam_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """One pytorch-grad-cam method on a batch: maps at the input size and the logits."""
    pgc = require_grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = getattr(pgc, PEERS[name])
    _, module = target_layer(model, layer)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    quiet = _quiet_score_cam(pgc) if name == "Score-CAM" else contextlib.nullcontext()
    with cls(model=model, target_layers=[module]) as cam, quiet, torch.enable_grad():
        if name == "Score-CAM":
            cam.batch_size = scorecam_batch
        maps = cam(input_tensor=x, targets=targets)
        logits = cam.outputs.detach().float().cpu().numpy()
    return np.asarray(maps, dtype=np.float32), logits

"""The registry's builders (:mod:`fcn_cam.registry`), and where weights come from (one place).

``weights`` is a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1`` …, downloaded and
cached by torchvision under ``$TORCH_HOME/hub/checkpoints``), a local file — a state dict in
torchvision's layout with any class count, wrapped or nested in a training checkpoint, a
pickled model (``trust_pickle=True``) or a TorchScript chain (:mod:`fcn_cam.importers.checkpoint`)
— or ``random``. The model is built with the class count its last Linear has in the
tensors, converted, and labelled with where its weights came from (``info["weights"]``,
``info["weights_file"]``: path, sha256, bytes; ``info["num_classes"]``).
"""

from __future__ import annotations

import os
import urllib.error
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import registry
from .conversion import convert
from .importers.checkpoint import (
    Checkpoint,
    NotAChainError,
    WeightsError,
    file_digest,
    open_checkpoint,
    read_class_names,
)
from .runtime import resolve_device
from .settings import DEFAULT_WEIGHTS
from .surgery import FCN, IMAGENET_MEAN, IMAGENET_STD

RANDOM = "random"
IMAGENET_CLASSES = 1000
#: A ``--weights`` value naming a file rather than torchvision weights.
FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")

ClassNames = Sequence[str] | str | os.PathLike | None
Size = int | tuple[int, int]
Device = str | torch.device

__all__ = ["RANDOM", "WeightsError", "build", "imagenet_classes", "load_arch", "load_checkpoint", "network"]


def imagenet_classes(arch: str) -> list[str]:
    """ImageNet class names from torchvision's weights metadata (no download needed)."""
    import torchvision

    return list(torchvision.models.get_model_weights(arch).DEFAULT.meta["categories"])


def network(arch: str, num_classes: int = IMAGENET_CLASSES) -> nn.Module:
    """torchvision's ``arch`` with ``num_classes`` outputs, randomly initialised (build it
    under ``torch.device("meta")`` to get the shapes only)."""
    import torchvision  # here, not at import: it costs ~160 MB that explaining never needs

    if registry.entry(arch).family == "demo":
        raise ValueError(f"{arch} is a demo twin, not a torchvision architecture")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


# -- weights


def is_weights_file(weights: str) -> bool:
    """Whether ``--weights`` names a file (else a torchvision weights name or ``random``)."""
    p = Path(weights)
    return p.suffix.lower() in FILE_SUFFIXES or p.exists() or os.sep in weights


def _torchvision_weights(arch: str, name: str):
    import torchvision

    enum = torchvision.models.get_model_weights(arch)
    try:
        return enum.DEFAULT if name == DEFAULT_WEIGHTS else enum[name]
    except KeyError:
        choices = ", ".join([DEFAULT_WEIGHTS, *enum.__members__])
        raise WeightsError(
            f"unknown weights {name!r} for {arch}; choose one of: {choices}, a weights file, or {RANDOM!r}"
        ) from None


def _download(arch: str, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """torchvision's weights ``name`` for ``arch`` (a file already in ``$TORCH_HOME/hub/checkpoints``
    is used as it is), loaded with ``weights_only=True``."""
    w = _torchvision_weights(arch, name)
    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(w.url)
    try:
        sd = w.get_state_dict(progress=False, check_hash=True, map_location="cpu", weights_only=True)
    except (urllib.error.URLError, OSError, ConnectionError) as e:
        raise WeightsError(
            f"could not download the {w} weights for {arch} from {w.url} ({e}). If this machine "
            f"is offline, fetch that file elsewhere and put it at {target}, or pass --weights "
            f"/path/to/weights.pth (or --weights {RANDOM} to try things out)"
        ) from e
    except Exception as e:  # noqa: BLE001 - a corrupt file in the cache
        raise WeightsError(f"{target}: not loadable as {w} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]}); delete it to download it again") from None
    return sd, {**file_digest(target), "form": "torchvision", "url": w.url}


def _head_classes(sd: dict[str, torch.Tensor], head: str | None) -> int | None:
    w = sd.get(f"{head}.weight") if head else None
    return int(w.shape[0]) if isinstance(w, torch.Tensor) and w.ndim == 2 else None


def _from_state_dict(
    arch: str, sd: dict[str, torch.Tensor], path: Path | str, ck: Checkpoint | None = None,
) -> nn.Module:
    """torchvision's ``arch`` with the class count of ``sd``'s last Linear, holding ``sd``'s
    tensors (built on the meta device, so no time goes into a random initialisation)."""
    e = registry.entry(arch)
    n = _head_classes(sd, e.head) or IMAGENET_CLASSES
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}  # fp16 checkpoints
    with torch.device("meta"):
        model = network(arch, n)
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as err:
        raise WeightsError(_misfit(arch, e.head, sd, model, path, ck, err)) from None
    return model.eval()


def _misfit(arch: str, head: str | None, sd: dict, model: nn.Module, path, ck: Checkpoint | None, err) -> str:
    """Why ``sd`` does not load into ``arch``: a replaced classifier stack (with the Python
    that converts such a model), or keys/shapes that differ elsewhere."""
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    attr = head.rsplit(".", 1)[0] if head and "." in head else head
    inside = (lambda k: k.startswith(f"{attr}.")) if attr else (lambda k: False)
    body_fits = ({k: s for k, s in want.items() if not inside(k)}
                 == {k: s for k, s in got.items() if not inside(k)})
    stack = _stack(attr, {k: v for k, v in sd.items() if inside(k)}) if attr and body_fits else None
    if stack is None:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        firsts = {k.split(".", 1)[0] for k in got}
        hint = f"; its keys all start with {next(iter(firsts))!r}." if len(firsts) == 1 and len(got) > 1 else ""
        detail = (f"missing {missing[:3]}, unexpected {extra[:3]}" if missing or extra
                  else str(err).splitlines()[-1].strip()[:200])
        return f"{path}: does not fit {arch}: {detail}{hint}"
    layers, described = stack
    load = ck.expression(path) if ck is not None else f"torch.load({str(path)!r})"
    return (
        f"{path}: its {attr} is not torchvision's {arch} head but {described}; a state dict does not say "
        f"which activations sit between them, so convert it in Python (the layers without weights "
        f"below are a guess: write your model's):\n"
        f"    model = torchvision.models.{arch}(); model.{attr} = nn.Sequential({', '.join(layers)})\n"
        f"    model.load_state_dict({load})\n"
        f"    fcn_cam.save(fcn_cam.convert(model.eval(), class_names=None), 'out.pt')"
    )


def _stack(attr: str, sd: dict[str, torch.Tensor]) -> tuple[list[str], str] | None:
    """The layers of a replaced ``attr`` stack, read from its keys ``attr.<i>.<tensor>``:
    Linears and BatchNorms from their tensors, the gaps between them guessed (ReLU, then
    Dropout, as torchvision's heads have them)."""
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        parts = k[len(attr) + 1:].split(".")
        if len(parts) != 2 or not parts[0].isdigit():
            return None
        by_index.setdefault(int(parts[0]), {})[parts[1]] = v
    if not any(t.get("weight") is not None and t["weight"].ndim == 2 for t in by_index.values()):
        return None
    layers, described, gap = [], [], 1  # (a stack opening without weights: Dropout, as torchvision's)
    for i in range(max(by_index) + 1):
        t = by_index.get(i, {})
        w = t.get("weight")
        if w is not None and w.ndim == 2:
            bias = "" if "bias" in t else ", bias=False"
            layers.append(f"nn.Linear({w.shape[1]}, {w.shape[0]}{bias})")
            described.append(f"Linear {w.shape[1]}→{w.shape[0]} ({attr}.{i})")
            gap = 0
        elif "running_mean" in t:
            layers.append(f"nn.BatchNorm1d({t['running_mean'].shape[0]})")
            gap = 0
        elif t:
            return None  # a layer with weights that is neither
        else:
            layers.append("nn.ReLU(inplace=True)" if gap == 0 else "nn.Dropout()")
            gap += 1
    return layers, ", ".join(described)


def build(arch: str, weights: str = DEFAULT_WEIGHTS, *, trust_pickle: bool = False) -> tuple[nn.Module, dict]:
    """A torchvision classifier in eval mode, and where its weights came from.

    Returns:
        ``(model, provenance)`` with provenance ``{"weights": label, "weights_file": {path,
        sha256, bytes, form[, url]} or None, "num_classes": K (None for the user's own module: known
        once converted), "reference": module or None}``;
        ``reference`` is the user's own module when ``model`` was rebuilt from it (the
        conversion is then checked against the user's module).
    """
    e = registry.entry(arch)
    if e.family == "demo":
        raise ValueError(f"{arch} is a demo twin (fcn_cam.zoo.load_arch builds it)")
    if weights == RANDOM:
        return network(arch).eval(), {
            "weights": RANDOM, "weights_file": None, "num_classes": IMAGENET_CLASSES, "reference": None}
    path = Path(weights)
    if not is_weights_file(weights):
        sd, digest = _download(arch, weights)
        return _from_state_dict(arch, sd, digest["path"]), {
            "weights": weights, "weights_file": digest, "num_classes": IMAGENET_CLASSES, "reference": None}
    try:
        ck = open_checkpoint(path, trust_pickle=trust_pickle)
    except NotAChainError as err:  # e.g. a scripted torchvision net: its tensors, checked against its forward
        try:
            model = _from_state_dict(arch, dict(err.archive.state_dict()), path)
        except WeightsError:
            raise err from None
        return model, {"weights": str(path), "weights_file": {**file_digest(path), "form": "torchscript"},
                       "num_classes": _head_classes(model.state_dict(), e.head), "reference": err.archive}
    digest = {**file_digest(path), "form": ck.form}
    reference = None
    if isinstance(ck.value, dict):
        model = _from_state_dict(arch, ck.value, path, ck)
    elif e.kind == "torchvision":  # saved by name: the weights must fit torchvision's net exactly
        reference = ck.value
        model = _from_state_dict(arch, reference.state_dict(), path)
    else:  # the user's own module: its class count is known once converted
        return ck.value, {"weights": str(path), "weights_file": digest, "num_classes": None, "reference": None}
    k = _head_classes(model.state_dict(), e.head)
    return model, {"weights": str(path), "weights_file": digest, "num_classes": k, "reference": reference}


# -- conversion


def _class_names(given: ClassNames) -> tuple[list[str] | None, str]:
    """Names given as a list, or a file (text lines or a JSON list); and how to name them in errors."""
    if given is None:
        return None, ""
    if isinstance(given, str | os.PathLike):
        return read_class_names(given), f"{given}: "
    return list(given), ""


def _finish(
    model: nn.Module, provenance: dict, *, arch: str, input_size: int | tuple[int, int],
    class_names: ClassNames, default_names: list[str] | None, mean: Sequence[float], std: Sequence[float],
    output_stride: int | None, device: str | torch.device,
) -> FCN:
    """Convert ``model`` and record its class names and provenance; names checked against the
    head's class count (before converting where the count is known)."""
    names, where = _class_names(class_names)
    k = provenance.get("num_classes")
    if names is not None and k is not None and len(names) != k:
        raise ValueError(f"{where}{len(names)} class names for the model's {k} classes")
    dev = resolve_device(device)
    reference = provenance.get("reference")
    fcn = convert(
        model.to(dev), input_size, output_stride=output_stride, mean=mean, std=std, arch=arch,
        weights=provenance["weights"], reference=reference.to(dev).eval() if reference is not None else None,
    )
    k = fcn.num_classes
    if names is not None and len(names) != k:
        raise ValueError(f"{where}{len(names)} class names for the model's {k} classes")
    if names is None and default_names is not None and len(default_names) == k:
        names = default_names
    fcn.info.update(class_names=names, weights_file=provenance.get("weights_file"), num_classes=k)
    return fcn


def apply_overrides(
    fcn: FCN, where: str | os.PathLike, *, class_names: ClassNames = None, input_size: Size | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> FCN:
    """A converted model (a model file) with what the user says about it: class names
    (checked against the head), the native input size, the normalization."""
    names, src = _class_names(class_names)
    if names is not None:
        if len(names) != fcn.num_classes:
            k = fcn.num_classes
            raise ValueError(f"{src}{len(names)} class names for the model's {k} classes ({where})")
        fcn.info["class_names"] = names
    if input_size is not None:
        size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        fcn.info["input_size"] = [int(v) for v in size]
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            fcn.info[key] = [float(v) for v in value]
    return fcn


def torchvision_fcn(
    arch: str, weights: str = DEFAULT_WEIGHTS, *, output_stride: int | None = None, device: Device = "cpu",
    trust_pickle: bool = False, class_names: ClassNames = None, input_size: Size | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> FCN:
    """The registry's builder for torchvision architectures (see :func:`load_arch`)."""
    model, provenance = build(arch, weights, trust_pickle=trust_pickle)
    return _finish(
        model, provenance, arch=arch, input_size=input_size or registry.entry(arch).input_size,
        class_names=class_names, default_names=imagenet_classes(arch), mean=mean or IMAGENET_MEAN,
        std=std or IMAGENET_STD, output_stride=output_stride, device=device,
    )


def demo_fcn(
    name: str, weights: str = DEFAULT_WEIGHTS, *, output_stride: int | None = None, device: Device = "cpu",
    trust_pickle: bool = False, class_names: ClassNames = None, input_size: Size | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> FCN:
    """The registry's builder for the shipped demo twins (``demo-fc``: the VGG-shaped FC head;
    ``demo-gap``: its GAP twin); ``weights`` may be ``DEFAULT``/``shipped`` or a checkpoint of
    ``python -m fcn_cam.demo.train_twins``."""
    from .demo.scenes import CLASS_NAMES
    from .demo.twins import INPUT_SIZE, MEAN, STD, twins

    path = None if weights in (DEFAULT_WEIGHTS, "shipped") else weights
    try:
        fc, gap = twins(path)
    except FileNotFoundError as e:
        raise WeightsError(str(e)) from None
    model = fc if name == "demo-fc" else gap
    provenance = {"weights": path or "shipped", "num_classes": None,
                  "weights_file": {**file_digest(path), "form": "twins"} if path else None}
    return _finish(
        model, provenance, arch=f"{name}-twin", input_size=input_size or INPUT_SIZE,
        class_names=class_names, default_names=CLASS_NAMES, mean=mean or MEAN, std=std or STD,
        output_stride=output_stride, device=device,
    )


def load_arch(
    arch: str, weights: str = DEFAULT_WEIGHTS, *, output_stride: int | None = None, device: Device = "cpu",
    trust_pickle: bool = False, class_names: ClassNames = None, input_size: Size | None = None,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> FCN:
    """Build a model the registry names and convert it on ``device`` (the ``convert ARCH`` path).

    Args:
        arch: a name in :data:`fcn_cam.registry.NAMES`.
        weights: a torchvision weights name, ``random``, or a file (see the module's docstring).
        output_stride: a finer map stride, by dilation.
        device: where to convert and check.
        trust_pickle: allow a weights file holding a pickled model (unpickling runs its code).
        class_names: names, or a file of them (one per line, or a JSON list); checked against
            the head's class count. Default: ImageNet's for 1000 classes, else none.
        input_size, mean, std: override the architecture's native input size and normalisation.

    Raises:
        ValueError: unknown name; class names that do not match the head (both counts).
        WeightsError: weights not found, not downloadable, or not fitting the architecture.
        ConversionError: the converted net does not reproduce the original's logits.
    """
    return registry.create(
        arch, weights=weights, output_stride=output_stride, device=device, trust_pickle=trust_pickle,
        class_names=class_names, input_size=input_size, mean=mean, std=std,
    )


def load_checkpoint(
    path: str | os.PathLike, *, trust_pickle: bool = False, input_size: int | tuple[int, int] = 224,
    class_names: ClassNames = None, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
    output_stride: int | None = None, device: str | torch.device = "cpu",
) -> FCN:
    """Convert the model a file holds (a TorchScript chain, or a pickled model with
    ``trust_pickle``), without naming an architecture; a bare state dict needs one
    (:func:`load_arch`)."""
    path = Path(path)
    ck = open_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(ck.value, dict):
        raise WeightsError(f"{path}: holds a state dict ({len(ck.value)} tensors) but no model; name its "
                           "architecture: fcn-cam convert ARCH --weights FILE")
    provenance = {"weights": str(path), "weights_file": {**file_digest(path), "form": ck.form},
                  "num_classes": None}
    return _finish(
        ck.value, provenance, arch=type(ck.value).__name__, input_size=input_size, class_names=class_names,
        default_names=None, mean=mean, std=std, output_stride=output_stride, device=device,
    )

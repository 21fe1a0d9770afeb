"""The public :func:`convert`: an importer reads the model as a :class:`~fcn_cam.layout.Layout`,
surgery converts the layout.

The flow is one-directional: ``conversion → importers → layout`` and
``conversion → surgery → layout``; surgery never sees a model as it came.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from .importers import to_layout
from .layout import Layout, check_flatten_order
from .surgery import FCN, IMAGENET_MEAN, IMAGENET_STD, convert_layout


def convert(
    model: nn.Module | Layout,
    input_size: int | tuple[int, int] = 224,
    *,
    flatten_order: str | None = None,
    keep_softmax: bool = False,
    output: int | str | None = None,
    output_stride: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    arch: str | None = None,
    weights: str | None = None,
    tolerance: float = 1e-4,
    verify: bool = True,
    reference: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FCN:
    """Rewrite a classifier's head as convolutions so it returns class score maps.

    Args:
        model: a VGG/AlexNet-like net (``features``, optional adaptive pool,
            ``classifier``), a ResNet, an ``nn.Sequential`` with an ``nn.Flatten`` (optionally
            after a ``torchvision.ops.Permute``), timm's VGG, or any net that torch.fx can
            trace to ``convolutional chain → [permute] → flatten → head`` (or a
            :class:`~fcn_cam.layout.Layout` an importer made). It is not modified;
            the converted net shares its weights' storage wherever the values are the same
            (no second copy of VGG16's 528 MB), so an in-place change to one model's weights
            shows in the other (``copy.deepcopy`` the result to separate them).
        input_size: the model's native input size (where its adaptive pool, if any, is
            the identity).
        flatten_order: the order, outermost first, in which the model flattens its
            ``C×H×W`` features before the first Linear: ``"chw"`` (PyTorch), ``"hwc"``
            (Keras/TF), ``"whc"`` (``permute(0, 3, 2, 1)``, Caffe ports), … Read from the
            model when it permutes; ``"chw"`` otherwise.
        keep_softmax: keep a final Softmax/LogSoftmax as a channel-wise softmax over the
            class maps (checked on probabilities); by default it is dropped, recorded in
            ``info["dropped"]``, and exactness is checked on the logits before it.
        output: for a model whose ``forward`` returns several outputs, which one holds the
            class logits (index, or key of a returned dict).
        output_stride: a finer stride for the maps (e.g. 16 or 8 for VGG), by dilation.
        class_names, mean, std: metadata used by :func:`fcn_cam.explain`.
        arch, weights: provenance labels stored with the model.
        tolerance: the largest accepted ``max|logits - maps| / max|logits|``.
        verify: check against the original logits (only skipped when rebuilding a
            saved model whose check is on record).
        reference: what the maps must reproduce, ``[B, 3, H, W] → [B, K]`` (default: the
            model, as the importer's layout gives it). It must return the logits before a
            Softmax that is dropped.

    Returns:
        An :class:`FCN` on the model's device with ``info["exactness"]`` recorded.

    Raises:
        ConversionError: unsupported architecture or failed exactness check; the message
            names the layer and the argument that would help.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    check_flatten_order(flatten_order)  # before any importer runs: a wrong argument is named first
    layout = to_layout(model, size, output=output)
    return convert_layout(
        layout, size, flatten_order=flatten_order, keep_softmax=keep_softmax, output_stride=output_stride,
        class_names=class_names, mean=mean, std=std, arch=arch, weights=weights, tolerance=tolerance,
        verify=verify, reference=reference,
    )


__all__ = ["convert"]

"""timm's VGG: its FC layers are already convolutions (``pre_logits`` is a ``ConvMlp``: a 7×7
conv, then a 1×1 conv) followed by global pooling and a Linear (``head.fc``).

Its :class:`~fcn_cam.layout.Layout` is ``features``, the ConvMlp layers as ``conv_head``
(surgery places them at the front of the FCN's head), a global average pool and the
Linear: the Linear becomes a 1×1 conv before the pool, so the maps' spatial mean equals
timm's logits at every size where the ConvMlp sees at least its 7×7 window (timm pools
smaller maps up to 7×7 first).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..errors import ConversionError
from ..layout import Layout


def is_timm_vgg(model: nn.Module) -> bool:
    pre = getattr(model, "pre_logits", None)
    return (hasattr(model, "features") and isinstance(getattr(pre, "fc1", None), nn.Conv2d)
            and isinstance(getattr(getattr(model, "head", None), "fc", None), nn.Linear))


def to_layout(
    model: nn.Module, input_size: tuple[int, int], *, output: int | str | None = None
) -> Layout | None:
    """``Layout(features, AdaptiveAvgPool2d(1), [fc], conv_head=[fc1, act1, fc2, act2])`` of a
    timm VGG; ``None`` for any other model. ``output`` is not used (one output)."""
    if not is_timm_vgg(model):
        return None
    pool = model.head.global_pool
    kind = getattr(pool, "pool_type", "avg")
    if kind != "avg":
        raise ConversionError(
            f"timm VGG with global_pool={kind!r}: only average pooling makes the Linear a 1×1 conv "
            "before the pool (CAM); create the model with global_pool='avg'"
        )
    pre = model.pre_logits
    # the body wrapped as ``Sequential(features=…)``: the FCN's module names stay those of
    # the former ``Sequential(features, pool, flatten, fc)`` route (``features.features.0``)
    return Layout(
        nn.Sequential(OrderedDict(features=model.features)), nn.AdaptiveAvgPool2d(1), [model.head.fc],
        conv_head=[pre.fc1, pre.act1, pre.fc2, pre.act2],
        original=model, arch=type(model).__name__,
    )


__all__ = ["is_timm_vgg", "to_layout"]

"""timm's VGG: its FC layers are already convolutions (``pre_logits`` is a ``ConvMlp``: a 7×7
conv, then a 1×1 conv) followed by global pooling and a Linear (``head.fc``).

Handed to surgery as ``Sequential(features, pool, flatten, fc)`` plus the ConvMlp layers,
which surgery places at the front of the FCN's head: the Linear becomes a 1×1 conv before
the global average pool, so the maps' spatial mean equals timm's logits at every size where
the ConvMlp sees at least its 7×7 window (timm pools smaller maps up to 7×7 first).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from ..surgery import ConversionError


def is_timm_vgg(model: nn.Module) -> bool:
    pre = getattr(model, "pre_logits", None)
    return (hasattr(model, "features") and isinstance(getattr(pre, "fc1", None), nn.Conv2d)
            and isinstance(getattr(getattr(model, "head", None), "fc", None), nn.Linear))


def plain(model: nn.Module) -> tuple[nn.Sequential, list[nn.Module]]:
    """``(Sequential(features, pool, flatten, fc), [fc1, act1, fc2, act2])`` of a timm VGG."""
    pool = model.head.global_pool
    kind = getattr(pool, "pool_type", "avg")
    if kind != "avg":
        raise ConversionError(
            f"timm VGG with global_pool={kind!r}: only average pooling makes the Linear a 1×1 conv "
            "before the pool (CAM); create the model with global_pool='avg'"
        )
    pre = model.pre_logits
    conv_head = [pre.fc1, pre.act1, pre.fc2, pre.act2]
    module = nn.Sequential(OrderedDict(
        features=model.features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=model.head.fc,
    ))
    return module, conv_head

"""How the converted net runs: precision and memory format, chosen once per model.

bf16 casts the weights once (autocast would re-cast VGG16's 138 M weights on every call)
and keeps activations in bf16; channels-last lets oneDNN pick its fastest convolution
kernels on CPU. ``benchmarks/speed.py`` measures both.
"""

from __future__ import annotations

import copy

import torch

from .surgery import FCN

PRECISIONS: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def prepare(fcn: FCN, precision: str = "fp32", channels_last: bool = True) -> FCN:
    """A copy of ``fcn`` in ``precision`` (``fp32`` or ``bf16``), optionally channels-last.

    The original is left as it is; the copy's maps are compared with fp32 in the speed
    benchmark (heatmap correlation, top-1 agreement).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    out = copy.deepcopy(fcn).to(PRECISIONS[precision])
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    out.info = {**fcn.info, "precision": precision, "channels_last": channels_last}
    return out.eval()


def input_like(fcn: FCN, batch: torch.Tensor) -> torch.Tensor:
    """``batch`` on the model's device, dtype and memory format."""
    p = next(fcn.parameters())
    fmt = torch.channels_last if fcn.info.get("channels_last") else torch.contiguous_format
    return batch.to(p.device, p.dtype).contiguous(memory_format=fmt)

"""Running a converted head: window-grid GEMMs instead of convolutions.

The converted head is ``Conv2d(C, O, k×k) → channel-wise layers → Conv2d(O, O', 1×1) → …``.
As convolutions, the k×k layer runs at a fraction of the machine's matmul rate (VGG16 on an
AVX2 CPU: 0.374 s as a conv vs 0.104 s as a GEMM at 448 px). As GEMMs it is exactly the
original classifier's arithmetic, applied to every window of the feature map::

    X = unfold(F, k)ᵀ              # [B·L, C·k·k], one row per window, C-major like nn.Flatten
    Y₁ = X W₁ᵀ + b₁                # W₁ = conv weight viewed as [O, C·k·k] = the Linear's weight
    Yᵢ = act(Yᵢ₋₁) Wᵢᵀ + bᵢ         # 1×1 convs = Linears on [windows, channels]

At the native size (L = 1) this is ``F.linear`` on the flattened features, the original
model's own call. The module structure (and so the saved file) is unchanged: this is only a
different way to run the same parameters, chosen at run time (``FCN.head_mode``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def gemm_compatible(head: nn.Sequential) -> bool:
    """Whether ``head`` is a k×k conv followed by 1×1 convs and channel-wise layers, all
    unstrided, unpadded and ungrouped (what surgery produces)."""
    convs = [m for m in head if isinstance(m, nn.Conv2d)]
    if not convs or not isinstance(head[0], nn.Conv2d):
        return False
    for i, c in enumerate(convs):
        if _pair(c.stride) != (1, 1) or _pair(c.padding) != (0, 0) or c.groups != 1:
            return False
        if c.padding_mode != "zeros" or (i > 0 and _pair(c.kernel_size) != (1, 1)):
            return False
    return all(isinstance(m, nn.Conv2d) or not list(m.children()) for m in head)


def _weight_matrix(conv: nn.Conv2d) -> torch.Tensor:
    # a view when the weight is contiguous (prepare keeps head weights contiguous)
    return conv.weight.reshape(conv.out_channels, -1)


def run_head_gemm(head: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` features → ``[B, K, h, w]`` score maps, the head run as GEMMs.

    Equal to ``head(features)`` up to floating-point summation order.
    """
    first = head[0]
    b, _, height, width = features.shape
    (kh, kw), (dh, dw) = _pair(first.kernel_size), _pair(first.dilation)
    h, w = height - dh * (kh - 1), width - dw * (kw - 1)
    if h <= 0 or w <= 0:
        raise ValueError(
            f"feature map {height}×{width} is smaller than the head's {kh}×{kw} window "
            "(the input is smaller than the model's native input size)"
        )
    if (kh, kw) == (1, 1):
        x = features.permute(0, 2, 3, 1).reshape(b * h * w, -1)
    elif (h, w) == (1, 1) and (dh, dw) == (1, 1):
        x = features.reshape(b, -1)  # the native size: exactly nn.Flatten
    else:
        x = F.unfold(features, (kh, kw), dilation=(dh, dw)).transpose(1, 2).reshape(b * h * w, -1)
    for layer in head:
        x = F.linear(x, _weight_matrix(layer), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    return x.view(b, h, w, -1).permute(0, 3, 1, 2)


def run_head(head: nn.Sequential, features: torch.Tensor, mode: str = "gemm") -> torch.Tensor:
    """Run ``head`` on ``features`` as GEMMs (``mode="gemm"``, when the head allows) or as
    the convolutions it is made of (``mode="conv"``)."""
    if mode == "gemm" and gemm_compatible(head):
        return run_head_gemm(head, features)
    return head(features)

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


#: Output channels per product in :func:`blocked_linear`.
ROW_BLOCK = 512


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` in blocks of ``ROW_BLOCK`` output channels, for a few window rows against a
    large weight (VGG16's 4096×25088): each block's slice of the weight (51 MB) is reused
    across the rows while it is hot. On a 2-core EPYC (AVX2) 49 rows took 115 ms instead of
    166 ms, with bit-identical outputs; ``benchmarks/speed`` measures it on each machine."""
    if x.shape[0] == 1 or weight.shape[0] <= ROW_BLOCK:
        return F.linear(x, weight, bias)
    out = x.new_empty(x.shape[0], weight.shape[0])
    for o0 in range(0, weight.shape[0], ROW_BLOCK):
        o1 = o0 + ROW_BLOCK
        out[:, o0:o1] = F.linear(x, weight[o0:o1], None if bias is None else bias[o0:o1])
    return out


#: Columns per product in :func:`blocked_matmul`.
COL_BLOCK = 2048
#: Up to how many rows :func:`blocked_matmul` blocks (beyond, one product was as fast).
COL_BLOCK_ROWS = 512


def blocked_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight`` in blocks of ``COL_BLOCK`` columns, for a few rows against a large
    weight (the first layer's backward: ``[windows, 4096] @ [4096, 25088]`` for VGG16), for
    the same reason as :func:`blocked_linear`. On a 2-core EPYC (AVX2): 49 rows 158 → 120 ms,
    196 rows 441 → 311 ms; one row or over ``COL_BLOCK_ROWS`` rows: one product."""
    rows, cols = x.shape[0], weight.shape[1]
    if rows == 1 or rows > COL_BLOCK_ROWS or cols <= COL_BLOCK:
        return x @ weight
    out = x.new_empty(rows, cols)
    for c0 in range(0, cols, COL_BLOCK):
        out[:, c0:c0 + COL_BLOCK] = x @ weight[:, c0:c0 + COL_BLOCK]
    return out


def first_layer(head: nn.Sequential, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The k×k layer as a GEMM (:func:`blocked_linear`): ``[B, C, H, W]`` features → ``[B·h·w, O]`` window rows
    (row ``b·h·w + i·w + j`` is window ``(i, j)`` of image ``b``) and ``(B, h, w)``."""
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
    return blocked_linear(x, _weight_matrix(first), first.bias), (b, h, w)


def rest_of_head(head: nn.Sequential, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The layers after the first, on ``[B·h·w, O]`` window rows → ``[B, K, h, w]`` maps."""
    for layer in list(head)[1:]:
        x = F.linear(x, _weight_matrix(layer), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    b, h, w = grid
    return x.view(b, h, w, -1).permute(0, 3, 1, 2)


def run_head_gemm(head: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` features → ``[B, K, h, w]`` score maps, the head run as GEMMs.

    Equal to ``head(features)`` up to floating-point summation order.
    """
    return rest_of_head(head, *first_layer(head, features))


def first_layer_cells(
    conv: nn.Conv2d, grads: torch.Tensor, features: torch.Tensor, pad: tuple[int, int, int, int] | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Cell maps from the gradients at the first layer's output::

        A_t(p) = Σ_w ⟨W₁ᵀ g_t(w), F(p)⟩_{p's place in w} = Σ_q ⟨g_t(p − q), W₁,q F(p)⟩

    for the window rows' gradients ``grads`` ``[T, B·h·w, O]`` and the (padded)
    ``features`` ``[B, C, H, W]``; ``pad`` cells of them are zeros (``pad="features"``) and
    get no work. Returns ``[T, B, H, W]`` float32 (0 on padded cells).

    Two orders of the same sum: ``dgrad`` pushes each class's gradient back through
    ``W₁`` (T·windows products with the 25088×4096 weight for VGG16); ``cells`` computes
    ``P(p, q) = W₁,q F(p)`` once for every real cell and offset (cells products, shared by
    all classes), then one dot product per class, pair and channel. ``auto`` takes
    ``cells`` where it needs at most half of ``dgrad``'s products with the weight (its weight
    blocks are copied and its dot products are not GEMMs: for one class with one window more
    than cells it was 1.5× slower on a 2-core EPYC): ``dgrad`` for one or two classes.
    """
    t, _, o = grads.shape
    b, c, height, width = features.shape
    (kh, kw), (dh, dw) = _pair(conv.kernel_size), _pair(conv.dilation)
    h, w = height - dh * (kh - 1), width - dw * (kw - 1)
    top, bottom, left, right = pad or (0, 0, 0, 0)
    hr, wr = height - top - bottom, width - left - right
    if method == "auto":  # cells only where it saves half the products: its own steps run slower
        method = "dgrad" if t * h * w <= 2 * hr * wr else "cells"
    if method == "dgrad":
        # a 2-D product ([T·B·L, C·k·k]): torch.matmul would broadcast (copy) the 411 MB weight for
        # a 3-D operand
        g = blocked_matmul(grads.reshape(t * b * h * w, o), _weight_matrix(conv)).view(t * b, h * w, -1)
        g = F.fold(g.transpose(1, 2), (height, width), (kh, kw), dilation=(dh, dw))
        return (g.view(t, b, c, height, width) * features[None]).sum(2, dtype=torch.float32)
    real = features[:, :, top:top + hr, left:left + wr].permute(0, 2, 3, 1).reshape(-1, c)
    g = grads.view(t, b, h, w, o)
    out = features.new_zeros(t, b, height, width, dtype=torch.float32)
    # P, the weight's permuted block and the products summed per offset, in blocks of output
    # channels: each ≤ 2²⁴ values (64 MB fp32)
    block = max(1, 2**24 // max(real.shape[0] * kh * kw, real.shape[0] * t, c * kh * kw))
    for o0 in range(0, o, block):
        wb = conv.weight[o0:o0 + block]
        p = (real @ wb.permute(1, 2, 3, 0).reshape(c, -1)).view(b, hr, wr, kh, kw, -1)
        for qy in range(kh):
            r0, r1 = max(0, qy * dh - top), min(hr, h + qy * dh - top)  # cells whose window exists
            for qx in range(kw):
                c0, c1 = max(0, qx * dw - left), min(wr, w + qx * dw - left)
                if r0 >= r1 or c0 >= c1:
                    continue
                gq = g[:, :, r0 + top - qy * dh:r1 + top - qy * dh, c0 + left - qx * dw:c1 + left - qx * dw,
                       o0:o0 + block]
                out[:, :, top + r0:top + r1, left + c0:left + c1] += (
                    (gq * p[None, :, r0:r1, c0:c1, qy, qx]).sum(-1, dtype=torch.float32))
    return out


def run_head(head: nn.Sequential, features: torch.Tensor, mode: str = "gemm") -> torch.Tensor:
    """Run ``head`` on ``features`` as GEMMs (``mode="gemm"``, when the head allows) or as
    the convolutions it is made of (``mode="conv"``)."""
    if mode == "gemm" and gemm_compatible(head):
        return run_head_gemm(head, features)
    return head(features)

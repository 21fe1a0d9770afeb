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

import warnings

import torch
import torch.autograd.forward_ad as fwad
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


def rows_through(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """1×1 convs (as Linears) and channel-wise layers on ``[windows, channels]`` rows."""
    for layer in layers:
        x = F.linear(x, _weight_matrix(layer), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


def as_maps(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """``[B·h·w, K]`` window rows → ``[B, K, h, w]`` maps (a view)."""
    b, h, w = grid
    return x.view(b, h, w, -1).permute(0, 3, 1, 2)


def rest_of_head(head: nn.Sequential, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """The layers after the first, on ``[B·h·w, O]`` window rows → ``[B, K, h, w]`` maps."""
    return as_maps(rows_through(list(head)[1:], x), grid)


def final_linear(head: nn.Sequential) -> nn.Conv2d | None:
    """The GEMM head's last layer when it is a 1×1 conv after others: the scores are then
    ``S(w) = W u(w) + b`` on its input rows ``u``, so ``∂S_c(w)/∂u(w) = W[c]`` for every window
    and a backward pass can start at ``u`` (no product with the one-hot scores)."""
    last = head[-1]
    if len(head) > 2 and isinstance(last, nn.Conv2d) and _pair(last.kernel_size) == (1, 1) \
            and gemm_compatible(head):
        return last
    return None


def run_head_gemm(head: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` features → ``[B, K, h, w]`` score maps, the head run as GEMMs.

    Equal to ``head(features)`` up to floating-point summation order.
    """
    return rest_of_head(head, *first_layer(head, features))


#: Output channels per block in :func:`first_layer_cells`'s ``cells`` order (of 128, 256 and 512,
#: 256 ran fastest on a 2-core EPYC).
CELL_BLOCK = 256


def contraction_order(classes: int, windows: int, cells: int) -> str:
    """:func:`first_layer_cells`'s ``auto``: ``cells`` only where it needs at most half of
    ``dgrad``'s products with the weight (its own steps run slower)."""
    return "dgrad" if classes * windows <= 2 * cells else "cells"


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
    all classes), then for each window ``w`` one small product ``[T, O] @ [O, k²]`` with its
    ``k²`` pairs ``P(w + q, q)`` (a strided view of ``P`` laid on the padded grid), which
    :func:`F.fold` sums back onto the cells. ``auto`` takes ``cells`` where it needs at most
    half of ``dgrad``'s products with the weight (its weight blocks are copied: for one class
    it ran 1.4–2× slower than ``dgrad`` on a 2-core EPYC), i.e. from three classes on; for
    100 classes at 448×673 it took 1.0 s where summing per offset had taken 12 s.
    """
    t, _, o = grads.shape
    b, c, height, width = features.shape
    (kh, kw), (dh, dw) = _pair(conv.kernel_size), _pair(conv.dilation)
    h, w = height - dh * (kh - 1), width - dw * (kw - 1)
    top, bottom, left, right = pad or (0, 0, 0, 0)
    hr, wr = height - top - bottom, width - left - right
    if method == "auto":
        method = contraction_order(t, b * h * w, b * hr * wr)
    if method == "dgrad":
        # a 2-D product ([T·B·L, C·k·k]): torch.matmul would broadcast (copy) the 411 MB weight for
        # a 3-D operand
        g = blocked_matmul(grads.reshape(t * b * h * w, o), _weight_matrix(conv)).view(t * b, h * w, -1)
        g = F.fold(g.transpose(1, 2), (height, width), (kh, kw), dilation=(dh, dw))
        return (g.view(t, b, c, height, width) * features[None]).sum(2, dtype=torch.float32)
    k2, windows = kh * kw, b * h * w
    real = features[:, :, top:top + hr, left:left + wr].permute(0, 2, 3, 1).reshape(-1, c)
    g = grads.view(t, windows, o)
    r = features.new_zeros(windows, t, k2, dtype=torch.float32)  # R[w, t, q] = ⟨g_t(w), P(w + q, q)⟩
    # in blocks of output channels: P on the padded grid, the weight's permuted block and the
    # classes' gradient block each ≤ 2²⁴ values (64 MB fp32)
    block = max(1, min(CELL_BLOCK, 2**24 // max(b * height * width * k2, windows * t, c * k2)))
    for o0 in range(0, o, block):
        ob = min(block, o - o0)
        wb = conv.weight[o0:o0 + ob].permute(1, 2, 3, 0).reshape(c, k2 * ob)
        pz = features.new_zeros(b, height, width, k2, ob)  # padded cells: P = 0
        pz[:, top:top + hr, left:left + wr] = (real @ wb).view(b, hr, wr, k2, ob)
        sb, sy, sx, sq, so = pz.stride()  # window (i, j), offset (qy, qx) → cell (i + qy·dh, j + qx·dw)
        pairs = pz.as_strided((b, h, w, kh, kw, ob), (sb, sy, sx, dh * sy + kw * sq, dw * sx + sq, so))
        r += torch.bmm(g[:, :, o0:o0 + ob].transpose(0, 1), pairs.reshape(windows, k2, ob).transpose(1, 2))
    r = r.view(b, h * w, t, k2).permute(2, 0, 3, 1).reshape(t * b, k2, h * w)
    return F.fold(r, (height, width), (kh, kw), dilation=(dh, dw)).view(t, b, height, width)


def _offset_windows(shape: tuple[int, int], kernel: tuple[int, int], dilation: tuple[int, int],
                    pad: tuple[int, int, int, int]) -> list[tuple[int, int, slice, slice]]:
    """For each offset ``q`` of the k×k window: ``(qy, qx, rows, cols)``, the window-grid
    ranges whose offset-``q`` cell is real (not padding), when there are any."""
    (height, width), (kh, kw), (dh, dw) = shape, kernel, dilation
    top, bottom, left, right = pad
    h, w = height - dh * (kh - 1), width - dw * (kw - 1)

    def span(q: int, d: int, before: int, real: int, n: int) -> slice:  # i + q·d ∈ [before, before + real)
        return slice(max(0, before - q * d), min(n, before + real - q * d))

    out = []
    for qy in range(kh):
        rows = span(qy, dh, top, height - top - bottom, h)
        for qx in range(kw):
            cols = span(qx, dw, left, width - left - right, w)
            if rows.start < rows.stop and cols.start < cols.stop:
                out.append((qy, qx, rows, cols))
    return out


def real_pairs(conv: nn.Conv2d, features_shape: torch.Size, pad: tuple[int, int, int, int] | None) -> int:
    """How many (window, offset) pairs of the first layer see a real cell: the rows
    :func:`forward_cells` pushes through the head."""
    b, _, height, width = features_shape
    spans = _offset_windows((height, width), _pair(conv.kernel_size), _pair(conv.dilation), pad or (0, 0, 0, 0))
    return b * sum(map(_area, spans))


def linear_macs(layers: list[nn.Module]) -> int:
    """Multiply-accumulates per window row of the 1×1 convs among ``layers``."""
    return sum(m.in_channels * m.out_channels for m in layers if isinstance(m, nn.Conv2d))


def _jvp(layer: nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``J_layer(x) t`` by forward-mode autograd; ``x`` may be overwritten (in-place layers)."""
    with warnings.catch_warnings(), fwad.dual_level():
        # torch (2.14) loads its forward-AD decompositions with torch.jit.script on first use,
        # and warns about its own call
        warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)
        return fwad.unpack_dual(layer(fwad.make_dual(x, t))).tangent


#: (window, offset) pairs :func:`forward_cells` pushes through the head at once: products of
#: this many rows run at the GEMM rate; a few offsets' worth of windows.
PAIR_ROWS = 2048


@torch.no_grad()  # the weights require grad; these products need none
def forward_cells(
    conv: nn.Conv2d, middle: list[nn.Module], first: torch.Tensor, features: torch.Tensor,
    pad: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """The class-independent order of the cell maps, for heads ending in a linear layer
    ``S(w) = W u(w) + b``::

        Z(p) = Σ_q J(p − q) W₁,q F(p),        A_c(p) = ⟨W[c], Z(p)⟩

    where ``J(w)`` is the Jacobian of the ``middle`` layers (between the first and the last)
    at window ``w``'s first-layer output ``first`` ``[B·h·w, O]``: with the gates fixed, the
    same sum as the backward orders of :func:`first_layer_cells`, transposed. Each
    (window, offset) pair that sees a real cell is pushed forward once, whatever the number
    of classes: a product with ``W₁,q``, then each 1×1 layer (VGG16: 4096×4096), the
    channel-wise layers linearized at the window's own inputs (forward-mode autograd);
    pairs go ``PAIR_ROWS`` at a time. Returns ``Z`` ``[B, H, W, O']`` float32 on the padded
    feature grid (0 on padded cells); ``Z Wᵀ`` gives every class's map.
    """
    b, c, height, width = features.shape
    (kh, kw), (dh, dw) = _pair(conv.kernel_size), _pair(conv.dilation)
    h, w = height - dh * (kh - 1), width - dw * (kw - 1)
    inputs, x = {}, first  # the channel-wise layers' inputs at every window: where the gates are
    for i, m in enumerate(middle):
        if isinstance(m, nn.Conv2d):
            x = F.linear(x, _weight_matrix(m), m.bias)
        else:
            inputs[i] = x.view(b, h, w, -1)
            x = m(x.clone())
    w1 = _offset_major(conv.weight)
    cells = features.permute(0, 2, 3, 1)  # [B, H, W, C], a view
    z = features.new_zeros(b, height, width, x.shape[-1], dtype=torch.float32)
    spans = _offset_windows((height, width), (kh, kw), (dh, dw), pad or (0, 0, 0, 0))
    while spans:
        group, rows = [], 0
        while spans and (not group or rows + b * _area(spans[0]) <= PAIR_ROWS):
            group.append(spans.pop(0))
            rows += b * _area(group[-1])
        t = first.new_empty(rows, conv.out_channels)
        gates = {i: v.new_empty(rows, v.shape[-1]) for i, v in inputs.items()}
        at, r0 = [], 0
        for qy, qx, wy, wx in group:
            n = b * _area((qy, qx, wy, wx))
            cy, cx = slice(wy.start + qy * dh, wy.stop + qy * dh), slice(wx.start + qx * dw, wx.stop + qx * dw)
            torch.mm(cells[:, cy, cx].reshape(n, c), w1[:, qy * kw + qx], out=t[r0:r0 + n])  # P(w + q, q)
            for i, v in inputs.items():
                gates[i][r0:r0 + n].view(b, wy.stop - wy.start, wx.stop - wx.start, -1).copy_(v[:, wy, wx])
            at.append((cy, cx, r0, n))
            r0 += n
        for i, m in enumerate(middle):
            t = t @ _weight_matrix(m).T if isinstance(m, nn.Conv2d) else _jvp(m, gates[i], t)
        for cy, cx, r0, n in at:
            z[:, cy, cx] += t[r0:r0 + n].view(b, cy.stop - cy.start, cx.stop - cx.start, -1)
    return z


def _offset_major(weight: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``[O, C, kh, kw]`` → ``[C, kh·kw, O]`` (a copy), so that each offset's ``W₁,qᵀ`` is a
    ``[C, O]`` matrix with unit column stride (a strided read per offset would touch every
    cache line of the weight 49 times). Copied ``block`` output channels at a time: 0.25 s
    for VGG16's 411 MB on a 2-core EPYC, against 0.38 s as one transpose and 0.88 s as one
    permute."""
    o = weight.shape[0]
    rows = weight.reshape(o, -1)
    out = weight.new_empty(rows.shape[1], o)
    for o0 in range(0, o, block):
        out[:, o0:o0 + block] = rows[o0:o0 + block].T
    return out.view(weight.shape[1], -1, o)


def _area(span: tuple[int, int, slice, slice]) -> int:
    return (span[2].stop - span[2].start) * (span[3].stop - span[3].start)


def run_head(head: nn.Sequential, features: torch.Tensor, mode: str = "gemm") -> torch.Tensor:
    """Run ``head`` on ``features`` as GEMMs (``mode="gemm"``, when the head allows) or as
    the convolutions it is made of (``mode="conv"``)."""
    if mode == "gemm" and gemm_compatible(head):
        return run_head_gemm(head, features)
    return head(features)

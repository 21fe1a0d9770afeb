"""Running a converted head: window-grid GEMMs instead of convolutions.

The converted head is ``Conv2d(C, O, k×k) → channel-wise layers → Conv2d(O, O', 1×1) → …``.
As convolutions, the k×k layer runs at a fraction of the machine's matmul rate
(``benchmarks/speed/head.py`` measures both ways on each machine). As GEMMs it is exactly
the original classifier's arithmetic, applied to every window of the feature map
(:class:`WindowGrid`)::

    X = unfold(F, k)ᵀ              # [B·L, C·k·k], one row per window, C-major like nn.Flatten
    Y₁ = X W₁ᵀ + b₁                # W₁ = conv weight viewed as [O, C·k·k] = the Linear's weight
    Yᵢ = act(Yᵢ₋₁) Wᵢᵀ + bᵢ         # 1×1 convs = Linears on [windows, channels]

At the native size (L = 1) this is ``F.linear`` on the flattened features, the original
model's own call. The module structure (and so the saved file) is unchanged: this is only a
different way to run the same parameters, chosen at run time (``FCN.head_mode``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.autograd.forward_ad as fwad
import torch.nn.functional as F
from torch import nn

from .layers import pair

Padding = tuple[int, int, int, int]  # (top, bottom, left, right), in feature cells


class OffsetSpan(NamedTuple):
    """Offset ``q = (qy, qx)`` of the k×k window: the window-grid ranges whose offset-``q``
    cell is real (not padding), and those cells' ranges on the padded grid (``i + q·d``)."""

    qy: int
    qx: int
    rows: slice
    cols: slice
    cell_rows: slice
    cell_cols: slice

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start

    @property
    def area(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass(frozen=True)
class WindowGrid:
    """The windows of a head's first (k×k, unstrided, unpadded) conv over a ``[B, C, H, W]``
    feature map whose outer ``pad`` cells ``(top, bottom, left, right)`` are zeros::

        h = H − d_y·(k_y − 1),    w = W − d_x·(k_x − 1)      # windows per axis
        hr = H − top − bottom,    wr = W − left − right       # real cells per axis

    Window ``(i, j)`` covers the cells ``(i + q_y·d_y, j + q_x·d_x)`` for the kernel's
    offsets ``q``; window rows are numbered ``b·h·w + i·w + j``. The GEMM head, the cell
    contractions and their cost model all read their sizes here.
    """

    batch: int
    channels: int
    height: int
    width: int
    kernel: tuple[int, int]
    dilation: tuple[int, int]
    pad: Padding = (0, 0, 0, 0)

    def __post_init__(self) -> None:
        h, w = self.windows
        if h <= 0 or w <= 0:
            raise ValueError(
                f"feature map {self.height}×{self.width} is smaller than the head's "
                f"{self.kernel[0]}×{self.kernel[1]} window "
                "(the input is smaller than the model's native input size)"
            )

    @classmethod
    def of(cls, conv: nn.Conv2d, shape: Sequence[int], pad: Padding | None = None) -> WindowGrid:
        """The grid of ``conv`` over features of ``shape`` ``[B, C, H, W]`` padded by ``pad``."""
        b, c, height, width = shape
        return cls(b, c, height, width, pair(conv.kernel_size), pair(conv.dilation), tuple(pad or (0, 0, 0, 0)))

    @property
    def windows(self) -> tuple[int, int]:
        """``(h, w)``: windows per axis."""
        (kh, kw), (dh, dw) = self.kernel, self.dilation
        return self.height - dh * (kh - 1), self.width - dw * (kw - 1)

    @property
    def rows(self) -> int:
        """Window rows ``B·h·w``."""
        return self.batch * self.windows[0] * self.windows[1]

    @property
    def offsets(self) -> int:
        """Offsets per window ``k_y·k_x``."""
        return self.kernel[0] * self.kernel[1]

    @property
    def cells(self) -> int:
        """Cells of the padded grid ``B·H·W``."""
        return self.batch * self.height * self.width

    @property
    def real(self) -> tuple[slice, slice]:
        """Rows and columns of the real (unpadded) cells on the padded grid."""
        top, bottom, left, right = self.pad
        return slice(top, self.height - bottom), slice(left, self.width - right)

    @property
    def real_size(self) -> tuple[int, int]:
        """``(hr, wr)``: real cells per axis."""
        top, bottom, left, right = self.pad
        return self.height - top - bottom, self.width - left - right

    @property
    def real_cells(self) -> int:
        """Real cells ``B·hr·wr``."""
        return self.batch * self.real_size[0] * self.real_size[1]

    def offset_spans(self) -> list[OffsetSpan]:
        """For each offset ``q`` whose cell is real in some window: the windows ``i`` with
        ``i + q·d ∈ [before, before + real)`` on each axis, and those cells."""
        (kh, kw), (dh, dw), (hr, wr) = self.kernel, self.dilation, self.real_size
        (h, w), (top, _, left, _) = self.windows, self.pad

        def span(q: int, d: int, before: int, real: int, n: int) -> tuple[slice, slice]:
            windows = slice(max(0, before - q * d), min(n, before + real - q * d))
            return windows, slice(windows.start + q * d, windows.stop + q * d)

        out = []
        for qy in range(kh):
            rows, cell_rows = span(qy, dh, top, hr, h)
            for qx in range(kw):
                cols, cell_cols = span(qx, dw, left, wr, w)
                if rows.start < rows.stop and cols.start < cols.stop:
                    out.append(OffsetSpan(qy, qx, rows, cols, cell_rows, cell_cols))
        return out

    @property
    def real_pairs(self) -> int:
        """How many (window, offset) pairs see a real cell: the rows :func:`forward_cells`
        pushes through the head."""
        return self.batch * sum(s.area for s in self.offset_spans())

    def unfold(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B·h·w, C·k_y·k_x]`` window rows, C-major like ``nn.Flatten``."""
        h, w = self.windows
        if self.kernel == (1, 1):
            return features.permute(0, 2, 3, 1).reshape(self.rows, -1)
        if (h, w) == (1, 1) and self.dilation == (1, 1):
            return features.reshape(self.batch, -1)  # the native size: exactly nn.Flatten
        x = F.unfold(features, self.kernel, dilation=self.dilation)
        return x.transpose(1, 2).reshape(self.rows, -1)

    def fold(self, columns: torch.Tensor) -> torch.Tensor:
        """``[N, C·k_y·k_x, h·w]`` per-window values → ``[N, C, H, W]``, each summed onto the
        cells its window covers (the adjoint of :meth:`unfold`)."""
        return F.fold(columns, (self.height, self.width), self.kernel, dilation=self.dilation)

    def pairs_view(self, p: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, k_y·k_x, n]`` values ``P(p, q)`` per cell and offset → the strided view
        ``[B, h, w, k_y, k_x, n]`` of ``P(w + q, q)`` per window and offset."""
        (kh, kw), (dh, dw), (h, w) = self.kernel, self.dilation, self.windows
        sb, sy, sx, sq, so = p.stride()  # window (i, j), offset (qy, qx) → cell (i + qy·dh, j + qx·dw)
        return p.as_strided((self.batch, h, w, kh, kw, p.shape[-1]),
                            (sb, sy, sx, dh * sy + kw * sq, dw * sx + sq, so))


def gemm_compatible(head: nn.Sequential) -> bool:
    """Whether ``head`` is a k×k conv followed by 1×1 convs and channel-wise layers, all
    unstrided, unpadded and ungrouped (what surgery produces)."""
    convs = [m for m in head if isinstance(m, nn.Conv2d)]
    if not convs or not isinstance(head[0], nn.Conv2d):
        return False
    for i, c in enumerate(convs):
        if pair(c.stride) != (1, 1) or pair(c.padding) != (0, 0) or c.groups != 1:
            return False
        if c.padding_mode != "zeros" or (i > 0 and pair(c.kernel_size) != (1, 1)):
            return False
    return all(isinstance(m, nn.Conv2d) or not list(m.children()) for m in head)


def _weight_matrix(conv: nn.Conv2d) -> torch.Tensor:
    # a view when the weight is contiguous (prepare keeps head weights contiguous)
    return conv.weight.reshape(conv.out_channels, -1)


#: Output columns per product in :func:`blocked_product` with ``transpose`` (``F.linear``:
#: blocks of the weight's rows, each a contiguous slice).
ROW_BLOCK = 512
#: Output columns per product in :func:`blocked_product` without ``transpose`` (``x @ W``:
#: blocks of the weight's columns, strided slices).
COL_BLOCK = 2048
#: Up to how many rows :func:`blocked_product` blocks without ``transpose`` (beyond, one
#: product was as fast).
COL_BLOCK_ROWS = 512


def blocked_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, transpose: bool = True
) -> torch.Tensor:
    """``x Wᵀ + b`` (``transpose``: ``F.linear``, the first layer's forward) or ``x W`` (the
    first layer's backward: ``[windows, 4096] @ [4096, 25088]`` for VGG16), in blocks of
    output columns, for a few rows against a large weight: each block of the weight is
    reused across the rows while it is in cache. Each output value is the same product as
    in one call (bit-identical); one row, a weight of one block, or (``x W``) more than
    ``COL_BLOCK_ROWS`` rows: one product. ``bias`` only with ``transpose``.
    """
    if transpose:
        block, n, most_rows = ROW_BLOCK, weight.shape[0], None

        def product(cols: slice) -> torch.Tensor:
            return F.linear(x, weight[cols], None if bias is None else bias[cols])
    else:
        if bias is not None:
            raise ValueError("blocked_product: a bias needs transpose=True (F.linear)")
        block, n, most_rows = COL_BLOCK, weight.shape[1], COL_BLOCK_ROWS

        def product(cols: slice) -> torch.Tensor:
            return x @ weight[:, cols]
    rows = x.shape[0]
    if rows == 1 or n <= block or (most_rows is not None and rows > most_rows):
        return product(slice(None))
    out = x.new_empty(rows, n)
    for c0 in range(0, n, block):
        out[:, c0:c0 + block] = product(slice(c0, c0 + block))
    return out


def first_layer(head: nn.Sequential, features: torch.Tensor) -> tuple[torch.Tensor, WindowGrid]:
    """The k×k layer as a GEMM (:func:`blocked_product`): ``[B, C, H, W]`` features →
    ``[B·h·w, O]`` window rows (row ``b·h·w + i·w + j`` is window ``(i, j)`` of image ``b``)
    and their :class:`WindowGrid`."""
    first = head[0]
    grid = WindowGrid.of(first, features.shape)
    return blocked_product(grid.unfold(features), _weight_matrix(first), first.bias), grid


def rows_through(layers: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """1×1 convs (as Linears) and channel-wise layers on ``[windows, channels]`` rows."""
    for layer in layers:
        x = F.linear(x, _weight_matrix(layer), layer.bias) if isinstance(layer, nn.Conv2d) else layer(x)
    return x


def as_maps(x: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """``[B·h·w, K]`` window rows → ``[B, K, h, w]`` maps (a view)."""
    return x.view(grid.batch, *grid.windows, -1).permute(0, 3, 1, 2)


def rest_of_head(head: nn.Sequential, x: torch.Tensor, grid: WindowGrid) -> torch.Tensor:
    """The layers after the first, on ``[B·h·w, O]`` window rows → ``[B, K, h, w]`` maps."""
    return as_maps(rows_through(list(head)[1:], x), grid)


def final_linear(head: nn.Sequential) -> nn.Conv2d | None:
    """The GEMM head's last layer when it is a 1×1 conv after others: the scores are then
    ``S(w) = W u(w) + b`` on its input rows ``u``, so ``∂S_c(w)/∂u(w) = W[c]`` for every window
    and a backward pass can start at ``u`` (no product with the one-hot scores)."""
    last = head[-1]
    if len(head) > 2 and isinstance(last, nn.Conv2d) and pair(last.kernel_size) == (1, 1) \
            and gemm_compatible(head):
        return last
    return None


def run_head_gemm(head: nn.Sequential, features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` features → ``[B, K, h, w]`` score maps, the head run as GEMMs.

    Equal to ``head(features)`` up to floating-point summation order.
    """
    return rest_of_head(head, *first_layer(head, features))


#: Output channels per block in :func:`first_layer_cells`'s ``cells`` order (the fastest of
#: 128, 256 and 512 in one earlier run: ``benchmarks/results/head_notes.md``).
CELL_BLOCK = 256


def contraction_order(classes: int, grid: WindowGrid) -> str:
    """:func:`first_layer_cells`'s ``auto``: ``cells`` only where it needs at most half of
    ``dgrad``'s products with the weight (``classes·B·h·w`` against ``B·hr·wr``: its own
    steps run slower)."""
    return "dgrad" if classes * grid.rows <= 2 * grid.real_cells else "cells"


def first_layer_cells(
    conv: nn.Conv2d, grads: torch.Tensor, features: torch.Tensor, pad: Padding | None = None,
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
    half of ``dgrad``'s products with the weight (:func:`contraction_order`: its weight
    blocks are copied, so for one class it runs slower than ``dgrad``), i.e. from three
    classes on (earlier runs: ``benchmarks/results/head_notes.md``).
    """
    t, _, o = grads.shape
    grid = WindowGrid.of(conv, features.shape, pad)
    b, c, height, width = features.shape
    (h, w), k2, windows = grid.windows, grid.offsets, grid.rows
    if method == "auto":
        method = contraction_order(t, grid)
    if method == "dgrad":
        # a 2-D product ([T·B·L, C·k·k]): torch.matmul would broadcast (copy) the 411 MB weight for
        # a 3-D operand
        g = blocked_product(grads.reshape(t * windows, o), _weight_matrix(conv), transpose=False)
        g = grid.fold(g.view(t * b, h * w, -1).transpose(1, 2))
        return (g.view(t, b, c, height, width) * features[None]).sum(2, dtype=torch.float32)
    (ry, rx), (hr, wr) = grid.real, grid.real_size
    real = features[:, :, ry, rx].permute(0, 2, 3, 1).reshape(-1, c)
    g = grads.view(t, windows, o)
    r = features.new_zeros(windows, t, k2, dtype=torch.float32)  # R[w, t, q] = ⟨g_t(w), P(w + q, q)⟩
    # in blocks of output channels: P on the padded grid, the weight's permuted block and the
    # classes' gradient block each ≤ 2²⁴ values (64 MB fp32)
    block = max(1, min(CELL_BLOCK, 2**24 // max(grid.cells * k2, windows * t, c * k2)))
    for o0 in range(0, o, block):
        ob = min(block, o - o0)
        wb = conv.weight[o0:o0 + ob].permute(1, 2, 3, 0).reshape(c, k2 * ob)
        pz = features.new_zeros(b, height, width, k2, ob)  # padded cells: P = 0
        pz[:, ry, rx] = (real @ wb).view(b, hr, wr, k2, ob)
        pairs = grid.pairs_view(pz).reshape(windows, k2, ob)
        r += torch.bmm(g[:, :, o0:o0 + ob].transpose(0, 1), pairs.transpose(1, 2))
    r = r.view(b, h * w, t, k2).permute(2, 0, 3, 1).reshape(t * b, k2, h * w)
    return grid.fold(r).view(t, b, height, width)


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
    pad: Padding | None = None,
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
    grid = WindowGrid.of(conv, features.shape, pad)
    b, c, (h, w), kw = grid.batch, grid.channels, grid.windows, grid.kernel[1]
    inputs, x = {}, first  # the channel-wise layers' inputs at every window: where the gates are
    for i, m in enumerate(middle):
        if isinstance(m, nn.Conv2d):
            x = F.linear(x, _weight_matrix(m), m.bias)
        else:
            inputs[i] = x.view(b, h, w, -1)
            x = m(x.clone())
    w1 = _offset_major(conv.weight)
    cells = features.permute(0, 2, 3, 1)  # [B, H, W, C], a view
    z = features.new_zeros(b, grid.height, grid.width, x.shape[-1], dtype=torch.float32)
    spans = grid.offset_spans()
    while spans:
        group, rows = [], 0
        while spans and (not group or rows + b * spans[0].area <= PAIR_ROWS):
            group.append(spans.pop(0))
            rows += b * group[-1].area
        t = first.new_empty(rows, conv.out_channels)
        gates = {i: v.new_empty(rows, v.shape[-1]) for i, v in inputs.items()}
        at, r0 = [], 0
        for s in group:
            n = b * s.area
            real = cells[:, s.cell_rows, s.cell_cols].reshape(n, c)
            torch.mm(real, w1[:, s.qy * kw + s.qx], out=t[r0:r0 + n])  # P(w + q, q) for the span's windows
            for i, v in inputs.items():
                gates[i][r0:r0 + n].view(b, *s.shape, -1).copy_(v[:, s.rows, s.cols])
            at.append((s, r0, n))
            r0 += n
        for i, m in enumerate(middle):
            t = t @ _weight_matrix(m).T if isinstance(m, nn.Conv2d) else _jvp(m, gates[i], t)
        for s, r0, n in at:
            z[:, s.cell_rows, s.cell_cols] += t[r0:r0 + n].view(b, *s.shape, -1)
    return z


def _offset_major(weight: torch.Tensor, block: int = 16) -> torch.Tensor:
    """``[O, C, kh, kw]`` → ``[C, kh·kw, O]`` (a copy), so that each offset's ``W₁,qᵀ`` is a
    ``[C, O]`` matrix with unit column stride (a strided read per offset would touch every
    cache line of the weight 49 times). Copied ``block`` output channels at a time: faster
    than one transpose or one permute of the whole weight in an earlier run
    (``benchmarks/results/head_notes.md``)."""
    o = weight.shape[0]
    rows = weight.reshape(o, -1)
    out = weight.new_empty(rows.shape[1], o)
    for o0 in range(0, o, block):
        out[:, o0:o0 + block] = rows[o0:o0 + block].T
    return out.view(weight.shape[1], -1, o)


def run_head(head: nn.Sequential, features: torch.Tensor, mode: str = "gemm") -> torch.Tensor:
    """Run ``head`` on ``features`` as GEMMs (``mode="gemm"``, when the head allows) or as
    the convolutions it is made of (``mode="conv"``)."""
    if mode == "gemm" and gemm_compatible(head):
        return run_head_gemm(head, features)
    return head(features)

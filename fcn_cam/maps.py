"""The two kinds of class maps a converted net gives: window score maps and cell maps.

**Score maps** ``S_c(w)``: the classifier's logit for class ``c`` on window ``w`` of the
feature map, one forward pass for every class (:func:`score_maps`).

**Cell maps** ``A_c(p)``: the exact share of feature cell ``p`` in the window scores. The
head (convs from Linears, ReLU-like gates, folded BatchNorm) is piecewise linear in the
body's feature map ``F``: with its gates fixed, ``S_c(w) = Σ_{p∈w} ⟨∂S_c(w)/∂F(p), F(p)⟩ +
β_c(w)``, where ``β_c(w)`` collects the biases passed through the same gates. Summed over
windows::

    A_c(p) = ⟨ ∂(Σ_w S_c(w)) / ∂F(p), F(p) ⟩        (summed over channels)

so ``Σ_p A_c(p) = Σ_w (S_c(w) - β_c(w))``. One backward pass through the **head only**,
batched over the explained classes (the gates are shared); the body runs without a graph.
With the head run as GEMMs the backward pass starts at the last layer's input (where
``∂S_c(w)/∂u(w) = W[c]`` for every window), stops at the first layer's output ``g_t(w)``,
and the first layer is contracted in whichever order is cheaper,
``A_t(p) = Σ_q ⟨g_t(p − q), W₁,q F(p)⟩``: many classes share the products ``W₁,q F(p)``.
For many classes (VGG16: from about 40) the same sum runs transposed, class-independent:
each (window, offset) pair is pushed forward once through the linearized head,
``A_c(p) = ⟨W[c], Σ_q J(p − q) W₁,q F(p)⟩`` (:func:`cell_order`).
For a GAP head this is CAM without its bias; for an FC head at the native size it is
gradient × activation of the original model at its flatten input (HiResCAM, Draelos &
Carin 2020). Exact for ReLU / LeakyReLU / PReLU / identity gates; a first-order
approximation for smooth activations (GELU, SiLU, …). Cells sit at the feature map's own
centres: ``Geometry.of(fcn.features)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .head import (
    Padding,
    WindowGrid,
    as_maps,
    contraction_order,
    final_linear,
    first_layer,
    first_layer_cells,
    forward_cells,
    gemm_compatible,
    linear_macs,
    rest_of_head,
    rows_through,
)
from .runtime import input_like
from .surgery import FCN

MAP_KINDS = ("scores", "cells")
#: Gradient values (classes × the graph leaf's size) one backward pass of :func:`cell_maps_of`
#: holds at most (512 MB fp32); more classes go in chunks. All 1000 ImageNet classes of VGG16
#: at 448×673 would otherwise hold 4.8 GB of gradients, several times over in the backward.
GRAD_VALUES = 2**27


class Forward(NamedTuple):
    """One forward pass: the body's features and the head's score maps."""

    features: torch.Tensor  # [B, C, fh, fw], feature-padded
    scores: torch.Tensor  # [B, K, h, w]; attached to the head's graph when cells are wanted
    first: torch.Tensor | None = None  # [B·h·w, O] first head layer's output: the graph's leaf
    pad: tuple[int, int, int, int] | None = None  # feature padding in cells
    conv: nn.Conv2d | None = None  # the head's first layer, when ``first`` is set
    last_input: torch.Tensor | None = None  # [B·h·w, O'] the last layer's input: where the graph ends
    last: nn.Conv2d | None = None  # the head's last layer (1×1), when ``last_input`` is set
    middle: tuple[nn.Module, ...] = ()  # the layers between the first and the last

    @property
    def grid(self) -> WindowGrid:
        """The first layer's windows over the padded features (when ``conv`` is set)."""
        return WindowGrid.of(self.conv, self.features.shape, self.pad)


def pad_features(f: torch.Tensor, pad: Padding | None) -> torch.Tensor:
    """Zero-pad a ``[B, C, h, w]`` feature map by ``pad`` cells: windows reaching past the
    image see no features there (what ``pad="features"`` costs instead of a padded input)."""
    if not pad or not any(pad):
        return f
    top, bottom, left, right = pad
    return torch.nn.functional.pad(f, (left, right, top, bottom))


def forward(fcn: FCN, batch: torch.Tensor, *, cells: bool = False, pad: Padding | None = None) -> Forward:
    """Run ``fcn`` on an image batch (moved to its device, dtype and memory format), the
    body's feature map zero-padded by ``pad`` cells before the head.

    With ``cells``, the head's graph is kept (the body's never is) so that
    :func:`cell_maps_of` can run the backward pass for the classes chosen afterwards.
    """
    x = input_like(fcn, batch)
    if not cells:
        with torch.inference_mode():
            f = pad_features(fcn.features(x), pad)
            return Forward(f, fcn.run_head(f))
    with torch.no_grad():
        f = pad_features(fcn.features(x), pad)
        split = fcn.head_mode == "gemm" and gemm_compatible(fcn.head)
        if split:  # no graph through the first layer: first_layer_cells contracts it directly
            first, grid = first_layer(fcn.head, f)
    with torch.enable_grad():
        if split:
            first = first.detach().requires_grad_(True)
            # a copy to run on: the head's activations may work in place (VGG's ReLU)
            last = final_linear(fcn.head)
            if last is None:
                return Forward(f, rest_of_head(fcn.head, first.clone(), grid), first, pad, fcn.head[0])
            u = rows_through(list(fcn.head)[1:-1], first.clone())
            with torch.no_grad():  # the graph ends at u: ∂S_c/∂u = W[c] needs no product
                scores = as_maps(rows_through([last], u), grid)
            return Forward(f, scores, first, pad, fcn.head[0], u, last, tuple(fcn.head)[1:-1])
        f = f.detach().requires_grad_(True)
        return Forward(f, fcn.run_head(f))


def cell_maps_of(fw: Forward, classes: torch.Tensor, method: str = "auto") -> torch.Tensor:
    """Cell maps ``[B, T, fh, fw]`` for ``classes`` ``[B, T]`` (class indices per image).

    ``method`` picks the order of the same sum:

    - ``dgrad`` / ``cells``: one vector–Jacobian product per class slot ``t``, batched (the
      grad output selects class ``classes[b, t]`` in every window). With the head run as
      GEMMs it stops at the first layer's output and
      :func:`fcn_cam.head.first_layer_cells` contracts the first layer in that order.
      Classes go in chunks of at most ``GRAD_VALUES`` gradient values.
    - ``forward``: :func:`fcn_cam.head.forward_cells`, one pass whatever the number of
      classes (heads run as GEMMs that end in a 1×1 layer).
    - ``auto``: the order with the fewest multiply-accumulates (:func:`cell_order`); the
      backward if a middle layer has no forward-mode autograd (a custom ``Function``).
    """
    f, s = fw.features, fw.scores
    leaf = fw.first if fw.first is not None else f
    end = fw.last_input if fw.last_input is not None else s
    if not leaf.requires_grad or end.grad_fn is None:
        raise ValueError("cell maps need a forward pass with cells=True")
    classes = classes.to(s.device)
    b, t = classes.shape
    if method == "forward" or method == "auto" and cell_order(fw, t) == "forward":
        if fw.last is None:
            raise ValueError("the forward order needs a head run as GEMMs that ends in a 1×1 layer")
        try:
            z = forward_cells(fw.conv, list(fw.middle), fw.first.detach(), f, fw.pad)
        except NotImplementedError:  # a custom layer without forward-mode autograd
            if method == "forward":
                raise
        else:
            rows = fw.last.weight.detach().flatten(1)[classes].float()  # [B, T, O']
            return torch.einsum("bhwo,bto->bthw", z, rows)
        method = "auto"
    chunk = max(1, GRAD_VALUES // leaf.numel())
    if t > chunk:
        return torch.cat([cell_maps_of(fw, classes[:, i:i + chunk], method) for i in range(0, t, chunk)], 1)
    if fw.last is not None:  # ∂(Σ_w S_c(w))/∂u(w) = W[c], the same row for every window of the image
        rows = fw.last.weight.detach().flatten(1)[classes.T]  # [T, B, O']
        seed = rows[:, :, None].expand(t, b, end.shape[0] // b, rows.shape[-1]).reshape(t, *end.shape)
    else:
        seed = torch.zeros(t, *s.shape, device=s.device, dtype=s.dtype)
        seed[torch.arange(t)[:, None], torch.arange(b)[None, :], classes.T] = 1
    with torch.enable_grad():
        if t == 1:
            (grad,) = torch.autograd.grad(end, leaf, seed[0], retain_graph=True)
            grad = grad[None]
        else:
            (grad,) = torch.autograd.grad(end, leaf, seed, retain_graph=True, is_grads_batched=True)
    if fw.first is not None:
        with torch.no_grad():  # the weights require grad; these products need none
            cells = first_layer_cells(fw.conv, grad, f, fw.pad, method)
    else:
        cells = (grad * f.detach()[None]).sum(2, dtype=torch.float32)  # [T, B, fh, fw]
    return cells.transpose(0, 1)


def cell_order(fw: Forward, classes: int) -> str:
    """``forward`` where :func:`fcn_cam.head.forward_cells` needs fewer multiply-accumulates
    than the backward pass for ``classes`` classes, else ``auto`` (a backward order).

    Per class the backward pushes every window through the layers after the first (VGG16:
    4096×4096 and more), then contracts the first layer in the order
    :func:`first_layer_cells` takes (``contraction_order``); the forward order pushes every
    (window, offset) pair that sees a real cell through the first layer's offset slice and
    the middle layers once (VGG16 at 448×673 with the default padding: as much as ~40
    classes, then only a ``[cells, 4096]`` product per class)."""
    if fw.last is None or fw.first is None:
        return "auto"
    grid, conv = fw.grid, fw.conv
    windows, o, middle = grid.rows, conv.out_channels, linear_macs(list(fw.middle))
    first = grid.channels * grid.offsets * o
    if contraction_order(classes, grid) == "dgrad":
        contract = classes * windows * first
    else:
        contract = grid.real_cells * first + classes * windows * o * grid.offsets
    backward = classes * windows * middle + contract
    # the gates' inputs (the middle layers again over the windows), the pairs, every class on the grid
    forward = windows * middle + grid.real_pairs * (grid.channels * o + middle) \
        + grid.cells * fw.last.in_channels * classes
    return "forward" if forward < backward else "auto"


def score_maps(fcn: FCN, batch: torch.Tensor, pad: Padding | None = None) -> torch.Tensor:
    """``[B, K, h, w]`` float32 window score maps on the model's device."""
    return forward(fcn, batch, pad=pad).scores.float()


def cell_maps(
    fcn: FCN, batch: torch.Tensor, classes: torch.Tensor, pad: Padding | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Score maps ``[B, K, h, w]`` and cell maps ``[B, T, fh, fw]`` (float32) for ``classes``
    ``[B, T]``, from one forward pass and one head-only backward pass."""
    fw = forward(fcn, batch, cells=True, pad=pad)
    return fw.scores.detach().float(), cell_maps_of(fw, classes)

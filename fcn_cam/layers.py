"""Layer facts and helpers shared by the importers, surgery and the model files.

Leaf module: it imports only torch, so every other module may import it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

# Head layers that vanish in the convolutional form (Dropout in eval, no-ops, the flatten).
SKIPPED = (nn.Dropout, nn.Identity, nn.Flatten)
SOFTMAX = (nn.Softmax, nn.LogSoftmax)
# Head activations whose maps are piecewise linear in the features (cell maps are exact).
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ReLU6, nn.Hardtanh)


def pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    """A layer's ``int | (h, w)`` argument (kernel, stride, padding, dilation) as ``(h, w)``."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def leaves(modules: Sequence[nn.Module]) -> list[nn.Module]:
    """``modules`` with every ``nn.Sequential`` expanded into its layers, recursively."""
    out: list[nn.Module] = []
    for m in modules:
        out.extend(leaves(list(m.children())) if isinstance(m, nn.Sequential) else [m])
    return out


class ChannelSoftmax(nn.Module):
    """Softmax (or log-softmax) over the class channels of ``[B, K, h, w]`` maps: channel-wise,
    i.e. ``p_k(x, y) = exp(s_k(x, y)) / Σ_j exp(s_j(x, y))`` at every cell independently."""

    def __init__(self, log: bool = False) -> None:
        super().__init__()
        self.log = log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.log_softmax(1) if self.log else x.softmax(1)


class ChannelAffine(nn.Module):
    """``y = scale·x + shift`` per channel (dim 1): an importer's constant ``Mul``/``Add``.
    Never left in a converted head: it is folded into the neighbouring Linear."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.scale.reshape(view) + self.shift.reshape(view)


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode, restoring each submodule's training flag on exit."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags.items():
            m.training = flag


def shared_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose parameters and buffers share storage with the original's.

    The modules are new (surgery may change their strides and dilations) and so are the
    Parameter objects (``prepare``'s dtype and memory-format changes rebind only the
    copy's), but no weight is duplicated: VGG16's 528 MB are not held twice.
    """
    memo = {id(p): nn.Parameter(p.detach(), requires_grad=p.requires_grad) for p in module.parameters()}
    memo.update({id(b): b for b in module.buffers()})
    return copy.deepcopy(module, memo)


@torch.no_grad()
def channelwise(layer: nn.Module, channels: int, like: torch.Tensor) -> bool:
    """Whether ``layer`` maps ``[B, C]`` vectors and ``[B, C, h, w]`` maps the same way at every
    position (ReLU, PReLU with 1 or C slopes, GELU, …): probed on random values, in eval mode."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(2, channels, 2, 3, generator=g) * 3).to(like.device, like.dtype)
    vec = x.permute(0, 2, 3, 1).reshape(-1, channels)
    try:
        with eval_mode(layer):
            maps, vecs = layer(x.clone()), layer(vec.clone())
    except Exception:  # noqa: BLE001 - any failure on maps means "not channel-wise"
        return False
    return (isinstance(maps, torch.Tensor) and maps.shape == x.shape and vecs.shape == vec.shape
            and torch.allclose(maps.permute(0, 2, 3, 1).reshape(-1, channels), vecs, rtol=1e-5, atol=1e-6))


__all__ = [
    "PIECEWISE_LINEAR", "SKIPPED", "SOFTMAX", "ChannelAffine", "ChannelSoftmax", "channelwise",
    "eval_mode", "leaves", "pair", "shared_copy",
]

"""Grad-CAM, for side-by-side comparisons with FCN-CAM (demo, benchmarks).

Grad-CAM (Selvaraju et al. 2017) weighs the activations ``A_k`` of a layer by the
spatially averaged gradient of the class score:
``L_c = ReLU(Σ_k α_k^c A_k)``, ``α_k^c = mean_ij ∂y_c / ∂A_k(i, j)``.
The hook lives only inside the call; the model's training flags are restored.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import eval_mode


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Grad-CAM maps ``[B, h, w]`` at ``layer``'s resolution, class ``classes[b]`` for image b.

    The maps sit on the layer's own grid (cell centres on the half-pixel grid of a
    stride-s layer), so a plain resize to the image is the right resampling for them.
    """
    store: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        store["a"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad(), eval_mode(model):
            logits = model(x.requires_grad_(False))
            idx = torch.as_tensor(list(classes), device=logits.device)
            score = logits.gather(1, idx[:, None]).sum()
            (grad,) = torch.autograd.grad(score, store["a"])
    finally:
        handle.remove()
    alpha = grad.mean(dim=(-2, -1), keepdim=True)
    return torch.relu((alpha * store["a"]).sum(1)).detach()

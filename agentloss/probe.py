"""The probe set: checking the images a user passes, and restoring them with the model being trained.

Restoration is what every stage end scores, so it must not depend on how the caller trains: it
runs in eval mode, without gradients, with autocast switched off and in float32 (a bf16 autocast
around the first loss forward would otherwise change S0's scores), and puts train mode back.
Outputs that are not finite mean the model has diverged: ``restore`` then raises ``DivergedError``
instead of clamping them into images that would be scored as if nothing happened.

Example:
    >>> import torch
    >>> imgs = as_image_list(torch.rand(2, 3, 8, 8))
    >>> [tuple(i.shape) for i in imgs]
    [(1, 3, 8, 8), (1, 3, 8, 8)]
    >>> out = restore(torch.nn.Identity(), imgs, lambda m, x: m(x) * 2)
    >>> float(out[0].max()) <= 1.0
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["DivergedError", "ImageInput", "ProbeError", "as_image_list", "restore"]

ImageInput = torch.Tensor | Sequence[torch.Tensor]


class ProbeError(ValueError):
    """The probe set (or its references) is not a set of images the scheduler can use."""


def as_image_list(images: ImageInput, what: str = "probe") -> list[torch.Tensor]:
    """Normalise a ``NxCxHxW`` tensor, a ``CxHxW`` tensor or a list of either into ``1xCxHxW`` images.

    Raises ``ProbeError`` naming what is wrong: not tensors, wrong rank, not floating point,
    not 1 or 3 channels, empty, or non-finite values.
    """
    if isinstance(images, torch.Tensor):
        items = [images] if images.dim() == 3 else list(images.unbind(0)) if images.dim() == 4 else None
        if items is None:
            raise ProbeError(f"{what} must be NxCxHxW or CxHxW, got a tensor of shape {tuple(images.shape)}")
    elif isinstance(images, (list, tuple)):
        items = list(images)
    else:
        raise ProbeError(f"{what} must be a tensor or a list of tensors, got {type(images).__name__}")
    if not items:
        raise ProbeError(f"{what} is empty")
    out = []
    for i, img in enumerate(items):
        if not isinstance(img, torch.Tensor):
            raise ProbeError(f"{what}[{i}] is a {type(img).__name__}, not a tensor")
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3:
            raise ProbeError(f"{what}[{i}] must be CxHxW (or 1xCxHxW), got shape {tuple(img.shape)}")
        if not img.is_floating_point():
            raise ProbeError(f"{what}[{i}] must be a floating-point image in [0, 1], got dtype {img.dtype}")
        if img.shape[0] not in (1, 3):
            raise ProbeError(f"{what}[{i}] must have 1 or 3 channels, got {img.shape[0]} (shape {tuple(img.shape)})")
        if not torch.isfinite(img).all():
            raise ProbeError(f"{what}[{i}] contains NaN or infinite values")
        out.append(img.detach().unsqueeze(0))
    return out


class DivergedError(ProbeError):
    """The model's outputs on the probe set are NaN or infinite: training has diverged."""


def restore(model: nn.Module, probe: Sequence[torch.Tensor],
            restore_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None, *,
            clamp: bool = True) -> list[torch.Tensor]:
    """Each probe image restored by ``restore_fn(model, lq)`` (default ``model(lq)``), as float32 ``1xCxHxW``."""
    fn = restore_fn or (lambda m, x: m(x))
    was_training = model.training
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    outputs = []
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):
            for i, lq in enumerate(probe):
                out = fn(model, lq.to(device))
                if not isinstance(out, torch.Tensor):
                    raise ProbeError(f"restore_fn returned {type(out).__name__}, not a tensor")
                out = out.float()
                if not torch.isfinite(out).all():
                    raise DivergedError(f"the restored probe image {i} has NaN or infinite values: the model has "
                                        "diverged (lower the learning rate or the adversarial weight)")
                outputs.append(out.clamp(0, 1) if clamp else out)
    finally:
        model.train(was_training)
    return outputs

"""Pixel- and frequency-domain terms: ``l1``, ``mse`` (alias ``l2``), ``charbonnier``, ``ssim``, ``fft``.

None of these downloads anything. Every term maps ``(pred, target)`` images of shape ``(N, C, H, W)``
to a scalar tensor averaged over the batch; images are expected in ``[0, 1]`` where it matters
(``ssim``'s ``data_range``).

SSIM is computed by the small functional core ``ssim`` below rather than through pyiqa: pyiqa's
SSIM converts to the Y channel by default and importing pyiqa takes several seconds, while the
Gaussian-window SSIM of Wang et al. (2004) is a few lines of differentiable convolutions. Its values
match ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` (tested).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .precision import float32, float32_terms
from .registry import register_loss

__all__ = ["CharbonnierLoss", "FFTLoss", "L1Loss", "MSELoss", "SSIMLoss", "ssim"]


def _check_pair(pred: torch.Tensor, target: torch.Tensor | None, name: str) -> torch.Tensor:
    if target is None:
        raise ValueError(f"the {name!r} loss compares the prediction with a target; got target=None")
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return target


@register_loss(
    "l1", role="fidelity",
    effect=(
        "mean absolute pixel error against the ground truth; favours fidelity (PSNR/SSIM) but "
        "averages out fine texture, so results look smooth"
    ), description="mean absolute error")
class L1Loss(nn.Module):
    """Mean absolute error ``mean(|pred - target|)``.

    Example:
        >>> import torch
        >>> L1Loss()(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)).item()
        0.5
    """


    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return F.l1_loss(pred, _check_pair(pred, target, "l1"))


@register_loss(
    "mse", role="fidelity",
    effect=(
        "mean squared pixel error; optimises PSNR directly and blurs texture even more than l1"
    ), description="mean squared error", aliases=("l2",))
class MSELoss(nn.Module):
    """Mean squared error ``mean((pred - target) ** 2)``.

    Example:
        >>> import torch
        >>> MSELoss()(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)).item()
        0.25
    """


    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return F.mse_loss(pred, _check_pair(pred, target, "mse"))


@register_loss(
    "charbonnier", role="fidelity",
    effect=(
        "a smooth, robust variant of l1 (pixel error); favours fidelity like l1"
    ), description="Charbonnier (smooth L1): mean(sqrt((pred-target)^2 + eps^2))")
class CharbonnierLoss(nn.Module):
    """Charbonnier penalty ``mean(sqrt((pred - target)**2 + eps**2))``, a differentiable L1.

    Its minimum, for identical images, is ``eps`` (not 0): the constant does not change gradients.

    Args:
        eps: smoothing constant; the penalty is quadratic for differences well below ``eps``.

    Example:
        >>> import torch
        >>> loss = CharbonnierLoss(eps=1e-3)
        >>> round(loss(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item(), 6)
        1.0
        >>> round(loss(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)).item(), 6)
        0.001
    """


    def __init__(self, eps: float = 1e-3):
        super().__init__()
        if not eps > 0:
            raise ValueError(f"charbonnier eps must be > 0, got {eps}")
        self.eps = float(eps)

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        diff = pred - _check_pair(pred, target, "charbonnier")
        return torch.sqrt(diff * diff + self.eps**2).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"


def _gaussian_window(win_size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    coords = torch.arange(win_size, dtype=dtype, device=device) - (win_size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    reduction: Literal["mean", "none"] = "mean",
) -> torch.Tensor:
    """Structural similarity of ``(N, C, H, W)`` images with a Gaussian window, per channel.

    Local statistics use a separable ``win_size`` Gaussian (standard deviation ``sigma``) without
    padding (only windows fully inside the image count); the SSIM map is averaged over channels and
    positions. Differentiable in both arguments.

    Args:
        data_range: ``max - min`` of the pixel values (1 for images in ``[0, 1]``).
        reduction: ``"mean"`` gives a scalar over the batch, ``"none"`` one value per image.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 16, 16)
        >>> round(ssim(x, x).item(), 6)
        1.0
        >>> ssim(x, 1 - x, reduction="none").shape
        torch.Size([2])
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim needs two (N, C, H, W) tensors of the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    if win_size % 2 != 1:
        raise ValueError(f"ssim win_size must be odd, got {win_size}")
    _, c, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(f"ssim needs images of at least {win_size}x{win_size} pixels for win_size={win_size}, "
                         f"got {h}x{w}; pass a smaller win_size")
    g = _gaussian_window(win_size, sigma, pred.dtype, pred.device)
    # One grouped convolution filters all five statistics' inputs of all channels at once.
    stacked = torch.cat([pred, target, pred * pred, target * target, pred * target], dim=1)
    groups = stacked.shape[1]
    filtered = F.conv2d(stacked, g.view(1, 1, 1, -1).expand(groups, 1, 1, win_size), groups=groups)
    filtered = F.conv2d(filtered, g.view(1, 1, -1, 1).expand(groups, 1, win_size, 1), groups=groups)
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.split(c, dim=1)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    per_image = ssim_map.flatten(1).mean(dim=1)
    return per_image.mean() if reduction == "mean" else per_image


@register_loss(
    "ssim", role="fidelity",
    effect=(
        "1 - SSIM against the ground truth; preserves local structure, contrast and edges"
    ), description="1 - SSIM (Gaussian window 11, sigma 1.5, per channel)")
class SSIMLoss(nn.Module):
    """``1 - SSIM(pred, target)``, with the Gaussian-window SSIM of :func:`ssim`.

    Args:
        data_range: ``max - min`` of the pixel values (1 for images in ``[0, 1]``).
        win_size: odd Gaussian window size; images must be at least this large.
        sigma: standard deviation of the Gaussian window.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 16, 16)
        >>> round(SSIMLoss()(x, x).item(), 6)
        0.0
        >>> SSIMLoss()(x, torch.rand(1, 3, 16, 16)).item() > 0.5
        True
    """


    def __init__(self, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5):
        super().__init__()
        self.data_range, self.win_size, self.sigma = float(data_range), int(win_size), float(sigma)

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        target = _check_pair(pred, target, "ssim")
        pred, target = float32(pred, target)  # local variances in bf16 are quantised to 2^-8
        with float32_terms(pred):
            return 1 - ssim(pred, target, self.data_range, self.win_size, self.sigma)

    def extra_repr(self) -> str:
        return f"data_range={self.data_range:g}, win_size={self.win_size}, sigma={self.sigma:g}"


@register_loss(
    "fft", role="fidelity",
    effect=(
        "difference of the Fourier spectra; pushes high-frequency detail and sharpness"
    ), description="L1 distance between 2-D real FFTs (real and imaginary parts)",
               aliases=("frequency",))
class FFTLoss(nn.Module):
    """Frequency-domain L1: ``mean(|rfft2(pred) - rfft2(target)|)`` over real and imaginary parts.

    With ``component="complex"`` (default) the real and imaginary parts of ``torch.fft.rfft2`` of
    each channel are compared with L1, which penalises phase (structure) errors as well as amplitude
    ones. With ``component="amplitude"`` only the spectrum magnitudes ``|F|`` are compared (phase
    ignored). ``norm="ortho"`` (default) scales the transform so the loss does not grow with image
    size. Half-precision inputs are transformed in float32 (half FFTs need power-of-two sizes).

    Args:
        norm: ``"ortho"``, ``"backward"`` or ``"forward"``, as in ``torch.fft.rfft2``.
        component: ``"complex"`` or ``"amplitude"``.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 8, 8)
        >>> FFTLoss()(x, x).item()
        0.0
        >>> FFTLoss(component="amplitude")(x, x + 1).item() > 0
        True
    """


    def __init__(self, norm: Literal["ortho", "backward", "forward"] = "ortho",
                 component: Literal["complex", "amplitude"] = "complex"):
        super().__init__()
        if norm not in ("ortho", "backward", "forward"):
            raise ValueError(f"fft norm must be 'ortho', 'backward' or 'forward', got {norm!r}")
        if component not in ("complex", "amplitude"):
            raise ValueError(f"fft component must be 'complex' or 'amplitude', got {component!r}")
        self.norm, self.component = norm, component

    def _spectrum(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        f = torch.fft.rfft2(x, norm=self.norm)
        return f.abs() if self.component == "amplitude" else torch.view_as_real(f)

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        target = _check_pair(pred, target, "fft")
        return F.l1_loss(self._spectrum(pred), self._spectrum(target))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}, component={self.component!r}"

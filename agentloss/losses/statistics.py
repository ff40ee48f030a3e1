"""Natural-scene-statistics term: ``mscn``.

No-reference quality metrics of the NIQE/BRISQUE family score an image by the statistics of its
*mean-subtracted contrast-normalised* (MSCN) coefficients (Mittal et al., 2012/2013): the luma
minus its local Gaussian mean, divided by its local standard deviation. Blur, ringing and
over-smoothing change those statistics even where the pixel error is small, because the division
gives a faint texture as much weight as a strong edge. ``mscn`` compares the MSCN maps of the
prediction and the target with L1, so a restoration is pulled towards the target's local structure
at every contrast level — a differentiable stand-in for "look natural to NIQE" that needs no
downloaded weights.

The functional core :func:`mscn` is split from the module (as ``pixel.ssim`` is).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pixel import _check_pair, _gaussian_window
from .precision import float32, float32_terms
from .registry import register_loss

__all__ = ["MSCNLoss", "luma", "mscn"]

# ITU-R BT.601 luma weights, as NIQE's reference implementations use on RGB input.
_LUMA = (0.299, 0.587, 0.114)


def luma(x: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` RGB (or ``(N, 1, H, W)`` grey) in ``[0, 1]`` -> ``(N, 1, H, W)`` luma in ``[0, 1]``."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected an (N, 1, H, W) or (N, 3, H, W) image tensor, got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def mscn(x: torch.Tensor, win_size: int = 7, sigma: float = 7 / 6, c: float = 1 / 255) -> torch.Tensor:
    """MSCN coefficients ``(y - mu) / (s + c)`` of the luma ``y`` of ``x`` (``(N, C, H, W)`` in ``[0, 1]``).

    ``mu`` and ``s`` are the local mean and standard deviation under a ``win_size`` Gaussian window
    (standard deviation ``sigma``; NIQE's 7 and 7/6), with reflected borders so the map keeps the
    image's size. ``c`` (1/255, NIQE's 1 on the 0–255 scale) keeps flat regions finite.

    Example:
        >>> import torch
        >>> x = torch.rand(2, 3, 16, 16)
        >>> m = mscn(x)
        >>> m.shape
        torch.Size([2, 1, 16, 16])
        >>> bool((mscn(0.5 * x + 0.2) - m).abs().mean() < 0.05)   # nearly invariant to contrast and brightness
        True
    """
    if win_size % 2 != 1:
        raise ValueError(f"mscn win_size must be odd, got {win_size}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()  # the variance is a difference of squares: half precision loses it
    y = luma(x)
    pad = win_size // 2
    if y.shape[-1] <= pad or y.shape[-2] <= pad:
        raise ValueError(f"mscn needs images larger than {pad} pixels a side for win_size={win_size}, "
                         f"got {tuple(x.shape[-2:])}")
    g = _gaussian_window(win_size, sigma, y.dtype, y.device)
    stacked = F.pad(torch.cat([y, y * y], dim=1), (pad, pad, pad, pad), mode="reflect")
    filtered = F.conv2d(stacked, g.view(1, 1, 1, -1).expand(2, 1, 1, win_size), groups=2)
    filtered = F.conv2d(filtered, g.view(1, 1, -1, 1).expand(2, 1, win_size, 1), groups=2)
    mu, e_yy = filtered.split(1, dim=1)
    # clamp: rounding can make the variance slightly negative; the small floor keeps sqrt's gradient finite.
    s = torch.sqrt((e_yy - mu * mu).clamp_min(0) + 1e-12)
    return (y - mu) / (s + c)


@register_loss(
    "mscn", role="statistics", description="L1 between MSCN maps of the luma (NIQE's natural-scene statistics)",
               aliases=("nss",))
class MSCNLoss(nn.Module):
    """``mean(|mscn(pred) - mscn(target)|)``: local structure compared at every contrast level.

    Args:
        win_size: odd Gaussian window (NIQE uses 7).
        sigma: the window's standard deviation (NIQE uses 7/6).
        c: stabilising constant on the ``[0, 1]`` scale (NIQE's 1 on 0–255).

    Example:
        >>> import torch
        >>> x = torch.rand(1, 3, 16, 16)
        >>> MSCNLoss()(x, x).item()
        0.0
        >>> blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        >>> MSCNLoss()(blurred, x).item() > 0.1
        True
    """


    def __init__(self, win_size: int = 7, sigma: float = 7 / 6, c: float = 1 / 255):
        super().__init__()
        if win_size % 2 != 1 or win_size < 3:
            raise ValueError(f"mscn win_size must be an odd number >= 3, got {win_size}")
        if not (sigma > 0 and c > 0):
            raise ValueError(f"mscn sigma and c must be > 0, got sigma={sigma}, c={c}")
        self.win_size, self.sigma, self.c = int(win_size), float(sigma), float(c)

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        target = _check_pair(pred, target, "mscn")
        pred, target = float32(pred, target)  # the normalisation is a difference of squares
        with float32_terms(pred):
            return F.l1_loss(mscn(pred, self.win_size, self.sigma, self.c),
                             mscn(target, self.win_size, self.sigma, self.c))

    def extra_repr(self) -> str:
        return f"win_size={self.win_size}, sigma={self.sigma:.4g}, c={self.c:.4g}"

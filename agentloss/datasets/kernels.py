"""Blur and sinc kernels of the Real-ESRGAN degradation model, written from the paper's formulas.

For a ``(2t+1) x (2t+1)`` kernel with coordinates ``C = [x, y]`` in ``[-t, t]`` and covariance
``Sigma = R diag(s1^2, s2^2) R^T`` (``R`` a rotation by ``theta``), with ``q = C^T Sigma^-1 C``:

* Gaussian: ``exp(-q / 2)`` (isotropic when ``s1 == s2``),
* generalized Gaussian: ``exp(-q^beta / 2)``,
* plateau-shaped: ``1 / (1 + q^beta)``,
* sinc (ringing/overshoot): ``wc / (2 pi r) J1(wc r)``, ``r = |C|``, value ``wc^2 / (4 pi)`` at 0,

each normalised to sum 1. :func:`pad_kernel` zero-pads to a common size so that a batch with
different kernel sizes can be blurred in one grouped convolution, and :func:`filter2d` does that.

Example:
    >>> k = gaussian_kernel(7, 1.0, 2.0, 0.3)
    >>> k.shape, round(float(k.sum()), 5)
    (torch.Size([7, 7]), 1.0)
    >>> s = sinc_kernel(9, 1.5)
    >>> round(float(s.sum()), 5), bool(s[4, 4] == s.max())
    (1.0, True)
    >>> filter2d(torch.ones(2, 3, 8, 8), torch.stack([k, pad_kernel(sinc_kernel(5, 2.0), 7)])).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    t = (size - 1) / 2
    r = torch.arange(size, dtype=torch.float64) - t
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return xx, yy


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> torch.Tensor:
    """``C^T Sigma^-1 C`` on the kernel grid (Mahalanobis distance squared)."""
    xx, yy = _grid(size)
    c, s = math.cos(theta), math.sin(theta)
    # Rotate coordinates into the principal axes: Sigma^-1 = R diag(1/s1^2, 1/s2^2) R^T.
    u = c * xx + s * yy
    v = -s * xx + c * yy
    return (u / sigma_x) ** 2 + (v / sigma_y) ** 2


def _normalise(k: torch.Tensor) -> torch.Tensor:
    return (k / k.sum()).to(torch.float32)


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> torch.Tensor:
    """Isotropic (``sigma_y`` None) or anisotropic Gaussian blur kernel."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(torch.exp(-0.5 * q))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                                beta: float = 1.0) -> torch.Tensor:
    """Generalized Gaussian kernel ``exp(-q^beta / 2)``: flatter top for beta > 1, heavier tails below 1."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(torch.exp(-0.5 * q.pow(beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                   beta: float = 1.0) -> torch.Tensor:
    """Plateau-shaped kernel ``1 / (1 + q^beta)``."""
    q = _quadratic_form(size, sigma_x, sigma_x if sigma_y is None else sigma_y, theta)
    return _normalise(1.0 / (1.0 + q.pow(beta)))


def sinc_kernel(size: int, cutoff: float) -> torch.Tensor:
    """Circular ideal low-pass (2-D sinc) kernel with cutoff frequency ``cutoff`` (radians, up to pi)."""
    xx, yy = _grid(size)
    r = torch.sqrt(xx**2 + yy**2)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = cutoff * torch.special.bessel_j1(cutoff * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, torch.full_like(r, cutoff**2 / (4 * math.pi)), k)  # the limit at r -> 0
    return _normalise(k)


def pulse_kernel(size: int = 1) -> torch.Tensor:
    """The identity kernel (no filtering)."""
    k = torch.zeros(size, size)
    k[size // 2, size // 2] = 1.0
    return k


def pad_kernel(kernel: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad an odd ``k x k`` kernel to ``size x size`` (same filtering, bigger support)."""
    p = (size - kernel.shape[-1]) // 2
    if p < 0 or (size - kernel.shape[-1]) % 2:
        raise ValueError(f"cannot pad a {kernel.shape[-1]}x{kernel.shape[-1]} kernel to {size}x{size}")
    return F.pad(kernel, (p, p, p, p))


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Filter each image of ``NxCxHxW`` with its own ``KxK`` kernel (``NxKxK``, or one ``KxK`` for all).

    Borders are reflected (replicated when the image is smaller than the kernel's half-width), so
    that a blur does not darken the edges.
    """
    n, c, h, w = images.shape
    if kernels.ndim == 2:
        kernels = kernels.expand(n, *kernels.shape)
    k = kernels.shape[-1]
    p = k // 2
    mode = "reflect" if p < h and p < w else "replicate"
    x = F.pad(images, (p, p, p, p), mode=mode)
    weight = kernels.to(images).repeat_interleave(c, dim=0).unsqueeze(1)  # (N*C, 1, K, K)
    # A grouped convolution applies image i's kernel to image i's channels only.
    out = F.conv2d(x.reshape(1, n * c, h + 2 * p, w + 2 * p), weight, groups=n * c)
    return out.reshape(n, c, h, w)

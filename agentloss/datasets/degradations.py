"""Degradations that turn HR/clean patches into LQ inputs: bicubic SR, Gaussian noise, real-world SR.

A degradation is a callable ``(gt: NxCxHxW in [0, 1], generator) -> lq`` with a ``scale``
attribute (GT size / LQ size). All randomness comes from the ``torch.Generator`` passed in, so the
same generator state gives the same LQ, on any device (random numbers are drawn on the generator's
device, CPU by default, then moved).

:class:`RealWorldDegradation` is the second-order model described in the Real-ESRGAN paper (Wang et
al., ICCV-W 2021), written from the paper's description: two rounds of blur (Gaussian,
generalized Gaussian, plateau, or sinc kernels) -> random resize -> Gaussian/Poisson noise (colour
or grey) -> JPEG, then a final resize to the LQ size and a sinc filter + JPEG in random order.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> hr = torch.rand(2, 3, 64, 64)
    >>> BicubicDegradation(4)(hr, g).shape
    torch.Size([2, 3, 16, 16])
    >>> GaussianNoise(sigmas=(25,))(hr, g).shape
    torch.Size([2, 3, 64, 64])
    >>> lq = RealWorldDegradation(scale=4)(hr, g)
    >>> lq.shape, bool(lq.min() >= 0 and lq.max() <= 1)
    (torch.Size([2, 3, 16, 16]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from ..data import bicubic_downsample
from .kernels import (
    filter2d,
    gaussian_kernel,
    generalized_gaussian_kernel,
    pad_kernel,
    plateau_kernel,
    pulse_kernel,
    sinc_kernel,
)


@runtime_checkable
class Degradation(Protocol):
    """GT batch + generator -> LQ batch, ``scale`` times smaller."""

    scale: int

    def __call__(self, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...


# ---- random draws: every one goes through the passed generator -------------------------------------------------


def _uniform(g: torch.Generator, lo: float, hi: float, n: int = 1) -> torch.Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=g, device=g.device, dtype=torch.float64)).cpu()


def _bernoulli(g: torch.Generator, p: float, n: int = 1) -> torch.Tensor:
    return (torch.rand(n, generator=g, device=g.device) < p).cpu()


def _choice(g: torch.Generator, probs: Sequence[float], n: int = 1) -> list[int]:
    w = torch.tensor(probs, dtype=torch.float64, device=g.device)
    return torch.multinomial(w, n, replacement=True, generator=g).cpu().tolist()


def _randint(g: torch.Generator, lo: int, hi: int, n: int = 1) -> list[int]:
    """Integers in ``[lo, hi]`` (both ends included)."""
    return torch.randint(lo, hi + 1, (n,), generator=g, device=g.device).cpu().tolist()


# ---- simple degradations ---------------------------------------------------------------------------------------


@dataclass
class BicubicDegradation:
    """Classical SR: antialiased bicubic ``1/scale`` downsampling (GT sides must divide by ``scale``)."""

    scale: int = 2

    def __call__(self, gt: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return bicubic_downsample(gt, self.scale)


@dataclass
class GaussianNoise:
    """Additive white Gaussian noise for denoising; sigma in 8-bit units (25 means 25/255).

    Each image gets one sigma drawn from ``sigmas`` (the usual 15/25/50 benchmark levels), or
    uniformly from ``sigma_range`` when given (blind denoising). ``clip`` is off by default, as in
    the DnCNN/Restormer protocol where the noisy input is not clipped to [0, 1].
    """

    sigmas: Sequence[float] = (15.0, 25.0, 50.0)
    sigma_range: tuple[float, float] | None = None
    clip: bool = False
    scale: int = 1

    def sample_sigmas(self, n: int, g: torch.Generator) -> torch.Tensor:
        """Per-image sigmas in [0, 1] units."""
        if self.sigma_range is not None:
            return _uniform(g, *self.sigma_range, n).float() / 255.0
        idx = _randint(g, 0, len(self.sigmas) - 1, n)
        return torch.tensor([float(self.sigmas[i]) for i in idx]) / 255.0

    def __call__(self, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        sig = self.sample_sigmas(gt.shape[0], generator).view(-1, 1, 1, 1)
        noise = torch.randn(gt.shape, generator=generator, device=generator.device).cpu() * sig
        out = gt + noise.to(gt)
        return out.clamp(0, 1) if self.clip else out


# ---- real-world degradation ------------------------------------------------------------------------------------

KERNEL_TYPES: tuple[str, ...] = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES: tuple[str, ...] = ("area", "bilinear", "bicubic")


@dataclass
class DegradationOrder:
    """The settings of one order (one blur -> resize -> noise -> JPEG round).

    Ranges are ``(low, high)``; noise sigma in 8-bit units. ``resize_probs`` are the chances of
    up / down / keep, and ``resize_range`` the factor range (up draws from ``[1, high]``, down
    from ``[low, 1]``).
    """

    blur_prob: float = 1.0
    blur_sigma: tuple[float, float] = (0.2, 3.0)
    sinc_prob: float = 0.1
    resize_probs: tuple[float, float, float] = (0.2, 0.7, 0.1)
    resize_range: tuple[float, float] = (0.15, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 30.0)
    poisson_scale: tuple[float, float] = (0.05, 3.0)
    gray_noise_prob: float = 0.4
    jpeg_quality: tuple[int, int] = (30, 95)


def _second_order() -> DegradationOrder:
    return DegradationOrder(blur_prob=0.8, blur_sigma=(0.2, 1.5), resize_probs=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
                            noise_sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5))


@dataclass
class RealWorldDegradationConfig:
    """Settings of :class:`RealWorldDegradation`; defaults are the Real-ESRGAN paper's.

    From the paper (Sec. 4.1): kernel sizes 7..21 (odd); blur sigma [0.2, 3] then [0.2, 1.5];
    generalized-Gaussian beta [0.5, 4], plateau beta [1, 2]; sinc kernels with probability 0.1;
    the second blur skipped with probability 0.2; Gaussian or Poisson noise 50/50, sigma [1, 30]
    then [1, 25], Poisson scale [0.05, 3] then [0.05, 2.5]; grey noise with probability 0.4; JPEG
    quality [30, 95]; the final sinc filter with probability 0.8.

    The paper leaves these open; the values are the authors' published training options:
    kernel-type probabilities (iso 0.45, aniso 0.25, generalized 0.12/0.03, plateau 0.12/0.03),
    resize up/down/keep (0.2, 0.7, 0.1) with factors [0.15, 1.5], then (0.3, 0.4, 0.3) with
    [0.3, 1.2] relative to the LQ size; and our own choices: sinc cutoff uniform in [pi/3, pi]
    ([pi/5, pi] for kernels of 13 or more, whose support can hold the wider lobes), anisotropic
    angle uniform in [-pi, pi], each resize mode (area, bilinear, bicubic) equally likely.
    """

    first: DegradationOrder = field(default_factory=DegradationOrder)
    second: DegradationOrder = field(default_factory=_second_order)
    kernel_sizes: tuple[int, ...] = (7, 9, 11, 13, 15, 17, 19, 21)
    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    generalized_beta: tuple[float, float] = (0.5, 4.0)
    plateau_beta: tuple[float, float] = (1.0, 2.0)
    resize_modes: tuple[str, ...] = RESIZE_MODES
    final_sinc_prob: float = 0.8
    final_sinc_cutoff: tuple[float, float] = (math.pi / 3, math.pi)
    quantize: bool = True  # round the LQ to 8-bit levels, as a saved real photo is

    def __post_init__(self) -> None:
        unknown = set(self.kernel_types) - set(KERNEL_TYPES)
        if unknown or len(self.kernel_types) != len(self.kernel_probs):
            raise ValueError(f"kernel_types must be among {KERNEL_TYPES} with one probability each")
        if any(k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel sizes must be odd, got {self.kernel_sizes}")
        bad_modes = set(self.resize_modes) - {"area", "bilinear", "bicubic", "nearest"}
        if bad_modes:
            raise ValueError(f"unknown resize modes {sorted(bad_modes)}")


def sample_blur_kernel(g: torch.Generator, cfg: RealWorldDegradationConfig, order: DegradationOrder) -> torch.Tensor:
    """One random blur kernel of an order: a sinc filter with ``order.sinc_prob``, else a typed kernel."""
    size = cfg.kernel_sizes[_randint(g, 0, len(cfg.kernel_sizes) - 1)[0]]
    if bool(_bernoulli(g, order.sinc_prob)):
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return sinc_kernel(size, float(_uniform(g, lo, math.pi)))
    kind = cfg.kernel_types[_choice(g, cfg.kernel_probs)[0]]
    s1 = float(_uniform(g, *order.blur_sigma))
    if kind.endswith("_iso") or kind == "iso":
        s2, theta = s1, 0.0
    else:
        s2, theta = float(_uniform(g, *order.blur_sigma)), float(_uniform(g, -math.pi, math.pi))
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, s1, s2, theta, float(_uniform(g, *cfg.generalized_beta)))
    if kind.startswith("plateau"):
        return plateau_kernel(size, s1, s2, theta, float(_uniform(g, *cfg.plateau_beta)))
    return gaussian_kernel(size, s1, s2, theta)


def _stack_kernels(kernels: list[torch.Tensor]) -> torch.Tensor:
    size = max(k.shape[-1] for k in kernels)
    return torch.stack([pad_kernel(k, size) for k in kernels])


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize ``NxCxHxW`` to ``size`` with ``mode`` (area, bilinear, bicubic, nearest), clamped to [0, 1]."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    if tuple(x.shape[-2:]) == size:
        return x
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=size, mode=mode, **kw).clamp(0, 1)


def add_gaussian_noise(x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Add per-image Gaussian noise; ``sigma`` in [0, 1] units, ``gray`` images share it across channels."""
    n, c, h, w = x.shape
    colour = torch.randn((n, c, h, w), generator=g, device=g.device).cpu()
    grey = torch.randn((n, 1, h, w), generator=g, device=g.device).cpu()
    noise = torch.where(gray.view(-1, 1, 1, 1), grey.expand(n, c, h, w), colour) * sigma.view(-1, 1, 1, 1).float()
    return (x + noise.to(x)).clamp(0, 1)


def add_poisson_noise(x: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, g: torch.Generator,
                      peak: float = 255.0) -> torch.Tensor:
    """Add per-image Poisson (shot) noise: photon counts ``~ Poisson(peak * x)``, residual times ``scale``.

    Grey noise is drawn on the luma (BT.601 weights) and added to every channel.
    """
    n, c, h, w = x.shape
    xc = x.detach().float().cpu().clamp(0, 1).to(g.device)
    luma = (xc * torch.tensor([0.299, 0.587, 0.114], device=g.device).view(1, 3, 1, 1)).sum(1, keepdim=True) \
        if c == 3 else xc.mean(1, keepdim=True)
    colour = torch.poisson(xc * peak, generator=g) / peak - xc
    grey = torch.poisson(luma * peak, generator=g) / peak - luma
    noise = torch.where(gray.view(-1, 1, 1, 1).to(g.device), grey.expand(n, c, h, w), colour).cpu()
    return (x + (noise * scale.view(-1, 1, 1, 1).float()).to(x)).clamp(0, 1)


def jpeg(x: torch.Tensor, quality: Sequence[int]) -> torch.Tensor:
    """JPEG-compress each image at its own quality through PIL (libjpeg, 4:2:0 chroma; CPU, no gradient).

    PIL rather than ``torchvision.io``, whose JPEG codec is deprecated since torchvision 0.29.
    """
    import io

    import numpy as np
    from PIL import Image

    u8 = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img, q in zip(u8, quality):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=int(q))
        buf.seek(0)
        with Image.open(buf) as im:
            dec = np.asarray(im.convert("L" if img.shape[-1] == 1 else "RGB"))
        out.append(torch.from_numpy(dec.copy()).reshape(img.shape))
    return (torch.stack(out).permute(0, 3, 1, 2).float() / 255.0).to(x)


def _noise(x: torch.Tensor, g: torch.Generator, order: DegradationOrder) -> torch.Tensor:
    n = x.shape[0]
    use_gauss = _bernoulli(g, order.gaussian_noise_prob, n)
    gray = _bernoulli(g, order.gray_noise_prob, n)
    sigma = _uniform(g, *order.noise_sigma, n) / 255.0
    pscale = _uniform(g, *order.poisson_scale, n)
    gx = add_gaussian_noise(x, sigma, gray, g)
    px = add_poisson_noise(x, pscale, gray, g)
    return torch.where(use_gauss.view(-1, 1, 1, 1).to(x.device), gx, px)


def _resize_factor(g: torch.Generator, order: DegradationOrder) -> float:
    kind = _choice(g, order.resize_probs)[0]
    lo, hi = order.resize_range
    if kind == 0:
        return float(_uniform(g, 1.0, hi))
    if kind == 1:
        return float(_uniform(g, lo, 1.0))
    return 1.0


@dataclass
class RealWorldDegradation:
    """Real-ESRGAN's second-order degradation (see :class:`RealWorldDegradationConfig`) for RISR.

    Kernels, noise and JPEG qualities are drawn per image; resize factors/modes and the order of
    the final sinc/JPEG are drawn per batch (a batch keeps one shape). GT sides must divide by
    ``scale``. The second resize is relative to the LQ size (``H / scale``), so that a strong first
    downscale cannot compound into a vanishing image.

    >>> g = torch.Generator().manual_seed(1)
    >>> lq, stages = RealWorldDegradation(scale=2).trace(torch.rand(1, 3, 32, 32), g)
    >>> [name for name, _ in stages][:4]
    ['blur1', 'resize1', 'noise1', 'jpeg1']
    """

    scale: int = 4
    config: RealWorldDegradationConfig = field(default_factory=RealWorldDegradationConfig)

    def __call__(self, gt: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._run(gt, generator, None)

    def trace(self, gt: torch.Tensor,
              generator: torch.Generator) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
        """The LQ and every stage's output, in order (for inspection and tests)."""
        stages: list[tuple[str, torch.Tensor]] = []
        return self._run(gt, generator, stages), stages

    def _run(self, gt: torch.Tensor, g: torch.Generator, rec: list | None) -> torch.Tensor:
        cfg, s = self.config, self.scale
        if gt.ndim != 4:
            raise ValueError(f"expected an NxCxHxW batch, got shape {tuple(gt.shape)}")
        n, _, h, w = gt.shape
        if h % s or w % s:
            raise ValueError(f"GT size {h}x{w} must divide by the scale {s}")
        lq_size = (h // s, w // s)

        def log(name: str, t: torch.Tensor) -> torch.Tensor:
            if rec is not None:
                rec.append((name, t))
            return t

        x = gt.detach().float().clamp(0, 1)
        for i, order in enumerate((cfg.first, cfg.second), start=1):
            keep = _bernoulli(g, order.blur_prob, n)
            kernels = [sample_blur_kernel(g, cfg, order) for _ in range(n)]
            kernels = [k if bool(kp) else pulse_kernel() for k, kp in zip(kernels, keep)]
            x = log(f"blur{i}", filter2d(x, _stack_kernels(kernels)).clamp(0, 1))
            f = _resize_factor(g, order)
            mode = cfg.resize_modes[_randint(g, 0, len(cfg.resize_modes) - 1)[0]]
            base = (x.shape[-2], x.shape[-1]) if i == 1 else lq_size
            x = log(f"resize{i}", resize(x, (round(base[0] * f), round(base[1] * f)), mode))
            x = log(f"noise{i}", _noise(x, g, order))
            x = log(f"jpeg{i}", jpeg(x, _randint(g, *order.jpeg_quality, n)))

        # Final: resize to the LQ size + sinc, and JPEG, in random order (ringing before or after compression).
        mode = cfg.resize_modes[_randint(g, 0, len(cfg.resize_modes) - 1)[0]]
        sinc_first = bool(_bernoulli(g, 0.5))
        use_sinc = _bernoulli(g, cfg.final_sinc_prob, n)
        sincs = []
        for u in use_sinc:
            size = cfg.kernel_sizes[_randint(g, 0, len(cfg.kernel_sizes) - 1)[0]]
            cutoff = float(_uniform(g, *cfg.final_sinc_cutoff))
            sincs.append(sinc_kernel(size, cutoff) if bool(u) else pulse_kernel())
        quality = _randint(g, *cfg.second.jpeg_quality, n)

        def resize_and_sinc(t: torch.Tensor) -> torch.Tensor:
            t = log("resize_final", resize(t, lq_size, mode))
            return log("sinc_final", filter2d(t, _stack_kernels(sincs)).clamp(0, 1))

        if sinc_first:
            x = log("jpeg_final", jpeg(resize_and_sinc(x), quality))
        else:
            x = resize_and_sinc(log("jpeg_final", jpeg(x, quality)))
        if cfg.quantize:
            x = (x * 255).round() / 255
        return x.to(gt.dtype)


def make_degradation(task: str, scale: int = 1, **kwargs: object) -> Degradation | None:
    """The degradation for a task's HR-only data: ``"sr"`` bicubic, ``"realsr"`` real-world,
    ``"denoise"`` Gaussian noise; ``None`` for paired tasks (``"derain"``, ``"dehaze"``).

    >>> make_degradation("sr", 3).scale, make_degradation("derain") is None
    (3, True)
    """
    task = task.lower()
    if task in ("sr", "classical_sr", "bicubic"):
        return BicubicDegradation(scale)
    if task in ("realsr", "risr", "real_sr", "real-world"):
        return RealWorldDegradation(scale, **kwargs)  # type: ignore[arg-type]
    if task in ("denoise", "denoising", "noise"):
        if scale != 1:
            raise ValueError("denoising has scale 1")
        return GaussianNoise(**kwargs)  # type: ignore[arg-type]
    if task in ("derain", "deraining", "dehaze", "dehazing"):
        return None
    raise ValueError(f"unknown task {task!r}; use sr, realsr, denoise, derain or dehaze")

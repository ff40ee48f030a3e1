"""Benchmark evaluation: restore every LQ image, score it with PSNR/SSIM and any pyiqa metric.

Conventions (those of SR papers, e.g. EDSR/SwinIR/BasicSR tables):

* the output is clamped to [0, 1] and, with ``quantize`` (default), rounded to 8-bit levels, as if
  saved to PNG before scoring;
* PSNR and SSIM are pyiqa's, on the Y channel of ITU-R BT.601 YCbCr
  (``Y = 16 + 65.481 R + 128.553 G + 24.966 B`` for RGB in [0, 1], so Y lies in [16, 235]/255)
  when ``y_channel``; pyiqa's own default Y is YIQ's, which reads about 1.3 dB lower, so
  ``color_space="ycbcr"`` is passed explicitly. ``crop_border`` pixels are removed on every side
  (default: ``scale`` for SR, 0 for scale 1, where restoration papers crop nothing);
* PSNR of identical images is ``inf`` (pyiqa's ``eps`` is set to 0), and then so is the mean;
* a metric that raises on an image (NIQE on a flat output) scores NaN there, with a warning and a
  note in ``settings["failures"]``; the mean is then NaN too;
* other metric names go to ``pyiqa.create_metric`` with ``metric_kwargs[name]``; no-reference ones
  score the output alone (NIQE offline: ``{"niqe": {"pretrained_model_path": ...}}``; NIQE needs
  images of roughly 192 px or more to be meaningful), full-reference ones use the GT uncropped.

The built-in evaluation set (:func:`builtin_eval_pairs`) uses scikit-image photos that the
built-in training photos (:data:`agentloss.data.NATURAL_PHOTOS`) do not include:
:data:`agentloss.data.EVAL_PHOTOS`.

Example:
    >>> import torch.nn.functional as F
    >>> pairs = builtin_eval_pairs("sr", scale=2, size=96)
    >>> up = lambda lq: F.interpolate(lq, scale_factor=2, mode="bicubic", align_corners=False)
    >>> res = evaluate(None, pairs, 2, restore_fn=up)
    >>> sorted(res.mean), 20 < res.mean["psnr"] < 40
    (['psnr', 'ssim'], True)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data import EVAL_PHOTOS, bicubic_downsample, builtin_photos, crop_to_multiple
from .benchmarks import ImagePair
from .degradations import GaussianNoise, RealWorldDegradation
from .sampling import mix_seed

RestoreFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class EvaluationResult:
    """Per-image scores (``{image: {metric: value}}``), their means, and the settings used."""

    per_image: dict[str, dict[str, float]]
    mean: dict[str, float]
    settings: dict[str, Any] = field(default_factory=dict)

    def format_table(self, digits: int = 4) -> str:
        """A plain-text table, one row per image and a mean row."""
        metrics = list(self.mean)
        width = max([len("mean")] + [len(n) for n in self.per_image])
        rows = [f"{'image':<{width}}  " + "  ".join(f"{m:>10}" for m in metrics)]
        for name, scores in [*self.per_image.items(), ("mean", self.mean)]:
            cells = [f"{scores[m]:>10.{digits}f}" if m in scores else f"{'-':>10}" for m in metrics]
            rows.append(f"{name:<{width}}  " + "  ".join(cells))
        return "\n".join(rows)


def _as_pair(i: int, item: Any) -> ImagePair:
    if isinstance(item, ImagePair):
        return item
    if len(item) == 3:
        return ImagePair(str(item[0]), item[1], item[2])
    if len(item) == 2:
        return ImagePair(f"image_{i:03d}", item[0], item[1])
    raise ValueError("pairs must be ImagePair, (lq, gt) or (name, lq, gt)")


def _batched(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(0) if x.ndim == 3 else x


def tiled(fn: RestoreFn, lq: torch.Tensor, scale: int, tile: int, overlap: int = 16) -> torch.Tensor:
    """Run ``fn`` on overlapping ``tile``-pixel LQ tiles and average the overlaps (bounded memory).

    >>> x = torch.rand(1, 3, 20, 30)
    >>> up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")
    >>> bool(torch.allclose(tiled(up, x, 2, tile=8, overlap=2), up(x)))
    True
    """
    _, _, h, w = lq.shape
    th, tw = min(tile, h), min(tile, w)

    def starts(n: int, t: int) -> list[int]:
        s = list(range(0, n - t + 1, max(1, t - overlap)))
        if s[-1] + t < n:
            s.append(n - t)  # the last tile flush with the edge
        return s

    out: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    for y in starts(h, th):
        for x in starts(w, tw):
            part = fn(lq[..., y: y + th, x: x + tw])
            if out is None:
                out = part.new_zeros(part.shape[0], part.shape[1], h * scale, w * scale)
                weight = part.new_zeros(1, 1, h * scale, w * scale)
            ys, xs = y * scale, x * scale
            out[..., ys: ys + part.shape[-2], xs: xs + part.shape[-1]] += part
            weight[..., ys: ys + part.shape[-2], xs: xs + part.shape[-1]] += 1  # type: ignore[index]
    assert out is not None and weight is not None
    return out / weight


def _padded(fn: RestoreFn, lq: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    """Reflect-pad the LQ to a multiple of ``multiple`` (window-based models need it), crop the output back."""
    h, w = lq.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return fn(lq)
    mode = "reflect" if ph < h and pw < w else "replicate"
    out = fn(F.pad(lq, (0, pw, 0, ph), mode=mode))
    return out[..., : h * scale, : w * scale]


def _build_metrics(names: Sequence[str], y_channel: bool, crop_border: int, device: torch.device,
                   metric_kwargs: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, bool]]:
    import pyiqa
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    built: dict[str, tuple[Any, bool]] = {}
    for name in names:
        key = name.lower()
        if key not in DEFAULT_CONFIGS:
            raise ValueError(f"unknown metric {name!r}; pyiqa has {', '.join(pyiqa.list_models())}")
        kw: dict[str, Any] = {}
        if key in ("psnr", "ssim"):
            kw = {"test_y_channel": y_channel, "color_space": "ycbcr", "crop_border": crop_border}
            if key == "psnr":
                kw["eps"] = 0.0  # identical images -> inf, not a silent 80 dB cap
        kw.update(metric_kwargs.get(name, metric_kwargs.get(key, {})))
        try:
            metric = pyiqa.create_metric(key, as_loss=False, device=device, **kw)
        except Exception as e:
            hint = (" NIQE needs niqe_modelparameters.mat offline: metric_kwargs={'niqe': "
                    "{'pretrained_model_path': ...}}." if key.startswith("niqe") else "")
            raise RuntimeError(f"could not build pyiqa metric {name!r}: {e}.{hint}") from e
        built[name] = (metric, DEFAULT_CONFIGS[key].get("metric_mode") == "FR")
    return built


def evaluate(model: torch.nn.Module | RestoreFn | None, pairs: Iterable[Any], scale: int,
             metrics: Sequence[str] = ("psnr", "ssim"), restore_fn: RestoreFn | None = None,
             crop_border: int | None = None, y_channel: bool = True, tile: int | None = None,
             tile_overlap: int = 16, pad_multiple: int = 1, metric_kwargs: dict[str, dict[str, Any]] | None = None,
             device: str | torch.device | None = None, quantize: bool = True) -> EvaluationResult:
    """Restore each pair's LQ and score it; returns per-image and mean scores.

    ``pairs``: :class:`ImagePair`, ``(lq, gt)`` or ``(name, lq, gt)`` items (``3xHxW`` or
    ``1x3xHxW``; ``gt`` None for no-reference sets, whose full-reference scores are then absent).
    ``model`` is called as ``model(lq)`` on a ``1x3xhxw`` batch (in eval mode, without gradients;
    its training mode is restored after), unless ``restore_fn(lq)`` is given. ``tile`` runs the
    model on overlapping LQ tiles of that size; ``pad_multiple`` reflect-pads the input to a
    multiple (cropping the output back). ``device``: where the model and metrics run (default:
    the model's device, else CPU). See the module docstring for the scoring conventions.
    """
    if model is None and restore_fn is None:
        raise ValueError("pass a model or a restore_fn")
    crop = (scale if scale > 1 else 0) if crop_border is None else int(crop_border)
    is_module = isinstance(model, torch.nn.Module)
    if device is None:
        param = next(iter(model.parameters()), None) if is_module else None  # type: ignore[union-attr]
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    metric_kwargs = dict(metric_kwargs or {})
    built = _build_metrics(metrics, y_channel, crop, device, metric_kwargs)

    base: RestoreFn = restore_fn if restore_fn is not None else model  # type: ignore[assignment]

    def run(lq: torch.Tensor) -> torch.Tensor:
        def padded(t: torch.Tensor) -> torch.Tensor:
            return _padded(base, t, scale, pad_multiple)
        return tiled(padded, lq, scale, tile, tile_overlap) if tile else padded(lq)

    was_training = bool(model.training) if is_module else False  # type: ignore[union-attr]
    if is_module:
        model.eval()  # type: ignore[union-attr]
    per_image: dict[str, dict[str, float]] = {}
    failures: list[str] = []
    try:
        with torch.no_grad():
            for i, item in enumerate(pairs):
                pair = _as_pair(i, item)
                lq = _batched(pair.lq).float().to(device)
                out = run(lq).float().clamp(0, 1)
                if quantize:
                    out = (out * 255).round() / 255
                gt = _batched(pair.gt).float().to(device) if pair.gt is not None else None
                if gt is not None and out.shape[-2:] != gt.shape[-2:]:
                    raise ValueError(f"{pair.name}: output {tuple(out.shape[-2:])} but GT {tuple(gt.shape[-2:])} "
                                     f"(LQ {tuple(lq.shape[-2:])}, scale {scale})")
                if "niqe" in [m.lower() for m in built] and min(out.shape[-2:]) < 192:
                    warnings.warn(f"{pair.name}: NIQE on a {tuple(out.shape[-2:])} image is unreliable "
                                  "(its statistics need about 192 px or more)", stacklevel=2)
                scores: dict[str, float] = {}
                for name, (metric, needs_ref) in built.items():
                    if needs_ref and gt is None:
                        continue
                    try:
                        value = metric(out, gt) if needs_ref else metric(out)
                        scores[name] = float(torch.as_tensor(value).double().mean())
                    except Exception as e:  # e.g. NIQE's LinAlgError on a flat, collapsed output
                        scores[name] = float("nan")
                        failures.append(f"{pair.name}: {name}: {type(e).__name__}: {e}")
                        warnings.warn(f"{pair.name}: {name} failed ({type(e).__name__}: {e}); scored NaN",
                                      stacklevel=2)
                key = pair.name if pair.name not in per_image else f"{pair.name}_{i}"
                per_image[key] = scores
    finally:
        if is_module and was_training:
            model.train()  # type: ignore[union-attr]
    mean = {}
    for name in built:
        vals = [s[name] for s in per_image.values() if name in s]
        if vals:
            # An inf PSNR (identical images) makes the mean inf; a failed image makes it NaN, so a
            # collapsed output is never hidden by averaging over the images that could be scored.
            mean[name] = sum(vals) / len(vals)
    settings = {"scale": scale, "crop_border": crop, "y_channel": y_channel, "color_space": "ycbcr",
                "quantize": quantize, "tile": tile, "metrics": list(metrics), "failures": failures}
    return EvaluationResult(per_image, mean, settings)


def builtin_eval_pairs(task: str = "sr", scale: int = 2, noise_sigma: float = 25.0, size: int | None = None,
                       seed: int = 0, names: Sequence[str] = EVAL_PHOTOS) -> list[ImagePair]:
    """A small evaluation set from scikit-image photos kept out of the built-in training photos.

    ``task``: ``"sr"`` (bicubic LR), ``"realsr"`` (real-world degradation, GT kept for reference
    metrics), ``"denoise"`` (Gaussian noise of ``noise_sigma``, 8-bit units). ``size`` takes a
    centred ``size x size`` GT crop (keep it at 192 or more for NIQE); GT sides are cropped to a
    multiple of ``scale``. Synthetic LQ is seeded by ``(seed, index)``. Deraining and dehazing
    need real pairs (see :func:`~agentloss.datasets.benchmarks.find_benchmark`).
    """
    task = task.lower()
    if task not in ("sr", "realsr", "denoise"):
        raise ValueError(f"no built-in evaluation set for {task!r} (only sr, realsr, denoise); use find_benchmark")
    if task == "denoise":
        scale = 1
    out = []
    for i, (name, img) in enumerate(zip(names, builtin_photos(names))):
        if size is not None:
            h, w = img.shape[-2:]
            s = min(size, h, w)
            img = img[..., (h - s) // 2: (h - s) // 2 + s, (w - s) // 2: (w - s) // 2 + s]
        gt = crop_to_multiple(img, scale).contiguous()
        g = torch.Generator().manual_seed(mix_seed(seed, i))
        if task == "sr":
            lq = bicubic_downsample(gt.unsqueeze(0), scale)[0]
        elif task == "realsr":
            lq = RealWorldDegradation(scale)(gt.unsqueeze(0), g)[0]
        else:
            lq = GaussianNoise(sigmas=(noise_sigma,))(gt.unsqueeze(0), g)[0]
        out.append(ImagePair(name, lq, gt))
    return out

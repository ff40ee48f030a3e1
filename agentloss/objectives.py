"""Objectives: the scores an agent optimises, computed on the restored probe set.

An ``Objective`` has a name, a direction (``higher_is_better``), whether it needs a reference
image, a description and a usual range, and scores a list of restored images (each ``1xCxHxW`` in
``[0, 1]``) with optional references, keeping per-image scores. ``PyiqaObjective`` wraps any pyiqa
metric and takes its direction and range from pyiqa; ``CallableObjective`` wraps a user function.

Example:
    >>> import torch
    >>> sharp = CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True)
    >>> r = sharp.score([torch.zeros(1, 3, 8, 8), torch.rand(1, 3, 8, 8)])
    >>> r.per_image[0], r.mean > 0
    (0.0, True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from .types import ObjectiveInfo

Range = tuple[float | None, float | None]


class ObjectiveError(RuntimeError):
    """An objective could not score the probe set (the stage then keeps its weights)."""


@dataclass
class ObjectiveResult:
    """The mean score (``None`` when it could not be computed) and per-image scores."""

    mean: float | None
    per_image: list[float | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def aggregate(per_image: Sequence[float | None], on_image_error: str = "fail") -> float | None:
    """Mean of the per-image scores; ``None`` if any is missing and ``on_image_error == "fail"``.

    Failing the whole objective is the default because silently dropping a failed image (NIQE
    raises on a collapsed, flat output) would make the worst outputs look like the best ones.
    """
    valid = [s for s in per_image if s is not None]
    if not valid or (on_image_error == "fail" and len(valid) != len(per_image)):
        return None
    return float(sum(valid) / len(valid))


class Objective:
    """Base class: subclasses set the class attributes and implement ``score_image``."""

    name: str = "objective"
    higher_is_better: ClassVar[bool] | bool = True
    needs_reference: bool = False
    description: str = ""
    value_range: Range | None = None

    def __init__(self, on_image_error: Literal["fail", "skip"] = "fail"):
        if on_image_error not in ("fail", "skip"):
            raise ValueError(f"on_image_error must be 'fail' or 'skip', got {on_image_error!r}")
        self.on_image_error = on_image_error

    def score_image(self, restored: torch.Tensor, reference: torch.Tensor | None) -> float:
        raise NotImplementedError

    def prepare(self) -> None:
        """Load what scoring needs now (weights, parameter files); raise ``ObjectiveError`` if it cannot be.

        The scheduler calls it at S0, so a metric that cannot be built stops the run before training
        rather than leaving every stage unscored. Nothing to load here.
        """

    def score(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> ObjectiveResult:
        """Score each image; an exception or a non-finite score marks that image as failed."""
        if self.needs_reference and references is None:
            raise ObjectiveError(f"objective {self.name!r} needs reference images, and the probe set has none")
        per_image: list[float | None] = []
        errors: list[str] = []
        for i, img in enumerate(restored):
            ref = references[i] if references is not None else None
            try:
                value = float(self.score_image(img, ref))
            except Exception as e:  # noqa: BLE001 - any failure of a metric is a recorded, per-image failure
                per_image.append(None)
                errors.append(f"image {i}: {type(e).__name__}: {e}")
                continue
            if not math.isfinite(value):
                per_image.append(None)
                errors.append(f"image {i}: non-finite score {value}")
            else:
                per_image.append(value)
        return ObjectiveResult(aggregate(per_image, self.on_image_error), per_image, errors)

    def info(self) -> ObjectiveInfo:
        return ObjectiveInfo(self.name, bool(self.higher_is_better), self.description, self.value_range,
                             self.needs_reference)

    def better(self, a: float, b: float) -> bool:
        """Whether score ``a`` is better than ``b`` in this objective's direction."""
        return a > b if self.higher_is_better else a < b


def parse_pyiqa_range(text: str | None) -> Range | None:
    """pyiqa writes ranges like ``"~0, ~100"`` (``~`` marks a soft bound)."""
    if not text:
        return None
    try:
        lo, hi = (p.strip().lstrip("~") for p in str(text).split(","))
        return (float(lo) if lo else None, float(hi) if hi else None)
    except ValueError:
        return None


@functools.cache
def pyiqa_configs() -> dict[str, dict[str, Any]]:
    """pyiqa's metric table (``pyiqa.default_model_configs.DEFAULT_CONFIGS``: direction, range, mode).

    Read from its file without importing pyiqa (1.5 s: every architecture), so that a config error is
    reported in two seconds; that file imports nothing of pyiqa. On any surprise pyiqa is imported.
    """
    import importlib.util
    import sys
    from pathlib import Path

    loaded = sys.modules.get("pyiqa.default_model_configs")
    if loaded is not None:
        return dict(loaded.DEFAULT_CONFIGS)
    try:
        spec = importlib.util.find_spec("pyiqa")
        location = Path(spec.origin).parent / "default_model_configs.py"  # type: ignore[union-attr, arg-type]
        table = importlib.util.spec_from_file_location("_agentloss_pyiqa_configs", location)
        module = importlib.util.module_from_spec(table)  # type: ignore[arg-type]
        table.loader.exec_module(module)  # type: ignore[union-attr]
        return dict(module.DEFAULT_CONFIGS)
    except Exception:  # noqa: BLE001 - any surprise: the ordinary import
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        return dict(DEFAULT_CONFIGS)


# Short descriptions for the prompt; pyiqa has none in code.
PYIQA_DESCRIPTIONS: dict[str, str] = {
    "niqe": "naturalness of image statistics, no reference needed (Natural Image Quality Evaluator)",
    "piqe": "perceptual quality from block-wise distortion, no reference needed",
    "brisque": "naturalness from spatial statistics, no reference needed",
    "musiq": "learned perceptual quality (multi-scale transformer), no reference needed",
    "maniqa": "learned perceptual quality (multi-dimension attention), no reference needed",
    "clipiqa": "perceptual quality judged by CLIP, no reference needed",
    "qalign": "perceptual quality judged by a multimodal LLM (Q-Align), no reference needed",
    "psnr": "pixel fidelity to the reference (peak signal-to-noise ratio, dB)",
    "psnry": "pixel fidelity to the reference on the luminance channel (dB)",
    "ssim": "structural similarity to the reference",
    "ssimc": "structural similarity to the reference, on colour channels",
    "lpips": "learned perceptual distance to the reference",
    "dists": "structure and texture distance to the reference",
}


class PyiqaObjective(Objective):
    """Any pyiqa metric as an objective; direction and usual range come from pyiqa.

    ``kwargs`` go to ``pyiqa.create_metric`` (e.g. ``pretrained_model_path=`` for NIQE's parameter
    file when offline). ``quantize`` scores each image rounded to 8 bits, as a saved output (and
    :func:`~agentloss.datasets.evaluation.evaluate`) is scored. pyiqa is imported and the metric
    built on first use (or by ``prepare()``), since importing pyiqa takes seconds and a metric may
    load weights. ``hint`` replaces the advice given when the metric cannot be built (a task config
    names its own option for NIQE's file).

    Example:
        >>> import torch
        >>> psnr = PyiqaObjective("psnr")
        >>> psnr.higher_is_better, psnr.needs_reference
        (True, True)
        >>> x = torch.rand(1, 3, 16, 16)
        >>> psnr.score([x], [x.clamp(0.1, 0.9)]).mean > 10
        True
    """

    def __init__(self, name: str, *, device: str | torch.device | None = None,
                 on_image_error: Literal["fail", "skip"] = "fail", display_name: str | None = None,
                 hint: str | None = None, quantize: bool = False, **kwargs: Any):
        super().__init__(on_image_error)
        import pyiqa  # noqa: F401  - fail at construction, not at the first stage end, if absent
        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        key = name.lower()
        if key not in DEFAULT_CONFIGS:
            raise ValueError(f"pyiqa has no metric named {name!r}; see pyiqa.list_models()")
        cfg = DEFAULT_CONFIGS[key]
        self.metric_name = key
        self.name = display_name or key
        self.higher_is_better = not bool(cfg.get("lower_better", False))
        self.needs_reference = cfg.get("metric_mode", "NR") == "FR"
        self.value_range = parse_pyiqa_range(cfg.get("score_range"))
        self.description = PYIQA_DESCRIPTIONS.get(key, f"pyiqa metric {key}")
        self.kwargs = kwargs
        self.device = device
        self.hint = hint
        self.quantize = bool(quantize)
        self._metric: Any = None

    @property
    def metric(self) -> Any:
        if self._metric is None:
            import pyiqa

            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                self._metric = pyiqa.create_metric(self.metric_name, as_loss=False, device=device, **self.kwargs)
            except Exception as e:
                hint = f" {self.hint}" if self.hint else ""
                if self.metric_name == "niqe" and not self.hint:
                    hint = (" NIQE needs niqe_modelparameters.mat: without network, pass "
                            "pretrained_model_path=... or place it in $TORCH_HOME/hub/pyiqa/.")
                raise ObjectiveError(f"could not build pyiqa metric {self.metric_name!r}: {e}.{hint}") from e
            # pyiqa's own flag is authoritative once the metric exists.
            self.higher_is_better = not bool(self._metric.lower_better)
        return self._metric

    def prepare(self) -> None:
        self.metric  # noqa: B018 - builds it

    def score(self, restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor] | None = None) -> ObjectiveResult:
        try:
            self.metric  # noqa: B018 - built once per call: not rebuilt (and re-downloaded) for every image
        except ObjectiveError as e:
            return ObjectiveResult(None, [None] * len(restored), [str(e)])
        return super().score(restored, references)

    def score_image(self, restored: torch.Tensor, reference: torch.Tensor | None) -> float:
        metric = self.metric
        dev = next((b.device for b in metric.buffers()), None) or next((p.device for p in metric.parameters()), None)
        restored = restored.to(dev) if dev is not None else restored
        if self.quantize:  # as a saved 8-bit image (and the final evaluation) would be scored
            restored = restored.clamp(0, 1).mul(255).round().div(255)
        with torch.no_grad():
            if self.needs_reference:
                assert reference is not None
                out = metric(restored, reference.to(restored.device))
            else:
                out = metric(restored)
        return float(torch.as_tensor(out).float().mean())


class CallableObjective(Objective):
    """A user function as an objective: ``fn(restored)`` or, with ``needs_reference``, ``fn(restored, reference)``."""

    def __init__(self, fn: Callable[..., float], *, name: str, higher_is_better: bool, needs_reference: bool = False,
                 description: str = "", value_range: Range | None = None,
                 on_image_error: Literal["fail", "skip"] = "fail"):
        super().__init__(on_image_error)
        self.fn = fn
        self.name = name
        self.higher_is_better = higher_is_better
        self.needs_reference = needs_reference
        self.description = description or f"user objective {name}"
        self.value_range = value_range

    def score_image(self, restored: torch.Tensor, reference: torch.Tensor | None) -> float:
        return float(self.fn(restored, reference) if self.needs_reference else self.fn(restored))


def _y_kwargs(y_channel: bool, kwargs: dict[str, Any], crop_border: int = 0) -> dict[str, Any]:
    # SR papers take Y from YCbCr (ITU-R BT.601); pyiqa's default Y comes from YIQ and reads ~1.3 dB lower.
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    return {"test_y_channel": y_channel, **({"color_space": "ycbcr"} if y_channel else {}),
            **({"crop_border": int(crop_border)} if crop_border else {}), **kwargs}


class PSNRObjective(PyiqaObjective):
    """Full-reference PSNR (dB) through pyiqa, on the YCbCr Y channel by default as SR papers report it.

    Named ``psnr_y`` (or ``psnr`` with ``y_channel=False``). ``crop_border`` pixels are left out at
    each side and ``quantize`` rounds to 8 bits first: SR evaluations crop ``scale`` pixels and
    score saved 8-bit images, and a guard measured otherwise is not the PSNR the run is judged on.

    Example:
        >>> import torch
        >>> PSNRObjective().name, PSNRObjective(y_channel=False).name
        ('psnr_y', 'psnr')
        >>> gt = torch.rand(1, 3, 16, 16)
        >>> edge = gt.clone(); edge[..., :2, :] = 0  # wrong only in the 2-px border
        >>> PSNRObjective(crop_border=2).score([edge], [gt]).mean > 60, PSNRObjective().score([edge], [gt]).mean < 30
        (True, True)
    """

    def __init__(self, y_channel: bool = True, crop_border: int = 0, **kwargs: Any):
        name = kwargs.pop("display_name", None) or ("psnr_y" if y_channel else "psnr")
        super().__init__("psnr", display_name=name, **_y_kwargs(y_channel, kwargs, crop_border))


class SSIMObjective(PyiqaObjective):
    """Full-reference SSIM through pyiqa, on the YCbCr Y channel by default (named ``ssim_y`` or ``ssim``);
    ``crop_border`` and ``quantize`` as for :class:`PSNRObjective`."""

    def __init__(self, y_channel: bool = True, crop_border: int = 0, **kwargs: Any):
        name = kwargs.pop("display_name", None) or ("ssim_y" if y_channel else "ssim")
        super().__init__("ssim", display_name=name, **_y_kwargs(y_channel, kwargs, crop_border))

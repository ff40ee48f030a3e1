"""Build a run's parts from a validated :class:`~agentloss.tasks.config.RunConfig`.

Each function makes one thing: the network, the training stream, the probe set, the loss, the
objectives, the evaluation sets. Nothing here trains; :mod:`agentloss.tasks.harness` does.

>>> from agentloss.tasks.config import load_config
>>> cfg = load_config({"task": "cisr", "backbone": {"name": "swinir_light_tiny", "scale": 2},
...                    "losses": {"l1": 1.0, "fft": 0.1}, "objectives": [{"name": "piqe"}],
...                    "data": {"patch": 32, "batch": 2}, "probe": {"count": 2, "size": 64}})
>>> lq, gt = next(build_stream(cfg, seed=0))
>>> tuple(lq.shape), tuple(gt.shape)
((2, 3, 16, 16), (2, 3, 32, 32))
>>> probe_lq, probe_gt = build_probe(cfg)
>>> len(probe_lq), tuple(probe_lq[0].shape), tuple(probe_gt[0].shape)
(2, (3, 32, 32), (3, 64, 64))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..constraints import WeightConstraints
from ..data import NATURAL_PHOTOS, bicubic_downsample, builtin_photos, crop_to_multiple
from ..datasets import (
    GaussianNoise,
    HRFolder,
    PairedFolder,
    RestorationStream,
    TensorImages,
    builtin_eval_pairs,
    find_benchmark,
    list_images,
    make_degradation,
    read_image,
)
from ..datasets.benchmarks import BenchmarkNotFoundError
from ..datasets.degradations import RealWorldDegradation
from ..datasets.evaluation import _padded
from ..datasets.sampling import mix_seed
from ..feedback import HighFrequencyCritic, TerminalFeedback, TextFeedback, VisionFeedback
from ..objectives import Objective, PSNRObjective, PyiqaObjective, SSIMObjective
from ..weighted_loss import AgentWeightedLoss
from .config import ConfigError, RunConfig
from .scoring import EvalSet

log = logging.getLogger("agentloss")

NIQE_ENV_VAR = "AGENTLOSS_NIQE_PARAMS"


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; a device this machine lacks is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"invalid run config:\n  device: {name!r} is not a device; use auto, cpu, cuda, cuda:N "
                          f"or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(f"invalid run config:\n  device: {name} is not on this machine ({count} CUDA "
                              f"device(s)); use auto or cpu")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"invalid run config:\n  device: {name} is not available on this machine; use auto or cpu")
    return device


def niqe_params(cfg: RunConfig) -> str | None:
    """NIQE's ``niqe_modelparameters.mat``: the config's path, else ``$AGENTLOSS_NIQE_PARAMS``, else None
    (pyiqa downloads it)."""
    path = cfg.niqe_params or os.environ.get(NIQE_ENV_VAR) or None
    if path is not None and not Path(path).is_file():
        raise ConfigError(f"invalid run config:\n  niqe_params: {path} is not a file")
    return path


def pad_multiple(cfg: RunConfig) -> int:
    # PromptIR's three 2x downsamplings need sides divisible by 8; the Swin/Mamba models pad themselves.
    return 8 if cfg.backbone.name.startswith("promptir") else 1


def build_model(cfg: RunConfig) -> nn.Module:
    """The backbone, from its official checkpoint when ``backbone.checkpoint`` is set."""
    from ..backbones import create_backbone, load_backbone

    b = cfg.backbone
    if b.checkpoint:
        if b.options:
            raise ConfigError("invalid run config:\n  backbone.options: cannot be combined with backbone.checkpoint "
                              "(the checkpoint fixes the architecture)")
        try:
            return load_backbone(b.name, b.checkpoint, scale=cfg.scale)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise ConfigError(f"invalid run config:\n  backbone.checkpoint: {e}") from e
    try:
        return create_backbone(b.name, cfg.scale, **b.options)
    except Exception as e:  # num_heads: [0] divides by zero: any failure here is the options'
        raise ConfigError(f"invalid run config:\n  backbone.options: {type(e).__name__}: {e}"
                          if not isinstance(e, (TypeError, ValueError)) else
                          f"invalid run config:\n  backbone.options: {e}") from e


def restore_fn(cfg: RunConfig) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    multiple, scale = pad_multiple(cfg), cfg.scale
    return lambda model, lq: _padded(model, lq, scale, multiple)


class MixedStream:
    """Batches drawn from several :class:`RestorationStream` in turn (all-in-one training); resumable."""

    def __init__(self, streams: list[RestorationStream]):
        self.streams = streams
        self.index = 0

    def __iter__(self) -> MixedStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        stream = self.streams[self.index % len(self.streams)]
        self.index += 1
        return next(stream)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.index = int(state["index"])
        for s, st in zip(self.streams, state["streams"]):
            s.load_state_dict(st)


def _degradation(cfg: RunConfig, name: str, sigmas: list[float]) -> Any:
    kind = cfg.degradation if name == "auto" else name
    if kind == "none":
        return None
    if kind == "denoise":
        return GaussianNoise(sigmas=tuple(sigmas))
    return make_degradation(kind, cfg.scale)


def build_stream(cfg: RunConfig, seed: int) -> MixedStream:
    """The training batches: each source's seeded stream, drawn in turn."""
    streams = []
    for i, src in enumerate(cfg.data.sources):
        where = f"data.sources.{i}"
        try:
            if src.kind == "builtin":
                source: Any = TensorImages(builtin_photos(src.photos or NATURAL_PHOTOS))
            elif src.kind == "hr_folder":
                source = HRFolder(src.path)  # type: ignore[arg-type]
            else:
                source = PairedFolder(src.lq, src.gt, scale=cfg.scale)  # type: ignore[arg-type]
            degradation = None if src.kind == "paired" else _degradation(cfg, src.degradation, src.sigmas)
            streams.append(RestorationStream(source, cfg.data.patch, cfg.data.batch, seed=mix_seed(seed, i),
                                             degradation=degradation))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"invalid run config:\n  {where}: {e}") from e
    return MixedStream(streams)


def _grid_crops(img: torch.Tensor, size: int, count: int) -> list[torch.Tensor]:
    """``count`` crops of ``size`` spread evenly over the image (deterministic)."""
    h, w = img.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"image of {h}x{w} is smaller than the {size}-px probe crop")
    cols = max(1, round((count * w / h) ** 0.5))
    rows = -(-count // cols)
    ys = [round(i * (h - size) / max(1, rows - 1)) for i in range(rows)]
    xs = [round(j * (w - size) / max(1, cols - 1)) for j in range(cols)]
    return [img[..., y: y + size, x: x + size] for y in ys for x in xs][:count]


def _centre(img: torch.Tensor, size: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    s_h, s_w = min(size, h), min(size, w)
    return img[..., (h - s_h) // 2: (h - s_h) // 2 + s_h, (w - s_w) // 2: (w - s_w) // 2 + s_w]


def build_probe(cfg: RunConfig, seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Probe LQ inputs and their references (``CxHxW``); synthetic LQ is seeded by ``(seed, index)``."""
    p, scale = cfg.probe, cfg.scale
    try:
        if p.kind == "paired":
            folder = PairedFolder(p.lq, p.gt, scale=scale)  # type: ignore[arg-type]
            lqs, gts = [], []
            for i in range(min(p.count, len(folder))):
                lq, gt = folder.load(i)  # aligned: GT is exactly scale x LQ
                H, W = lq.shape[-2:]
                h, w = min(p.size // scale, H), min(p.size // scale, W)
                h, w = h - h % 8, w - w % 8
                y, x = (H - h) // 2, (W - w) // 2
                lqs.append(lq[..., y: y + h, x: x + w].contiguous())
                gts.append(gt[..., y * scale: (y + h) * scale, x * scale: (x + w) * scale].contiguous())
            return lqs, gts
        if p.kind == "hr_folder":
            paths = list_images(p.path)[: p.count]  # type: ignore[arg-type]
            if not paths:
                raise ValueError(f"no images in {p.path}")
            hrs = [_centre(read_image(path), p.size) for path in paths]
        else:
            photos = builtin_photos(p.photos)
            per = -(-p.count // len(photos))
            hrs = [c for img in photos for c in _grid_crops(img, p.size, per)][: p.count]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"invalid run config:\n  probe: {e}") from e
    gts = [crop_to_multiple(h, 8 * scale).contiguous() for h in hrs]
    lqs = []
    for i, gt in enumerate(gts):
        g = torch.Generator().manual_seed(mix_seed(seed, i, 7))
        if cfg.degradation == "sr":
            lq = bicubic_downsample(gt.unsqueeze(0), scale)
        elif cfg.degradation == "realsr":
            lq = RealWorldDegradation(scale)(gt.unsqueeze(0), g)
        else:
            lq = GaussianNoise(sigmas=(25.0,))(gt.unsqueeze(0), g)
        lqs.append(lq[0])
    return lqs, gts


def build_loss(cfg: RunConfig) -> AgentWeightedLoss:
    try:
        constraints = WeightConstraints(**cfg.constraints)
    except (TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"invalid run config:\n  constraints: {e}") from e
    try:
        return AgentWeightedLoss(dict(cfg.losses), terms=dict(cfg.loss_options), constraints=constraints)
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ConfigError(f"invalid run config:\n  losses/loss_options: {e}") from e
    except (OSError, RuntimeError) as e:  # a term's weights could not be loaded (VGG19 offline): the message says how
        raise ConfigError(f"invalid run config:\n  losses: {e}") from e


def build_feedback(cfg: RunConfig) -> list[TextFeedback]:
    """The config's text feedback sources (``feedback:``), in order. A terminal source saves the restored
    probe images into ``<out>/feedback_probe/`` for the person to look at before typing."""
    out: list[TextFeedback] = []
    for f in cfg.feedback:
        if f.type == "vision":
            extra = {"prompt": f.prompt} if f.prompt is not None else {}
            out.append(VisionFeedback(f.base_url, f.model, api_key_env=f.api_key_env, max_images=f.max_images,
                                      timeout=f.timeout, image_size=f.image_size, max_tokens=f.max_tokens,
                                      name=f.name, **extra))
        elif f.type == "critic":
            out.append(HighFrequencyCritic(f.low, f.high, name=f.name))
        else:
            extra = {"prompt": f.prompt} if f.prompt is not None else {}
            out.append(TerminalFeedback(f.timeout, name=f.name, save_dir=cfg.out_dir / "feedback_probe", **extra))
    return out


def build_objectives(cfg: RunConfig, device: torch.device) -> list[Objective | TextFeedback]:
    """The agent's objectives, then the text feedback sources (:func:`build_feedback`); NIQE gets its
    parameter file from :func:`niqe_params` when set."""
    out: list[Objective | TextFeedback] = []
    y = cfg.task != "air"  # restoration papers report RGB PSNR for denoising/dehazing
    # A guard is judged by the final evaluation, so it measures as that does (build_eval_sets, evaluate):
    # `scale` border pixels cropped for SR, none for all-in-one restoration, outputs rounded to 8 bits.
    crop = 0 if cfg.task == "air" or cfg.scale <= 1 else cfg.scale
    for o in cfg.objectives:
        kw = dict(o.options)
        if o.name in ("psnr", "ssim"):
            kw = {"crop_border": crop, "quantize": True, **kw}
        if o.name == "psnr":
            out.append(PSNRObjective(y_channel=y, device=device, **kw))
        elif o.name == "ssim":
            out.append(SSIMObjective(y_channel=y, device=device, **kw))
        else:
            if o.name == "niqe" and (path := niqe_params(cfg)):
                kw.setdefault("pretrained_model_path", path)
            hint = (f"Without network, give its niqe_modelparameters.mat as niqe_params: in the config (or in "
                    f"${NIQE_ENV_VAR}).") if o.name == "niqe" else None
            out.append(PyiqaObjective(o.name, device=device, hint=hint, **kw))
    return out + build_feedback(cfg)


def eval_metrics(cfg: RunConfig) -> list[str]:
    if cfg.eval.metrics is not None:
        return list(cfg.eval.metrics)
    from ..objectives import pyiqa_configs

    nr = [o.name for o in cfg.objectives if pyiqa_configs()[o.name].get("metric_mode", "NR") == "NR"]
    return ["psnr", "ssim", *dict.fromkeys(nr)]


def metric_kwargs(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    path = niqe_params(cfg)
    return {"niqe": {"pretrained_model_path": path}} if path else {}


def build_eval_sets(cfg: RunConfig) -> tuple[list[EvalSet], list[str]]:
    """The evaluation sets found, and a note for each configured one that was not found."""
    sets, missing = [], []
    e = cfg.eval
    if e.root is None and e.datasets:
        missing.append(f"{', '.join(e.datasets)}: no eval.root given")
    for name in e.datasets if e.root is not None else []:
        try:
            bench = find_benchmark(e.root, name, scale=cfg.scale if cfg.task != "air" else None,
                                   noise_sigma=e.noise_sigma)
        except (BenchmarkNotFoundError, ValueError) as err:
            missing.append(f"{name}: {err}")
            continue
        pairs = bench.pairs(seed=cfg.seed, limit=e.max_images)  # benchmark images are scored whole
        sets.append(EvalSet(bench.name, pairs, bench.eval_kwargs))
    if e.builtin:
        kind = {"sr": "sr", "realsr": "realsr", "denoise": "denoise"}[cfg.degradation]
        try:
            pairs = builtin_eval_pairs(kind, cfg.scale, noise_sigma=e.noise_sigma, size=e.size, seed=cfg.seed)
        except (OSError, ValueError, RuntimeError) as err:
            raise ConfigError(f"invalid run config:\n  eval: {err}") from err
        if e.max_images:
            pairs = pairs[: e.max_images]
        kwargs: dict[str, Any] = {"y_channel": cfg.task != "air"}
        if cfg.task == "air":
            kwargs["crop_border"] = 0
        sets.append(EvalSet("photos", pairs, kwargs))  # scikit-image photos kept out of training
    for note in missing:
        log.warning("evaluation set skipped: %s", note)
    return sets, missing

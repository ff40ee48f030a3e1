"""Image-restoration backbones: SwinIR and HAT through spandrel, PromptIR and MambaIRv2 re-implemented here.

One registry and one factory, in the style of pyiqa's ``create_metric``:

* :data:`BACKBONES` maps a name to a :class:`BackboneSpec` (builder, default config, description, task and
  the scales it is published for). Every published network has a ``<name>_tiny`` twin with the same topology
  shrunk for CPU tests and demos.
* :func:`create_backbone` builds a freshly initialised network (train mode); keyword overrides replace
  entries of the default config.
* :func:`load_backbone` builds a network from a checkpoint: SwinIR/HAT through spandrel's architecture
  detection (hyper-parameters read from the weights), PromptIR through
  :func:`~agentloss.backbones.promptir.load_promptir`, MambaIRv2-light through
  :func:`~agentloss.backbones.mambairv2.load_mambairv2light`.
* :func:`list_backbones` lists the names (the CPU demo network ``small_sr``, the quick start's and the
  quality benchmark's :class:`~agentloss.backbones.small.SmallSR`, only with ``include_demo=True``).

Every network comes back as a plain ``nn.Module`` in train mode. SwinIR trains on any patch size: spandrel
recomputes its shifted-window masks when the size is not ``img_size``;
:func:`~agentloss.backbones.spandrel_models.set_swinir_img_size` stores them for a fixed patch size instead.

Importing this package is cheap: spandrel (which imports all of its ~40 architectures) and the PromptIR /
MambaIRv2 modules are imported only when a network of theirs is built or loaded.

>>> import torch
>>> from agentloss.backbones import create_backbone, list_backbones
>>> list_backbones(include_tiny=False)
['hat', 'hat_s', 'mambairv2_light', 'promptir', 'swinir', 'swinir_light', 'swinir_real']
>>> net = create_backbone("swinir_tiny", scale=2)
>>> net(torch.rand(1, 3, 16, 16)).shape
torch.Size([1, 3, 32, 32])
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from . import spandrel_models as _sm

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BACKBONES", "BackboneSpec", "create_backbone", "list_backbones", "load_backbone"]

Task = Literal["sr", "restoration"]


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry.

    Attributes:
        family: ``"swinir"``, ``"hat"``, ``"mambairv2_light"`` or ``"promptir"``.
        builder: ``builder(scale, **config) -> nn.Module``; raises ``ValueError`` on unknown config keys.
        config_source: returns the default config (a callable so that the PromptIR / MambaIRv2 modules are
            imported only when asked); read it through :attr:`config`.
        description: what the entry is, and which released checkpoints it matches.
        task: ``"sr"`` (output ``scale`` times larger) or ``"restoration"`` (same size, scale 1).
        scales: the scales accepted by :func:`create_backbone` (the published ones).
        default_scale: used when ``scale`` is not given.
        tiny: a test/demo configuration rather than a published one.
        demo: a network of this package for CPU demos (neither published nor a twin of a published one).
    """

    family: str
    builder: Callable[..., nn.Module]
    config_source: Callable[[], Mapping[str, Any]]
    description: str
    task: Task
    scales: tuple[int, ...]
    default_scale: int
    tiny: bool = False
    demo: bool = False

    @property
    def config(self) -> dict[str, Any]:
        """A fresh copy of the default config (safe to modify)."""
        return dict(self.config_source())


# ----------------------------------------------------------------------------- builders (lazy imports)


def _build_swinir(scale: int, **config: Any) -> nn.Module:
    return _sm.build_swinir(scale, **config)


def _build_hat(scale: int, **config: Any) -> nn.Module:
    return _sm.build_hat(scale, **config)


def _build_mambairv2_light(scale: int, **config: Any) -> nn.Module:
    from .mambairv2 import MambaIRv2Light

    _sm._check_kwargs(MambaIRv2Light, "MambaIRv2Light", config)
    return _sm._trainable(MambaIRv2Light(upscale=scale, **config))


def _build_promptir(scale: int, **config: Any) -> nn.Module:
    from .promptir import PromptIR

    _sm._check_kwargs(PromptIR, "PromptIR", config)
    return _sm._trainable(PromptIR(**config))


def _build_small_sr(scale: int, **config: Any) -> nn.Module:
    from .small import SmallSR

    _sm._check_kwargs(SmallSR, "SmallSR", {k: v for k, v in config.items() if k != "scale"})
    if "scale" in config:
        raise ValueError("SmallSR: pass the scale as `scale`, not in the config")
    return SmallSR(scale=scale, **config)


def _mamba_published() -> Mapping[str, Any]:
    from .mambairv2 import PUBLISHED_CONFIG

    return PUBLISHED_CONFIG


# One group of two layers, 8x8 windows, few tokens and a 2-dim state: the tests' tiny MambaIRv2-light.
_TINY_MAMBA_OVERRIDES: dict[str, Any] = {
    "embed_dim": 12, "d_state": 2, "depths": (2,), "num_heads": (2,), "window_size": 8, "inner_rank": 4,
    "num_tokens": 4,
}


def _promptir_config(tiny: bool) -> Callable[[], Mapping[str, Any]]:
    def source() -> Mapping[str, Any]:
        from .promptir import PUBLISHED_PROMPTIR_CONFIG, TINY_PROMPTIR_CONFIG

        return {**PUBLISHED_PROMPTIR_CONFIG, **TINY_PROMPTIR_CONFIG} if tiny else PUBLISHED_PROMPTIR_CONFIG

    return source


def _const(config: Mapping[str, Any]) -> Callable[[], Mapping[str, Any]]:
    return lambda: config


_SR = (2, 3, 4)
_SPECS: dict[str, BackboneSpec] = {
    "swinir": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.SWINIR_CLASSICAL_CONFIG),
        "SwinIR-M classical SR, DF2K s64w8 (001_classicalSR_DF2K_s64w8_SwinIR-M_x{2,3,4}); 11.9M params at x4."
        " img_size=48 gives the DIV2K s48w8 variant (only the attn_mask buffer shapes differ)",
        "sr", _SR, 4),
    "swinir_light": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.SWINIR_LIGHTWEIGHT_CONFIG),
        "SwinIR-S lightweight SR (002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{2,3,4}): embed_dim 60, 4 groups,"
        " pixelshuffledirect", "sr", _SR, 4),
    "swinir_real": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.SWINIR_REAL_CONFIG),
        "SwinIR-M real-world SR x4 (003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN): nearest+conv upsampling",
        "sr", (2, 4), 4),
    "hat_s": BackboneSpec(
        "hat", _build_hat, _const(_sm.HAT_S_CONFIG),
        "HAT-S classical SR (HAT-S_SRx{2,3,4}): embed_dim 144, window 16, compress/squeeze 24",
        "sr", _SR, 4),
    "hat": BackboneSpec(
        "hat", _build_hat, _const(_sm.HAT_CONFIG),
        "HAT classical SR (HAT_SRx{2,3,4}): embed_dim 180, window 16, compress 3, squeeze 30",
        "sr", _SR, 4),
    "mambairv2_light": BackboneSpec(
        "mambairv2_light", _build_mambairv2_light, _mamba_published,
        "MambaIRv2-light lightweight SR (MambaIRv2_lightSR_x{2,3,4}), re-implemented; 0.79M params at x4",
        "sr", _SR, 4),
    "promptir": BackboneSpec(
        "promptir", _build_promptir, _promptir_config(tiny=False),
        "PromptIR all-in-one restoration (denoise/derain/dehaze), re-implemented; 35.6M params, same-size output",
        "restoration", (1,), 1),
    "swinir_tiny": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.TINY_SWINIR_CONFIG),
        "tiny SwinIR classical (embed_dim 16, one group of 2 blocks, window 8) for tests", "sr", _SR, 4, tiny=True),
    "swinir_light_tiny": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.TINY_SWINIR_LIGHT_CONFIG),
        "tiny SwinIR lightweight (embed_dim 12, pixelshuffledirect) for tests", "sr", _SR, 4, tiny=True),
    "swinir_real_tiny": BackboneSpec(
        "swinir", _build_swinir, _const(_sm.TINY_SWINIR_REAL_CONFIG),
        "tiny SwinIR real-world (embed_dim 16, nearest+conv) for tests", "sr", (2, 4), 4, tiny=True),
    "hat_s_tiny": BackboneSpec(
        "hat", _build_hat, _const(_sm.TINY_HAT_S_CONFIG),
        "tiny HAT-S (embed_dim 16, one group of 2 blocks, window 8, num_feat 16) for tests", "sr", _SR, 4, tiny=True),
    "hat_tiny": BackboneSpec(
        "hat", _build_hat, _const(_sm.TINY_HAT_CONFIG),
        "tiny HAT (embed_dim 24, one group of 2 blocks, window 8, num_feat 16) for tests", "sr", _SR, 4, tiny=True),
    "mambairv2_light_tiny": BackboneSpec(
        "mambairv2_light", _build_mambairv2_light, lambda: {**_mamba_published(), **_TINY_MAMBA_OVERRIDES},
        "tiny MambaIRv2-light (embed_dim 12, one group of 2 layers, window 8) for tests", "sr", _SR, 4, tiny=True),
    "promptir_tiny": BackboneSpec(
        "promptir", _build_promptir, _promptir_config(tiny=True),
        "tiny PromptIR (dim 8, one block per level, small prompts) for tests", "restoration", (1,), 1, tiny=True),
    "small_sr": BackboneSpec(
        "small_sr", _build_small_sr, _const({"width": 32, "depth": 4}),
        "SmallSR: bicubic upsampling plus a residual of 3x3 convolutions and a pixel shuffle; ~40k params, "
        "trains in seconds on a CPU (the quick start's and the quality benchmark's network)", "sr", _SR, 2, demo=True),
}

#: name -> :class:`BackboneSpec` (read-only).
BACKBONES: Mapping[str, BackboneSpec] = MappingProxyType(_SPECS)

# spandrel's architecture id per family, for the detection check.
_SPANDREL_ID = {"swinir": "SwinIR", "hat": "HAT"}
# Hyper-parameters spandrel reads from the weights; a checkpoint must agree on these with the named entry.
# (img_size, conv_scale, img_range, drop_path_rate are not readable or do not change any weight.)
_STRUCTURAL = ("in_chans", "embed_dim", "depths", "num_heads", "window_size", "mlp_ratio", "upsampler",
               "resi_connection", "compress_ratio", "squeeze_factor", "overlap_ratio", "num_feat")


def list_backbones(task: Task | None = None, include_tiny: bool = True, include_demo: bool = False) -> list[str]:
    """Sorted registry names, optionally only one ``task`` (``"sr"``/``"restoration"``) or without ``*_tiny``;
    the demo networks (``small_sr``) with ``include_demo``.

    >>> list_backbones(task="restoration")
    ['promptir', 'promptir_tiny']
    """
    if task not in (None, "sr", "restoration"):
        raise ValueError(f"task must be None, 'sr' or 'restoration', got {task!r}")
    return sorted(n for n, s in BACKBONES.items() if (task is None or s.task == task) and (include_tiny or not s.tiny)
                  and (include_demo or not s.demo))


def _spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        close = difflib.get_close_matches(str(name), list(BACKBONES), n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown backbone {name!r}{hint}; available: {', '.join(list_backbones(include_demo=True))}")
    return BACKBONES[name]


def _resolve_scale(name: str, spec: BackboneSpec, scale: int | None) -> int:
    if scale is None:
        return spec.default_scale
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in spec.scales:
        what = "a same-size restoration network: scale must be None or 1" if spec.task == "restoration" \
            else f"published for scales {list(spec.scales)}"
        raise ValueError(f"backbone {name!r} is {what}; got scale={scale!r}")
    return scale


def create_backbone(name: str, scale: int | None = None, **overrides: Any) -> nn.Module:
    """A freshly initialised backbone in train mode.

    ``scale`` defaults to the entry's ``default_scale`` (4 for SR, 1 for restoration) and must be one of its
    ``scales``. ``overrides`` replace entries of the default config (constructor arguments of the network,
    e.g. ``img_size=48`` for SwinIR's DIV2K variant). Unknown names, scales or config keys raise
    ``ValueError`` naming what is allowed.

    >>> net = create_backbone("promptir_tiny")
    >>> import torch
    >>> net(torch.rand(1, 3, 24, 24)).shape
    torch.Size([1, 3, 24, 24])
    """
    spec = _spec(name)
    s = _resolve_scale(name, spec, scale)
    return spec.builder(s, **{**spec.config, **overrides})


def _norm(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(v)
    if isinstance(v, float):
        return round(v, 6)
    return v


def _structure(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _norm(config[k]) for k in _STRUCTURAL if k in config}


def _check_detected(name: str, spec: BackboneSpec, model: nn.Module, scale: int | None) -> None:
    hp: Mapping[str, Any] = getattr(model, "hyperparameters", {})
    want = _structure(spec.config)
    got = _structure(hp)
    diffs = [f"{k}={got[k]!r} (entry: {want[k]!r})" for k in want if k in got and got[k] != want[k]]
    if diffs:
        matches = [n for n, s in BACKBONES.items() if s.family == spec.family
                   and all(got.get(k) == v for k, v in _structure(s.config).items() if k in got)]
        hint = f"; it matches {', '.join(map(repr, matches))}" if matches else ""
        raise ValueError(f"checkpoint is a {_SPANDREL_ID[spec.family]} that differs from backbone {name!r}: "
                         + ", ".join(diffs) + hint)
    if scale is not None and hp.get("upscale") != scale:
        raise ValueError(f"checkpoint is x{hp.get('upscale')}, but scale={scale} was asked for {name!r}")


def _load_matching(model: nn.Module, sd: Mapping[str, Any], where: str) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ValueError(f"no tensor of {where} matches the network by name and shape")
    model.load_state_dict(usable, strict=False)


def _mamba_scale(obj: Mapping[str, Any], in_chans: int) -> int | None:
    sd: Any = obj
    for k in ("params", "params_ema", "state_dict"):  # load_mambairv2light's order
        if isinstance(obj.get(k), Mapping):
            sd = obj[k]
            break
    w = sd.get("upsample.0.weight", sd.get("module.upsample.0.weight"))
    return math.isqrt(w.shape[0] // in_chans) if w is not None else None


def load_backbone(
    name: str,
    checkpoint_path: str | os.PathLike[str],
    scale: int | None = None,
    strict: bool = True,
) -> nn.Module:
    """A backbone with weights from a checkpoint, in train mode with trainable parameters.

    * SwinIR / HAT entries, ``strict=True``: spandrel detects the architecture and every hyper-parameter
      from the weights and loads them strictly (``params_ema`` is preferred over ``params``); the result must
      be of the entry's family and agree with its config on the structural hyper-parameters (``ValueError``
      otherwise, naming the entries it does match). ``img_size`` is taken from the checkpoint's
      ``attn_mask`` shapes, so DF2K s64w8 and DIV2K s48w8 SwinIR weights both load as ``"swinir"``.
    * SwinIR / HAT entries, ``strict=False``: :func:`create_backbone` ``(name, scale)`` and every checkpoint
      tensor that matches by name and shape is copied (e.g. to fine-tune from other-scale weights: the
      upsampler is skipped). Raises ``ValueError`` if nothing matches.
    * ``promptir*``: :func:`~agentloss.backbones.promptir.load_promptir` with the entry's config.
    * ``small_sr``: a state dict (optionally under ``params``/``state_dict``) for :func:`create_backbone` ``(name,
      scale)``, loaded with ``strict``.
    * ``mambairv2_light*``: :func:`~agentloss.backbones.mambairv2.load_mambairv2light`; the scale is read from
      ``upsample.0.weight`` when not given.

    ``scale`` (when given) must match the checkpoint.

    >>> import tempfile, torch
    >>> src = create_backbone("hat_s_tiny", scale=2)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save({"params": src.state_dict()}, f"{d}/hat.pth")
    ...     net = load_backbone("hat_s_tiny", f"{d}/hat.pth")
    >>> net.upscale, net.training
    (2, True)
    """
    spec = _spec(name)
    if spec.family in _SPANDREL_ID:
        if strict:
            model = _sm.load_spandrel_checkpoint(checkpoint_path, expected=_SPANDREL_ID[spec.family])
            _check_detected(name, spec, model, scale)
            return model
        model = create_backbone(name, scale)
        _load_matching(model, _sm.load_spandrel_state_dict(checkpoint_path), os.fspath(checkpoint_path))
        return model
    if spec.family == "promptir":
        _resolve_scale(name, spec, scale)
        from .promptir import load_promptir

        return _sm._trainable(load_promptir(checkpoint_path, strict=strict, **spec.config))
    import torch

    if spec.family == "small_sr":
        obj = torch.load(os.fspath(checkpoint_path), map_location="cpu", weights_only=True)
        sd = next((obj[k] for k in ("params", "state_dict") if isinstance(obj.get(k), Mapping)), obj)
        model = create_backbone(name, scale)
        model.load_state_dict(sd, strict=strict)
        return model
    # mambairv2_light

    from .mambairv2 import load_mambairv2light

    obj = torch.load(os.fspath(checkpoint_path), map_location="cpu", weights_only=True)
    config = spec.config
    if scale is None:
        scale = _mamba_scale(obj, config.get("in_chans", 3)) if isinstance(obj, Mapping) else None
    s = _resolve_scale(name, spec, scale)
    return _sm._trainable(load_mambairv2light(obj, upscale=s, strict=strict, **config))

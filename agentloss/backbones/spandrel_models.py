"""SwinIR and HAT built from spandrel's architecture classes, with the published configurations.

spandrel (chaiNNer-org/spandrel) ships the official SwinIR (Liang et al., ICCVW 2021) and HAT (Chen et al.,
CVPR 2023) networks with exactly the official parameter names and shapes, and detects either architecture
(and its hyper-parameters) from an official checkpoint. This module only chooses configurations and wraps
loading for *training*:

* :func:`build_swinir` / :func:`build_hat` construct ``spandrel.architectures.SwinIR.SwinIR`` /
  ``spandrel.architectures.HAT.HAT`` from a config dict (the ``*_CONFIG`` constants below are the published
  ones) and refuse settings that spandrel would silently change or could not read back from a checkpoint.
* :func:`load_spandrel_checkpoint` runs ``spandrel.ModelLoader().load_from_file`` and returns
  ``descriptor.model``, the plain ``nn.Module``, in train mode with trainable parameters. The descriptor
  itself is for inference only: its ``__call__`` is decorated with ``torch.inference_mode`` (no autograd
  graph, and the tensors it creates can never enter one), switches the model to ``eval()`` and clamps the
  output to [0, 1] (zero gradient outside), so calling it in a training loop cannot work.

What spandrel reads from a checkpoint and what it assumes (``spandrel/architectures/{SwinIR,HAT}/__init__.py``):

* SwinIR: upsampler, scale, embed_dim, depths, heads, window, mlp_ratio and resi_connection come from the keys
  and shapes; ``img_size`` from the shape of ``layers.0.residual_group.blocks.1.attn_mask``. It assumes
  ``img_range=255`` when the window is 7 (the JPEG models) and 1 otherwise, and ``drop_path_rate=0.1``.
* HAT: everything structural comes from the keys; it assumes ``conv_scale=0.01``, ``img_range=1``,
  ``drop_path_rate=0.1`` and ``img_size=64`` (no HAT tensor depends on img_size).
  Of ``{'params', 'params_ema'}`` it loads ``params_ema`` (its unwrap order tries ``params_ema`` before
  ``params``), and loading is strict (``load_state_dict`` with the default ``strict=True``).

SwinIR's ``attn_mask`` buffers (one per shifted block: 18 in the published 6x6 network, beside 36
``relative_position_index`` buffers, so 54 buffers in all) are the shifted-window masks for an
``img_size`` x ``img_size`` input. spandrel's ``SwinTransformerBlock.forward`` uses the stored buffer only when
the (window-padded) feature size equals ``img_size`` and otherwise recomputes the mask with
``calculate_mask(x_size)`` on the CPU and copies it to the input's device, on every forward. Training on
patches of another size is therefore correct, at the price of that recomputation (measured ~27 ms per
forward for the 18 masks of the published network at 48x48 on one CPU thread); :func:`set_swinir_img_size`
re-registers the buffers for the training patch size instead. HAT stores no masks: it computes one per
forward for every input size.

>>> import torch
>>> net = build_swinir(2, **TINY_SWINIR_CONFIG)
>>> net(torch.rand(1, 3, 20, 24)).shape
torch.Size([1, 3, 40, 48])
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = [
    "HAT_CONFIG", "HAT_S_CONFIG", "SPANDREL_ARCHITECTURES", "SWINIR_CLASSICAL_CONFIG",
    "SWINIR_CLASSICAL_DIV2K_CONFIG", "SWINIR_LIGHTWEIGHT_CONFIG", "SWINIR_REAL_CONFIG", "TINY_HAT_CONFIG",
    "TINY_HAT_S_CONFIG", "TINY_SWINIR_CONFIG", "TINY_SWINIR_LIGHT_CONFIG", "TINY_SWINIR_REAL_CONFIG",
    "build_hat", "build_swinir", "load_spandrel_checkpoint", "load_spandrel_state_dict", "set_swinir_img_size",
]

#: Architecture ids as spandrel names them (``descriptor.architecture.id``).
SPANDREL_ARCHITECTURES = ("SwinIR", "HAT")

# --------------------------------------------------------------------------- published configurations
# From the official test scripts / option files (JingyunLiang/SwinIR main_test_swinir.py, XPixelGroup/HAT
# options/test/*.yml). Scale is not part of a config: every builder takes it separately.

#: Classical SR, DF2K s64w8 (``001_classicalSR_DF2K_s64w8_SwinIR-M_x{2,3,4}``).
SWINIR_CLASSICAL_CONFIG: dict[str, Any] = {
    "in_chans": 3, "img_size": 64, "window_size": 8, "img_range": 1.0, "embed_dim": 180,
    "depths": (6, 6, 6, 6, 6, 6), "num_heads": (6, 6, 6, 6, 6, 6), "mlp_ratio": 2.0,
    "upsampler": "pixelshuffle", "resi_connection": "1conv",
}
#: Classical SR, DIV2K s48w8: the same network trained on 48x48 patches, so its attn_mask buffers are 48-sized.
SWINIR_CLASSICAL_DIV2K_CONFIG: dict[str, Any] = {**SWINIR_CLASSICAL_CONFIG, "img_size": 48}
#: Lightweight SR (``002_lightweightSR_DIV2K_s64w8_SwinIR-S_x{2,3,4}``): one conv + pixel shuffle at the end.
SWINIR_LIGHTWEIGHT_CONFIG: dict[str, Any] = {
    **SWINIR_CLASSICAL_CONFIG, "embed_dim": 60, "depths": (6, 6, 6, 6), "num_heads": (6, 6, 6, 6),
    "upsampler": "pixelshuffledirect",
}
#: Real-world SR, SwinIR-M (``003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN``): nearest+conv upsampling.
SWINIR_REAL_CONFIG: dict[str, Any] = {**SWINIR_CLASSICAL_CONFIG, "upsampler": "nearest+conv"}

#: HAT-S classical SR (``HAT-S_SRx{2,3,4}``).
HAT_S_CONFIG: dict[str, Any] = {
    "in_chans": 3, "img_size": 64, "window_size": 16, "compress_ratio": 24, "squeeze_factor": 24,
    "conv_scale": 0.01, "overlap_ratio": 0.5, "img_range": 1.0, "embed_dim": 144,
    "depths": (6, 6, 6, 6, 6, 6), "num_heads": (6, 6, 6, 6, 6, 6), "mlp_ratio": 2.0,
    "upsampler": "pixelshuffle", "resi_connection": "1conv", "num_feat": 64,
}
#: HAT classical SR (``HAT_SRx{2,3,4}``): wider, with the CAB's default compression and squeeze.
HAT_CONFIG: dict[str, Any] = {**HAT_S_CONFIG, "embed_dim": 180, "compress_ratio": 3, "squeeze_factor": 30}

# --------------------------------------------------------------------------- tiny configurations
# Same topology as the published ones, shrunk for CPU tests: one group of two blocks (so one shifted block
# and one attn_mask buffer), img_size 32 > window 8 (spandrel drops the shift when img_size <= window).
TINY_SWINIR_CONFIG: dict[str, Any] = {
    **SWINIR_CLASSICAL_CONFIG, "img_size": 32, "embed_dim": 16, "depths": (2,), "num_heads": (2,),
}
TINY_SWINIR_LIGHT_CONFIG: dict[str, Any] = {**TINY_SWINIR_CONFIG, "embed_dim": 12, "upsampler": "pixelshuffledirect"}
TINY_SWINIR_REAL_CONFIG: dict[str, Any] = {**TINY_SWINIR_CONFIG, "upsampler": "nearest+conv"}
TINY_HAT_S_CONFIG: dict[str, Any] = {
    **HAT_S_CONFIG, "img_size": 32, "window_size": 8, "embed_dim": 16, "depths": (2,), "num_heads": (2,),
    "compress_ratio": 4, "squeeze_factor": 4, "num_feat": 16,
}
TINY_HAT_CONFIG: dict[str, Any] = {**TINY_HAT_S_CONFIG, "embed_dim": 24, "compress_ratio": 3, "squeeze_factor": 6}

# Scales the reconstruction heads can produce (others would raise inside spandrel or, for nearest+conv,
# silently return a smaller image).
_PIXELSHUFFLE_SCALES = (2, 3, 4, 8)
_NEAREST_CONV_SCALES = (2, 4, 8)


@contextmanager
def _quiet_meshgrid() -> Iterator[None]:
    # spandrel's relative-position code calls torch.meshgrid without `indexing`; the warning is benign noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.meshgrid.*", category=UserWarning)
        yield


def _check_kwargs(cls: type, arch: str, config: Mapping[str, Any]) -> None:
    allowed = sorted(p for p in inspect.signature(cls).parameters if p != "upscale")
    if "upscale" in config:
        raise ValueError(f"{arch}: pass the scale as `scale`, not `upscale` in the config")
    bad = sorted(set(config) - set(allowed))
    if bad:
        raise ValueError(f"{arch}: unknown config key(s) {bad}; allowed: {allowed}")


def _check_windows(arch: str, config: Mapping[str, Any]) -> None:
    img_size, window = config.get("img_size", 64), config.get("window_size", 7)
    if not isinstance(img_size, int) or img_size <= window:
        # spandrel would set shift_size=0 and window=img_size in every block: a different network.
        raise ValueError(f"{arch}: img_size must be an int larger than window_size ({window}), got {img_size!r}")


def _trainable(model: nn.Module) -> nn.Module:
    model.train()
    model.requires_grad_(True)
    return model


def build_swinir(scale: int, **config: Any) -> nn.Module:
    """A freshly initialised spandrel ``SwinIR`` for ``scale`` (1 for denoising/JPEG) from a config dict.

    ``config`` takes the constructor arguments of ``spandrel.architectures.SwinIR.SwinIR`` except
    ``upscale`` (for example :data:`SWINIR_CLASSICAL_CONFIG`); missing ones take spandrel's defaults, which
    are *not* the published ones (embed_dim 96, window 7), so pass a full config. Raises ``ValueError`` for
    unknown keys, ``img_size <= window_size`` and scales the chosen upsampler cannot produce.

    >>> build_swinir(3, **TINY_SWINIR_LIGHT_CONFIG)(torch.rand(1, 3, 8, 8)).shape
    torch.Size([1, 3, 24, 24])
    """
    from spandrel.architectures.SwinIR import SwinIR  # lazy: importing spandrel loads every architecture

    _check_kwargs(SwinIR, "SwinIR", config)
    _check_windows("SwinIR", config)
    upsampler = config.get("upsampler", "")
    allowed = _NEAREST_CONV_SCALES if upsampler == "nearest+conv" else (1,) if not upsampler else _PIXELSHUFFLE_SCALES
    if scale not in allowed:
        raise ValueError(f"SwinIR upsampler {upsampler!r} supports scales {allowed}, got {scale}")
    with _quiet_meshgrid():
        return _trainable(SwinIR(upscale=scale, **config))


def build_hat(scale: int, **config: Any) -> nn.Module:
    """A freshly initialised spandrel ``HAT`` for ``scale`` from a config dict (e.g. :data:`HAT_S_CONFIG`).

    Same rules as :func:`build_swinir`. ``conv_scale`` other than 0.01 trains fine but would come back as
    0.01 from :func:`load_spandrel_checkpoint` (spandrel cannot read it from the weights).

    >>> build_hat(2, **TINY_HAT_S_CONFIG)(torch.rand(1, 3, 16, 16)).shape
    torch.Size([1, 3, 32, 32])
    """
    from spandrel.architectures.HAT import HAT

    _check_kwargs(HAT, "HAT", config)
    _check_windows("HAT", config)
    if scale not in _PIXELSHUFFLE_SCALES:
        raise ValueError(f"HAT supports scales {_PIXELSHUFFLE_SCALES}, got {scale}")
    with _quiet_meshgrid():
        return _trainable(HAT(upscale=scale, **config))


def set_swinir_img_size(model: nn.Module, img_size: int) -> nn.Module:
    """Make a spandrel SwinIR store its shifted-window masks for ``img_size`` inputs (in place; returns it).

    spandrel recomputes every mask on each forward whose (window-padded) feature size is not ``img_size``:
    18 masks for the published network, about 27 ms per forward on one CPU thread at 48x48 (see
    ``benchmarks/bench_backbones.py``), plus 18 host-to-device copies on a GPU. When training on fixed-size
    patches (e.g. 48x48 LR patches from 64-sized DF2K weights), set ``img_size`` to the patch size once: the
    ``attn_mask`` buffers are replaced by the masks for that size (on their device and dtype), so saved
    checkpoints record it and spandrel detects it back. Other sizes still work (recomputed). No parameter
    changes. ``img_size`` must be a multiple of the window size and larger than it.

    >>> net = set_swinir_img_size(build_swinir(2, **TINY_SWINIR_CONFIG), 16)
    >>> tuple(net.layers[0].residual_group.blocks[1].attn_mask.shape), net.hyperparameters["img_size"]
    ((4, 64, 64), 16)
    """
    window = getattr(model, "window_size", None)
    if type(model).__name__ != "SwinIR" or not isinstance(window, int):
        raise TypeError(f"expected a spandrel SwinIR, got {type(model).__name__}")
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size <= window or img_size % window:
        raise ValueError(f"img_size must be a multiple of the window size {window} and larger, got {img_size!r}")
    if model.patch_embed.patch_size not in ((1, 1), 1):
        raise ValueError("only patch_size 1 (every published SwinIR) is supported")
    blocks = [blk for layer in model.layers for blk in layer.residual_group.blocks]
    if any(blk.window_size != window for blk in blocks):  # built with img_size <= window: no shifts, for good
        raise ValueError("this SwinIR was built with img_size <= window_size; rebuild it instead")
    res = (img_size, img_size)
    for blk in blocks:
        if blk.attn_mask is not None:
            # Assigning to a registered buffer name replaces the buffer (its shape may change).
            blk.attn_mask = blk.calculate_mask(res).to(blk.attn_mask)
    # The resolution bookkeeping (forward compares input_resolution; flops() and repr read the rest).
    for m in model.modules():
        if hasattr(m, "input_resolution"):
            m.input_resolution = res
        if hasattr(m, "patches_resolution"):
            m.patches_resolution = list(res)
        if hasattr(m, "num_patches"):
            m.num_patches = img_size * img_size
        if hasattr(m, "img_size") and hasattr(m, "patch_size"):
            m.img_size = res
    if isinstance(getattr(model, "hyperparameters", None), dict):
        model.hyperparameters = {**model.hyperparameters, "img_size": img_size}
    return model


def load_spandrel_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint as spandrel reads them: restricted unpickler (tensors and dicts only),
    unwrapped from ``params_ema`` / ``params`` / ``state_dict`` / ... (``params_ema`` first) and stripped of
    a common ``module.`` prefix. File types: ``.pth``, ``.pt``, ``.ckpt``, ``.safetensors``."""
    import spandrel

    return dict(spandrel.ModelLoader().load_state_dict_from_file(os.fspath(path)))


def load_spandrel_checkpoint(
    path: str | os.PathLike[str] | Mapping[str, Any],
    expected: str | None = None,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Detect the architecture of a checkpoint with spandrel and return the loaded, trainable ``nn.Module``.

    ``path`` is a checkpoint file (see :func:`load_spandrel_state_dict`) or an already loaded mapping
    (``{'params': sd}``, ``{'params_ema': sd, 'params': sd}`` or a plain state dict). ``expected``
    (``"SwinIR"`` or ``"HAT"``) makes any other detected architecture an error. spandrel infers every
    hyper-parameter from the keys and shapes and loads strictly.

    Returns ``descriptor.model`` (not the descriptor: its ``__call__`` runs under ``torch.inference_mode``,
    forces ``eval()`` and clamps, so it cannot be trained), set to ``train()`` with ``requires_grad=True``
    on every parameter. Raises ``ValueError`` when no architecture is detected or it is not ``expected``.

    >>> import tempfile
    >>> src = build_swinir(2, **TINY_SWINIR_CONFIG)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     torch.save({"params": src.state_dict()}, f"{d}/net.pth")
    ...     net = load_spandrel_checkpoint(f"{d}/net.pth", expected="SwinIR")
    >>> type(net).__name__, net.training, bool(torch.equal(net.conv_first.weight, src.conv_first.weight))
    ('SwinIR', True, True)
    """
    import spandrel

    if expected is not None and expected not in SPANDREL_ARCHITECTURES:
        raise ValueError(f"expected must be one of {SPANDREL_ARCHITECTURES} or None, got {expected!r}")
    loader = spandrel.ModelLoader(device=device)
    where = "the given state dict" if isinstance(path, Mapping) else os.fspath(path)
    try:
        with _quiet_meshgrid():
            if isinstance(path, Mapping):
                descriptor = loader.load_from_state_dict(dict(path))
            else:
                descriptor = loader.load_from_file(os.fspath(path))
    except spandrel.UnsupportedModelError as e:
        raise ValueError(f"spandrel detects no known architecture in {where}"
                         + (f" (expected {expected})" if expected else "")) from e
    arch = descriptor.architecture.id
    if expected is not None and arch != expected:
        raise ValueError(f"{where} holds a {arch} network, expected {expected}")
    model = descriptor.model
    if not isinstance(model, nn.Module):  # every spandrel architecture is a Module; guard the contract anyway
        raise TypeError(f"spandrel returned {type(model).__name__}, not an nn.Module")
    return _trainable(model)

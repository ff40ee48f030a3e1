"""The loss repository (see ``registry``); importing this package registers the built-in terms.

Built-in terms: ``l1``, ``mse`` (``l2``), ``charbonnier``, ``ssim``, ``fft`` (``frequency``) from
``pixel``; ``perceptual`` (``vgg``) from ``perceptual``; ``gan`` (``adversarial``) from ``gan``;
``mscn`` (``nss``) from ``statistics``; ``lpips`` from ``lpips`` (pyiqa is imported only when an LPIPS term is built).
"""

# Importing each module registers its terms.
from .gan import GANLoss, PatchDiscriminator
from .lpips import LPIPSLoss
from .perceptual import VGG19_LAYER_NAMES, PerceptualLoss, freeze_as_buffers
from .pixel import CharbonnierLoss, FFTLoss, L1Loss, MSELoss, SSIMLoss, ssim
from .registry import (
    LOSS_REGISTRY,
    ROLES,
    LossSpec,
    create_loss,
    list_losses,
    loss_spec,
    register_loss,
    resolve_loss_name,
)
from .statistics import MSCNLoss, luma, mscn

__all__ = [
    "LOSS_REGISTRY",
    "ROLES",
    "VGG19_LAYER_NAMES",
    "CharbonnierLoss",
    "FFTLoss",
    "GANLoss",
    "L1Loss",
    "LPIPSLoss",
    "LossSpec",
    "MSCNLoss",
    "MSELoss",
    "PatchDiscriminator",
    "PerceptualLoss",
    "SSIMLoss",
    "create_loss",
    "freeze_as_buffers",
    "list_losses",
    "loss_spec",
    "luma",
    "mscn",
    "register_loss",
    "resolve_loss_name",
    "ssim",
]

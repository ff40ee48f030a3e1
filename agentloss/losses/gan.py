"""Adversarial term ``gan`` (alias ``adversarial``): a loss that owns its discriminator and optimizer."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .registry import register_loss

__all__ = ["GANLoss", "PatchDiscriminator"]

GANMode = Literal["vanilla", "lsgan", "hinge"]
_MODES = ("vanilla", "lsgan", "hinge")


class PatchDiscriminator(nn.Module):
    """Fully convolutional, PatchGAN-style discriminator with spectral normalisation.

    A 3x3 stem, then ``depth`` stride-2 3x3 convolutions (width doubling up to ``8 * width``), then a
    3x3 convolution to one logit per patch, LeakyReLU(0.2) in between and no batch norm (real and
    fake batches are passed separately). Stride-2 3x3 convolutions with padding 1 give
    ``ceil(size / 2)`` pixels, so any input size (even 1x1) works; the output is a logit map of
    about ``size / 2**depth`` pixels.

    Example:
        >>> import torch
        >>> PatchDiscriminator(width=8, depth=2)(torch.rand(2, 3, 17, 30)).shape
        torch.Size([2, 1, 5, 8])
    """

    def __init__(self, in_channels: int = 3, width: int = 64, depth: int = 3, use_spectral_norm: bool = True):
        super().__init__()
        if width < 1 or depth < 0:
            raise ValueError(f"PatchDiscriminator needs width >= 1 and depth >= 0, got width={width}, depth={depth}")
        norm = spectral_norm if use_spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [norm(nn.Conv2d(in_channels, width, 3, 1, 1)), nn.LeakyReLU(0.2, inplace=True)]
        ch = width
        for i in range(depth):
            out = width * min(2 ** (i + 1), 8)
            layers += [norm(nn.Conv2d(ch, out, 3, 2, 1)), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        layers.append(norm(nn.Conv2d(ch, 1, 3, 1, 1)))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def discriminator_loss(mode: GANMode, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator objective: real images towards "real", generated ones towards "fake"."""
    if mode == "vanilla":
        return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
    if mode == "lsgan":
        return F.mse_loss(real_logits, torch.ones_like(real_logits)) + F.mse_loss(fake_logits,
                                                                                 torch.zeros_like(fake_logits))
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()  # hinge


def generator_loss(mode: GANMode, fake_logits: torch.Tensor) -> torch.Tensor:
    """Generator objective: make the discriminator call generated images real."""
    if mode == "vanilla":
        return F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    if mode == "lsgan":
        return F.mse_loss(fake_logits, torch.ones_like(fake_logits))
    return -fake_logits.mean()  # hinge


@register_loss(
    "gan", role="adversarial",
    effect=(
        "adversarial loss from a discriminator; produces realistic texture and better no-reference "
        "quality, but too much of it adds artefacts, lowers PSNR and can destabilise training, so "
        "it is usually much smaller than the pixel terms"
    ), description="adversarial loss with its own discriminator (vanilla, lsgan or hinge)",
               aliases=("adversarial",))
class GANLoss(nn.Module):
    """Adversarial loss of the prediction under a discriminator this term owns and trains.

    ``forward(pred, target)`` returns the *generator's* adversarial loss on ``pred`` (``target`` is
    not used there). The discriminator's parameters are switched to ``requires_grad=False`` for
    that forward and restored afterwards, so the generator's backward leaves no gradient on them.

    The discriminator needs real images: the targets. It is trained by :meth:`discriminator_step`
    (one optimizer step on detached ``fake = pred`` and ``real = target``), called either

    * automatically (``auto_update=True``, the default): ``AgentWeightedLoss`` calls it inside its
      forward, before this term's value, whenever it is in training mode with gradients enabled
      (not in ``eval()`` or under ``torch.no_grad()``); or
    * by you (``auto_update=False``): call ``AgentWeightedLoss.update_discriminators(pred, target)``
      (or ``term.discriminator_step``) on the schedule you want -- after the generator's
      ``loss.backward()`` (or before the loss forward), never between forward and backward, since
      the step changes parameters the generator's graph may have saved.

    The discriminator's Adam optimizer is created on the first step, on the device the
    discriminator is on then; ``.to(...)``/``.cuda()``/``.double()`` rebuild it around the moved
    parameters and move its state. ``state_dict()`` holds the discriminator's weights and, as the
    term's extra state, the optimizer's state, so ``load_state_dict`` resumes a run exactly.

    Args:
        mode: ``"vanilla"`` (binary cross-entropy on logits), ``"lsgan"`` (least squares) or
            ``"hinge"``.
        discriminator: your own ``nn.Module`` mapping images to logits (any shape); by default a
            :class:`PatchDiscriminator` with ``in_channels``, ``width`` and ``depth``.
        lr, betas, weight_decay: the discriminator's Adam settings.
        auto_update: let ``AgentWeightedLoss`` update the discriminator inside its forward.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> gan = GANLoss("hinge", width=8, depth=2)
        >>> fake, real = torch.rand(2, 3, 16, 16, requires_grad=True), torch.rand(2, 3, 16, 16)
        >>> d_loss = gan.discriminator_step(fake, real)   # one Adam step of the discriminator
        >>> g_loss = gan(fake, real)                      # the generator's adversarial loss
        >>> g_loss.backward()
        >>> fake.grad is not None, all(p.grad is None or not p.grad.any() for p in gan.discriminator.parameters())
        (True, True)
    """


    def __init__(
        self,
        mode: GANMode = "vanilla",
        discriminator: nn.Module | None = None,
        in_channels: int = 3,
        width: int = 64,
        depth: int = 3,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        auto_update: bool = True,
    ):
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"gan mode must be one of {_MODES}, got {mode!r}")
        self.mode: GANMode = mode
        self.discriminator = discriminator if discriminator is not None else PatchDiscriminator(in_channels, width,
                                                                                                depth)
        self.optimizer_kwargs: dict[str, Any] = {"lr": float(lr), "betas": tuple(betas),
                                                 "weight_decay": float(weight_decay)}
        self.auto_update = auto_update
        self._optimizer: torch.optim.Optimizer | None = None
        self._pending_optimizer_state: dict[str, Any] | None = None  # loaded, applied on first use
        self.last_discriminator_loss: torch.Tensor = torch.tensor(float("nan"))

    # -- discriminator optimizer ---------------------------------------------------------------
    def _new_optimizer(self) -> torch.optim.Optimizer:
        params = [p for p in self.discriminator.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the discriminator has no trainable parameters")
        return torch.optim.Adam(params, **self.optimizer_kwargs)

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The discriminator's optimizer (created on first use, on the discriminator's device)."""
        if self._optimizer is None:
            self._optimizer = self._new_optimizer()
            if self._pending_optimizer_state is not None:
                self._optimizer.load_state_dict(self._pending_optimizer_state)
                self._pending_optimizer_state = None
        return self._optimizer

    def _apply(self, fn: Any, recurse: bool = True) -> GANLoss:
        super()._apply(fn, recurse)
        if self._optimizer is not None:
            # Parameters may have been replaced (e.g. with swap_tensors) and the Adam moments are
            # still on the old device/dtype: rebuild the optimizer on the current parameters;
            # Optimizer.load_state_dict casts the saved state to each parameter's device and dtype.
            state = self._optimizer.state_dict()
            self._optimizer = self._new_optimizer()
            self._optimizer.load_state_dict(state)
        return self

    def get_extra_state(self) -> dict[str, Any]:
        if self._optimizer is not None:
            return {"optimizer": self._optimizer.state_dict()}
        return {"optimizer": self._pending_optimizer_state}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        # Applied when the optimizer is next needed: this runs before the discriminator's own
        # weights are loaded (which may replace the parameter objects, with ``assign=True``).
        self._optimizer = None
        self._pending_optimizer_state = state.get("optimizer")

    # -- training ------------------------------------------------------------------------------
    def discriminator_step(self, fake: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        """One optimizer step of the discriminator on detached images; returns its loss (before the step).

        The loss comes back as a detached 0-d tensor, not a float: converting would synchronise
        with the GPU at every training step.
        """
        if real is None:
            raise ValueError("the gan term's discriminator needs real images: pass the targets as `real`")
        optimizer = self.optimizer
        real, fake = self._as_discriminator_input(real), self._as_discriminator_input(fake)
        with torch.enable_grad():  # also works when called under torch.no_grad()
            optimizer.zero_grad(set_to_none=True)
            loss = discriminator_loss(self.mode, self.discriminator(real.detach()),
                                      self.discriminator(fake.detach()))
            loss.backward()
            optimizer.step()
        # Drop the gradients now: the generator's pass must not see them, and they would only hold memory.
        optimizer.zero_grad(set_to_none=True)
        self.last_discriminator_loss = loss.detach()
        return self.last_discriminator_loss

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        params = list(self.discriminator.parameters())
        flags = [p.requires_grad for p in params]
        for p in params:
            p.requires_grad_(False)  # the graph records no edge to D: backward gives D no gradient
        try:
            return generator_loss(self.mode, self.discriminator(self._as_discriminator_input(pred)))
        finally:
            for p, flag in zip(params, flags):
                p.requires_grad_(flag)

    def _as_discriminator_input(self, x: torch.Tensor) -> torch.Tensor:
        # A half-precision output fed to the float32 discriminator outside autocast would raise a dtype
        # mismatch; under autocast the cast is harmless (autocast casts per operation anyway).
        dtype = next(self.discriminator.parameters()).dtype
        return x.to(dtype) if x.is_floating_point() and x.dtype != dtype else x

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, auto_update={self.auto_update}, lr={self.optimizer_kwargs['lr']:g}"

"""Perceptual (VGG19 feature) term: ``perceptual``, alias ``vgg``.

The frozen feature network is kept out of checkpoints: :func:`freeze_as_buffers` turns its weights
into *non-persistent buffers*. They still move with ``.to(device)`` / ``.half()``, but they are not
parameters (so ``term.parameters()`` is empty and cannot reach an optimizer by accident) and
``state_dict()`` does not carry the ~80 MB of VGG weights; they are rebuilt from torchvision's file
(or ``weights_path``) whenever the term is constructed. (If you ever wrap a module containing this
term in ``DistributedDataParallel``, pass ``broadcast_buffers=False``: the frozen weights are
identical on every rank and need no broadcast.)
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_loss

if TYPE_CHECKING:
    from torchvision.models import VGG19_Weights

__all__ = ["VGG19_LAYER_NAMES", "PerceptualLoss", "freeze_as_buffers"]

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's VGG19 ("E") configuration: conv widths, "M" = 2x2 max pooling.
_VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                                     512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _vgg19_layer_names() -> tuple[str, ...]:
    names, block, idx = [], 1, 1
    for item in _VGG19_CFG:
        if item == "M":
            names.append(f"pool{block}")
            block, idx = block + 1, 1
        else:
            names += [f"conv{block}_{idx}", f"relu{block}_{idx}"]
            idx += 1
    return tuple(names)


#: Names of the layers of ``torchvision.models.vgg19().features``, in order ("conv1_1", "relu1_1", ...).
VGG19_LAYER_NAMES: tuple[str, ...] = _vgg19_layer_names()


def freeze_as_buffers(module: nn.Module) -> nn.Module:
    """Make every weight of ``module`` a frozen, non-persistent buffer; returns ``module`` in eval mode.

    The weights keep working (``conv.weight`` is still there) and still follow ``.to()``, but they
    are no longer parameters (no optimizer sees them, nothing requires grad) and are left out of
    ``state_dict()``, so a frozen pretrained network does not bloat checkpoints.

    Example:
        >>> import torch
        >>> net = freeze_as_buffers(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)))
        >>> list(net.parameters()), list(net.state_dict())
        ([], [])
        >>> net[0].weight.requires_grad, net(torch.zeros(1, 3, 5, 5)).shape
        (False, torch.Size([1, 4, 3, 3]))
    """
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            delattr(sub, name)
            sub.register_buffer(name, param.detach().requires_grad_(False), persistent=False)
        for name, buf in list(sub.named_buffers(recurse=False)):
            if buf is not None:
                sub.register_buffer(name, buf, persistent=False)  # re-registering flips persistence only
    return module.eval()


def _vgg19_features(num_layers: int) -> nn.Sequential:
    """The first ``num_layers`` layers of torchvision's ``vgg19().features``, same indices."""
    # Built from torchvision's layer factory rather than vgg19(): that would also allocate and
    # initialise the ~500 MB classifier and the layers past the deepest requested one.
    from torchvision.models.vgg import make_layers

    cfg: list[int | str] = []
    while sum(2 if item != "M" else 1 for item in cfg) < num_layers:
        cfg.append(_VGG19_CFG[len(cfg)])
    return make_layers(cfg, batch_norm=False)[:num_layers]


def _feature_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a full torchvision VGG19 state dict (``features.0.weight``) or a features-only one."""
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if any(k.startswith("features.") for k in state):
        return {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    return dict(state)


def _offline_message(url: str, cause: BaseException) -> str:
    filename = os.path.basename(urlparse(url).path)
    target = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    return (
        f"could not download the VGG19 ImageNet weights for the perceptual loss from {url} ({cause}). "
        f"To work offline, download that file elsewhere and put it at {target} "
        f"(the file name torchvision expects is {filename}, in $TORCH_HOME/hub/checkpoints/; TORCH_HOME "
        f"defaults to ~/.cache/torch), or pass weights_path='/path/to/{filename}' to the perceptual loss; "
        f"weights=None gives randomly initialised features, which are only meant for tests."
    )


def _load_imagenet_features(weights: str | VGG19_Weights, progress: bool) -> dict[str, torch.Tensor]:
    from torchvision.models import VGG19_Weights

    enum = VGG19_Weights.__members__.get(weights) if isinstance(weights, str) else weights
    if isinstance(weights, str) and enum is None:
        raise ValueError(f"weights must be a VGG19_Weights name such as 'IMAGENET1K_V1', or None; got {weights!r}")
    if not isinstance(enum, VGG19_Weights):
        raise TypeError(f"weights must be a VGG19_Weights (or its name) or None; got {type(weights).__name__}")
    try:
        # Looked up on torch.hub at call time; it returns the cached file when present, else downloads.
        state = torch.hub.load_state_dict_from_url(enum.url, map_location="cpu", progress=progress,
                                                   check_hash=True, weights_only=True)
    except (OSError, http.client.HTTPException) as e:  # URLError, DNS/socket errors, timeouts, HTTP errors
        raise RuntimeError(_offline_message(enum.url, e)) from e
    return _feature_keys(state)


@register_loss(
    "perceptual", role="texture",
    effect=(
        "distance between deep (VGG) features of the output and the ground truth; gives sharper, "
        "more natural texture at a small cost in PSNR"
    ),
    description="VGG19 feature distance (default conv5_4 before ReLU, ImageNet weights)",
    downloads="torchvision VGG19 ImageNet weights vgg19-dcbb9e9d.pth (548 MB) into $TORCH_HOME/hub/checkpoints/",
    aliases=("vgg",),
)
class PerceptualLoss(nn.Module):
    """Distance between VGG19 features of ``pred`` and ``target``: ``sum_l w_l * criterion(f_l(pred), f_l(target))``.

    Inputs are images in ``[0, 1]``; they are normalised with the ImageNet mean and std before VGG.
    The target's features are computed without autograd (the target is a constant).

    Args:
        layers: layer name -> weight. Names are those of ``VGG19_LAYER_NAMES``: ``"conv5_4"`` is the
            convolution output before its ReLU, ``"relu5_4"`` after it. Default ``{"conv5_4": 1.0}``
            (the usual ESRGAN / BasicSR choice).
        criterion: ``"l1"`` or ``"l2"`` (mean squared error) between feature maps.
        weights: torchvision ``VGG19_Weights`` name (default ``"IMAGENET1K_V1"``, downloaded on first
            use to ``$TORCH_HOME/hub/checkpoints/vgg19-dcbb9e9d.pth``), or ``None`` for random
            features (only meaningful in tests).
        weights_path: a local ``.pth`` with torchvision's VGG19 state dict (or only its ``features``);
            overrides ``weights``; nothing is downloaded.
        normalize_input: apply ImageNet normalisation (turn off if inputs are already normalised).
        progress: show a download progress bar.

    The network is truncated after the last requested layer, frozen (its weights are non-persistent
    buffers, see :func:`freeze_as_buffers`: no parameters, nothing in ``state_dict()``) and stays in
    eval mode when the parent module is put in train mode.

    Raises:
        RuntimeError: when the ImageNet weights are not cached and cannot be downloaded; the message
            says where to put the file or which argument to pass.

    Example:
        >>> import torch
        >>> loss = PerceptualLoss(layers={"relu2_2": 1.0, "conv3_1": 0.5}, weights=None)  # tests only
        >>> x = torch.rand(1, 3, 32, 32)
        >>> loss(x, x).item()
        0.0
        >>> loss(x, torch.rand(1, 3, 32, 32)).item() > 0, list(loss.parameters()), len(loss.vgg)
        (True, [], 11)
    """


    def __init__(
        self,
        layers: Mapping[str, float] | None = None,
        criterion: Literal["l1", "l2"] = "l1",
        weights: str | VGG19_Weights | None = "IMAGENET1K_V1",
        weights_path: str | os.PathLike[str] | None = None,
        normalize_input: bool = True,
        progress: bool = True,
    ):
        super().__init__()
        layers = dict({"conv5_4": 1.0} if layers is None else layers)
        unknown = [name for name in layers if name not in VGG19_LAYER_NAMES]
        if not layers or unknown:
            raise ValueError(f"perceptual layers must be a non-empty dict over {list(VGG19_LAYER_NAMES)}; "
                             f"unknown: {unknown}")
        if criterion not in ("l1", "l2"):
            raise ValueError(f"perceptual criterion must be 'l1' or 'l2', got {criterion!r}")
        self.layer_weights: dict[str, float] = {k: float(v) for k, v in layers.items()}
        self.criterion = criterion
        self.normalize_input = normalize_input

        self._index = {name: VGG19_LAYER_NAMES.index(name) for name in self.layer_weights}
        # Layers past the deepest requested one are never needed: they are not even built.
        features = _vgg19_features(max(self._index.values()) + 1)
        state = None
        if weights_path is not None:
            state = _feature_keys(torch.load(weights_path, map_location="cpu", weights_only=True))
        elif weights is not None:
            state = _load_imagenet_features(weights, progress)
        if state is not None:
            if "34.weight" not in state:  # conv5_4 exists in VGG19 only (VGG16 stops at index 28)
                raise ValueError(f"{weights_path or weights} does not hold VGG19 weights (no features.34.weight)")
            kept = {f"{i}." for i in range(len(features))}
            features.load_state_dict({k: v for k, v in state.items() if k[: k.index(".") + 1] in kept})
        for m in features:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # an in-place ReLU would overwrite a requested conv output
        self.vgg = freeze_as_buffers(features)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        super().train(mode)
        self.vgg.eval()  # frozen network: always inference behaviour
        return self

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The requested layers' feature maps of images ``x`` (in ``[0, 1]``)."""
        if self.normalize_input:
            x = (x - self.mean) / self.std
        wanted = {i: name for name, i in self._index.items()}
        out = {}
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x
        return out

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise ValueError("the perceptual loss compares the prediction with a target; got target=None")
        pred_f = self.features(pred)
        with torch.no_grad():
            target_f = self.features(target.detach())
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        total = pred.new_zeros(())
        for name, w in self.layer_weights.items():
            total = total + w * dist(pred_f[name], target_f[name])
        return total

    def extra_repr(self) -> str:
        return f"layers={self.layer_weights}, criterion={self.criterion!r}"

"""LPIPS term ``lpips``, through pyiqa's LPIPS network (``pyiqa.archs.lpips_arch.LPIPS``).

pyiqa is imported only when the term is built: importing it takes several seconds. The network is
frozen like the perceptual term's (weights become non-persistent buffers, see
:func:`~agentloss.losses.perceptual.freeze_as_buffers`), so it adds nothing to checkpoints.
"""

from __future__ import annotations

import http.client
import os
import warnings
from typing import Literal
from urllib.parse import urlparse

import torch
from torch import nn

from .perceptual import freeze_as_buffers
from .registry import register_loss

__all__ = ["LPIPSLoss"]

_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


def _url_basename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _offline_message(net: str, version: str, pretrained: bool, model_path: str | None, cause: BaseException) -> str:
    import torchvision.models
    from pyiqa.archs.lpips_arch import default_model_urls
    from pyiqa.utils.download_util import DEFAULT_CACHE_DIR

    backbone_url = getattr(torchvision.models, _BACKBONE_WEIGHTS[net]).IMAGENET1K_V1.url
    backbone_file = os.path.join(torch.hub.get_dir(), "checkpoints", _url_basename(backbone_url))
    lines = [
        f"could not download the weights of the LPIPS loss (net={net!r}, version={version!r}): {cause}.",
        "To work offline, download these files elsewhere and put them in place:",
        f"  * the torchvision {net} ImageNet backbone, {backbone_url} -> {backbone_file} "
        "(that is $TORCH_HOME/hub/checkpoints/; TORCH_HOME defaults to ~/.cache/torch)"
        + (" [present]" if os.path.exists(backbone_file) else " [missing]"),
    ]
    if pretrained and model_path is None:
        lin_url = default_model_urls[f"{version}_{net}"]
        lin_file = os.path.join(DEFAULT_CACHE_DIR, _url_basename(lin_url))
        lines.append(
            f"  * pyiqa's LPIPS linear layers, {lin_url} -> {lin_file} ($TORCH_HOME/hub/pyiqa/), "
            f"or pass model_path='/path/to/{_url_basename(lin_url)}'"
            + (" [present]" if os.path.exists(lin_file) else " [missing]")
        )
    lines.append("For tests only, LPIPSLoss(net='squeeze', pretrained=False, pretrained_backbone=False) "
                 "downloads nothing (random, meaningless features).")
    return "\n".join(lines)


@register_loss(
    "lpips", role="texture",
    effect=(
        "learned perceptual distance (LPIPS) to the ground truth; rewards perceptual similarity of "
        "texture and detail"
    ),
    description="LPIPS perceptual distance (pyiqa; AlexNet backbone by default)",
    downloads="torchvision AlexNet ImageNet weights into $TORCH_HOME/hub/checkpoints/ and pyiqa's "
              "LPIPS_v0.1_alex linear weights into $TORCH_HOME/hub/pyiqa/",
)
class LPIPSLoss(nn.Module):
    """LPIPS distance (Zhang et al., 2018) between ``pred`` and ``target`` in ``[0, 1]``, batch mean.

    Args:
        net: backbone, ``"alex"`` (default, the usual choice as a loss), ``"vgg"`` (VGG16) or ``"squeeze"``.
        version: LPIPS version, ``"0.1"`` (default) or ``"0.0"``.
        pretrained: load the LPIPS linear layers calibrated on human judgements (downloaded by pyiqa
            into ``$TORCH_HOME/hub/pyiqa/`` unless ``model_path`` is given); ``False`` leaves them random.
        model_path: local file with those linear layers (e.g. ``LPIPS_v0.1_alex-df73285e.pth``).
        pretrained_backbone: ImageNet weights for the backbone (torchvision downloads them into
            ``$TORCH_HOME/hub/checkpoints/``). pyiqa honours ``False`` only for ``net="squeeze"``.

    ``pretrained=False, pretrained_backbone=False`` (with ``net="squeeze"``) downloads nothing; such an
    LPIPS is random and only good for tests. The network is frozen (no parameters, nothing in
    ``state_dict()``) and stays in eval mode (no dropout) when the parent is put in train mode.

    Raises:
        RuntimeError: when weights are not cached and cannot be downloaded; the message names each
            file, where it must go, and the ``model_path`` argument.

    Example:
        >>> import torch
        >>> loss = LPIPSLoss(net="squeeze", pretrained=False, pretrained_backbone=False)  # tests only
        >>> x = torch.rand(1, 3, 32, 32)
        >>> loss(x, x).item()
        0.0
        >>> list(loss.parameters()), list(loss.state_dict())
        ([], [])
    """


    def __init__(
        self,
        net: Literal["alex", "vgg", "squeeze"] = "alex",
        version: Literal["0.1", "0.0"] = "0.1",
        pretrained: bool = True,
        model_path: str | os.PathLike[str] | None = None,
        pretrained_backbone: bool = True,
    ):
        super().__init__()
        if net not in _BACKBONE_WEIGHTS:
            raise ValueError(f"lpips net must be one of {sorted(_BACKBONE_WEIGHTS)}, got {net!r}")
        if version not in ("0.1", "0.0"):
            raise ValueError(f"lpips version must be '0.1' or '0.0', got {version!r}")
        if not pretrained_backbone and net != "squeeze":
            # pyiqa's alex/vgg wrappers always request torchvision's ImageNet weights.
            raise ValueError("pyiqa's LPIPS supports pretrained_backbone=False only with net='squeeze'")
        from pyiqa.archs.lpips_arch import LPIPS  # slow import, deferred to first use

        path = None if model_path is None else os.fspath(model_path)
        try:
            with warnings.catch_warnings():
                # pyiqa builds squeezenet through torchvision's deprecated ``pretrained=`` argument.
                warnings.filterwarnings("ignore", message=r".*(parameter 'pretrained'|weight enum).*",
                                        category=UserWarning)
                model = LPIPS(pretrained=pretrained, net=net, version=version, pnet_rand=not pretrained_backbone,
                              pretrained_model_path=path, eval_mode=True)
        except (OSError, http.client.HTTPException) as e:  # URLError, DNS/socket errors, HTTP errors
            if isinstance(e, FileNotFoundError) and path is not None and not os.path.exists(path):
                raise
            raise RuntimeError(_offline_message(net, version, pretrained, path, e)) from e
        self.net_name, self.version = net, version
        self.lpips = freeze_as_buffers(model)

    def train(self, mode: bool = True) -> LPIPSLoss:
        super().train(mode)
        self.lpips.eval()  # frozen network: no dropout in the linear layers
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        if target is None:
            raise ValueError("the lpips loss compares the prediction with a target; got target=None")
        # normalize=True: pyiqa maps [0, 1] inputs to the [-1, 1] range LPIPS was trained on.
        return self.lpips(pred, target, normalize=True).mean()

    def extra_repr(self) -> str:
        return f"net={self.net_name!r}, version={self.version!r}"

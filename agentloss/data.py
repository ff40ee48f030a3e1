"""Built-in images and simple degradations, so that tests and the demo need nothing downloaded.

The photos ship inside scikit-image's wheel. Natural colour photos only: NIQE and similar
metrics are modelled on natural images, and grey or synthetic ones would skew them.

Example:
    >>> hr = builtin_photos(["chelsea"])[0]
    >>> hr.shape
    torch.Size([3, 300, 451])
    >>> lq = bicubic_downsample(hr.unsqueeze(0), 2)
    >>> lq.shape
    torch.Size([1, 3, 150, 225])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

# Colour natural photos in scikit-image's wheel (no extra download needed).
PHOTO_NAMES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                                "colorwheel")
# ("cat" is the same photo as "chelsea" in scikit-image, so it is not listed.)
NATURAL_PHOTOS: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket")
# Photos for evaluation only, never in NATURAL_PHOTOS (the built-in training set): the colour
# motorcycle (left view of scikit-image's stereo pair, 500x741) and two grey photos (replicated to
# RGB): "camera" (512x512) and "coins" (303x384). All sides exceed the ~192 px NIQE needs.
EVAL_PHOTOS: tuple[str, ...] = ("motorcycle", "camera", "coins")
# Names that are not plain scikit-image loaders: (loader, index into the tuple it returns).
_PHOTO_ALIASES: dict[str, tuple[str, int | None]] = {"motorcycle": ("stereo_motorcycle", 0),
                                                      "motorcycle_right": ("stereo_motorcycle", 1)}
# The right view of the stereo pair: the default probe photo of the bundled tasks (neither trained
# on nor evaluated; it shows the same scene as the left view from another viewpoint).
PROBE_PHOTOS: tuple[str, ...] = ("motorcycle_right",)


def builtin_photos(names: Sequence[str] = NATURAL_PHOTOS) -> list[torch.Tensor]:
    """Photos from scikit-image as float ``3xHxW`` tensors in [0, 1] (grey ones replicated to RGB).

    Besides scikit-image's loader names, ``"motorcycle"`` and ``"motorcycle_right"`` are the left and
    right views of ``stereo_motorcycle``.
    """
    import skimage.data

    out = []
    for name in names:
        loader, item = _PHOTO_ALIASES.get(name, (name, None))
        fn = getattr(skimage.data, loader, None)
        if fn is None:
            raise ValueError(f"scikit-image has no image {name!r}; built-in photos: "
                             f"{list(PHOTO_NAMES + EVAL_PHOTOS + PROBE_PHOTOS)}")
        arr = fn()
        arr = np.asarray(arr[item] if item is not None else arr)
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        arr = arr[..., :3].astype(np.float32) / 255.0
        out.append(torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous())
    return out


def crop_to_multiple(img: torch.Tensor, multiple: int) -> torch.Tensor:
    """Crop the bottom/right edges so height and width divide by ``multiple`` (needed for xS SR pairs)."""
    h, w = img.shape[-2:]
    return img[..., : h - h % multiple, : w - w % multiple]


def bicubic_downsample(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic (antialiased, like MATLAB's imresize) ``1/scale`` downsampling of ``NxCxHxW`` in [0, 1]."""
    hr = crop_to_multiple(hr, scale)
    h, w = hr.shape[-2:]
    lq = F.interpolate(hr, size=(h // scale, w // scale), mode="bicubic", align_corners=False, antialias=True)
    return lq.clamp(0, 1)


def random_patches(images: Sequence[torch.Tensor], size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size x size`` crops (with random flips) from ``images``, as ``Nx3xSxS``."""
    out = []
    for _ in range(count):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        h, w = img.shape[-2:]
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        patch = img[..., y : y + size, x : x + size]
        if torch.rand(1, generator=generator) < 0.5:
            patch = patch.flip(-1)
        out.append(patch)
    return torch.stack(out)


class PatchPairStream:
    """An endless, seeded stream of (LQ, HR) patch batches for xS bicubic SR.

    Its position is explicit state (``state_dict``) so that a resumed run draws the same batches
    the uninterrupted run would have.

    Example:
        >>> stream = PatchPairStream(builtin_photos(["chelsea"]), scale=2, patch=32, batch=4, seed=0)
        >>> lq, hr = next(stream)
        >>> tuple(lq.shape), tuple(hr.shape)
        ((4, 3, 16, 16), (4, 3, 32, 32))
    """

    def __init__(self, images: Sequence[torch.Tensor], scale: int, patch: int, batch: int, seed: int = 0):
        if patch % scale:
            raise ValueError(f"patch size {patch} must be a multiple of the scale {scale}")
        self.images, self.scale, self.patch, self.batch, self.seed = list(images), scale, patch, batch, seed
        self.index = 0

    def __iter__(self) -> PatchPairStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        # One generator per batch index: batch k is the same whatever happened before it.
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.index)
        self.index += 1
        hr = random_patches(self.images, self.patch, self.batch, g)
        return bicubic_downsample(hr, self.scale), hr

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index, self.seed = int(state["index"]), int(state["seed"])

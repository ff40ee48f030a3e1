"""Reading and writing image files as float RGB tensors in [0, 1].

Everything goes through PIL, so any format PIL opens works (PNG, JPEG, BMP, TIFF, WebP, PPM).
Grey images are replicated to three channels, alpha is dropped and 16-bit grey PNGs keep their
precision (scaled by 1/65535); PIL reads 16-bit RGB PNGs as 8-bit.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> d = Path(tempfile.mkdtemp())
    >>> img = torch.rand(3, 5, 7)
    >>> write_image(img, d / "a.png")
    >>> back = read_image(d / "a.png")
    >>> back.shape, bool((back - img).abs().max() <= 0.5 / 255 + 1e-6)
    (torch.Size([3, 5, 7]), True)
    >>> [p.name for p in list_images(d)]
    ['a.png']
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` has an image file extension (case-insensitive); hidden files are not images."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted by name (so that every run sees the same order).

    Raises ``FileNotFoundError`` if the folder is missing and ``ValueError`` if it holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = folder.rglob("*") if recursive else folder.iterdir()
    out = sorted((p for p in files if p.is_file() and is_image(p)), key=lambda p: str(p.relative_to(folder)))
    if not out:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    return out


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """An image file as a float ``3xHxW`` RGB tensor in [0, 1]."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grey: converting to RGB through PIL would clip to 8 bits.
            arr = np.asarray(im, dtype=np.float32) / 65535.0
            arr = np.stack([arr] * 3, axis=-1)
        else:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


def write_image(img: torch.Tensor, path: str | os.PathLike, quality: int = 95) -> None:
    """Save a ``3xHxW`` (or ``1x3xHxW``) tensor in [0, 1] as an 8-bit image (format from the suffix)."""
    from PIL import Image

    if img.ndim == 4:
        img = img[0]
    arr = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    if arr.shape[-1] == 1:
        arr = arr[..., 0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg", ".webp") else {}
    Image.fromarray(arr).save(path, **kwargs)

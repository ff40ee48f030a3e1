"""Image sources: HR-only folders, paired LQ/GT folders, in-memory images; LQ/GT matching by file name.

A *source* is a list of images that a sampler draws from: ``load(i)`` returns ``(lq, gt)`` where
``lq`` is ``None`` for HR-only sources (the LQ is synthesised by a degradation), and ``scale`` is
the GT/LQ size ratio of paired sources. Folder sources keep decoded images in memory only when
the whole set fits in ``cache_size`` images: samplers visit every image once per epoch in random
order, so a partial cache would only hold images that are not needed again soon.

Pairs are matched by file stem: first exactly, then through :func:`pair_key`, which removes the
usual decorations of benchmark releases (``babyx2`` -> ``baby``, ``rain-001``/``norain-001`` ->
``1``, SOTS's ``0001_0.8_0.2`` -> ``1``, ``img_001_SRF_2_LR`` -> ``img_001_srf_2``). Several LQ
images may share one GT (SOTS indoor has ten hazy versions of each clear image); an LQ without a
GT, a GT without an LQ, or an ambiguous match raises :class:`PairingError` naming the files.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from agentloss.datasets.io import write_image
    >>> d = Path(tempfile.mkdtemp())
    >>> for stem in ("rain-001", "rain-002"):
    ...     write_image(torch.rand(3, 8, 8), d / "rainy" / f"{stem}.png")
    ...     write_image(torch.rand(3, 8, 8), d / "gt" / f"no{stem}.png")
    >>> src = PairedFolder(d / "rainy", d / "gt")
    >>> len(src), src.name(0)
    (2, 'rain-001')
    >>> lq, gt = src.load(1)
    >>> lq.shape, gt.shape
    (torch.Size([3, 8, 8]), torch.Size([3, 8, 8]))
    >>> pair_key("0001_0.8_0.2"), pair_key("babyx2"), pair_key("norain-012")
    ('1', 'baby', '12')
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from .io import list_images, read_image


class PairingError(ValueError):
    """LQ and GT files could not be matched one to one (the message lists the offending names)."""


@runtime_checkable
class ImageSource(Protocol):
    """What samplers and benchmarks read from."""

    scale: int

    def __len__(self) -> int: ...

    def name(self, index: int) -> str: ...

    def load(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor]: ...


# Words that releases put before/after the shared part of a name; matched whole, case-insensitive.
_TAGS = "norain|rainy|rain|hazy|haze|clear|clean|noisy|input|target|gt|lq|hq|hr|lr|sr|label|groundtruth"
_SCALE_SUFFIX = re.compile(r"[_-]?x\d+$")  # babyx2, 0801x4, img_x3
_TAG_SUFFIX = re.compile(rf"[_-]({_TAGS})$")
_TAG_PREFIX = re.compile(rf"^({_TAGS})[_-]")
_NUMBERED_VARIANT = re.compile(r"(\d+)(?:_\d+(?:\.\d+)?)+")  # SOTS: 0001_0.8_0.2 (outdoor), 1400_3 (indoor)


def pair_key(stem: str) -> str:
    """The part of a file stem that LQ and GT names share in common benchmark releases.

    >>> [pair_key(s) for s in ("baby", "babyx2", "img_001_SRF_2_LR", "img_001_SRF_2_HR", "1400_10", "0042")]
    ['baby', 'baby', 'img_001_srf_2', 'img_001_srf_2', '1400', '42']
    """
    k = stem.lower()
    k = _SCALE_SUFFIX.sub("", k)
    k = _TAG_SUFFIX.sub("", k)
    k = _TAG_PREFIX.sub("", k)
    if m := _NUMBERED_VARIANT.fullmatch(k):
        k = m.group(1)
    if k.isdigit():
        k = str(int(k))  # 1.png and 0001.png are the same image in the releases that mix them
    return k


def _names(paths: Sequence[Path], limit: int = 10) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f", ... (+{len(paths) - limit} more)" if len(paths) > limit else "")


def pair_by_stem(lq_paths: Sequence[Path], gt_paths: Sequence[Path],
                 key: Callable[[str], str] | None = None) -> list[tuple[Path, Path]]:
    """Match each LQ file to its GT file; returns ``(lq, gt)`` in LQ order.

    With ``key``, both sides are matched on ``key(stem)`` only; without it, on the exact stem first
    and then on :func:`pair_key`. Every GT must be used at least once.
    """
    lq_paths, gt_paths = list(lq_paths), list(gt_paths)
    keyed: dict[str, list[Path]] = {}
    exact: dict[str, Path] = {}
    for g in gt_paths:
        keyed.setdefault((key or pair_key)(g.stem), []).append(g)
        exact[g.stem] = g
    pairs: list[tuple[Path, Path]] = []
    missing: list[Path] = []
    ambiguous: list[str] = []
    for q in lq_paths:
        if key is None and q.stem in exact:
            pairs.append((q, exact[q.stem]))
            continue
        k = (key or pair_key)(q.stem)
        cands = keyed.get(k, [])
        if len(cands) == 1:
            pairs.append((q, cands[0]))
        elif cands:
            ambiguous.append(f"{q.name} -> {_names(cands)}")
        else:
            missing.append(q)
    used = {g for _, g in pairs}
    unused = [g for g in gt_paths if g not in used]
    if missing or unused or ambiguous:
        lq_dir = lq_paths[0].parent if lq_paths else "?"
        gt_dir = gt_paths[0].parent if gt_paths else "?"
        parts = []
        if missing:
            parts.append(f"{len(missing)} LQ image(s) in {lq_dir} have no GT in {gt_dir}: {_names(missing)}")
        if unused:
            parts.append(f"{len(unused)} GT image(s) in {gt_dir} have no LQ in {lq_dir}: {_names(unused)}")
        if ambiguous:
            parts.append(f"{len(ambiguous)} LQ image(s) match several GT images: {'; '.join(ambiguous[:10])}")
        how = ("a key function (key=)" if key is not None else
               "exact stem, then the stem without case, scale suffixes (x2), rain/norain/gt/lq tags, "
               "SOTS '_A_beta' suffixes and leading zeros")
        raise PairingError("; ".join(parts) + f". Files are matched by {how}; pass key= to match otherwise.")
    return pairs


def align_pair(lq: torch.Tensor, gt: torch.Tensor, scale: int = 1, name: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """Make ``gt`` exactly ``scale`` times ``lq`` in size, as releases leave small mismatches.

    * GT larger by less than ``scale`` pixels: the SR mod-crop convention, crop its bottom/right.
    * GT larger by an even margin (SOTS indoor: 640x480 clear vs 620x460 hazy): centre-crop it.
    * ``scale == 1`` and LQ larger by an even margin: centre-crop the LQ.
    Anything else raises ``ValueError`` with both sizes.
    """
    h, w = lq.shape[-2:]
    th, tw = h * scale, w * scale
    gh, gw = gt.shape[-2:]
    dy, dx = gh - th, gw - tw
    if dy == 0 and dx == 0:
        return lq, gt
    if 0 <= dy < scale and 0 <= dx < scale:
        return lq, gt[..., :th, :tw]
    if dy >= 0 and dx >= 0 and dy % 2 == 0 and dx % 2 == 0:
        return lq, gt[..., dy // 2: dy // 2 + th, dx // 2: dx // 2 + tw]
    if scale == 1 and dy <= 0 and dx <= 0 and dy % 2 == 0 and dx % 2 == 0:
        return lq[..., -dy // 2: -dy // 2 + gh, -dx // 2: -dx // 2 + gw], gt
    raise ValueError(f"{name or 'pair'}: LQ {h}x{w} and GT {gh}x{gw} do not fit scale {scale} "
                     f"(GT should be {th}x{tw})")


class _LRU:
    """An LRU cache of decoded images (``size`` 0 disables it)."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def get(self, path: Path) -> torch.Tensor:
        if path in self.data:
            self.data.move_to_end(path)
            return self.data[path]
        img = read_image(path)
        if self.size > 0:
            self.data[path] = img
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return img


class TensorImages:
    """In-memory HR images (e.g. :func:`agentloss.data.builtin_photos`) as a source.

    >>> src = TensorImages([torch.zeros(3, 4, 4)])
    >>> src.load(0)[0] is None, src.name(0)
    (True, 'image_000')
    """

    scale = 1

    def __init__(self, images: Sequence[torch.Tensor], names: Sequence[str] | None = None):
        self.images = [img[0] if img.ndim == 4 else img for img in images]
        self.names = list(names) if names is not None else [f"image_{i:03d}" for i in range(len(self.images))]
        if len(self.names) != len(self.images):
            raise ValueError(f"{len(self.names)} names for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.names[index]

    def load(self, index: int) -> tuple[None, torch.Tensor]:
        return None, self.images[index]


class HRFolder:
    """A folder of HR/clean images only; the LQ is synthesised by a degradation.

    ``recursive`` includes sub-folders; all decoded images are kept if there are at most ``cache_size``.
    """

    scale = 1

    def __init__(self, folder: str | os.PathLike, recursive: bool = False, cache_size: int = 16):
        self.folder = Path(folder)
        self.paths = list_images(self.folder, recursive)
        self._cache = _LRU(cache_size if len(self.paths) <= cache_size else 0)

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index].stem

    def load(self, index: int) -> tuple[None, torch.Tensor]:
        return None, self._cache.get(self.paths[index])


class PairedFolder:
    """Matched LQ and GT folders (deraining, dehazing, or SR with given LR files).

    ``scale`` is GT size / LQ size (1 for restoration at the same size); small size mismatches are
    fixed by :func:`align_pair` on load. ``key`` overrides the name matching (see :func:`pair_by_stem`).
    All decoded files are kept if there are at most ``cache_size`` of them.
    """

    def __init__(self, lq_folder: str | os.PathLike, gt_folder: str | os.PathLike, scale: int = 1,
                 key: Callable[[str], str] | None = None, recursive: bool = False, cache_size: int = 16):
        self.lq_folder, self.gt_folder, self.scale = Path(lq_folder), Path(gt_folder), int(scale)
        self.pairs = pair_by_stem(list_images(self.lq_folder, recursive), list_images(self.gt_folder, recursive), key)
        files = len({p for pair in self.pairs for p in pair})
        self._cache = _LRU(cache_size if files <= cache_size else 0)

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index][0].stem

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        q, g = self.pairs[index]
        return align_pair(self._cache.get(q), self._cache.get(g), self.scale, q.name)

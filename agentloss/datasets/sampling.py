"""Seeded, resumable patch sampling from any source, as an endless stream or a map-style Dataset.

Sample ``n`` of the endless sequence is a pure function of ``(seed, n)``: its image is entry
``n % len(source)`` of a seeded permutation for epoch ``n // len(source)`` (every image once per
epoch), and its crop, flips/rot90 and degradation come from a generator seeded with ``(seed, n)``.
So :class:`PatchDataset` can be read in any order by DataLoader workers, and
:class:`RestorationStream` needs only its batch counter to resume: batch ``k`` holds samples
``k*B .. k*B+B-1`` whatever happened before, and equals batch ``k`` of :func:`make_loader`.

Crops: a GT patch of ``patch`` pixels and the matching LQ patch of ``patch // scale``; for HR-only
sources the LQ is made from the GT patch by the degradation.

Example:
    >>> import torch
    >>> from agentloss.datasets.folders import TensorImages
    >>> from agentloss.datasets.degradations import BicubicDegradation
    >>> src = TensorImages([torch.rand(3, 40, 50), torch.rand(3, 36, 36)])
    >>> stream = RestorationStream(src, patch=16, batch=3, seed=0, degradation=BicubicDegradation(2))
    >>> lq, gt = next(stream)
    >>> tuple(lq.shape), tuple(gt.shape)
    ((3, 3, 8, 8), (3, 3, 16, 16))
    >>> state = stream.state_dict()
    >>> nxt = next(stream)[1]
    >>> stream.load_state_dict(state)
    >>> bool(torch.equal(next(stream)[1], nxt))
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .folders import ImageSource

_MASK = (1 << 63) - 1


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (splitmix64 steps), so nearby ``(seed, n)`` give unrelated streams.

    >>> mix_seed(0, 1) != mix_seed(1, 0)
    True
    """
    z = 0x9E3779B97F4A7C15
    for v in values:
        z = (z ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 29
    return z & _MASK


def augment(img: torch.Tensor, hflip: bool, vflip: bool, rot90: bool) -> torch.Tensor:
    """One of the 8 dihedral transforms of ``...xHxW`` (flips, then a transpose for rot90)."""
    if hflip:
        img = img.flip(-1)
    if vflip:
        img = img.flip(-2)
    if rot90:
        img = img.transpose(-2, -1)
    return img


class PatchDataset(Dataset):
    """Map-style dataset: item ``n`` is the ``n``-th ``(lq, gt)`` sample (``CxH/SxW/S``, ``CxHxW``).

    ``degradation`` makes the LQ from GT patches of HR-only sources (required for them) and is
    ignored for paired ones. ``length`` is the nominal length DataLoader asks for; the sequence is
    endless (any ``n >= 0`` works). ``augment`` applies random flips and rot90.
    """

    def __init__(self, source: ImageSource, patch: int, seed: int = 0,
                 degradation: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 augment: bool = True, length: int = 2**31 - 1):
        if len(source) == 0:
            raise ValueError("the image source is empty")
        paired = self._is_paired(source)
        if not paired and degradation is None:
            raise ValueError("an HR-only source needs a degradation to make the LQ (see make_degradation)")
        self.source, self.patch, self.seed, self.augment, self.length = source, int(patch), int(seed), augment, length
        self.degradation = None if paired else degradation
        self.scale = int(source.scale if paired else getattr(degradation, "scale", 1))
        if self.patch % self.scale:
            raise ValueError(f"patch size {patch} must be a multiple of the scale {self.scale}")
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    @staticmethod
    def _is_paired(source: ImageSource) -> bool:
        return source.load(0)[0] is not None

    def __len__(self) -> int:
        return self.length

    def image_index(self, n: int) -> int:
        """Which source image sample ``n`` crops (a fresh seeded permutation per epoch)."""
        epoch, j = divmod(n, len(self.source))
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 1))
            self._perm, self._perm_epoch = torch.randperm(len(self.source), generator=g), epoch
        return int(self._perm[j])

    def __getitem__(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if n < 0:
            raise IndexError(n)
        i = self.image_index(n)
        g = torch.Generator().manual_seed(mix_seed(self.seed, n, 2))
        lq, gt = self.source.load(i)
        s, p = self.scale, self.patch
        q = p // s
        ref = gt if lq is None else lq
        h, w = ref.shape[-2:]
        need = p if lq is None else q
        if h < need or w < need:
            raise ValueError(f"image {self.source.name(i)!r} ({h}x{w}{' LQ' if lq is not None else ''}) "
                             f"is smaller than the {need}-pixel patch")
        y = int(torch.randint(h - need + 1, (1,), generator=g))
        x = int(torch.randint(w - need + 1, (1,), generator=g))
        flips = [bool(f) for f in torch.rand(3, generator=g) < 0.5] if self.augment else [False] * 3
        if lq is None:
            gt_patch = augment(gt[..., y: y + p, x: x + p], *flips)
            assert self.degradation is not None
            lq_patch = self.degradation(gt_patch.unsqueeze(0), g)[0]
        else:
            gt_patch = augment(gt[..., y * s: y * s + p, x * s: x * s + p], *flips)
            lq_patch = augment(lq[..., y: y + q, x: x + q], *flips)
        return lq_patch.contiguous(), gt_patch.contiguous()


class ResumableSampler(Sampler[int]):
    """Yields ``start, start+1, ...`` (endless): sample indices of a :class:`PatchDataset`."""

    def __init__(self, start: int = 0):
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        n = self.start
        while True:
            yield n
            n += 1


def make_loader(dataset: PatchDataset, batch: int, start_batch: int = 0, num_workers: int = 0,
                **kwargs: Any) -> DataLoader:
    """An endless DataLoader whose ``k``-th batch is batch ``start_batch + k`` of the stream.

    To resume, count the batches you consumed and pass that count as ``start_batch``.
    """
    return DataLoader(dataset, batch_size=batch, sampler=ResumableSampler(start_batch * batch),
                      num_workers=num_workers, **kwargs)


class RestorationStream:
    """An endless, seeded stream of ``(lq, gt)`` patch batches for any task, with exact resume.

    Same constructor arguments as :class:`PatchDataset` plus ``batch``; ``state_dict()`` holds the
    batch counter and the seed.
    """

    def __init__(self, source: ImageSource, patch: int, batch: int, seed: int = 0,
                 degradation: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
                 augment: bool = True):
        self.dataset = PatchDataset(source, patch, seed, degradation, augment)
        self.batch = int(batch)
        self.index = 0

    @property
    def seed(self) -> int:
        return self.dataset.seed

    def __iter__(self) -> RestorationStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.index * self.batch
        self.index += 1
        samples = [self.dataset[n] for n in range(start, start + self.batch)]
        return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])

    def loader(self, num_workers: int = 0, **kwargs: Any) -> DataLoader:
        """A DataLoader continuing from this stream's position (the stream's counter is not advanced)."""
        return make_loader(self.dataset, self.batch, self.index, num_workers, **kwargs)

    def state_dict(self) -> dict[str, int]:
        return {"index": self.index, "seed": self.dataset.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.index = int(state["index"])
        if int(state["seed"]) != self.dataset.seed:
            self.dataset.seed = int(state["seed"])
            self.dataset._perm_epoch = -1  # the cached permutation belonged to the old seed

"""Finding standard test sets on disk in the layouts they are usually distributed in.

``find_benchmark(root, name, scale=..., noise_sigma=...)`` searches ``root`` (and its sub-folders,
three levels deep) for a folder named like the benchmark (case, ``-``/``_``/spaces ignored), then
recognises one of these layouts inside it (sub-folder names case-insensitive):

========================  ===================================================================
task                      accepted layouts (LQ synthesised when only GT is there)
========================  ===================================================================
SR: Set5, Set14, B100     ``HR/`` + ``LR_bicubic/X{s}/`` (``babyx2.png`` <-> ``baby.png``);
(BSD100), Urban100,       ``GTmod12/`` + ``LRbicx{s}/``; ``HR/`` or ``GT/`` or ``original/``
Manga109                  alone; ``image_SRF_{s}/`` with ``*_HR``/``*_LR`` files (SelfExSR
                          release); a flat folder of HR images. Also ``LR/X{s}``, ``X{s}``,
                          ``LR_x{s}``. Synthesised LR: antialiased bicubic of the mod-cropped HR.
real-world SR: RealSRSet  a flat folder (or ``LQ/``, ``LR/``, ``input/``) of LQ images, no GT.
real-world SR: OST300     HR images (flat or ``HR/``/``GT/``); LQ by the real-world degradation.
denoising: BSD68, CBSD68, clean images flat or in ``original_png/``/``original/``/``GT/``, with
Kodak24, McMaster         optional ``noisy{sigma}/`` (DnCNN release); else Gaussian noise (seeded).
deraining: Rain100L/H     ``rainy/`` + ``norain/``; ``input/`` + ``target/``; ``rainy/`` with the
                          GT (``norain-001.png``) directly in the folder (PReNet release);
                          also ``rain/``, ``lq/``, ``data/`` + ``gt/``, ``groundtruth/``, ``clean/``.
dehazing: SOTS (outdoor)  ``hazy/`` + ``gt/`` or ``clear/`` (``0001_0.8_0.2.jpg`` <-> ``0001.png``),
                          under ``SOTS/outdoor/`` or a folder named ``SOTS-outdoor``; ``SOTS-indoor``.
========================  ===================================================================

Other names work with ``task=`` (any of ``sr``, ``realsr``, ``denoise``, ``derain``, ``dehaze``).
When nothing matches, :class:`BenchmarkNotFoundError` says which folders and layouts were tried and
what the folder holds.

Example:
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from agentloss.datasets.io import write_image
    >>> root = Path(tempfile.mkdtemp())
    >>> write_image(torch.rand(3, 12, 12), root / "Set5" / "HR" / "baby.png")
    >>> write_image(torch.rand(3, 6, 6), root / "Set5" / "LR_bicubic" / "X2" / "babyx2.png")
    >>> bench = find_benchmark(root, "set5", scale=2)
    >>> bench.task, len(bench), bench.layout
    ('sr', 1, 'HR/ + LR_bicubic/X2/')
    >>> p = bench.pairs()[0]
    >>> p.name, tuple(p.lq.shape), tuple(p.gt.shape)
    ('baby', (3, 6, 6), (3, 12, 12))
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..data import bicubic_downsample, crop_to_multiple
from .degradations import GaussianNoise, RealWorldDegradation
from .folders import align_pair, pair_by_stem
from .io import is_image, list_images, read_image
from .sampling import mix_seed

TASKS: tuple[str, ...] = ("sr", "realsr", "denoise", "derain", "dehaze")


class ImagePair(NamedTuple):
    """One test image: its name, the LQ input (``3xhxw``) and the GT (``3xHxW``, or None when there is none)."""

    name: str
    lq: torch.Tensor
    gt: torch.Tensor | None


class BenchmarkNotFoundError(FileNotFoundError):
    """No folder or no known layout for a benchmark; the message lists what was looked for."""


@dataclass(frozen=True)
class BenchmarkInfo:
    """A known benchmark: canonical name, task, folder aliases, what it holds, and a sub-folder to enter."""

    name: str
    task: str
    aliases: tuple[str, ...] = ()
    content: str = "gt"  # "gt": clean/HR images (LQ may be given or synthesised); "lq": LQ only
    subset: str | None = None


KNOWN_BENCHMARKS: tuple[BenchmarkInfo, ...] = (
    BenchmarkInfo("Set5", "sr"),
    BenchmarkInfo("Set14", "sr"),
    BenchmarkInfo("B100", "sr", ("BSD100", "BSDS100", "BSD100_SR")),
    BenchmarkInfo("Urban100", "sr"),
    BenchmarkInfo("Manga109", "sr"),
    BenchmarkInfo("OST300", "realsr", ("OST", "OutdoorSceneTest300")),
    BenchmarkInfo("RealSRSet", "realsr", ("RealSRSet+5images", "RealSRSet5"), content="lq"),
    BenchmarkInfo("SOTS", "dehaze", ("SOTS-outdoor", "SOTS_outdoor", "SOTSoutdoor"), subset="outdoor"),
    BenchmarkInfo("SOTS-indoor", "dehaze", ("SOTS_indoor", "SOTSindoor"), subset="indoor"),
    BenchmarkInfo("Rain100L", "derain", ("Rain100_L",)),
    BenchmarkInfo("Rain100H", "derain", ("Rain100_H",)),
    BenchmarkInfo("BSD68", "denoise", ("BSDS68",)),
    BenchmarkInfo("CBSD68", "denoise", ("CBSDS68",)),
    BenchmarkInfo("Kodak24", "denoise", ("Kodak",)),
    BenchmarkInfo("McMaster", "denoise", ("McM",)),
)

# How each task is usually scored (PSNR/SSIM convention of its papers).
EVAL_CONVENTIONS: dict[str, dict[str, object]] = {
    "sr": {"y_channel": True},  # crop_border = scale
    "realsr": {"y_channel": True},
    "denoise": {"y_channel": False, "crop_border": 0},  # RGB PSNR on CBSD68 (DnCNN, Restormer)
    "derain": {"y_channel": True, "crop_border": 0},  # Y PSNR on Rain100L (PReNet, Restormer)
    "dehaze": {"y_channel": False, "crop_border": 0},  # RGB PSNR on SOTS (DehazeFormer)
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", name.lower())


def _info(name: str) -> BenchmarkInfo | None:
    n = _norm(name)
    for info in KNOWN_BENCHMARKS:
        if n in {_norm(a) for a in (info.name, *info.aliases)}:
            return info
    return None


def _child(folder: Path, rel: str) -> Path | None:
    """``folder/rel`` matching each component case-insensitively (an exact match wins)."""
    cur = folder
    for part in rel.split("/"):
        exact = cur / part
        if exact.is_dir():
            cur = exact
            continue
        try:
            found = sorted(p for p in cur.iterdir() if p.is_dir() and p.name.lower() == part.lower())
        except OSError:
            return None
        if not found:
            return None
        cur = found[0]
    return cur


def _first_child(folder: Path, rels: list[str]) -> tuple[Path, str] | None:
    for rel in rels:
        c = _child(folder, rel)
        if c is not None and any(is_image(p) for p in c.iterdir()):
            return c, rel
    return None


def _flat_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def _contents(folder: Path, limit: int = 12) -> str:
    try:
        items = sorted(folder.iterdir())
    except OSError as e:
        return f"(unreadable: {e})"
    dirs = [p.name + "/" for p in items if p.is_dir()]
    files = [p.name for p in items if p.is_file()]
    shown = (dirs + files)[:limit]
    more = len(dirs) + len(files) - len(shown)
    return ", ".join(shown) + (f", ... (+{more})" if more > 0 else "") if shown else "(empty)"


def _search(root: Path, names: set[str], depth: int = 3) -> list[Path]:
    """Folders under ``root`` (itself included) whose normalised name is in ``names``, shallowest first."""
    found: list[Path] = []
    level = [root]
    for _ in range(depth + 1):
        found += [d for d in level if _norm(d.name) in names]
        if found:
            return found
        nxt: list[Path] = []
        for d in level:
            try:
                nxt += sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
        level = nxt
    return found


@dataclass
class Benchmark:
    """A test set found on disk: matched file lists and how to build its pairs.

    ``gt``/``lq`` are matched lists of paths (same order); either may be None: ``lq`` None means
    the LQ is synthesised by :meth:`pairs` (bicubic for SR, Gaussian noise for denoising, the
    real-world degradation for real-world SR); ``gt`` None means there is no reference
    (no-reference metrics only).
    """

    name: str
    task: str
    root: Path
    layout: str
    scale: int = 1
    gt: list[Path] | None = None
    lq: list[Path] | None = None
    noise_sigma: float | None = None
    tried: list[str] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.gt if self.gt is not None else self.lq or [])

    @property
    def synthesized(self) -> str | None:
        """How the LQ is made when not on disk: ``"bicubic"``, ``"gaussian"``, ``"realworld"`` or None."""
        if self.lq is not None:
            return None
        return {"sr": "bicubic", "denoise": "gaussian", "realsr": "realworld"}.get(self.task)

    @property
    def eval_kwargs(self) -> dict[str, object]:
        """The task's usual scoring convention, to pass to :func:`~agentloss.datasets.evaluation.evaluate`."""
        kw = dict(EVAL_CONVENTIONS.get(self.task, {}))
        kw.setdefault("crop_border", self.scale)
        return kw

    def _name(self, i: int, shared: Counter[Path]) -> str:
        """The GT's stem (the image's usual name), or the LQ's when several LQ share a GT (SOTS indoor)."""
        if self.gt is None:
            return self.lq[i].stem  # type: ignore[index]
        if self.lq is not None and shared[self.gt[i]] > 1:
            return self.lq[i].stem
        return self.gt[i].stem

    def pairs(self, seed: int = 0, limit: int | None = None) -> list[ImagePair]:
        """Load the images (all, or the first ``limit``); synthetic LQ is seeded by ``(seed, index)``."""
        n = len(self) if limit is None else min(limit, len(self))
        shared = Counter(self.gt or [])
        out = []
        for i in range(n):
            g = torch.Generator().manual_seed(mix_seed(seed, i))
            gt = read_image(self.gt[i]) if self.gt is not None else None
            name = self._name(i, shared)
            if self.lq is not None:
                lq = read_image(self.lq[i])
                if gt is not None:
                    lq, gt = align_pair(lq, gt, self.scale, name)
            else:
                assert gt is not None
                gt = crop_to_multiple(gt, self.scale)
                if self.task == "sr":
                    lq = bicubic_downsample(gt.unsqueeze(0), self.scale)[0]
                elif self.task == "denoise":
                    assert self.noise_sigma is not None
                    lq = GaussianNoise(sigmas=(self.noise_sigma,))(gt.unsqueeze(0), g)[0]
                elif self.task == "realsr":
                    lq = RealWorldDegradation(self.scale)(gt.unsqueeze(0), g)[0]
                else:
                    raise ValueError(f"{self.name}: task {self.task!r} needs LQ images on disk")
            out.append(ImagePair(name, lq, gt))
        return out


def _layout_sr(d: Path, scale: int, tried: list[str]) -> tuple[list[Path] | None, list[Path] | None, str] | None:
    srf = _child(d, f"image_SRF_{scale}")
    tried.append(f"image_SRF_{scale}/ with *_HR and *_LR files")
    if srf is not None:
        files = _flat_images(srf)
        hr = [p for p in files if p.stem.lower().endswith("_hr")]
        lr = [p for p in files if p.stem.lower().endswith("_lr")]
        if hr and lr:
            pairs = pair_by_stem(lr, hr)
            return [g for _, g in pairs], [q for q, _ in pairs], f"image_SRF_{scale}/ (*_HR + *_LR)"
    hr_names = ["HR", "GTmod12", f"GTmod{scale}", "GT", "original"]
    lr_names = [f"LR_bicubic/X{scale}", f"LRbicx{scale}", f"LR_bicubic_X{scale}", f"LR/X{scale}", f"LR_x{scale}",
                f"LRx{scale}", f"X{scale}", f"LR{scale}", "LR_bicubic"]
    tried.append(f"an HR folder ({', '.join(hr_names)}) or images directly in {d.name}/, "
                 f"optionally with an LR folder ({', '.join(lr_names)})")
    hr = _first_child(d, hr_names)
    hr_dir, hr_desc = hr if hr else (d, "") if _flat_images(d) else (None, "")
    if hr_dir is None:
        return None
    lr = _first_child(d, lr_names) if scale > 1 else None
    desc = f"{hr_desc}/" if hr_desc else "flat HR folder"
    if lr is None:
        return list_images(hr_dir), None, desc + " (LR by bicubic)"
    pairs = pair_by_stem(list_images(lr[0]), list_images(hr_dir))
    return [g for _, g in pairs], [q for q, _ in pairs], f"{desc} + {lr[1]}/"


def _layout_paired(d: Path, lq_names: list[str], gt_names: list[str],
                   tried: list[str]) -> tuple[list[Path], list[Path], str] | None:
    tried.append(f"an LQ folder ({', '.join(lq_names)}) with a GT folder ({', '.join(gt_names)}) "
                 f"or with the GT images directly in {d.name}/")
    lq = _first_child(d, lq_names)
    if lq is None:
        return None
    gt = _first_child(d, gt_names)
    if gt is not None:
        gt_dir, desc = gt[0], f"{lq[1]}/ + {gt[1]}/"
    elif _flat_images(d):
        gt_dir, desc = d, f"{lq[1]}/ + GT images in the folder"
    else:
        return None
    pairs = pair_by_stem(list_images(lq[0]), list_images(gt_dir))
    return [g for _, g in pairs], [q for q, _ in pairs], desc


def _layout_denoise(d: Path, sigma: float | None, tried: list[str]) -> tuple[list[Path], list[Path] | None, str] | None:
    gt_names = ["original_png", "original", "GT", "clean", "target", "HR"]
    tried.append(f"clean images in a folder ({', '.join(gt_names)}) or directly in {d.name}/")
    gt = _first_child(d, gt_names)
    gt_dir, gt_desc = (gt[0], gt[1] + "/") if gt else (d, "flat folder") if _flat_images(d) else (None, "")
    if gt_dir is None:
        return None
    if sigma is not None:
        s = f"{sigma:g}"
        noisy_names = [f"noisy{s}", f"noisy_{s}", f"sigma{s}", f"noise{s}", f"sigma_{s}", s]
        tried.append(f"noisy images for sigma {s} in one of {', '.join(noisy_names)}")
        noisy = _first_child(d, noisy_names)
        if noisy is not None:
            pairs = pair_by_stem(list_images(noisy[0]), list_images(gt_dir))
            return [g for _, g in pairs], [q for q, _ in pairs], f"{gt_desc} + {noisy[1]}/"
    return list_images(gt_dir), None, f"{gt_desc} (Gaussian noise added)"


def _layout_lq_only(d: Path, tried: list[str]) -> tuple[None, list[Path], str] | None:
    names = ["LQ", "LR", "input"]
    tried.append(f"LQ images in a folder ({', '.join(names)}) or directly in {d.name}/")
    lq = _first_child(d, names)
    if lq is not None:
        return None, list_images(lq[0]), f"{lq[1]}/ (no GT)"
    if _flat_images(d):
        return None, list_images(d), "flat LQ folder (no GT)"
    return None


DERAIN_LQ = ["rainy", "rain", "input", "lq", "data", "degraded"]
DERAIN_GT = ["norain", "target", "gt", "groundtruth", "ground_truth", "clean", "label"]
DEHAZE_LQ = ["hazy", "input", "lq", "degraded"]
DEHAZE_GT = ["gt", "clear", "target", "groundtruth", "ground_truth", "clean"]


def find_benchmark(root: str | os.PathLike, name: str, scale: int | None = None, noise_sigma: float | None = None,
                   task: str | None = None) -> Benchmark:
    """Find benchmark ``name`` under ``root`` and recognise its layout (see the module docstring).

    ``scale`` is required for SR sets (it picks ``X{scale}`` LR folders) and defaults to 4 for
    real-world SR; ``noise_sigma`` (8-bit units) for denoising sets picks ``noisy{sigma}`` or the
    synthetic noise level; ``task`` is needed for names not in :data:`KNOWN_BENCHMARKS`.
    """
    root = Path(root)
    info = _info(name)
    task = (task or (info.task if info else "")).lower()
    if task not in TASKS:
        known = ", ".join(i.name for i in KNOWN_BENCHMARKS)
        raise ValueError(f"unknown benchmark {name!r}: pass task= (one of {', '.join(TASKS)}); known: {known}")
    if task == "sr" and scale is None:
        raise ValueError(f"{name} is an SR benchmark: pass scale= (2, 3 or 4)")
    if task == "denoise" and noise_sigma is None:
        raise ValueError(f"{name} is a denoising benchmark: pass noise_sigma= (e.g. 15, 25 or 50)")
    scale = int(scale or (4 if task == "realsr" else 1))
    aliases = {_norm(a) for a in ((info.name, *info.aliases) if info else (name,))} | {_norm(name)}
    if not root.is_dir():
        raise BenchmarkNotFoundError(f"benchmark root {root} does not exist")
    dirs = _search(root, aliases)
    if not dirs:
        raise BenchmarkNotFoundError(
            f"no folder for benchmark {name!r} under {root}: looked (to depth 3, ignoring case and -_ ) for a "
            f"folder named one of {sorted(aliases)}. {root} holds: {_contents(root)}")
    problems = []
    for d in dirs:
        if info and info.subset and (sub := _child(d, info.subset)) is not None:
            d = sub  # SOTS/outdoor/
        tried: list[str] = []
        if task == "sr":
            found = _layout_sr(d, scale, tried)
        elif task == "realsr":
            found = _layout_lq_only(d, tried) if (info is None or info.content == "lq") else None
            if found is None:
                found = _layout_sr(d, scale, tried)
                if found is not None and found[1] is None:
                    found = (found[0], None, found[2].replace("(LR by bicubic)", "(LQ by real-world degradation)"))
        elif task == "denoise":
            found = _layout_denoise(d, noise_sigma, tried)
        elif task == "derain":
            found = _layout_paired(d, DERAIN_LQ, DERAIN_GT, tried)
        else:
            found = _layout_paired(d, DEHAZE_LQ, DEHAZE_GT, tried)
        if found is not None:
            gt, lq, layout = found
            return Benchmark(info.name if info else name, task, d, layout, scale, gt, lq, noise_sigma, tried)
        problems.append(f"{d} (holds: {_contents(d)}); tried: " + "; ".join(tried))
    raise BenchmarkNotFoundError(f"found a folder for {name!r} but no known {task} layout in it: "
                                 + " | ".join(problems))

"""Training data and benchmark evaluation for the bundled tasks: SR, real-world SR, denoising, deraining, dehazing.

* :mod:`.io` reads/writes images as float RGB tensors in [0, 1];
* :mod:`.folders` holds image sources (HR-only folders, paired LQ/GT folders matched by name,
  in-memory images);
* :mod:`.kernels` and :mod:`.degradations` synthesise LQ images (bicubic, Gaussian noise, the
  Real-ESRGAN second-order real-world model), all randomness from a passed ``torch.Generator``;
* :mod:`.sampling` draws seeded, resumable patch batches (:class:`RestorationStream`, or
  :class:`PatchDataset` with :func:`make_loader` for DataLoader workers);
* :mod:`.benchmarks` finds Set5, Urban100, SOTS, Rain100L, CBSD68, ... on disk;
* :mod:`.evaluation` scores a model on them (PSNR/SSIM on Y with border crop, any pyiqa metric).

Example (training on HR photos for x2 SR, then evaluating on the built-in evaluation photos):
    >>> import torch.nn.functional as F
    >>> from agentloss.data import builtin_photos
    >>> stream = RestorationStream(TensorImages(builtin_photos(["chelsea"])), patch=32, batch=2,
    ...                            degradation=make_degradation("sr", 2))
    >>> lq, gt = next(stream)
    >>> tuple(lq.shape)
    (2, 3, 16, 16)
    >>> up = lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")
    >>> res = evaluate(None, builtin_eval_pairs("sr", 2, size=64), 2, restore_fn=up)
    >>> len(res.per_image)
    3
"""

from .benchmarks import (
    KNOWN_BENCHMARKS,
    Benchmark,
    BenchmarkInfo,
    BenchmarkNotFoundError,
    ImagePair,
    find_benchmark,
)
from .degradations import (
    BicubicDegradation,
    Degradation,
    DegradationOrder,
    GaussianNoise,
    RealWorldDegradation,
    RealWorldDegradationConfig,
    make_degradation,
)
from .evaluation import EvaluationResult, builtin_eval_pairs, evaluate
from .folders import HRFolder, ImageSource, PairedFolder, PairingError, TensorImages, align_pair, pair_by_stem, pair_key
from .io import list_images, read_image, write_image
from .sampling import PatchDataset, RestorationStream, ResumableSampler, make_loader

__all__ = [
    "KNOWN_BENCHMARKS", "Benchmark", "BenchmarkInfo", "BenchmarkNotFoundError", "BicubicDegradation", "Degradation",
    "DegradationOrder", "EvaluationResult", "GaussianNoise", "HRFolder", "ImagePair", "ImageSource", "PairedFolder",
    "PairingError", "PatchDataset", "RealWorldDegradation", "RealWorldDegradationConfig", "RestorationStream",
    "ResumableSampler", "TensorImages", "align_pair", "builtin_eval_pairs", "evaluate", "find_benchmark",
    "list_images", "make_degradation", "make_loader", "pair_by_stem", "pair_key", "read_image", "write_image",
]

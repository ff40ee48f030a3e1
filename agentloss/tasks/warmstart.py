"""The L1 warm start: train a seeded fresh network with L1 alone, once, and cache the weights by their settings.

Every method of a comparison starts from this state (the paper starts from PSNR-oriented
checkpoints). The task configs, the quality benchmark and the quick start all make it here; each
passes the settings that make its start a different one in ``key``, and a cache file whose key
differs is trained again and overwritten.

>>> import tempfile, torch
>>> from pathlib import Path
>>> batches = lambda: iter(lambda: (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)), None)
>>> spec = WarmStart(iters=2, lr=1e-3, seed=0, batches=batches, cache=Path(tempfile.mkdtemp()) / "s.pt", key="a")
>>> state, info = warm_start(lambda: torch.nn.Conv2d(3, 3, 3, padding=1), spec)
>>> info["cached"], warm_start(lambda: torch.nn.Conv2d(3, 3, 3, padding=1), spec)[1]["cached"]
(False, True)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class WarmStart:
    """How to make the start: ``iters`` Adam steps (``lr``, ``betas``) of L1 on ``batches()`` from the
    init drawn after ``torch.manual_seed(seed)``; cached at ``cache`` (None: not cached) under ``key``.
    ``iters=0`` keeps the seeded init (or the checkpoint the model factory loads)."""

    iters: int
    lr: float
    seed: int
    batches: Callable[[], Iterator[Batch]]
    betas: tuple[float, float] = (0.9, 0.999)
    cache: Path | None = None
    key: str = ""


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def warm_start(make_model: Callable[[], nn.Module], spec: WarmStart, device: torch.device | str = "cpu",
               progress: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The start's weights (on CPU) and ``{"cache": path, "cached": bool, "seconds": float}``."""
    path = Path(spec.cache).expanduser() if spec.cache is not None else None
    if path is not None and path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(saved, dict) and saved.get("key") == spec.key:
            return saved["state"], {"cache": str(path), "cached": True, "seconds": 0.0}
    t = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = make_model().to(device)
    if spec.iters:
        stream = spec.batches()  # built only when training: a cached start needs no data
        opt = torch.optim.Adam(model.parameters(), spec.lr, betas=spec.betas)
        bar = progress_bar(spec.iters, "L1 warm start", progress)
        for _ in range(spec.iters):
            lq, gt = next(stream)
            loss = F.l1_loss(model(lq.to(device)), gt.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(l1=f"{loss.item():.4f}", refresh=False)
        bar.close()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    seconds = time.perf_counter() - t
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": spec.key, "state": state}, tmp)
        tmp.replace(path)  # atomic: a concurrent run never reads half a file
    return state, {"cache": str(path) if path is not None else None, "cached": False, "seconds": seconds}

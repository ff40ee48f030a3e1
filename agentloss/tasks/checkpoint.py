"""The run checkpoint: written atomically, read without running code, moved aside rather than overwritten.

A checkpoint holds plain tensors and containers only, so it loads with ``torch.load(weights_only=True)``:
a pickle planted in a run directory is refused, not executed. Besides the training state it keeps
every random number generator a training step may draw from (torch's CPU and CUDA generators, which
SwinIR's DropPath uses, Python's ``random`` and NumPy's global one), so that a resumed run draws what
the uninterrupted one would. A checkpoint that must make way (another config, ``--fresh``) is renamed
``checkpoint.<time>.pt`` with its ``config.json``, never overwritten.

>>> import tempfile, torch
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
>>> save(path, {"model": {"w": torch.ones(1)}, "rng": rng_state()})
>>> a = torch.rand(1); set_rng_state(load(path)["rng"]); bool(torch.rand(1) == a)
True
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["CheckpointError", "archive", "load", "rng_state", "save", "set_rng_state"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not plain data, or not this run's."""


def rng_state() -> dict[str, Any]:
    """The state of every global generator, as tensors and plain numbers (loadable with ``weights_only``)."""
    legacy = np.random.get_state()
    # Only a CUDA context this process already made: asking would otherwise create one on every GPU.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "python": random.getstate(),
            "numpy": {"key": torch.from_numpy(legacy[1].astype(np.int64)), "pos": int(legacy[2]),
                      "has_gauss": int(legacy[3]), "gauss": float(legacy[4])}}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA generators only where this machine has as many GPUs)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def save(path: Path, obj: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)  # a crash mid-write never leaves a broken checkpoint


def load(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint at ``path``; ``CheckpointError`` when it is unreadable or would need code to load."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a zip, a pickle with globals...: all the same to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} cannot be resumed from: it is not a readable plain checkpoint ({first[:300]}); "
                              f"move it away, or run with --fresh to start again (it is then kept aside)") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a checkpoint of agentloss (no model state); move it away, or run "
                              f"with --fresh to start again (it is then kept aside)")
    return state


def archive(path: Path) -> Path:
    """Rename ``path`` (and the ``config.json`` beside it) to ``checkpoint.<time>.pt``; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, n = path.with_name(f"{path.stem}.{stamp}{path.suffix}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}"), n + 1
    os.replace(path, target)
    config = path.with_name("config.json")
    if config.is_file():
        os.replace(config, target.with_name(f"config.{target.stem.split('.', 1)[1]}.json"))
    return target

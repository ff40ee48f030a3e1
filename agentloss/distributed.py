"""torch.distributed for the scheduler: only rank 0 scores and decides, and every rank gets its result.

The other ranks wait for rank 0's stage-end result on the process group's key-value store, in short
repeated waits rather than in a collective: a decision (an LLM on a CPU, a slow endpoint) may take
longer than the group's timeout (NCCL's default is 10 minutes), and a collective would then crash
every rank. Results are plain JSON.

Example:
    >>> rank_and_world()  # outside a process group
    (0, 1)
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from typing import Any

import torch
from torch import nn

__all__ = ["rank_and_world", "share_from_rank0", "unwrap"]

log = logging.getLogger("agentloss")

STORE_POLL = timedelta(seconds=10)  # one wait on the store; waits repeat until rank 0 has decided


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module of a DDP model: DDP's forward syncs buffers collectively, and only rank 0 restores
    the probe."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (``(0, 1)`` without a process group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _default_store() -> Any:
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a private API: without it, fall back to the collective
        return None


def share_from_rank0(data: dict[str, Any], rank: int, index: int) -> dict[str, Any]:
    """Rank 0's ``data`` (JSON-able), on every rank; ``index`` numbers the exchanges (the same on every rank)."""
    store = _default_store()
    if store is None:  # no store to wait on: a collective, bounded by the group's timeout
        payload: list[Any] = [data]
        torch.distributed.broadcast_object_list(payload, src=0)
        return payload[0]
    key = f"agentloss/decision/{index}"
    if rank == 0:
        store.set(key, json.dumps(data))
        return data
    waits = 0
    while True:
        try:
            store.wait([key], STORE_POLL)
            break
        except (RuntimeError, torch.distributed.DistStoreError):  # timed out: rank 0 is still deciding
            waits += 1
            if waits % 30 == 0:
                log.info("rank %d: still waiting for rank 0's decision (%.0f s)", rank,
                         waits * STORE_POLL.total_seconds())
    return json.loads(store.get(key))

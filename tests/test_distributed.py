"""Under torch.distributed only rank 0 scores and decides; every rank gets the same weights."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import agentloss as al

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 3, 3, padding=1)
        ddp = nn.parallel.DistributedDataParallel(model)
        loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
        calls = []

        def score(x):
            calls.append(1)
            return float(x.mean())

        # Different seeds per rank: if any rank but 0 decided, the weights would differ.
        sched = al.StageScheduler(loss_fn, al.RandomAgent(seed=100 + rank), [al.CallableObjective(
            score, name="mean", higher_is_better=True)], ddp, torch.rand(2, 3, 8, 8), stage_length=3,
            run_dir=os.path.join(out_dir, f"run{rank}"))
        opt = torch.optim.SGD(ddp.parameters(), 0.01)
        g = torch.Generator().manual_seed(rank)
        for _ in range(6):
            x = torch.rand(2, 3, 8, 8, generator=g)
            loss = loss_fn(ddp(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"weights": loss_fn.weights, "history": [r.to_dict() for r in sched.history],
                       "calls": len(calls), "files": os.path.exists(os.path.join(out_dir, f"run{rank}", "stages.jsonl"))}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_rank0_decides_and_broadcasts(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["weights"] == r1["weights"] and r0["weights"] != {"l1": 1.0, "mse": 1.0}
    assert r0["history"] == r1["history"] and len(r0["history"]) == 3
    assert r0["calls"] == 3 * 2 and r1["calls"] == 0  # S0 + 2 stages, 2 probe images, rank 0 only
    assert r0["files"] and not r1["files"]


class _SlowAgent:
    """Decides slower than the process group's timeout, as an LLM on a CPU can."""

    def propose(self, context):
        import time

        from agentloss.types import Decision

        time.sleep(4.0)
        return Decision(weights={"l1": 2.0, "mse": 1.0})


def _slow_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from datetime import timedelta

    import agentloss as al
    from agentloss import distributed

    distributed.STORE_POLL = timedelta(seconds=0.5)  # the waits stay short, the decision long
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=2))
    try:
        torch.manual_seed(0)
        model = nn.Conv2d(3, 3, 3, padding=1)
        loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
        sched = al.StageScheduler(loss_fn, _SlowAgent(), [al.CallableObjective(
            lambda x: float(x.mean()), name="mean", higher_is_better=True)], model, torch.rand(1, 3, 8, 8),
            stage_length=2)
        for _ in range(2):
            x = torch.rand(1, 3, 8, 8)
            loss_fn(model(x), x).backward()
            sched.step()
        dist.barrier()
        with open(os.path.join(out_dir, f"slow{rank}.json"), "w") as f:
            json.dump({"weights": loss_fn.weights}, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_decision_longer_than_the_group_timeout_does_not_crash_the_other_ranks(tmp_path):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    mp.spawn(_slow_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"slow{rank}.json").read_text())["weights"] == {"l1": 2.0, "mse": 1.0}

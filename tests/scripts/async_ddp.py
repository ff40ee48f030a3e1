"""Run under torchrun (2 gloo processes): asynchronous decisions reach every rank at the same step."""

import json
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import agentloss as al


class SlowRandom(al.RandomAgent):
    def propose(self, context):
        time.sleep(0.3)
        return super().propose(context)


def main(out_dir: str, apply_at: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    try:
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Conv2d(3, 3, 3, padding=1))
        loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
        mean = al.CallableObjective(lambda x: float(x.mean()), name="mean", higher_is_better=True)
        # Different seeds per rank: if any rank but 0 decided, the weights would differ.
        sched = al.StageScheduler(loss_fn, SlowRandom(seed=100 + rank), [mean], model, torch.rand(2, 3, 8, 8),
                                  stage_length=20, total_stages=3, asynchronous=True, apply_at=apply_at,
                                  run_dir=os.path.join(out_dir, f"run{rank}"))
        opt = torch.optim.SGD(model.parameters(), 0.01)
        per_step = []
        for _ in range(60):
            x = torch.rand(2, 3, 8, 8)
            loss = loss_fn(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            per_step.append(dict(loss_fn.weights))
            time.sleep(0.02)  # training time: the answer arrives within the stage
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"per_step": per_step, "history": [r.to_dict() for r in sched.history]}, f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

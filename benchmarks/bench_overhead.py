"""Overhead of agentloss against plain PyTorch, measured side by side in one run.

1. ``AgentWeightedLoss`` forward+backward against a hand-written weighted sum of the very same term
   modules (same inputs, same discriminator update), interleaved so machine noise hits both alike.
2. The stage-end decision (probe restore + scoring + agent) against the stage's training time, for
   a tiny x2 SR network on scikit-image photo patches.

Run: ``python benchmarks/bench_overhead.py [--repeats 30] [--size 64] [--stage 50]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

import agentloss as al
from agentloss.data import PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple

WEIGHTS = {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}


def bench_loss(repeats: int, size: int, batch: int) -> list[tuple[str, float, float]]:
    torch.manual_seed(0)
    loss_fn = al.AgentWeightedLoss(WEIGHTS, terms={"perceptual": {"weights": None}})
    l1, perc, gan = (loss_fn.terms[n] for n in WEIGHTS)
    w = dict(WEIGHTS)
    target = torch.rand(batch, 3, size, size)
    base = torch.rand(batch, 3, size, size)

    def agentloss_step():
        pred = base.clone().requires_grad_(True)
        loss_fn(pred, target).backward()

    def handwritten_step():
        pred = base.clone().requires_grad_(True)
        gan.discriminator_step(pred.detach(), target)
        loss = w["l1"] * l1(pred, target) + w["perceptual"] * perc(pred, target) + w["gan"] * gan(pred, target)
        loss.backward()

    for fn in (agentloss_step, handwritten_step):  # warm-up
        fn()
    times: dict[str, list[float]] = {"AgentWeightedLoss": [], "hand-written sum": []}
    for _ in range(repeats):
        for name, fn in (("AgentWeightedLoss", agentloss_step), ("hand-written sum", handwritten_step)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    ref = statistics.median(times["hand-written sum"])
    return [(k, statistics.median(v) * 1e3, statistics.median(v) / ref) for k, v in times.items()]


class TinySR(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + self.body(x)


def bench_stage(stage: int, stages: int, niqe_params: str | None) -> list[dict]:
    torch.manual_seed(0)
    photos = builtin_photos()
    hr = [crop_to_multiple(p[:, :256, :256], 2) for p in builtin_photos(("motorcycle", "camera", "coins"))]
    lq = [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in hr]
    model = TinySR()
    loss_fn = al.AgentWeightedLoss(WEIGHTS, terms={"perceptual": {"weights": None}})
    nr = al.PyiqaObjective("niqe", device="cpu", pretrained_model_path=niqe_params) if niqe_params else \
        al.PyiqaObjective("piqe", device="cpu")
    sched = al.StageScheduler(loss_fn, al.RandomAgent(seed=0), [nr, al.PSNRObjective(device="cpu")], model, lq,
                              probe_references=hr, stage_length=stage, total_stages=stages)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    stream = PatchPairStream(photos, 2, 64, 8, seed=0)
    for _ in range(stage * stages):
        x, y = next(stream)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return [r.timings for r in sched.history[1:]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--stage", type=int, default=50, help="iterations per stage for the decision benchmark")
    ap.add_argument("--stages", type=int, default=3)
    ap.add_argument("--niqe-params", default=None, help="niqe_modelparameters.mat (default: PIQE, needs no file)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    print(f"## Loss forward+backward, L1+Perceptual(VGG19)+GAN, batch {args.batch}x3x{args.size}x{args.size}, "
          f"median of {args.repeats}, interleaved")
    print(f"{'method':<20} {'ms/iter':>9} {'ratio':>7}")
    for name, ms, ratio in bench_loss(args.repeats, args.size, args.batch):
        print(f"{name:<20} {ms:>9.2f} {ratio:>7.3f}")

    print(f"\n## Stage-end decision vs training, tiny x2 SR, {args.stage} iterations a stage, 3 probe images 128px LQ")
    rows = bench_stage(args.stage, args.stages, args.niqe_params)
    print(f"{'stage':<6} {'train s':>8} {'restore s':>10} {'score s':>8} {'agent s':>8} {'decision/train':>15}")
    for i, t in enumerate(rows, 1):
        decision = t.get("restore_s", 0) + t.get("score_s", 0) + t.get("agent_s", 0)
        print(f"{i:<6} {t['train_s']:>8.2f} {t['restore_s']:>10.3f} {t['score_s']:>8.3f} {t.get('agent_s', 0):>8.3f} "
              f"{decision / t['train_s']:>15.3%}")
    per_iter = statistics.mean(t["train_s"] for t in rows) / args.stage
    decision = statistics.mean(t["restore_s"] + t["score_s"] + t.get("agent_s", 0) for t in rows)
    print(f"\nper iteration {per_iter * 1e3:.1f} ms; one decision {decision:.2f} s = "
          f"{decision / (per_iter * 5000):.3%} of a paper-length stage (5000 iterations)")


if __name__ == "__main__":
    main()

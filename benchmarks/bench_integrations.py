"""The Lightning callback against the plain-loop scheduler, on the same tiny training, in one run.

1. Stage-end overhead: a tiny x2 SR network trains ``--stages`` stages of ``--stage`` optimizer steps,
   once in a plain PyTorch loop calling ``StageScheduler.step()`` and once in ``lightning.Trainer`` with
   ``AgentLossCallback``; same initial weights, batches (in the same order), agent and objectives. The time
   spent in the scheduler (plain: inside ``sched.step()``; Lightning: inside the callback's hooks, which
   include its per-batch step counting and its logging) is set against the training time, per stage
   end; the ratio callback/plain compares them. The two runs must also end with the same records.
2. S0 under bf16: S0 scored by the callback in a ``precision="bf16-mixed"`` fit against a ``32-true``
   fit (relative difference; the probe is restored in float32, autocast off), and what S0 would be if it
   were scored under the training step's bf16 autocast.

Run: ``python benchmarks/bench_integrations.py [--stage 10] [--stages 4] [--repeats 2]`` (under 2 minutes
on 2 CPU cores). Not part of the tests.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

import agentloss as al
from agentloss.data import PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.integrations.lightning import AgentLossCallback
from agentloss.probe import as_image_list, restore

WEIGHTS = {"l1": 1.0, "fft": 0.1}


class TinySR(pl.LightningModule):
    def __init__(self, width: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1), nn.PixelShuffle(2))
        self.loss_fn = al.AgentWeightedLoss(WEIGHTS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + self.body(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        lq, hr = batch
        return self.loss_fn(self(lq), hr)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def batches(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    stream = PatchPairStream(builtin_photos(), scale=2, patch=32, batch=4 * n, seed=0)
    return next(stream)


def probe_set() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    (moto,) = builtin_photos(["motorcycle"])
    hr = [crop_to_multiple(moto[:, y : y + 128, x : x + 128], 2) for y, x in ((0, 0), (200, 300))]
    return [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in hr], hr


def objectives() -> list[al.Objective]:
    return [al.PyiqaObjective("piqe", device="cpu"), al.PSNRObjective(device="cpu")]


def plain_run(stage: int, stages: int) -> dict[str, Any]:
    model = TinySR()
    lq, hr = batches(stage * stages)
    probe_lq, probe_hr = probe_set()
    sched = al.StageScheduler(model.loss_fn, al.RandomAgent(seed=0), objectives(), model, probe_lq,
                              probe_references=probe_hr, stage_length=stage, total_stages=stages)
    opt = model.configure_optimizers()
    spent = 0.0
    t0 = time.perf_counter()
    t = time.perf_counter()
    sched.start()
    spent += time.perf_counter() - t
    for i in range(stage * stages):
        loss = model.loss_fn(model(lq[4 * i : 4 * i + 4]), hr[4 * i : 4 * i + 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        t = time.perf_counter()
        sched.step()
        spent += time.perf_counter() - t
    total = time.perf_counter() - t0
    return {"spent": spent, "train": total - spent, "history": sched.history}


class TimedCallback(AgentLossCallback):
    """Adds up the time spent in the hooks that do the callback's work, and apart the batches without a stage
    end (the callback's own step counting) and its logging."""

    spent = 0.0
    counting: list[float]
    logging_s = 0.0

    def _log_record(self, record: al.StageRecord) -> None:
        t = time.perf_counter()
        super()._log_record(record)
        self.logging_s += time.perf_counter() - t

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        t = time.perf_counter()
        super().on_train_start(trainer, pl_module)
        self.spent += time.perf_counter() - t

    def on_train_batch_end(self, *args: Any) -> None:
        n = len(self.history)
        t = time.perf_counter()
        super().on_train_batch_end(*args)
        dt = time.perf_counter() - t
        self.spent += dt
        if len(self.history) == n:
            self.counting = [*getattr(self, "counting", []), dt]


def lightning_run(stage: int, stages: int, precision: str = "32-true") -> dict[str, Any]:
    model = TinySR()
    lq, hr = batches(stage * stages)
    probe_lq, probe_hr = probe_set()
    cb = TimedCallback(al.RandomAgent(seed=0), objectives(), probe_lq, probe_references=probe_hr,
                       stage_length=stage, total_stages=stages)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(lq, hr), batch_size=4, shuffle=False)
    trainer = pl.Trainer(max_steps=stage * stages, accelerator="cpu", precision=precision, callbacks=[cb],
                         logger=pl.loggers.CSVLogger("/tmp/agentloss-bench-integrations"), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    t0 = time.perf_counter()
    trainer.fit(model, loader)
    total = time.perf_counter() - t0
    return {"spent": cb.spent, "train": total - cb.spent, "history": cb.history,
            "counting": statistics.median(cb.counting), "logging": cb.logging_s / len(cb.history)}


def same_records(a: list[al.StageRecord], b: list[al.StageRecord]) -> bool:
    return [(r.stage, r.iteration, r.next_weights, r.scores) for r in a] == \
           [(r.stage, r.iteration, r.next_weights, r.scores) for r in b]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", type=int, default=10, help="optimizer steps per stage")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the median is shown")
    args = ap.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    t_all = time.perf_counter()

    lightning_run(2, 1)  # warm-up: imports, pyiqa metric construction
    runs: dict[str, list[dict[str, Any]]] = {"plain loop": [], "Lightning callback": []}
    for _ in range(args.repeats):
        runs["plain loop"].append(plain_run(args.stage, args.stages))
        runs["Lightning callback"].append(lightning_run(args.stage, args.stages))
    ends = args.stages + 1  # S0 and each stage end
    print(f"\nStage-end work, {args.stages} stages x {args.stage} optimizer steps (+ S0), median of {args.repeats}:")
    print(f"{'':<20} {'per stage end':>14} {'training':>10} {'overhead':>9}")
    per_end = {}
    for name, rs in runs.items():
        per_end[name] = statistics.median(r["spent"] / ends for r in rs)
        train = statistics.median(r["train"] for r in rs)
        overhead = statistics.median(r["spent"] / r["train"] for r in rs)
        print(f"{name:<20} {per_end[name] * 1e3:>11.1f} ms {train:>8.2f} s {overhead:>8.1%}")
    print(f"ratio callback/plain per stage end: {per_end['Lightning callback'] / per_end['plain loop']:.2f}")
    lit = runs["Lightning callback"]
    print(f"the callback's own work: {statistics.median(r['counting'] for r in lit) * 1e6:.0f} us per batch without a "
          f"stage end, {statistics.median(r['logging'] for r in lit) * 1e3:.2f} ms per stage end to log (CSVLogger)")
    equal = same_records(runs["plain loop"][0]["history"], runs["Lightning callback"][0]["history"])
    print(f"plain loop and Lightning runs end with identical records (weights, scores): {'yes' if equal else 'NO'}")

    s0 = {p: lightning_run(2, 1, p)["history"][0].scores for p in ("32-true", "bf16-mixed")}
    model = TinySR()
    probe_lq, probe_hr = probe_set()

    def under_autocast(m: nn.Module, x: torch.Tensor) -> torch.Tensor:  # as if scored inside the training step
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return m(x)

    naive = restore(model, as_image_list(probe_lq), under_autocast)
    naive_psnr = al.PSNRObjective(device="cpu").score(naive, as_image_list(probe_hr)).mean
    print("\nS0 under bf16-mixed vs 32-true (relative difference):")
    for name in s0["32-true"]:
        a, b = s0["32-true"][name], s0["bf16-mixed"][name]
        print(f"  {name:<8} fp32 {a:.6f}  bf16-mixed {b:.6f}  rel. diff {abs(a - b) / abs(a):.1e}")
    ref = s0["32-true"]["psnr_y"]
    print(f"  psnr_y scored under bf16 autocast instead: {naive_psnr:.6f} (rel. diff {abs(naive_psnr - ref) / ref:.1e})")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()

"""x2 super-resolution with the Hugging Face ``Trainer``, the loss weights set by agentloss at every stage end.

Everything comes from pip: the photos ship in scikit-image, the loss terms (L1, FFT, GAN) need no downloaded
weights, and PIQE and PSNR need no parameter files. The agent is ``GuidedAgent(backend="none")`` (its numeric
proposer, no language model); pass ``--agent random`` or ``--agent fixed`` to compare.

    python examples/hf_trainer_sr.py                  # about 2 minutes on 2 CPU cores
    python examples/hf_trainer_sr.py --stages 8 --stage 40

The lines agentloss adds to a Trainer script are marked ``# agentloss``. Writes ``runs/hf_trainer_sr/``: the
Trainer's checkpoints (each with the scheduler's state), ``agentloss/stages.jsonl`` and ``agentloss/curves.png``.
Re-running with ``--resume`` continues from the last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainingArguments

import agentloss as al
from agentloss.data import EVAL_PHOTOS, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.datasets import PatchDataset, TensorImages, make_degradation
from agentloss.integrations.hf_trainer import AgentLossTrainer, AgentLossTrainerCallback

SCALE = 2


class SmallSR(nn.Module):
    """A few 3x3 convolutions and a pixel shuffle, added to the bicubic upscale."""

    def __init__(self, width: int = 32, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers += [nn.Conv2d(width, 3 * SCALE**2, 3, padding=1), nn.PixelShuffle(SCALE)]
        self.body = nn.Sequential(*layers)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lq, scale_factor=SCALE, mode="bicubic", align_corners=False) + self.body(lq)


def make_agent(kind: str, seed: int) -> al.Agent:
    if kind == "guided":
        return al.GuidedAgent(backend="none", needs="Lower PIQE while losing at most 0.2 dB PSNR.")
    return al.RandomAgent(seed=seed) if kind == "random" else al.FixedAgent()


def probe_set() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Crops of photos never trained on (the training set is astronaut, coffee, chelsea, rocket)."""
    moto, camera, coins = builtin_photos(EVAL_PHOTOS)
    hr = [crop_to_multiple(p, SCALE) for p in (moto[:, :192, :192], moto[:, 240:432, 240:432],
                                               camera[:, 100:292, 100:292], coins[:, 40:232, 100:292])]
    return [bicubic_downsample(h.unsqueeze(0), SCALE)[0] for h in hr], hr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", choices=["guided", "random", "fixed"], default="guided")
    ap.add_argument("--stage", type=int, default=25, help="optimizer steps per stage")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/hf_trainer_sr")
    ap.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    # (lq, gt) pairs: 48-pixel crops of the built-in photos, the LQ made by bicubic x1/2 (a pure function of the index)
    train = PatchDataset(TensorImages(builtin_photos()), patch=48, seed=args.seed,
                         degradation=make_degradation("sr", SCALE), length=args.stage * args.stages * args.batch)
    loss_fn = al.AgentWeightedLoss(  # agentloss
        {"l1": 1.0, "fft": 0.1, "gan": 0.01}, terms={"gan": {"width": 32, "depth": 2}},
        constraints=al.WeightConstraints(max_weight=10.0, max_step=2.0))
    probe_lq, probe_hr = probe_set()
    callback = AgentLossTrainerCallback(  # agentloss
        agent=make_agent(args.agent, args.seed), objectives=[al.PyiqaObjective("piqe"), al.PSNRObjective()],
        probe=probe_lq, probe_references=probe_hr, stage_length=args.stage)
    training_args = TrainingArguments(
        args.out, max_steps=args.stage * args.stages, per_device_train_batch_size=args.batch, learning_rate=2e-4,
        lr_scheduler_type="constant", save_strategy="steps", save_steps=args.stage, logging_steps=args.stage,
        use_cpu=True, report_to="none", dataloader_num_workers=0, seed=args.seed, disable_tqdm=True,
        remove_unused_columns=False)  # agentloss: compute_loss reads the (lq, gt) pairs itself
    trainer = AgentLossTrainer(model=SmallSR(), args=training_args, train_dataset=train,
                               loss_fn=loss_fn, callbacks=[callback])  # agentloss: loss_fn=, callbacks=
    print(f"training {args.stages} stages of {args.stage} steps with the {args.agent} agent ...", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints every log line; the table below sums up
        trainer.train(resume_from_checkpoint=True if args.resume else None)

    history = callback.scheduler.history
    names = list(loss_fn.names)
    print(f"\n{'stage':>5} {'step':>5} {'PIQE↓':>7} {'PSNR_Y↑':>8}  weights {':'.join(names)} (next stage)  fallback")
    for r in history:
        piqe, psnr = r.scores.get("piqe"), r.scores.get("psnr_y")
        w = ":".join(f"{(r.next_weights or r.weights)[n]:.3g}" for n in names)
        print(f"{r.stage:>5} {r.iteration:>5} {piqe if piqe is None else f'{piqe:7.2f}':>7} "
              f"{psnr if psnr is None else f'{psnr:8.2f}':>8}  {w:<32} {r.fallback or ''}")
    run_dir = Path(args.out) / callback.name
    print(f"\ncurves in {al.plot_run(run_dir)}; total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()

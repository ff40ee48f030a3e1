"""Backbone registry: CPU forward+backward time of every ``*_tiny`` config and sizes of the published ones.

All tiny networks are timed side by side in one run (round-robin, so machine noise hits them alike), one
image of ``--size`` x ``--size`` at each entry's default scale (x4 SR, x1 PromptIR), median of ``--repeats``.
Then the parameter counts of the published configurations, and what SwinIR's shifted-window mask
recomputation costs per forward when the input size differs from ``img_size`` (spandrel recomputes them).

Run: ``python benchmarks/bench_backbones.py [--repeats 5] [--size 64] [--threads 1]``
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from agentloss.backbones import BACKBONES, create_backbone, list_backbones


def _params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def bench_tiny(repeats: int, size: int) -> list[tuple[str, int, int, float]]:
    torch.manual_seed(0)
    names = [n for n in list_backbones() if BACKBONES[n].tiny]
    nets = {n: create_backbone(n) for n in names}
    x = torch.rand(1, 3, size, size)

    def step(net: torch.nn.Module) -> None:
        net.zero_grad(set_to_none=True)
        net(x).square().mean().backward()

    for net in nets.values():  # warm-up (allocator, first-call dispatch)
        step(net)
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        for n, net in nets.items():
            t = time.perf_counter()
            step(net)
            times[n].append(time.perf_counter() - t)
    return [(n, BACKBONES[n].default_scale, _params(nets[n]), statistics.median(times[n]) * 1e3) for n in names]


def published_sizes() -> tuple[list[tuple[str, int, int]], torch.nn.Module]:
    rows, swinir = [], None
    for n in list_backbones(include_tiny=False):
        net = create_backbone(n)
        rows.append((n, BACKBONES[n].default_scale, _params(net)))
        if n == "swinir":
            swinir = net
        else:
            del net
    assert swinir is not None
    return rows, swinir


def mask_cost(swinir: torch.nn.Module, size: int, repeats: int) -> tuple[int, float]:
    # The blocks that own a mask are the shifted ones; each recomputes it when the size is not img_size.
    blocks = [b for layer in swinir.layers for b in layer.residual_group.blocks if b.attn_mask is not None]
    times = []
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        for b in blocks:
            b.calculate_mask((size, size))
        times.append(time.perf_counter() - t)
    return len(blocks), statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=64, help="input height and width (LR side for SR)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), input 1x3x{args.size}x{args.size}, "
          f"median of {args.repeats}\n")

    print("| tiny config | scale | params | fwd+bwd ms |\n|---|---:|---:|---:|")
    for n, s, p, ms in bench_tiny(args.repeats, args.size):
        print(f"| {n} | x{s} | {p:,} | {ms:.1f} |")

    rows, swinir = published_sizes()
    print("\n| published config | scale | params |\n|---|---:|---:|")
    for n, s, p in rows:
        print(f"| {n} | x{s} | {p:,} |")

    img_size = swinir.hyperparameters["img_size"]
    msize = args.size if args.size != img_size else 48  # at img_size the stored buffers are used instead
    count, ms = mask_cost(swinir, msize, args.repeats)
    print(f"\nSwinIR (published, img_size {img_size}): recomputing its {count} shifted-window masks for a "
          f"{msize}x{msize} input takes {ms:.2f} ms per forward (CPU, before the copy to the input's device).")


if __name__ == "__main__":
    main()

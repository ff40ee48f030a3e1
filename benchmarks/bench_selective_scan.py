"""Selective scan of MambaIRv2-light's ASE: chunked PyTorch scan against the per-step reference, side by side.

Shapes are those the published config (embed_dim 48, mlp_ratio 1, d_state 8) feeds the scan for a 64x64
input: one whole-image scan per layer, u/delta (batch, 48, 4096), A (48, 8), B/C (batch, 1, 8, 4096) with
the ASE prompt already in C, D and delta_bias (48,), softplus on. Runs alternate between implementations so
machine noise hits both alike; medians are reported. On CUDA the mamba_ssm kernel is timed too when
installed.

Run: ``python benchmarks/bench_selective_scan.py [--size 64] [--batch 1] [--repeats 5] [--threads 1]
[--ref-backward]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from agentloss.backbones.mambairv2 import mamba_ssm_available, selective_scan, selective_scan_ref


def make_inputs(size: int, batch: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors with the ASE scan's shapes for a size x size input (window-aligned: L = padded H*W)."""
    g = torch.Generator().manual_seed(seed)
    side = -(-size // 16) * 16  # the model mirror-pads to a multiple of its 16-pixel window
    d, n, length = 48, 8, side * side
    t = {
        "u": torch.randn(batch, d, length, generator=g),
        "delta": torch.randn(batch, d, length, generator=g) * 0.5,
        "A": -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1),  # the S4D-real initialisation
        "B": torch.randn(batch, 1, n, length, generator=g),
        "C": torch.randn(batch, 1, n, length, generator=g),
        "D": torch.ones(d),
        "delta_bias": torch.randn(d, generator=g) * 0.5 - 3.0,
    }
    return {k: v.to(device) for k, v in t.items()}


def call(fn: Callable, t: dict[str, torch.Tensor], **kw) -> torch.Tensor:
    return fn(t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], delta_bias=t["delta_bias"],
              delta_softplus=True, **kw)


def timed(step: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def forward_backward(fn: Callable, t: dict[str, torch.Tensor], **kw) -> None:
    leaves = {k: v.detach().requires_grad_() for k, v in t.items()}
    call(fn, leaves, **kw).square().mean().backward()


def bench_device(device: str, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """Rows (device, implementation, fwd ms, speed-up over the reference, fwd+bwd ms, max |diff|)."""
    t = make_inputs(args.size, args.batch, device)
    impls: dict[str, Callable] = {
        "selective_scan (chunked torch)": lambda *a, **k: selective_scan(*a, backend="torch", **k),
        "selective_scan_ref (per step)": selective_scan_ref,
    }
    if device == "cuda" and mamba_ssm_available():
        impls["mamba_ssm selective_scan_fn"] = lambda *a, **k: selective_scan(*a, backend="mamba_ssm", **k)
    with torch.no_grad():
        ref_out = call(selective_scan_ref, t)
        for fn in impls.values():  # warm-up
            call(fn, t)
        fwd: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(args.repeats):  # interleaved, so load changes hit every implementation alike
            for name, fn in impls.items():
                fwd[name].append(timed(lambda fn=fn: call(fn, t), device))
    base = statistics.median(fwd["selective_scan_ref (per step)"])
    rows = []
    for name, fn in impls.items():
        is_ref = "ref" in name
        if is_ref and not args.ref_backward:
            bwd = "-"
        else:
            runs = 1 if is_ref else args.repeats
            bwd = f"{statistics.median(timed(lambda fn=fn: forward_backward(fn, t), device) for _ in range(runs)):.1f}"
        with torch.no_grad():
            diff = (call(fn, t) - ref_out).abs().max().item()
        med = statistics.median(fwd[name])
        rows.append((device, name, f"{med:.1f}", f"{base / med:.1f}x", bwd, f"{diff:.2e}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="input image side (L = padded side^2)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads (1 default: on a shared machine more threads mostly add scheduler noise)")
    ap.add_argument("--ref-backward", action="store_true",
                    help="also time the reference's autograd backward (one run; tens of seconds on CPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows: list[tuple[str, ...]] = []
    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        rows += bench_device(device, args)

    length = (-(-args.size // 16) * 16) ** 2
    print(f"ASE selective scan, {args.size}x{args.size} input: u (batch={args.batch}, 48, L={length}), A (48, 8), "
          f"B/C (batch, 1, 8, L); threads={args.threads}; median of {args.repeats}")
    head = ("device", "implementation", "fwd ms", "speed-up", "fwd+bwd ms", "max |diff| vs ref")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(c.rjust(w) if i >= 2 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if not mamba_ssm_available():
        print("(mamba_ssm not installed: no CUDA-kernel row)")


if __name__ == "__main__":
    main()

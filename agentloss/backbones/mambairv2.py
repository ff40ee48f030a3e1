"""MambaIRv2-light, re-implemented from the paper so that the official checkpoints load strictly.

Guo et al., "MambaIRv2: Attentive State Space Restoration", CVPR 2025 (arXiv:2411.15269). Paper sections
cited below by their titles: *Preliminaries* (the discretised selective state-space model of Mamba),
*Attentive State-space Equation* (ASE: prompts added to the output matrix C), *Semantic Guided Neighboring*
(SGN: tokens re-ordered by a routed semantic label before the single scan, and put back afterwards), and the
overall architecture figure (shallow conv, groups of attentive layers with a window-attention half and a
state-space half, pixel-shuffle reconstruction).

Only parameter names and shapes follow the official ``MambaIRv2Light`` (so its ``{'params': sd}`` checkpoints
load with ``strict=True``); the code is written here. The selective scan runs in pure PyTorch with a chunked
two-level scan and a hand-written backward (no per-time-step autograd graph), and uses
``mamba_ssm.ops.selective_scan_interface.selective_scan_fn`` on CUDA when that package is installed.

>>> net = MambaIRv2Light(upscale=2, embed_dim=12, depths=(2,), num_heads=(2,), window_size=4,
...                      inner_rank=4, num_tokens=4, d_state=2)
>>> net(torch.rand(1, 3, 6, 10)).shape
torch.Size([1, 3, 12, 20])
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

try:  # optional CUDA kernels; the PyTorch path below is complete without them
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _mamba_selective_scan_fn
except Exception:  # noqa: BLE001 - any import failure (missing package, CUDA mismatch) means "not available"
    _mamba_selective_scan_fn = None

__all__ = [
    "PUBLISHED_CONFIG",
    "MambaIRv2Light",
    "load_mambairv2light",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_ref",
]

#: The published lightweight-SR configuration (options/*/mambairv2/*_MambaIRv2_lightSR_x{2,3,4}.yml).
PUBLISHED_CONFIG: dict[str, Any] = {
    "in_chans": 3,
    "embed_dim": 48,
    "d_state": 8,
    "depths": (5, 5, 5, 5),
    "num_heads": (4, 4, 4, 4),
    "window_size": 16,
    "inner_rank": 32,
    "num_tokens": 64,
    "convffn_kernel_size": 5,
    "mlp_ratio": 1.0,
    "img_range": 1.0,
}


def mamba_ssm_available() -> bool:
    """Whether ``mamba_ssm``'s CUDA selective-scan kernel could be imported.

    >>> isinstance(mamba_ssm_available(), bool)
    True
    """
    return _mamba_selective_scan_fn is not None


# ============================================================================ selective scan
#
# Paper, *Preliminaries*: with zero-order-hold discretisation, per channel d and state n,
#     h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,      y_t = C_t . h_t + D * u_t,
# where delta = softplus(delta_raw + delta_bias) and B, C depend on the token ("selective"). The ASE of the
# paper only changes what C is (C + prompt), so the scan itself is Mamba's.


def _compute_dtype(x: Tensor) -> torch.dtype:
    # Half inputs are scanned in float32 (as mamba_ssm does); float64 stays float64 (useful for gradcheck).
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_scan_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, length); got {tuple(u.shape)}, {tuple(delta.shape)}")
    if A.is_complex():
        raise NotImplementedError("complex A is not supported (MambaIRv2 uses a real A)")
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ValueError(f"A must be (dim, d_state) = ({u.shape[1]}, N); got {tuple(A.shape)}")
    for name, m in (("B", B), ("C", C)):
        if m.dim() == 4 and u.shape[1] % m.shape[1]:
            raise ValueError(f"{name} has {m.shape[1]} groups, which do not divide dim={u.shape[1]}")
        if m.dim() not in (2, 3, 4):
            raise ValueError(f"{name} must be (dim, N), (batch, N, L) or (batch, G, N, L); got {tuple(m.shape)}")


def _per_channel_ref(m: Tensor, dim: int) -> Tensor:
    """B or C as (batch, dim|1, N, L) for a variable matrix, or (dim, N) for a constant one."""
    if m.dim() == 2:
        return m
    if m.dim() == 3:
        return m.unsqueeze(1)
    return m.repeat_interleave(dim // m.shape[1], dim=1)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Reference selective scan: one Python step per time step (slow; for checking :func:`selective_scan`).

    Same semantics as ``mamba_ssm``'s reference: ``u``, ``delta``, ``z`` are (batch, dim, L); ``A`` is
    (dim, N); ``B`` and ``C`` are (dim, N) (constant), (batch, N, L) or (batch, groups, N, L) (each group
    shared by ``dim // groups`` consecutive channels); ``D`` and ``delta_bias`` are (dim,). The output is
    ``y + D*u``, gated by ``silu(z)`` when ``z`` is given, in ``u``'s dtype; with ``return_last_state`` also the
    final state (batch, dim, N).

    >>> g = torch.Generator().manual_seed(0)
    >>> u, dt = torch.randn(1, 2, 5, generator=g), torch.rand(1, 2, 5, generator=g)
    >>> A, Bm, Cm = -torch.rand(2, 3, generator=g), torch.randn(1, 3, 5, generator=g), torch.randn(1, 3, 5, generator=g)
    >>> selective_scan_ref(u, dt, A, Bm, Cm).shape
    torch.Size([1, 2, 5])
    """
    _check_scan_args(u, delta, A, B, C)
    dtype_in, cdt = u.dtype, _compute_dtype(u)
    u, delta, A = u.to(cdt), delta.to(cdt), A.to(cdt)
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    Bc, Cc = _per_channel_ref(B.to(cdt), dim), _per_channel_ref(C.to(cdt), dim)
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (batch, dim, L, N): exp(delta*A), the discretised A
    state = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        b_t = Bc if Bc.dim() == 2 else Bc[..., t]
        c_t = Cc if Cc.dim() == 2 else Cc[..., t]
        state = decay[:, :, t] * state + (delta[:, :, t] * u[:, :, t]).unsqueeze(-1) * b_t
        ys.append((state * c_t).sum(-1))
    out = torch.stack(ys, dim=-1)
    if D is not None:
        out = out + u * D.to(cdt)[:, None]
    if z is not None:
        out = out * F.silu(z.to(cdt))
    out = out.to(dtype_in)
    return (out, state) if return_last_state else out


def _scan_loop(a: Tensor, x: Tensor, reverse: bool) -> Tensor:
    """``h[t] = a[t] * h[t-1] + x[t]`` along dim 0, one step at a time (used only on short axes)."""
    h = torch.empty_like(x)
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    prev = None
    for t in steps:
        if prev is None:
            h[t] = x[t]
        else:
            torch.addcmul(x[t], a[t], h[prev], out=h[t])
        prev = t
    return h


def _chunked_linear_scan(log_a: Tensor, x: Tensor, reverse: bool = False, chunk: int | None = None) -> Tensor:
    """First-order linear recurrence along dim 0 with a two-level (chunked) parallel scan.

    ``h[t] = exp(log_a[t]) * h[t-1] + x[t]`` with ``h[-1] = 0`` (``reverse``: ``h[t+1]`` instead of
    ``h[t-1]``), for log-decays ``log_a <= 0``. The axis is cut into ``L/T`` chunks of ``T ~ sqrt(L)`` steps:

    1. inside every chunk at once, the local scan (zero initial state) and the running sum of log-decays
       ``S`` are built over the ``T`` positions, each step one fused op on all ``L/T`` chunks;
    2. the chunk-end states obey a recurrence of length ``L/T`` with log-decays ``S[end]``: solved by this
       same function (recursively);
    3. every position adds ``exp(S[t]) * (state entering its chunk)``.

    So the Python-level work is about ``2*sqrt(L)`` vectorised ops instead of ``L`` and the arithmetic stays
    ``O(L)``. It is stable: decays are only ever multiplied as numbers in [0, 1] or summed as logs <= 0,
    never as ``exp`` of a positive sum; cumulative decays below the smallest normal float are set to exactly
    0, because subnormal numbers make CPU arithmetic many times slower.

    >>> log_a, x = torch.full((10, 1), -math.log(2.0)), torch.ones(10, 1)
    >>> [round(v, 6) for v in _chunked_linear_scan(log_a, x, chunk=3)[:4, 0].tolist()]
    [1.0, 1.5, 1.75, 1.875]
    """
    # Dense time-major memory: each per-step op then touches contiguous blocks (permuted inputs would make
    # every slice a gather).
    log_a, x = log_a.contiguous(), x.contiguous()
    length = x.shape[0]
    step = chunk if chunk is not None else max(8, math.isqrt(max(length - 1, 0)) + 1)
    if length <= step:
        return _scan_loop(torch.exp(log_a), x, reverse)
    n_chunks = -(-length // step)
    pad = n_chunks * step - length
    if pad:  # appended steps have x = 0: they feed nothing into real steps in either direction
        log_a = torch.cat([log_a, log_a.new_zeros((pad,) + log_a.shape[1:])])
        x = torch.cat([x, x.new_zeros((pad,) + x.shape[1:])])
    shape = (n_chunks, step) + x.shape[1:]
    log_a, x = log_a.view(shape), x.view(shape)
    a = torch.exp(log_a)
    h = torch.empty_like(x)
    cum = torch.empty_like(log_a)
    steps = range(step - 1, -1, -1) if reverse else range(step)
    prev = None
    for t in steps:
        if prev is None:
            h[:, t] = x[:, t]
            cum[:, t] = log_a[:, t]
        else:
            torch.addcmul(x[:, t], a[:, t], h[:, prev], out=h[:, t])
            torch.add(cum[:, prev], log_a[:, t], out=cum[:, t])
        prev = t
    ends = _chunked_linear_scan(cum[:, prev], h[:, prev], reverse, chunk)  # state at each chunk's last step
    entering = torch.zeros_like(ends)
    if reverse:
        entering[:-1] = ends[1:]
    else:
        entering[1:] = ends[:-1]
    F.threshold_(cum, math.log(torch.finfo(cum.dtype).tiny), -math.inf)  # exp -> exactly 0, not subnormal
    h.addcmul_(cum.exp_(), entering.unsqueeze(1))
    return h.view((n_chunks * step,) + h.shape[2:])[:length]


def _group_view(m: Tensor, dim: int) -> tuple[Tensor, int]:
    """B or C in the time-major grouped layout (L|1, batch|1, G, 1|dim, N), and G.

    The state ``h`` is (L, batch, dim, N); viewed as (L, batch, G, dim/G, N) it broadcasts against this.
    """
    if m.dim() == 2:  # constant (dim, N): one group whose channel axis is the full dim
        return m.reshape(1, 1, 1, dim, m.shape[1]), 1
    if m.dim() == 3:  # (batch, N, L)
        return m.permute(2, 0, 1)[:, :, None, None, :], 1
    return m.permute(3, 0, 1, 2).unsqueeze(3), m.shape[1]  # (batch, G, N, L)


def _contract_n(state: Tensor, m: Tensor, constant: bool) -> Tensor:
    """sum_n state[..., h, n] * m[..., n]: (L, b, G, H, N) x grouped B/C -> (L, b, G, H)."""
    if constant:  # m is (1, 1, 1, dim, N): a plain broadcast product
        return (state * m).sum(-1)
    return (state @ m.transpose(-1, -2)).squeeze(-1)  # batched mat-vec, no (L, b, dim, N) temporary


def _contract_channels(per_channel: Tensor, state: Tensor) -> Tensor:
    """sum over the channels of a group: (L, b, G, H, 1) x (L, b, G, H, N) -> (L, b, G, N)."""
    return (per_channel.transpose(-1, -2) @ state).squeeze(-2)


def _ungroup_grad(g: Tensor, m: Tensor) -> Tensor:
    """Reduce a grouped gradient (L, batch, G, N) -- or (dim, N) for a constant matrix -- to ``m``'s layout."""
    if m.dim() == 2:
        return g
    if m.dim() == 3:
        return g[:, :, 0].permute(1, 2, 0)
    return g.permute(1, 2, 3, 0)


class _SelectiveScanFn(torch.autograd.Function):
    """Chunked selective scan with an analytic backward that re-runs the scan (memory ~ inputs only)."""

    @staticmethod
    def _states(
        u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, delta_bias: Tensor | None, softplus: bool,
        chunk: int | None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, int, Tensor]:
        """Discretised inputs in time-major layout and the states ``h`` (L, batch, dim, N)."""
        cdt = _compute_dtype(u)
        dt_raw = delta.to(cdt)
        if delta_bias is not None:
            dt_raw = dt_raw + delta_bias.to(cdt)[:, None]
        dt = F.softplus(dt_raw) if softplus else dt_raw
        batch, dim, length = u.shape
        # Time-major (L, batch, dim) copies (small): products built from them are born in scan order.
        dt_t = dt.permute(2, 0, 1).contiguous()
        u_t = u.to(cdt).permute(2, 0, 1).contiguous()
        A = A.to(cdt)
        log_decay = dt_t.unsqueeze(-1) * A  # delta*A <= 0 because A < 0: the log of the discretised A
        b_view, gb = _group_view(B.to(cdt), dim)
        du = dt_t * u_t
        drive = (du.reshape(length, batch, gb, dim // gb, 1) * b_view).reshape(length, batch, dim, -1)
        h = _chunked_linear_scan(log_decay, drive, chunk=chunk)
        return dt_raw, dt_t, u_t, log_decay, du, b_view, gb, h

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                z: Tensor | None, delta_bias: Tensor | None, softplus: bool,
                chunk: int | None) -> tuple[Tensor, Tensor]:
        dtype_in = u.dtype
        _, _, u_t, _, _, _, _, h = _SelectiveScanFn._states(u, delta, A, B, C, delta_bias, softplus, chunk)
        y = _SelectiveScanFn._output(h, C, u_t, D).permute(1, 2, 0)
        out = y * F.silu(z.to(y.dtype)) if z is not None else y
        last = h[-1].clone()
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias)
        ctx.softplus, ctx.chunk = softplus, chunk
        ctx.mark_non_differentiable(last)
        return out.to(dtype_in), last

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_out: Tensor, _g_last: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias = ctx.saved_tensors
        dt_raw, dt_t, u_t, log_decay, du, b_view, gb, h = _SelectiveScanFn._states(
            u, delta, A, B, C, delta_bias, ctx.softplus, ctx.chunk)
        cdt = h.dtype
        length, batch, dim, n = h.shape
        g_out = g_out.to(cdt)
        g_z = None
        if z is not None:  # out = y0 * silu(z)
            zc = z.to(cdt)
            sig = torch.sigmoid(zc)
            y0 = _SelectiveScanFn._output(h, C, u_t, D).permute(1, 2, 0)
            g_z = (g_out * y0 * sig * (1 + zc * (1 - sig))).to(z.dtype)
            g_out = g_out * zc * sig
        g_y = g_out.permute(2, 0, 1)  # (L, batch, dim)
        g_D = (g_y * u_t).sum((0, 1)).to(D.dtype) if D is not None else None
        g_u = g_y * D.to(cdt) if D is not None else torch.zeros_like(u_t)

        # y_t = C_t . h_t  =>  dL/dh_t = C_t g_t + a_{t+1} dL/dh_{t+1}: the same scan run backwards.
        c_view, gc = _group_view(C.to(cdt), dim)
        g_y_c = g_y.reshape(length, batch, gc, dim // gc, 1)
        source = (g_y_c * c_view).reshape(length, batch, dim, n)
        log_decay_next = torch.cat([log_decay[1:], log_decay.new_zeros((1,) + log_decay.shape[1:])])
        g_h = _chunked_linear_scan(log_decay_next, source, reverse=True, chunk=ctx.chunk)
        del source, log_decay_next
        h_c = h.view(length, batch, gc, dim // gc, n)
        g_C = (g_y_c * h_c).sum((0, 1, 2)) if C.dim() == 2 else _contract_channels(g_y_c, h_c)
        g_C = _ungroup_grad(g_C, C).to(C.dtype)

        # h_t = a_t h_{t-1} + du_t B_t with a_t = exp(dt_t A)
        g_h_b = g_h.view(length, batch, gb, dim // gb, n)
        g_du = _contract_n(g_h_b, b_view, B.dim() == 2).reshape(length, batch, dim)
        du_b = du.reshape(length, batch, gb, dim // gb, 1)
        g_B = (g_h_b * du_b).sum((0, 1, 2)) if B.dim() == 2 else _contract_channels(du_b, g_h_b)
        g_B = _ungroup_grad(g_B, B).to(B.dtype)
        g_log_decay = torch.zeros_like(g_h)  # dL/d(dt*A) = dL/da * a, with dL/da_t = g_h_t * h_{t-1}
        torch.mul(g_h[1:], h[:-1], out=g_log_decay[1:])
        g_log_decay.mul_(log_decay.exp_())
        A_c = A.to(cdt)
        g_A = torch.einsum("lbdn,lbd->dn", g_log_decay, dt_t).to(A.dtype)
        g_dt = torch.einsum("lbdn,dn->lbd", g_log_decay, A_c) + g_du * u_t
        g_u = g_u + g_du * dt_t
        g_dt = g_dt.permute(1, 2, 0)
        if ctx.softplus:
            g_dt = g_dt * torch.sigmoid(dt_raw)
        g_bias = g_dt.sum((0, 2)).to(delta_bias.dtype) if delta_bias is not None else None
        return (g_u.permute(1, 2, 0).to(u.dtype), g_dt.to(delta.dtype), g_A, g_B, g_C, g_D, g_z, g_bias,
                None, None)

    @staticmethod
    def _output(h: Tensor, C: Tensor, u_t: Tensor, D: Tensor | None) -> Tensor:
        length, batch, dim, _ = h.shape
        c_view, gc = _group_view(C.to(h.dtype), dim)
        y = _contract_n(h.view(length, batch, gc, dim // gc, -1), c_view, C.dim() == 2).reshape(length, batch, dim)
        return y + u_t * D.to(h.dtype) if D is not None else y


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Tensor | tuple[Tensor, Tensor]:
    """Fast selective scan; same arguments, shapes and result as :func:`selective_scan_ref`.

    ``backend``: ``"auto"`` uses mamba_ssm's CUDA kernel for CUDA tensors when it is installed, else the
    PyTorch path; ``"torch"`` forces the PyTorch path (chunked scan of :func:`_chunked_linear_scan`, with an
    analytic backward so autograd keeps no per-step graph); ``"mamba_ssm"`` requires the kernel.
    ``chunk_size`` overrides the chunk length (default about ``sqrt(L)``). The last state is not
    differentiable (as in mamba_ssm).

    >>> g = torch.Generator().manual_seed(0)
    >>> u, dt = torch.randn(2, 4, 50, generator=g), torch.randn(2, 4, 50, generator=g)
    >>> A = -torch.rand(4, 3, generator=g)
    >>> Bm, Cm = torch.randn(2, 1, 3, 50, generator=g), torch.randn(2, 1, 3, 50, generator=g)  # (batch, groups, N, L)
    >>> fast = selective_scan(u, dt, A, Bm, Cm, torch.ones(4), delta_softplus=True)
    >>> ref = selective_scan_ref(u, dt, A, Bm, Cm, torch.ones(4), delta_softplus=True)
    >>> bool((fast - ref).abs().max() < 1e-5)
    True
    """
    if backend not in ("auto", "torch", "mamba_ssm"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'mamba_ssm', not {backend!r}")
    use_kernel = backend == "mamba_ssm" or (backend == "auto" and u.is_cuda and _mamba_selective_scan_fn is not None)
    if use_kernel:
        if _mamba_selective_scan_fn is None:
            raise RuntimeError("backend='mamba_ssm' but mamba_ssm is not importable")
        # The kernel wants unit stride along L; transposed projections arrive without it.
        u, delta, B, C = u.contiguous(), delta.contiguous(), B.contiguous(), C.contiguous()
        z = z.contiguous() if z is not None else None
        return _mamba_selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    _check_scan_args(u, delta, A, B, C)
    out, last = _SelectiveScanFn.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), chunk_size)
    return (out, last) if return_last_state else out


# ============================================================================ building blocks


def _to_windows(x: Tensor, ws: int) -> Tensor:
    """(b, h, w, c) -> (b * windows, ws*ws, c), windows in row-major order per image."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _from_windows(x: Tensor, ws: int, b: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`_to_windows`: (b * windows, ws*ws, c) -> (b, h, w, c)."""
    x = x.view(b, h // ws, w // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


def _relative_position_index(ws: int) -> Tensor:
    """(ws*ws, ws*ws) index into a (2ws-1)^2 bias table: row offset major, column offset minor (Swin style)."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + ws - 1
    dx = xs[:, None] - xs[None, :] + ws - 1
    return dy * (2 * ws - 1) + dx


def _shift_mask(h: int, w: int, ws: int, device: torch.device) -> Tensor:
    """Additive mask (windows, ws*ws, ws*ws) for shifted windows: -100 between tokens that were not adjacent.

    After rolling by -ws/2 the last ws rows/columns mix three regions (the body, the strip that was
    inside, and the wrapped-around strip); tokens of different regions must not attend to each other.
    """
    shift = ws // 2

    def region(n: int) -> Tensor:
        idx = torch.arange(n, device=device)
        return (idx >= n - ws).long() + (idx >= n - shift).long()

    label = (region(h)[:, None] * 3 + region(w)[None, :]).float()
    label = _to_windows(label[None, :, :, None], ws).squeeze(-1)  # (windows, ws*ws)
    differ = label[:, :, None] != label[:, None, :]
    return torch.zeros(differ.shape, device=device).masked_fill_(differ, -100.0)


class _WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative-position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, qkv: Tensor, rpi: Tensor, batch: int, mask: Tensor | None) -> Tensor:
        """``qkv``: (batch*windows, n, 3*dim) -> (batch*windows, n, dim)."""
        bw, n, _ = qkv.shape
        heads, windows = self.num_heads, bw // batch
        q, k, v = qkv.view(bw, n, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (b*windows, heads, n, hd)
        bias = self.relative_position_bias_table[rpi.reshape(-1)].view(n, n, heads).permute(2, 0, 1).contiguous()
        if torch.is_grad_enabled() and bias.requires_grad:
            # The bias table is learned: fused SDPA kernels give no gradient to a mask, and SDPA's fallback
            # adds masking checks, so the plain softmax(q k^T / sqrt(d) + bias) is the quicker path here.
            logits = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            if mask is None:
                logits = logits + bias
            else:
                logits = (logits.view(batch, windows, heads, n, n) + (bias + mask.unsqueeze(1))).view(bw, heads, n, n)
            return self.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, self.dim))
        # SDPA's scale is head_dim**-0.5 as in the paper's attention. Its fused CPU/GPU kernels want 4-D
        # inputs and a mask that broadcasts without copies: with a per-window mask, windows are folded into
        # the head axis so one (1, windows*heads, n, n) mask serves every image of the batch.
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0).to(q.dtype))
        else:
            fold = (batch, windows * heads, n, -1)
            full = (bias.unsqueeze(0) + mask.unsqueeze(1)).view(1, windows * heads, n, n).to(q.dtype)
            out = F.scaled_dot_product_attention(q.reshape(fold), k.reshape(fold), v.reshape(fold), attn_mask=full)
            out = out.view(bw, heads, n, -1)
        return self.proj(out.transpose(1, 2).reshape(bw, n, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"


class _SpatialGate(nn.Module):
    """Half the channels, layer-normed and depth-wise convolved, gate the other half."""

    def __init__(self, dim: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        value, gate = x.chunk(2, dim=-1)
        b, _, c = gate.shape
        gate = self.conv(self.norm(gate).transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        return value * gate


class _GatedMLP(nn.Module):
    """Linear -> GELU -> spatial gate (halves the width) -> linear; the light model's FFN."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.sg = _SpatialGate(hidden // 2, kernel_size)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        return self.fc2(self.sg(F.gelu(self.fc1(x)), hw))


class _SelectiveScanCore(nn.Module):
    """Mamba's input-dependent (delta, B, C) projections and the scan, with ASE prompts added to C.

    One scan direction only (the paper drops the multi-direction scans of MambaIR); the stacked leading
    dimension of size 1 on the projection weights is kept for checkpoint compatibility.
    """

    def __init__(self, d_inner: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_inner, self.d_state = d_inner, d_state
        self.dt_rank = math.ceil(d_inner / 16)
        bound = d_inner ** -0.5  # nn.Linear's default range for the (delta, B, C) projection
        self.x_proj_weight = nn.Parameter(torch.empty(1, self.dt_rank + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = self.dt_rank ** -0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(1, d_inner, self.dt_rank).uniform_(-std, std))
        # Bias so that softplus(bias) is log-uniform in [dt_min, dt_max] (Mamba's initialisation).
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter((dt + torch.log(-torch.expm1(-dt))).unsqueeze(0))
        # S4D-real: A = -(1..N) per channel, stored as log so A stays negative.
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.Ds = nn.Parameter(torch.ones(d_inner))

    def forward(self, x: Tensor, prompt: Tensor) -> Tensor:
        """``x``: (b, L, d_inner) scan-ordered tokens; ``prompt``: (b, L, d_state). Returns (b, L, d_inner)."""
        proj = F.linear(x, self.x_proj_weight[0])  # (b, L, rank + 2N)
        dt_low, b_sel, c_sel = proj.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt_low, self.dt_projs_weight[0])  # (b, L, d_inner)
        # ASE: C + P, the prompt that lets each token query the whole image (paper, *Attentive State-space
        # Equation*). Grouped form with one group, as the official model calls the kernel.
        c_sel = (c_sel + prompt).float().transpose(1, 2).unsqueeze(1)
        b_sel = b_sel.float().transpose(1, 2).unsqueeze(1)
        y = selective_scan(
            x.float().transpose(1, 2), dt.float().transpose(1, 2), -torch.exp(self.A_logs.float()),
            b_sel, c_sel, self.Ds.float(), delta_bias=self.dt_projs_bias[0].float(), delta_softplus=True)
        return y.transpose(1, 2)


class _AttentiveStateSpace(nn.Module):
    """ASSM: routing to semantic tokens, SGN re-ordering, the ASE scan, and the inverse re-ordering."""

    def __init__(self, dim: int, d_state: int, num_tokens: int, inner_rank: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.d_state, self.num_tokens = d_state, num_tokens
        self.deterministic_eval = False
        self.selectiveScan = _SelectiveScanCore(hidden, d_state)
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.in_proj = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.CPE = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden))
        # Prompt pool factorised as (num_tokens x inner_rank) @ (inner_rank x d_state); the right factor is
        # owned by the enclosing layer (embeddingA) and passed in.
        self.embeddingB = nn.Embedding(num_tokens, inner_rank)
        nn.init.uniform_(self.embeddingB.weight, -1 / num_tokens, 1 / num_tokens)
        self.route = nn.Sequential(nn.Linear(dim, dim // 3), nn.GELU(), nn.Linear(dim // 3, num_tokens),
                                   nn.LogSoftmax(dim=-1))

    def _assign(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """Token per pixel: (one-hot used for the prompts, its index used for ordering).

        A straight-through Gumbel-softmax sample (tau 1): the value is the one-hot of ``argmax(logits + g)``,
        g ~ Gumbel(0, 1), the gradient that of ``softmax(logits + g)``, so the router learns through the
        prompts. With ``deterministic_eval`` in eval mode, the plain arg-max.
        """
        if self.deterministic_eval and not self.training:
            index = logits.argmax(-1)
            return F.one_hot(index, self.num_tokens).to(logits.dtype), index
        # -log(-log(U)) from uniform noise: same law as torch's exponential-based sampler, a fraction of the cost.
        tiny, eps = torch.finfo(logits.dtype).tiny, torch.finfo(logits.dtype).eps
        u = torch.rand_like(logits).clamp_(min=tiny, max=1.0 - eps)
        soft = torch.softmax(logits - torch.log(-torch.log(u)), dim=-1)
        index = soft.detach().argmax(-1)
        hard = F.one_hot(index, self.num_tokens).to(soft.dtype)
        return hard - soft.detach() + soft, index

    def forward(self, x: Tensor, hw: tuple[int, int], prompt_basis: Tensor) -> Tensor:
        b, n, c = x.shape
        onehot, label = self._assign(self.route(x))  # (b, n, tokens), (b, n)
        prompt = onehot @ (self.embeddingB.weight @ prompt_basis)  # (b, n, d_state)
        # SGN: pixels sharing a token become neighbours in the 1-D sequence (stable sort: deterministic ties).
        order = label.sort(dim=-1, stable=True).indices
        inverse = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=x.device).expand(b, n))

        feat = self.in_proj(x.transpose(1, 2).reshape(b, c, *hw))
        feat = feat * torch.sigmoid(self.CPE(feat))  # gated positional conv before flattening
        feat = feat.flatten(2).transpose(1, 2)  # (b, n, hidden)
        hidden = feat.shape[-1]
        seq = feat.gather(1, order.unsqueeze(-1).expand(-1, -1, hidden))
        # As in the released model, the prompts stay in pixel order while the sequence is re-ordered: the
        # checkpoints were trained that way, so it is kept.
        y = self.out_proj(self.out_norm(self.selectiveScan(seq, prompt)))
        return y.gather(1, inverse.unsqueeze(-1).expand(-1, -1, y.shape[-1]))


class _AttentiveLayer(nn.Module):
    """One layer: (shifted) window attention + gated MLP, then ASSM + gated MLP, each with a scaled skip."""

    def __init__(self, dim: int, d_state: int, num_heads: int, window_size: int, shift: int, inner_rank: int,
                 num_tokens: int, kernel_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size, self.shift = window_size, shift
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.scale1 = nn.Parameter(torch.full((dim,), 1e-4))
        self.scale2 = nn.Parameter(torch.full((dim,), 1e-4))
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.win_mhsa = _WindowAttention(dim, window_size, num_heads)
        self.assm = _AttentiveStateSpace(dim, d_state, num_tokens, inner_rank, mlp_ratio)
        hidden = int(dim * mlp_ratio)
        self.convffn1 = _GatedMLP(dim, hidden, kernel_size)
        self.convffn2 = _GatedMLP(dim, hidden, kernel_size)
        self.embeddingA = nn.Embedding(inner_rank, d_state)
        nn.init.uniform_(self.embeddingA.weight, -1 / inner_rank, 1 / inner_rank)

    def forward(self, x: Tensor, hw: tuple[int, int], rpi: Tensor, mask: Tensor) -> Tensor:
        h, w = hw
        b, n, c = x.shape
        ws, s = self.window_size, self.shift
        shortcut = x
        qkv = self.wqkv(self.norm1(x)).view(b, h, w, 3 * c)
        if s:
            qkv = torch.roll(qkv, shifts=(-s, -s), dims=(1, 2))
        att = self.win_mhsa(_to_windows(qkv, ws), rpi, b, mask if s else None)
        att = _from_windows(att, ws, b, h, w)
        if s:
            att = torch.roll(att, shifts=(s, s), dims=(1, 2))
        x_win = att.reshape(b, n, c) + shortcut
        x_win = x_win + self.convffn1(self.norm2(x_win), hw)
        x = shortcut * self.scale1 + x_win

        shortcut = x
        x_ssm = self.assm(self.norm3(x), hw, self.embeddingA.weight) + x
        x = x_ssm + self.convffn2(self.norm4(x_ssm), hw)
        return shortcut * self.scale2 + x


class _LayerStack(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)


class _Group(nn.Module):
    """A residual group: ``depth`` attentive layers (shift on every other one) and a 3x3 conv, plus skip."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, **layer_kw: Any) -> None:
        super().__init__()
        self.residual_group = _LayerStack([
            _AttentiveLayer(dim, num_heads=num_heads, window_size=window_size,
                            shift=0 if i % 2 == 0 else window_size // 2, **layer_kw)
            for i in range(depth)])
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor, hw: tuple[int, int], rpi: Tensor, mask: Tensor) -> Tensor:
        y = x
        for layer in self.residual_group.layers:
            y = layer(y, hw, rpi, mask)
        b, _, c = y.shape
        y = self.conv(y.transpose(1, 2).reshape(b, c, *hw)).flatten(2).transpose(1, 2)
        return y + x


class _TokenNorm(nn.Module):
    """Image (b, c, h, w) -> tokens (b, h*w, c), layer-normed (the official "patch_embed" with patch size 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2).transpose(1, 2))


def _mirror_pad(x: Tensor, h: int, w: int) -> Tensor:
    """Extend (b, c, H, W) to (b, c, h, w) by mirroring the image (edge pixel repeated), as the official model.

    Repeats the mirror when the padding exceeds the image (the official one-fold mirror would come up short).
    """
    while x.shape[-2] < h:
        x = torch.cat([x, x.flip(-2)], dim=-2)
    while x.shape[-1] < w:
        x = torch.cat([x, x.flip(-1)], dim=-1)
    return x[..., :h, :w]


# ============================================================================ the network


class MambaIRv2Light(nn.Module):
    """MambaIRv2-light super-resolution network; parameter names/shapes match the official ``MambaIRv2Light``.

    Defaults are the published lightweight-SR config (:data:`PUBLISHED_CONFIG`); smaller sizes work for
    tests. Input is an RGB image in [0, 1] of any size: it is mirror-padded up to a multiple of
    ``window_size`` and the output cropped back to ``upscale`` times the input size.

    ``deterministic_eval``: the official model draws Gumbel noise for its token routing even in eval mode,
    so its outputs vary from call to call; set this to route by the arg-max in eval mode instead (training
    always uses the straight-through Gumbel-softmax, as in the paper).

    >>> net = MambaIRv2Light(upscale=3, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4,
    ...                      inner_rank=4, num_tokens=4, d_state=2, deterministic_eval=True).eval()
    >>> with torch.no_grad():
    ...     y = net(torch.rand(2, 3, 5, 4))
    >>> y.shape
    torch.Size([2, 3, 15, 12])
    """

    def __init__(
        self,
        upscale: int = 2,
        in_chans: int = 3,
        embed_dim: int = 48,
        d_state: int = 8,
        depths: Sequence[int] = (5, 5, 5, 5),
        num_heads: Sequence[int] = (4, 4, 4, 4),
        window_size: int = 16,
        inner_rank: int = 32,
        num_tokens: int = 64,
        convffn_kernel_size: int = 5,
        mlp_ratio: float = 1.0,
        img_range: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        deterministic_eval: bool = False,
    ) -> None:
        super().__init__()
        if upsampler != "pixelshuffledirect":
            raise ValueError("only the published 'pixelshuffledirect' upsampler is implemented")
        if len(depths) != len(num_heads):
            raise ValueError("depths and num_heads must have the same length")
        if upscale < 1:
            raise ValueError(f"upscale must be a positive integer, got {upscale}")
        self.upscale, self.img_range, self.window_size = int(upscale), float(img_range), int(window_size)
        mean = (0.4488, 0.4371, 0.4040) if in_chans == 3 else (0.0,) * in_chans  # DIV2K RGB mean
        self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1), persistent=False)
        # Stored in the official checkpoints, hence persistent.
        self.register_buffer("relative_position_index_SA", _relative_position_index(window_size))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, padding=1)
        self.patch_embed = _TokenNorm(embed_dim)
        layer_kw = {"d_state": d_state, "inner_rank": inner_rank, "num_tokens": num_tokens,
                    "kernel_size": convffn_kernel_size, "mlp_ratio": mlp_ratio}
        self.layers = nn.ModuleList(
            _Group(embed_dim, depth, heads, window_size, **layer_kw) for depth, heads in zip(depths, num_heads))
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, padding=1)
        # One conv to scale^2 * channels and a pixel shuffle (the "direct" lightweight reconstruction).
        self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale ** 2 * in_chans, 3, padding=1),
                                      nn.PixelShuffle(upscale))
        self._init_weights()
        self.deterministic_eval = deterministic_eval

    @property
    def deterministic_eval(self) -> bool:
        """Route by arg-max instead of Gumbel sampling when in eval mode (see the class docstring)."""
        return self._deterministic_eval

    @deterministic_eval.setter
    def deterministic_eval(self, value: bool) -> None:
        self._deterministic_eval = bool(value)
        for m in self.modules():
            if isinstance(m, _AttentiveStateSpace):
                m.deterministic_eval = bool(value)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        """Deep features of a window-aligned (b, embed_dim, h, w) map, same shape out."""
        b, c, h, w = x.shape
        hw = (h, w)
        mask = _shift_mask(h, w, self.window_size, x.device).to(x.dtype)
        rpi = self.relative_position_index_SA
        t = self.patch_embed(x)
        for group in self.layers:
            t = group(t, hw, rpi, mask)
        return self.norm(t).transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        """(b, in_chans, H, W) in [0, 1] -> (b, in_chans, upscale*H, upscale*W)."""
        h0, w0 = x.shape[-2:]
        ws = self.window_size
        x = _mirror_pad(x, -(-h0 // ws) * ws, -(-w0 // ws) * ws)
        mean = self.mean.to(x.dtype)
        x = (x - mean) * self.img_range
        feat = self.conv_first(x)
        feat = self.conv_after_body(self.forward_features(feat)) + feat
        out = self.upsample(feat) / self.img_range + mean
        return out[..., : h0 * self.upscale, : w0 * self.upscale]


# ============================================================================ checkpoint loading


def _extract_state_dict(obj: Any, key: str | None) -> dict[str, Tensor]:
    if not isinstance(obj, Mapping):
        raise TypeError(f"checkpoint must be a mapping, got {type(obj).__name__}")
    if key is not None:
        if key not in obj:
            raise KeyError(f"checkpoint has no {key!r} entry (top-level keys: {sorted(obj)[:10]})")
        obj = obj[key]
    else:
        for k in ("params", "params_ema", "state_dict"):
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_mambairv2light(
    path: str | os.PathLike[str] | Mapping[str, Any],
    upscale: int,
    strict: bool = True,
    *,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
    **model_kwargs: Any,
) -> MambaIRv2Light:
    """Build :class:`MambaIRv2Light` (published config unless overridden) and load an official checkpoint.

    ``path`` is a file or an already loaded object: ``{'params': sd}``, ``{'params_ema': sd}`` or a plain
    state dict (``key`` picks an entry explicitly; otherwise ``params`` is preferred, then ``params_ema``).
    With ``strict``, any missing, unexpected or mis-shaped entry raises a ``ValueError`` that lists them.

    >>> src = MambaIRv2Light(upscale=2, embed_dim=12, depths=(1,), num_heads=(2,), window_size=4,
    ...                      inner_rank=4, num_tokens=4, d_state=2)
    >>> net = load_mambairv2light({"params": src.state_dict()}, upscale=2, embed_dim=12, depths=(1,),
    ...                           num_heads=(2,), window_size=4, inner_rank=4, num_tokens=4, d_state=2)
    >>> bool(torch.equal(net.conv_first.weight, src.conv_first.weight))
    True
    """
    if isinstance(path, Mapping):
        ckpt: Any = path
    else:
        ckpt = torch.load(Path(path), map_location=map_location, weights_only=True)
    sd = _extract_state_dict(ckpt, key)
    kwargs = {k: v for k, v in PUBLISHED_CONFIG.items()}
    kwargs.update(model_kwargs)
    model = MambaIRv2Light(upscale=upscale, **kwargs)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if strict and (missing or unexpected or mismatched):
        hint = ""
        w = sd.get("upsample.0.weight")
        if w is not None and w.shape[0] != own["upsample.0.weight"].shape[0]:
            ck_scale = math.isqrt(max(w.shape[0] // kwargs.get("in_chans", 3), 1))
            hint = f" (upsample.0 suggests the checkpoint is x{ck_scale}, but upscale={upscale} was asked)"

        def show(items: list[str]) -> str:
            return ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")

        parts = [f"{len(missing)} missing: {show(missing)}" if missing else "",
                 f"{len(unexpected)} unexpected: {show(unexpected)}" if unexpected else "",
                 f"{len(mismatched)} with other shapes: {show(mismatched)}" if mismatched else ""]
        raise ValueError("checkpoint does not match MambaIRv2Light" + hint + "; "
                         + "; ".join(p for p in parts if p))
    if not strict:
        sd = {k: v for k, v in sd.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(sd, strict=strict)
    expected_rpi = _relative_position_index(model.window_size).to(model.relative_position_index_SA.device)
    if not torch.equal(model.relative_position_index_SA, expected_rpi):
        raise ValueError("checkpoint's relative_position_index_SA differs from the index for "
                         f"window_size={model.window_size}")
    return model

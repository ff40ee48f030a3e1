"""Computing a loss term in float32 whatever precision the training loop uses.

Statistics such as SSIM's local variances or MSCN's normalisation are differences of squares: in
bfloat16 (autocast, 8 bits of mantissa) they are quantised to 2^-8 and the value and gradient come
out wrong by tens of percent. Such terms run inside ``float32_terms``: autocast is switched off for
them and their inputs are cast to float32; the result is float32 (autocast training accepts it).

Example:
    >>> import torch
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     a, b = float32(torch.rand(2, 2, dtype=torch.bfloat16), torch.rand(2, 2))
    ...     with float32_terms(a):
    ...         print((a @ b).dtype)
    torch.float32
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["float32", "float32_terms"]


def float32(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors as float32 (floating-point ones; others unchanged), differentiably."""
    return tuple(t.float() if t.is_floating_point() and t.dtype != torch.float32 else t for t in tensors)


@contextlib.contextmanager
def float32_terms(like: torch.Tensor) -> Iterator[None]:
    """Autocast off for the device of ``like`` while a term is computed."""
    with torch.autocast(device_type=like.device.type, enabled=False):
        yield

"""PromptIR: all-in-one blind image restoration with learned prompts, re-implemented from the paper.

Potlapalli, Zamir, Khan, Khan, "PromptIR: Prompting for All-in-One Blind Image Restoration", NeurIPS 2023
(arXiv:2306.13090). The network is a four-level Restormer U-Net (Zamir et al., CVPR 2022: MDTA attention,
Sec. 3.1; GDFN feed-forward, Sec. 3.2) whose decoder carries a *prompt block* at each of its three levels
(PromptIR Sec. 3.1): a Prompt Generation Module (PGM) mixes a small set of learned prompt components with
weights predicted from the features, and a Prompt Interaction Module (PIM) fuses that prompt into the
features with a transformer block.

Written from the paper; parameter *names and shapes* follow the official release so that its Lightning
``model.ckpt`` loads with ``strict=True`` (checked against ``tests/data/promptir_official_keys.json``).
That forces three release details the paper does not spell out:

* the PGM weights come from a ``nn.Linear`` on the pooled features (the paper writes a 1x1 conv, which is
  the same map), and the PIM ends in a 1x1 conv;
* the decoder upsamples the PIM output, which is reduced to the level-3 width ``4*dim`` even at the
  latent level, so the level-4 -> 3 upsampler takes ``4*dim`` channels, not ``8*dim``;
* six 1x1 convs (``chnl_reduce1/2/3``, ``reduce_noise_channel_1/2/3``) exist in the release but take
  no part in the forward pass; they are registered (``keep_unused=True``) only so strict loading works.

What scales with the arguments: every feature width derives from ``dim`` (levels ``dim, 2dim, 4dim, 8dim``),
depths from ``num_blocks``/``num_refinement_blocks``, heads from ``heads`` (each PIM block uses ``heads[2]``,
as in the release). The prompt shapes do *not* follow ``dim``: ``prompt_dims=(64, 128, 320)``,
``prompt_len=5``, ``prompt_sizes=(64, 32, 16)`` and the unused conv width ``unused_dim=256`` are fixed
numbers of the release, kept as defaults; shrink them explicitly for tiny test models
(see :data:`TINY_PROMPTIR_CONFIG`).

Input sizes: the U-Net halves the resolution three times, so :meth:`PromptIR.forward` pads H and W up to a
multiple of 8 (reflect; replicate when the image is too small to reflect) and crops the output back. On
sizes that are already multiples of 8 this is exactly the plain network; the official code does not pad.

Example (a tiny configuration; the published one is ``PromptIR()``):

>>> import torch
>>> from agentloss.backbones.promptir import PromptIR, TINY_PROMPTIR_CONFIG
>>> net = PromptIR(**TINY_PROMPTIR_CONFIG)
>>> x = torch.rand(1, 3, 37, 45)
>>> y = net(x)
>>> y.shape
torch.Size([1, 3, 37, 45])
>>> sum(p.numel() for p in PromptIR().parameters())
35592263
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PUBLISHED_PROMPTIR_CONFIG", "TINY_PROMPTIR_CONFIG", "PromptIR", "PromptIRCheckpointError",
    "extract_state_dict", "load_promptir",
]

# The published configuration (the official all-in-one release): PromptIR(decoder=True) with its defaults.
PUBLISHED_PROMPTIR_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "dim": 48, "num_blocks": (4, 6, 6, 8), "num_refinement_blocks": 4,
    "heads": (1, 2, 4, 8), "ffn_expansion_factor": 2.66, "bias": False, "layernorm_type": "WithBias",
    "prompt_dims": (64, 128, 320), "prompt_len": 5, "prompt_sizes": (64, 32, 16), "unused_dim": 256,
}

# A ~0.28M-parameter model for tests and examples: same topology, every width, depth and prompt shrunk.
TINY_PROMPTIR_CONFIG: dict[str, Any] = {
    "dim": 8, "num_blocks": (1, 1, 1, 1), "num_refinement_blocks": 1, "heads": (1, 2, 2, 4),
    "prompt_dims": (8, 8, 16), "prompt_len": 2, "prompt_sizes": (8, 4, 2), "unused_dim": 8,
}

# Three 2x downsamplings in the encoder: spatial sizes must divide by 2**3.
_SIZE_MULTIPLE = 8


class _ScaleOnlyNorm(nn.Module):
    """Restormer's "BiasFree" norm: divide by the channel std without centring, then scale."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        return x * torch.rsqrt(var + self.eps) * self.weight


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (per pixel), as Restormer normalises its tokens.

    ``WithBias`` is the ordinary LayerNorm (centred, affine); ``BiasFree`` is the scale-only variant.
    The norm sits in ``.body`` because the release stores it as ``norm*.body.weight``/``.bias``.
    """

    def __init__(self, channels: int, layernorm_type: str = "WithBias") -> None:
        super().__init__()
        if layernorm_type == "WithBias":
            self.body: nn.Module = nn.LayerNorm(channels, eps=1e-5)
        elif layernorm_type == "BiasFree":
            self.body = _ScaleOnlyNorm(channels)
        else:
            raise ValueError(f"layernorm_type must be 'WithBias' or 'BiasFree', got {layernorm_type!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class MDTA(nn.Module):
    """Multi-Dconv head Transposed Attention (Restormer Sec. 3.1).

    Attention runs across channels rather than pixels, so its cost is linear in H*W: queries and keys
    are L2-normalised along the spatial axis and their (C/heads x C/heads) product, scaled by a learned
    per-head temperature, weights the values.
    """

    def __init__(self, channels: int, num_heads: int, bias: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1, bias=bias)
        # Depth-wise 3x3 adds local context to q, k, v before the global channel attention.
        self.qkv_dwconv = nn.Conv2d(3 * channels, 3 * channels, kernel_size=3, padding=1,
                                    groups=3 * channels, bias=bias)
        self.project_out = nn.Conv2d(channels, channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # Channel layout of the qkv map: [q | k | v], each split into heads of c/heads channels.
        q, k, v = self.qkv_dwconv(self.qkv(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        q = F.normalize(q, dim=-1)
        k = F.normalize(k, dim=-1)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.temperature, dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv Feed-forward Network (Restormer Sec. 3.2): GELU(branch a) * branch b, both depth-wise."""

    def __init__(self, channels: int, expansion: float, bias: bool = False) -> None:
        super().__init__()
        hidden = int(channels * expansion)  # truncation, as the release (e.g. 48 * 2.66 -> 127)
        self.project_in = nn.Conv2d(channels, 2 * hidden, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size=3, padding=1, groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * gate)


class TransformerBlock(nn.Module):
    """Pre-norm Restormer block: x + MDTA(LN(x)), then + GDFN(LN(.))."""

    def __init__(self, channels: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 layernorm_type: str) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels, layernorm_type)
        self.attn = MDTA(channels, num_heads, bias)
        self.norm2 = ChannelLayerNorm(channels, layernorm_type)
        self.ffn = GDFN(channels, ffn_expansion_factor, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class PatchEmbed(nn.Module):
    """Overlapping 3x3 conv embedding of the image into ``dim`` channels."""

    def __init__(self, in_channels: int, dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve H and W, double the channels: 3x3 conv to C/2, then pixel-unshuffle (x4 channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, kernel_size=3, padding=1, bias=False),
                                  nn.PixelUnshuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double H and W, halve the channels: 3x3 conv to 2C, then pixel-shuffle (/4 channels)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, kernel_size=3, padding=1, bias=False),
                                  nn.PixelShuffle(2))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class PromptGenBlock(nn.Module):
    """Prompt Generation Module (PromptIR Sec. 3.1, PGM).

    ``prompt_len`` learned components P_1..P_N (each ``prompt_dim x size x size``) are mixed with weights
    w = softmax(W . GAP(F)) predicted from the incoming features F, resized to F's grid, and passed
    through a 3x3 conv: P = Conv3x3(resize(sum_i w_i P_i)). The weights are what lets one network adapt
    to the unknown degradation of each input.
    """

    def __init__(self, feat_channels: int, prompt_dim: int, prompt_len: int, prompt_size: int) -> None:
        super().__init__()
        # Uniform [0, 1) init as in the release; a leading singleton axis keeps its stored shape.
        self.prompt_param = nn.Parameter(torch.rand(1, prompt_len, prompt_dim, prompt_size, prompt_size))
        self.linear_layer = nn.Linear(feat_channels, prompt_len)
        self.conv3x3 = nn.Conv2d(prompt_dim, prompt_dim, kernel_size=3, padding=1, bias=False)

    def forward(self, feats: Tensor) -> Tensor:
        weights = torch.softmax(self.linear_layer(feats.mean(dim=(-2, -1))), dim=-1)  # (B, N)
        prompt = torch.einsum("bn,nchw->bchw", weights, self.prompt_param[0])
        prompt = F.interpolate(prompt, size=feats.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv3x3(prompt)


def _blocks(n: int, channels: int, heads: int, ffn: float, bias: bool, ln: str) -> nn.Sequential:
    return nn.Sequential(*[TransformerBlock(channels, heads, ffn, bias, ln) for _ in range(n)])


class PromptIR(nn.Module):
    """PromptIR restoration network: ``forward(x) = x + residual(x)``, same shape as ``x``.

    Args:
        in_channels, out_channels: image channels (the residual needs them equal).
        dim: width of level 1; levels 2-4 use ``2*dim``, ``4*dim``, ``8*dim``. Must be even.
        num_blocks: transformer blocks per encoder level 1-3 and in the latent (decoder levels 3-1
            reuse ``num_blocks[2], [1], [0]``).
        num_refinement_blocks: blocks after the decoder at full resolution.
        heads: attention heads per level; the three PIM blocks use ``heads[2]``.
        ffn_expansion_factor: GDFN hidden width factor (hidden = ``int(C * factor)``).
        bias: biases in the convs of the transformer blocks and 1x1 fusions.
        layernorm_type: ``"WithBias"`` (release) or ``"BiasFree"``.
        prompt_dims: prompt channels at decoder levels 1, 2, 3 (fixed ``(64, 128, 320)`` in the release).
        prompt_len: number of prompt components per level (5 in the release).
        prompt_sizes: stored spatial size of the components at levels 1, 2, 3 (``(64, 32, 16)``).
        unused_dim: output width of the unused ``chnl_reduce3`` (256 in the release).
        keep_unused: register the six convs the release stores but never uses (needed for strict loading
            of the official checkpoint; ``False`` drops them).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks: Sequence[int] = (4, 6, 6, 8),
        num_refinement_blocks: int = 4,
        heads: Sequence[int] = (1, 2, 4, 8),
        ffn_expansion_factor: float = 2.66,
        bias: bool = False,
        layernorm_type: str = "WithBias",
        prompt_dims: Sequence[int] = (64, 128, 320),
        prompt_len: int = 5,
        prompt_sizes: Sequence[int] = (64, 32, 16),
        unused_dim: int = 256,
        keep_unused: bool = True,
    ) -> None:
        super().__init__()
        if len(num_blocks) != 4 or len(heads) != 4 or len(prompt_dims) != 3 or len(prompt_sizes) != 3:
            raise ValueError("num_blocks and heads need 4 entries, prompt_dims and prompt_sizes 3")
        if in_channels != out_channels:
            raise ValueError("PromptIR adds its output to the input: in_channels must equal out_channels")
        if dim % 2:
            raise ValueError(f"dim must be even (the downsampler halves it before pixel-unshuffle), got {dim}")
        c1, c2, c3, c4 = dim, 2 * dim, 4 * dim, 8 * dim
        p1, p2, p3 = prompt_dims
        for width, nh, where in [(c1, heads[0], "level 1"), (c2, heads[1], "level 2"), (c3, heads[2], "level 3"),
                                 (c4, heads[3], "latent"), (c2 + p1, heads[2], "prompt block 1"),
                                 (c3 + p2, heads[2], "prompt block 2"), (c4 + p3, heads[2], "prompt block 3")]:
            if width % nh:
                raise ValueError(f"{where}: {width} channels are not divisible by {nh} heads")
        ffn, ln = ffn_expansion_factor, layernorm_type
        self.in_channels, self.out_channels = in_channels, out_channels

        # Registration order follows the release so state_dict() lists keys in its order.
        self.patch_embed = PatchEmbed(in_channels, dim)
        # PGMs: prompt1 sits at decoder level 2 (2*dim wide), prompt2 at level 3, prompt3 at the latent.
        self.prompt1 = PromptGenBlock(c2, p1, prompt_len, prompt_sizes[0])
        self.prompt2 = PromptGenBlock(c3, p2, prompt_len, prompt_sizes[1])
        self.prompt3 = PromptGenBlock(c4, p3, prompt_len, prompt_sizes[2])
        if keep_unused:
            self.chnl_reduce1 = nn.Conv2d(p1, p1, kernel_size=1, bias=bias)
            self.chnl_reduce2 = nn.Conv2d(p2, p2, kernel_size=1, bias=bias)
            self.chnl_reduce3 = nn.Conv2d(p3, unused_dim, kernel_size=1, bias=bias)
            self.reduce_noise_channel_1 = nn.Conv2d(c1 + p1, c1, kernel_size=1, bias=bias)
        self.encoder_level1 = _blocks(num_blocks[0], c1, heads[0], ffn, bias, ln)
        self.down1_2 = Downsample(c1)
        if keep_unused:
            self.reduce_noise_channel_2 = nn.Conv2d(c2 + p2, c2, kernel_size=1, bias=bias)
        self.encoder_level2 = _blocks(num_blocks[1], c2, heads[1], ffn, bias, ln)
        self.down2_3 = Downsample(c2)
        if keep_unused:
            self.reduce_noise_channel_3 = nn.Conv2d(c3 + unused_dim, c3, kernel_size=1, bias=bias)
        self.encoder_level3 = _blocks(num_blocks[2], c3, heads[2], ffn, bias, ln)
        self.down3_4 = Downsample(c3)
        self.latent = _blocks(num_blocks[3], c4, heads[3], ffn, bias, ln)

        # Decoder level 3: PIM on the latent (concat prompt -> block -> 1x1 to 4*dim), up, skip, fuse.
        self.up4_3 = Upsample(c3)
        self.reduce_chan_level3 = nn.Conv2d(c2 + c3, c3, kernel_size=1, bias=bias)
        self.noise_level3 = TransformerBlock(c4 + p3, heads[2], ffn, bias, ln)
        self.reduce_noise_level3 = nn.Conv2d(c4 + p3, c3, kernel_size=1, bias=bias)
        self.decoder_level3 = _blocks(num_blocks[2], c3, heads[2], ffn, bias, ln)

        # Decoder level 2.
        self.up3_2 = Upsample(c3)
        self.reduce_chan_level2 = nn.Conv2d(c2 + c2, c2, kernel_size=1, bias=bias)
        self.noise_level2 = TransformerBlock(c3 + p2, heads[2], ffn, bias, ln)
        self.reduce_noise_level2 = nn.Conv2d(c3 + p2, c3, kernel_size=1, bias=bias)
        self.decoder_level2 = _blocks(num_blocks[1], c2, heads[1], ffn, bias, ln)

        # Decoder level 1 keeps the 2*dim width of the concatenation (no 1x1 reduction), as in Restormer.
        self.up2_1 = Upsample(c2)
        self.noise_level1 = TransformerBlock(c2 + p1, heads[2], ffn, bias, ln)
        self.reduce_noise_level1 = nn.Conv2d(c2 + p1, c2, kernel_size=1, bias=bias)
        self.decoder_level1 = _blocks(num_blocks[0], c2, heads[0], ffn, bias, ln)
        self.refinement = _blocks(num_refinement_blocks, c2, heads[0], ffn, bias, ln)
        self.output = nn.Conv2d(c2, out_channels, kernel_size=3, padding=1, bias=bias)

    @staticmethod
    def _interact(feats: Tensor, pgm: PromptGenBlock, block: TransformerBlock, reduce: nn.Conv2d) -> Tensor:
        # PIM (PromptIR Sec. 3.1): concatenate the generated prompt along channels, let a transformer
        # block mix the two, and project back to the decoder width.
        return reduce(block(torch.cat([feats, pgm(feats)], dim=1)))

    def forward_features(self, x: Tensor) -> Tensor:
        """The residual for an input whose H and W are multiples of 8 (no padding)."""
        enc1 = self.encoder_level1(self.patch_embed(x))
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        lat = self.latent(self.down3_4(enc3))

        lat = self._interact(lat, self.prompt3, self.noise_level3, self.reduce_noise_level3)
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(lat), enc3], dim=1))
        dec3 = self.decoder_level3(dec3)

        dec3 = self._interact(dec3, self.prompt2, self.noise_level2, self.reduce_noise_level2)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], dim=1))
        dec2 = self.decoder_level2(dec2)

        dec2 = self._interact(dec2, self.prompt1, self.noise_level1, self.reduce_noise_level1)
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], dim=1))
        return self.output(self.refinement(dec1))

    def forward(self, x: Tensor) -> Tensor:
        """Restore ``x`` (B, C, H, W) of any size >= 1x1; returns the same shape."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % _SIZE_MULTIPLE, (-w) % _SIZE_MULTIPLE
        if pad_h or pad_w:
            # Reflection avoids a hard edge the network would try to "restore"; it needs pad < size.
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            xp = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
            return (xp + self.forward_features(xp))[..., :h, :w]
        return x + self.forward_features(x)


class PromptIRCheckpointError(RuntimeError):
    """A checkpoint's keys or shapes do not match the PromptIR it is loaded into."""


# Wrappers that prefix every key: Lightning's module attribute (`net.`), DataParallel/DDP, torch.compile.
_KEY_PREFIXES = ("net.", "module.", "_orig_mod.")


def extract_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The network's tensors from a loaded checkpoint, with wrapper prefixes removed.

    Accepts a PyTorch Lightning checkpoint (``{'state_dict': {'net.<key>': ...}, ...}``), a BasicSR-style
    ``{'params': ...}`` (or ``{'params_ema': ...}``), or a plain state dict. A prefix from
    ``net.``/``module.``/``_orig_mod.`` is stripped when *every* key carries it (repeatedly, for stacked
    wrappers); mixed keys are left alone so the mismatch is reported instead of silently dropped.
    """
    sd: Any = obj
    for container in ("state_dict", "params", "params_ema"):
        if isinstance(sd, Mapping) and isinstance(sd.get(container), Mapping):
            sd = sd[container]
            break
    if not isinstance(sd, Mapping) or not sd or not all(isinstance(v, Tensor) for v in sd.values()):
        raise PromptIRCheckpointError(
            "no state dict found: expected a Lightning checkpoint with 'state_dict', a {'params': ...} dict, "
            f"or a mapping of tensors; got keys {list(obj)[:10] if isinstance(obj, Mapping) else type(obj)}")
    sd = dict(sd)
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped = True
    return sd


def _listing(title: str, items: list[str], limit: int = 20) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {title}: " + ", ".join(items[:limit]) + more


def _torch_load(path: str | os.PathLike[str], map_location: str | torch.device, allow_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # A Lightning checkpoint also pickles hyper-parameters, callbacks and optimizer objects that the
        # weights-only unpickler refuses. Falling back runs arbitrary pickled code: only for trusted files.
        if not allow_pickle:
            raise
        return torch.load(path, map_location=map_location, weights_only=False)


def load_promptir(
    path: str | os.PathLike[str] | Mapping[str, Any],
    strict: bool = True,
    map_location: str | torch.device = "cpu",
    allow_pickle: bool = True,
    **model_kwargs: Any,
) -> PromptIR:
    """Build ``PromptIR(**model_kwargs)`` (the published config by default) and load a checkpoint into it.

    ``path`` is a file (the official Lightning ``model.ckpt``, a plain state dict, or ``{'params': sd}``)
    or an already loaded mapping of the same forms. The file is read with ``weights_only=True`` first;
    if that is refused (Lightning checkpoints pickle more than tensors) and ``allow_pickle`` is true, it is
    read again with ``weights_only=False``, so only load trusted files.

    With ``strict=True`` any missing key, unexpected key or shape mismatch raises
    :class:`PromptIRCheckpointError` listing them; with ``strict=False`` the matching tensors are loaded
    and the rest are skipped. Returns the model on CPU (``map_location`` places the tensors while loading).
    """
    obj = path if isinstance(path, Mapping) else _torch_load(path, map_location, allow_pickle)
    sd = extract_state_dict(obj)
    model = PromptIR(**model_kwargs)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong_shape = [f"{k} (checkpoint {tuple(sd[k].shape)} vs model {tuple(v.shape)})"
                   for k, v in own.items() if k in sd and sd[k].shape != v.shape]
    if strict and (missing or unexpected or wrong_shape):
        parts = [_listing(t, items) for t, items in [("missing keys", missing), ("unexpected keys", unexpected),
                                                     ("shape mismatches", wrong_shape)] if items]
        raise PromptIRCheckpointError(
            f"checkpoint does not match PromptIR({', '.join(f'{k}={v!r}' for k, v in model_kwargs.items())}): "
            + "; ".join(parts))
    usable = {k: v for k, v in sd.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(usable, strict=strict)
    return model

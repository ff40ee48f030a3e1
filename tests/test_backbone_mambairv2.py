"""MambaIRv2-light: official checkpoint layout, checkpoint loading, the selective scan, and forward/backward."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from agentloss.backbones.mambairv2 import (
    PUBLISHED_CONFIG,
    MambaIRv2Light,
    _chunked_linear_scan,
    _mirror_pad,
    _relative_position_index,
    _shift_mask,
    load_mambairv2light,
    selective_scan,
    selective_scan_ref,
)

MANIFEST = Path(__file__).parent / "data" / "mambairv2light_official_keys.json"
TINY = {"embed_dim": 12, "depths": (2,), "num_heads": (2,), "window_size": 8, "inner_rank": 4, "num_tokens": 4,
        "d_state": 2}


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def models() -> dict[int, MambaIRv2Light]:
    # Built once: the published x2 and x4 networks (~0.8 M parameters each).
    return {s: MambaIRv2Light(upscale=s) for s in (2, 4)}


# ------------------------------------------------------------------------- official layout


@pytest.mark.parametrize("scale", [2, 4])
def test_state_dict_matches_official_manifest(models, manifest, scale):
    entry = manifest["configs"][f"x{scale}"]
    ours = {k: list(v.shape) for k, v in models[scale].state_dict().items()}
    official = entry["state_dict"]
    assert sorted(set(official) - set(ours)) == [] and sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert list(ours) == list(official)  # same registration order too
    assert len(ours) == entry["num_entries"] == 1019
    assert sum(p.numel() for p in models[scale].parameters()) == entry["num_params"]


def test_param_count_x4_is_published(models, manifest):
    assert sum(p.numel() for p in models[4].parameters()) == 789_680
    assert manifest["configs"]["x4"]["num_params"] == 789_680
    # x2 and x4 differ only in the reconstruction conv.
    s2, s4 = manifest["configs"]["x2"]["state_dict"], manifest["configs"]["x4"]["state_dict"]
    assert [k for k in s4 if s2[k] != s4[k]] == ["upsample.0.weight", "upsample.0.bias"]


def test_manifest_config_is_the_published_default(manifest):
    cfg = manifest["source"]["config"]
    for key, value in PUBLISHED_CONFIG.items():
        assert cfg[key] == (list(value) if isinstance(value, tuple) else value), key
    assert cfg["upsampler"] == "pixelshuffledirect"


# ------------------------------------------------------------------------- loading


def _synthetic_official(manifest: dict, scale: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(scale)
    sd = {}
    for k, shape in manifest["configs"][f"x{scale}"]["state_dict"].items():
        if k == "relative_position_index_SA":  # an index buffer: the official one is the Swin index
            sd[k] = _relative_position_index(16)
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.02
    return sd


@pytest.mark.parametrize("layout", ["params", "params_ema", "plain"])
def test_synthetic_official_checkpoint_loads_strictly(manifest, tmp_path, layout):
    sd = _synthetic_official(manifest, 4)
    path = tmp_path / "mambairv2_lightSR_x4.pth"
    torch.save(sd if layout == "plain" else {layout: sd}, path)
    net = load_mambairv2light(path, upscale=4)
    got = net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())


def test_loader_reports_missing_unexpected_and_wrong_scale(manifest):
    sd = _synthetic_official(manifest, 4)
    with pytest.raises(ValueError, match=r"x4.*upscale=2.*upsample\.0\.weight"):
        load_mambairv2light({"params": sd}, upscale=2)
    broken = dict(sd)
    del broken["norm.weight"]
    broken["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"1 missing: norm\.weight.*1 unexpected: extra\.weight"):
        load_mambairv2light({"params": broken}, upscale=4)
    net = load_mambairv2light({"params": broken}, upscale=4, strict=False)
    assert torch.equal(net.conv_first.weight, sd["conv_first.weight"])


# ------------------------------------------------------------------------- selective scan


def _scan_inputs(form: str, b: int = 2, d: int = 8, n: int = 4, length: int = 256, groups: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(b, d, length, generator=g)
    delta = torch.randn(b, d, length, generator=g) * 0.5
    A = -torch.exp(torch.randn(d, n, generator=g) * 0.5)
    shape = {"const": (d, n), "var": (b, n, length), "group": (b, groups, n, length)}[form]
    B, C = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    D, z, bias = torch.randn(d, generator=g), torch.randn(b, d, length, generator=g), torch.randn(d, generator=g) * 0.3
    return u, delta, A, B, C, D, z, bias


@pytest.mark.parametrize("form, groups", [("group", 1), ("group", 2), ("var", 1), ("const", 1)])
def test_selective_scan_matches_reference(form, groups):
    # ("group", 1) is what the model calls: B, C as (batch, 1, d_state, L).
    inputs = [t.requires_grad_() for t in _scan_inputs(form, groups=groups)]
    u, delta, A, B, C, D, z, bias = inputs
    kw = {"D": D, "z": z, "delta_bias": bias, "delta_softplus": True}
    fast = selective_scan(u, delta, A, B, C, **kw)
    ref = selective_scan_ref(u, delta, A, B, C, **kw)
    assert fast.shape == ref.shape == u.shape
    assert (fast - ref).abs().max().item() < 1e-4
    g_out = torch.randn_like(ref)
    g_fast = torch.autograd.grad(fast, inputs, g_out)
    g_ref = torch.autograd.grad(ref, inputs, g_out)
    for gf, gr in zip(g_fast, g_ref):
        assert gf.shape == gr.shape
        assert (gf - gr).abs().max().item() <= 1e-3 * max(1.0, gr.abs().max().item())


def test_selective_scan_optional_args_and_last_state():
    u, delta, A, B, C, *_ = _scan_inputs("group", length=100)
    out, last = selective_scan(u, delta.abs(), A, B, C, return_last_state=True, chunk_size=7)
    out_r, last_r = selective_scan_ref(u, delta.abs(), A, B, C, return_last_state=True)
    assert (out - out_r).abs().max() < 1e-4 and (last - last_r).abs().max() < 1e-4
    assert last.shape == (2, 8, 4)


def test_selective_scan_gradcheck_float64():
    # Length 10 with chunks of 3: padding, two levels of chunks, and the plain loop all take part.
    inputs = [t.double().requires_grad_() for t in _scan_inputs("group", b=1, d=4, n=2, length=10, groups=2)]

    def fn(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D, z, bias, True, chunk_size=3)

    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


def test_selective_scan_is_stable_with_strong_decay():
    # Large delta*|A| (cumulative log-decay far below float32's exp range) must not overflow or NaN.
    u, delta, A, B, C, *_ = _scan_inputs("group", length=512)
    delta = delta.abs() * 50
    A = A * 20
    fast = selective_scan(u, delta, A, B, C)
    ref = selective_scan_ref(u, delta, A, B, C)
    assert torch.isfinite(fast).all() and (fast - ref).abs().max() < 1e-4


@pytest.mark.parametrize("length, chunk", [(1, None), (37, 5), (64, 8), (300, None)])
@pytest.mark.parametrize("reverse", [False, True])
def test_chunked_linear_scan_matches_loop(length, chunk, reverse):
    g = torch.Generator().manual_seed(length)
    log_a, x = -torch.rand(length, 3, generator=g) * 2, torch.randn(length, 3, generator=g)
    h, expected = torch.zeros(3), torch.empty(length, 3)
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        h = log_a[t].exp() * h + x[t]
        expected[t] = h
    got = _chunked_linear_scan(log_a, x, reverse=reverse, chunk=chunk)
    assert torch.allclose(got, expected, atol=1e-5)


# ------------------------------------------------------------------------- pieces of the network


def test_mirror_pad_and_shift_mask():
    x = torch.arange(12.0).view(1, 1, 3, 4)
    # Mirror that repeats the edge (flip-and-concatenate), also when the pad exceeds the image.
    assert _mirror_pad(x, 5, 4)[0, 0, :, 0].tolist() == [0, 4, 8, 8, 4]
    assert _mirror_pad(x, 8, 4)[0, 0, :, 0].tolist() == [0, 4, 8, 8, 4, 0, 0, 4]
    # Shifted-window mask, built by labelling the three strips of each axis (independent construction).
    h, w, ws = 16, 24, 8
    label = torch.zeros(h, w)
    strips = [slice(0, -ws), slice(-ws, -ws // 2), slice(-ws // 2, None)]
    for i, rs in enumerate(strips):
        for j, cs in enumerate(strips):
            label[rs, cs] = 3 * i + j
    win = label.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    expected = (win[:, :, None] != win[:, None, :]).float() * -100.0
    assert torch.equal(_shift_mask(h, w, ws, torch.device("cpu")), expected)


def test_tiny_forward_backward_non_multiple_of_window():
    torch.manual_seed(0)
    net = MambaIRv2Light(upscale=2, **TINY)
    x = torch.rand(1, 3, 20, 28, requires_grad=True)
    y = net(x)
    assert y.shape == (1, 3, 40, 56)
    y.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The router learns through the straight-through prompts.
    assert net.layers[0].residual_group.layers[0].assm.route[0].weight.grad.abs().sum() > 0


def test_deterministic_eval_is_reproducible():
    torch.manual_seed(0)
    net = MambaIRv2Light(upscale=3, deterministic_eval=True, **TINY).eval()
    x = torch.rand(2, 3, 9, 17)
    with torch.no_grad():
        a, b = net(x), net(x)
        single = net(x[1:])
    assert a.shape == (2, 3, 27, 51) and torch.equal(a, b)
    assert torch.allclose(a[1:], single, atol=1e-5)  # images of a batch do not interact
    # With gradients on, attention takes the explicit-softmax path instead of fused SDPA: same result.
    assert torch.allclose(net(x), a, atol=1e-5)


def test_published_x2_forward_cpu(models):
    net = models[2].eval()
    start = time.perf_counter()
    with torch.no_grad():
        y = net(torch.rand(1, 3, 32, 32))
    assert y.shape == (1, 3, 64, 64) and torch.isfinite(y).all()
    assert time.perf_counter() - start < 30

"""Backbone registry: published SwinIR/HAT layouts, spandrel detection and loading, tiny forward/backward, errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from agentloss.backbones import BACKBONES, create_backbone, list_backbones, load_backbone
from agentloss.backbones import spandrel_models as sm

pytest.importorskip("spandrel", reason="SwinIR/HAT come from spandrel (the 'backbones' extra)")


@pytest.fixture(autouse=True)
def _one_thread(_few_threads):
    # Runs after conftest's 2-thread fixture: these tests share the machine with long benchmarks.
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="module")
def swinir_x4() -> torch.nn.Module:
    return create_backbone("swinir", scale=4)


@pytest.fixture(scope="module")
def hat_s_x4() -> torch.nn.Module:
    return create_backbone("hat_s", scale=4)


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ published layouts (official names/shapes)


def test_swinir_classical_x4_layout(swinir_x4):
    sd = _shapes(swinir_x4)
    assert len(sd) == 550
    masks = [k for k in sd if k.endswith("attn_mask")]
    rpis = [k for k in sd if k.endswith("relative_position_index")]
    # The notes' "54 attn_mask buffers" are the 54 buffers in all: one mask per shifted block (odd blocks,
    # 3 per group x 6 groups) plus one relative_position_index per block (36).
    assert (len(masks), len(rpis)) == (18, 36)
    assert {k.split(".residual_group.blocks.")[1].split(".")[0] for k in masks} == {"1", "3", "5"}
    assert all(sd[k] == (64, 64, 64) for k in masks)  # (64/8)^2 windows of 8x8 tokens
    assert sd["conv_first.weight"] == (180, 3, 3, 3)
    assert sd["layers.0.residual_group.blocks.0.attn.relative_position_bias_table"] == (225, 6)
    assert sd["layers.0.residual_group.blocks.0.attn.qkv.weight"] == (540, 180)
    assert sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"] == (360, 180)  # mlp_ratio 2
    assert sd["layers.5.conv.weight"] == (180, 180, 3, 3)  # resi_connection 1conv
    assert sd["conv_before_upsample.0.weight"] == (64, 180, 3, 3)
    assert sd["upsample.0.weight"] == sd["upsample.2.weight"] == (256, 64, 3, 3)  # two x2 pixel shuffles
    assert sd["conv_last.weight"] == (3, 64, 3, 3)
    assert sum(p.numel() for p in swinir_x4.parameters()) == 11_900_199
    assert swinir_x4.training and all(p.requires_grad for p in swinir_x4.parameters())


def test_swinir_div2k_variant_and_scales_change_only_masks_and_upsampler(swinir_x4):
    div2k = _shapes(create_backbone("swinir", scale=3, img_size=48))
    assert div2k["layers.2.residual_group.blocks.3.attn_mask"] == (36, 64, 64)  # (48/8)^2 windows
    assert div2k["upsample.0.weight"] == (576, 64, 3, 3) and "upsample.2.weight" not in div2k
    ref = _shapes(swinir_x4)
    differ = {k for k in ref.keys() | div2k.keys() if ref.get(k) != div2k.get(k)}
    assert differ == {k for k in ref if k.endswith("attn_mask")} | {"upsample.0.weight", "upsample.0.bias",
                                                                     "upsample.2.weight", "upsample.2.bias"}


def test_hat_s_x4_layout(hat_s_x4):
    sd = _shapes(hat_s_x4)
    assert len(sd) == 864
    assert not any("attn_mask" in k for k in sd)  # HAT computes its masks in forward
    assert sd["relative_position_index_SA"] == (256, 256)  # 16x16 windows
    assert sd["relative_position_index_OCA"] == (256, 576)  # overlapping windows 16 * 1.5 = 24
    blk = "layers.0.residual_group.blocks.0."
    assert sd[blk + "attn.relative_position_bias_table"] == (961, 6)  # (2*16-1)^2
    assert sd[blk + "conv_block.cab.0.weight"] == (6, 144, 3, 3)  # 144 / compress_ratio 24
    assert sd[blk + "conv_block.cab.3.attention.1.weight"] == (6, 144, 1, 1)  # 144 / squeeze_factor 24
    assert sd[blk + "mlp.fc1.weight"] == (288, 144)
    assert sd["layers.0.residual_group.overlap_attn.relative_position_bias_table"] == (1521, 6)  # (16+24-1)^2
    assert sd["layers.5.conv.weight"] == (144, 144, 3, 3)
    assert sd["upsample.2.weight"] == (256, 64, 3, 3)
    assert sum(p.numel() for p in hat_s_x4.parameters()) == 9_621_183


def test_published_configs_are_the_modules_constants():
    from agentloss.backbones.mambairv2 import PUBLISHED_CONFIG
    from agentloss.backbones.promptir import PUBLISHED_PROMPTIR_CONFIG

    assert BACKBONES["swinir"].config == sm.SWINIR_CLASSICAL_CONFIG
    assert BACKBONES["hat"].config == {**sm.HAT_S_CONFIG, "embed_dim": 180, "compress_ratio": 3, "squeeze_factor": 30}
    assert BACKBONES["mambairv2_light"].config == PUBLISHED_CONFIG
    assert BACKBONES["promptir"].config == PUBLISHED_PROMPTIR_CONFIG
    published = list_backbones(include_tiny=False)
    assert published == ["hat", "hat_s", "mambairv2_light", "promptir", "swinir", "swinir_light", "swinir_real"]
    assert sorted(set(list_backbones()) - set(published)) == sorted(f"{n}_tiny" for n in published)


# ------------------------------------------------------------------ checkpoints through spandrel


def test_swinir_checkpoint_detected_and_trainable(swinir_x4, tmp_path):
    path = tmp_path / "001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth"
    torch.save({"params": swinir_x4.state_dict()}, path)
    net = load_backbone("swinir", path)
    assert type(net).__name__ == "SwinIR" and net.upscale == 4 and net.hyperparameters["img_size"] == 64
    assert net.training and all(p.requires_grad for p in net.parameters())
    got, ref = net.state_dict(), swinir_x4.state_dict()
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match="x4, but scale=2"):
        load_backbone("swinir", path, scale=2)
    with pytest.raises(ValueError, match="holds a SwinIR network, expected HAT"):
        load_backbone("hat_s", path)


def test_hat_checkpoint_loads_params_ema(hat_s_x4, tmp_path):
    params = hat_s_x4.state_dict()
    ema = dict(params)  # shares every tensor but one, so the file stays one model's size
    ema["conv_first.weight"] = params["conv_first.weight"] + 1.0
    path = tmp_path / "HAT-S_SRx4.pth"
    torch.save({"params": params, "params_ema": ema}, path)
    net = load_backbone("hat_s", path)  # spandrel unwraps params_ema before params, and loads strictly
    assert type(net).__name__ == "HAT" and net.upscale == 4 and net.training
    assert torch.equal(net.conv_first.weight, ema["conv_first.weight"])
    assert torch.equal(net.conv_last.weight, params["conv_last.weight"])
    assert len(sm.load_spandrel_state_dict(path)) == 864


def test_descriptor_call_is_inference_only_so_the_module_is_returned():
    import spandrel

    src = create_backbone("swinir_tiny", scale=2)
    desc = spandrel.ModelLoader().load_from_state_dict({"params": src.state_dict()})
    out = desc(torch.rand(1, 3, 16, 16))
    assert torch.is_inference(out) and not out.requires_grad and not desc.model.training
    net = sm.load_spandrel_checkpoint({"params": src.state_dict()}, expected="SwinIR")
    y = net(torch.rand(1, 3, 16, 16))
    assert y.requires_grad and not torch.is_inference(y) and net.training


def test_tiny_checkpoint_roundtrip_trains(tmp_path):
    torch.manual_seed(0)
    src = create_backbone("swinir_tiny", scale=2)
    torch.save({"params": src.state_dict()}, tmp_path / "tiny.pth")
    net = load_backbone("swinir_tiny", tmp_path / "tiny.pth", scale=2)
    before = net.conv_first.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(2, 3, 24, 24)  # not img_size (32): shifted-window masks are recomputed
    loss = (net(x) - torch.rand(2, 3, 48, 48)).abs().mean()
    loss.backward()
    opt.step()
    assert not torch.equal(before, net.conv_first.weight)


def test_swinir_recomputes_masks_for_other_sizes():
    torch.manual_seed(0)
    a = create_backbone("swinir_tiny", scale=2).eval()  # img_size 32: stored masks are for 32x32
    b = create_backbone("swinir_tiny", scale=2, img_size=16).eval()
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.endswith("attn_mask")}, strict=False)
    blk_a, blk_b = a.layers[0].residual_group.blocks[1], b.layers[0].residual_group.blocks[1]
    assert blk_a.attn_mask.shape == (16, 64, 64) and blk_b.attn_mask.shape == (4, 64, 64)
    assert torch.equal(blk_b.calculate_mask((32, 32)), blk_a.attn_mask)
    with torch.no_grad():
        for size in (16, 32, 40, 20):  # stored in b / stored in a / recomputed in both (20: padded to 24)
            x = torch.rand(1, 3, size, size)
            torch.testing.assert_close(a(x), b(x))
    # A checkpoint's masks fix img_size, so a strict load needs the detected size: spandrel reads it.
    with pytest.raises(RuntimeError, match="attn_mask"):
        b.load_state_dict(a.state_dict())
    assert sm.load_spandrel_checkpoint(b.state_dict()).hyperparameters["img_size"] == 16
    # Re-registering a's masks for 16x16 patches: same function, b's buffers, and spandrel detects 16.
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        before = a(x)
        sm.set_swinir_img_size(a, 16)
        torch.testing.assert_close(a(x), before)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert sm.load_spandrel_checkpoint(a.state_dict()).hyperparameters["img_size"] == 16
    with pytest.raises(ValueError, match="multiple of the window size 8"):
        sm.set_swinir_img_size(a, 20)
    with pytest.raises(TypeError, match="spandrel SwinIR"):
        sm.set_swinir_img_size(create_backbone("hat_tiny"), 16)


def test_checkpoint_must_match_the_named_config(tmp_path):
    src = create_backbone("swinir_tiny", scale=2)
    path = tmp_path / "tiny.pth"
    torch.save({"params": src.state_dict()}, path)
    with pytest.raises(ValueError, match=r"upsampler='pixelshuffle'.*it matches 'swinir_tiny'"):
        load_backbone("swinir_light_tiny", path)
    with pytest.raises(ValueError, match="embed_dim=16"):
        load_backbone("swinir", path)
    # Non-strict: build the named entry and copy what fits (here everything but the x4 upsampler's 2nd conv).
    net = load_backbone("swinir_tiny", path, scale=4, strict=False)
    assert net.upscale == 4 and torch.equal(net.conv_first.weight, src.conv_first.weight)
    bad = tmp_path / "other.pth"
    torch.save({"params": {"foo.weight": torch.zeros(3)}}, bad)
    with pytest.raises(ValueError, match="detects no known architecture"):
        load_backbone("swinir_tiny", bad)
    with pytest.raises(ValueError, match="no tensor"):
        load_backbone("swinir_tiny", bad, strict=False)


def test_promptir_and_mambairv2_checkpoints(tmp_path):
    p = create_backbone("promptir_tiny")
    torch.save({"state_dict": {f"net.{k}": v for k, v in p.state_dict().items()}}, tmp_path / "model.ckpt")
    q = load_backbone("promptir_tiny", tmp_path / "model.ckpt")
    assert q.training and torch.equal(q.output.weight, p.output.weight)
    with pytest.raises(ValueError, match="scale must be None or 1"):
        load_backbone("promptir_tiny", tmp_path / "model.ckpt", scale=2)
    m = create_backbone("mambairv2_light_tiny", scale=3)
    torch.save({"params": m.state_dict()}, tmp_path / "mamba.pth")
    n = load_backbone("mambairv2_light_tiny", tmp_path / "mamba.pth")  # scale read from upsample.0
    assert n.upscale == 3 and n.training and torch.equal(n.conv_first.weight, m.conv_first.weight)


# ------------------------------------------------------------------ tiny configs: forward + backward


@pytest.mark.parametrize("name", [n for n in list_backbones() if BACKBONES[n].tiny])
def test_tiny_forward_backward(name):
    torch.manual_seed(0)
    spec = BACKBONES[name]
    net = create_backbone(name)
    s = spec.default_scale
    x = torch.rand(1, 3, 32, 32)
    y = net(x)
    assert y.shape == (1, 3, 32 * s, 32 * s)
    assert torch.isfinite(y).all()
    # Every one adds back the input or the dataset mean: at init the output sits on the image's scale.
    assert abs(y.mean().item() - x.mean().item()) < 0.25 and y.abs().max() < 5
    y.square().mean().backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    unused = {k for k, g in grads.items() if g is None}
    if spec.family == "promptir":  # six convs kept only for strict loading of the release
        assert {k.split(".")[0] for k in unused} <= {"chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
                                                      "reduce_noise_channel_1", "reduce_noise_channel_2",
                                                      "reduce_noise_channel_3"}
    else:
        assert not unused
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert any(g.abs().sum() > 0 for g in grads.values() if g is not None)


# ------------------------------------------------------------------ registry errors and import cost


def test_registry_errors():
    with pytest.raises(ValueError, match=r"unknown backbone 'swinr'.*did you mean 'swinir'.*available: hat, hat_s"):
        create_backbone("swinr")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['embed_dims'\]; allowed: .*'embed_dim'"):
        create_backbone("swinir_tiny", embed_dims=8)
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['depth'\]; allowed: .*'num_blocks'"):
        create_backbone("promptir_tiny", depth=2)
    with pytest.raises(ValueError, match="pass the scale as `scale`"):
        create_backbone("hat_tiny", upscale=2)
    with pytest.raises(ValueError, match=r"published for scales \[2, 3, 4\]; got scale=5"):
        create_backbone("hat_s_tiny", scale=5)
    with pytest.raises(ValueError, match=r"published for scales \[2, 4\]"):
        create_backbone("swinir_real_tiny", scale=3)  # nearest+conv cannot do x3
    with pytest.raises(ValueError, match="scale must be None or 1"):
        create_backbone("promptir_tiny", scale=4)
    with pytest.raises(ValueError, match="img_size must be an int larger than window_size"):
        create_backbone("swinir_tiny", img_size=8)  # spandrel would silently drop the shifted windows
    with pytest.raises(ValueError, match="unknown backbone"):
        load_backbone("nope", "x.pth")
    with pytest.raises(ValueError, match="expected must be one of"):
        sm.load_spandrel_checkpoint("x.pth", expected="swinir")
    with pytest.raises(ValueError, match="task must be"):
        list_backbones(task="denoise")
    with pytest.raises(TypeError):
        BACKBONES["mine"] = BACKBONES["swinir"]  # type: ignore[index]


def test_import_is_cheap():
    code = ("import sys, agentloss.backbones as b; b.list_backbones(); b.BACKBONES['swinir'].config; "
            "print(sorted(m for m in ('spandrel', 'agentloss.backbones.promptir', 'agentloss.backbones.mambairv2')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.strip() == "[]"

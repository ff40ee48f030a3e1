"""PromptIR re-implementation: official checkpoint layout, loader, and a tiny forward/backward.

The manifest ``tests/data/promptir_official_keys.json`` lists the official model's state_dict keys and shapes
(``PromptIR(decoder=True)`` of va1shn9v/PromptIR, keys without Lightning's ``net.`` prefix).
"""

from __future__ import annotations

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch

from agentloss.backbones.promptir import (
    PUBLISHED_PROMPTIR_CONFIG,
    TINY_PROMPTIR_CONFIG,
    PromptIR,
    PromptIRCheckpointError,
    extract_state_dict,
    load_promptir,
)

MANIFEST = Path(__file__).parent / "data" / "promptir_official_keys.json"
UNUSED = ("chnl_reduce1", "chnl_reduce2", "chnl_reduce3",
          "reduce_noise_channel_1", "reduce_noise_channel_2", "reduce_noise_channel_3")


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def published() -> PromptIR:
    # 35.6M parameters: build once for the module.
    torch.manual_seed(0)
    return PromptIR()


@pytest.fixture()
def tiny() -> PromptIR:
    torch.manual_seed(0)
    return PromptIR(**TINY_PROMPTIR_CONFIG)


def test_published_state_dict_matches_official_manifest(published: PromptIR, manifest: dict) -> None:
    shapes = {k: list(v.shape) for k, v in published.state_dict().items()}
    assert set(shapes) - set(manifest["keys"]) == set(), "keys the official model lacks"
    assert set(manifest["keys"]) - set(shapes) == set(), "official keys we lack"
    assert shapes == manifest["keys"]
    assert len(shapes) == manifest["num_entries"] == 548
    total = sum(p.numel() for p in published.parameters())
    assert total == manifest["total_params"] == 35_592_263
    # The published config is what the defaults build.
    assert PromptIR(**PUBLISHED_PROMPTIR_CONFIG).state_dict().keys() == published.state_dict().keys()


def test_lightning_checkpoint_loads_strict(published: PromptIR, tmp_path: Path) -> None:
    # The official release layout: a Lightning dict, weights under 'state_dict' with the module name 'net.';
    # the pickled hyper-parameters make weights_only=True refuse it, exercising the fallback.
    ckpt = {"epoch": 119, "global_step": 1000, "pytorch-lightning_version": "2.0.0",
            "state_dict": {f"net.{k}": v for k, v in published.state_dict().items()},
            "hyper_parameters": argparse.Namespace(lr=2e-4)}
    path = tmp_path / "model.ckpt"
    torch.save(ckpt, path)
    del ckpt
    with pytest.raises(pickle.UnpicklingError):
        load_promptir(path, allow_pickle=False)
    model = load_promptir(path, strict=True)
    loaded = model.state_dict()
    for k, v in published.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_published_forward_small(published: PromptIR) -> None:
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        y = published(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


@pytest.mark.parametrize("wrap", ["plain", "params", "module-prefix", "lightning"])
def test_other_layouts_load_weights_only(tiny: PromptIR, tmp_path: Path, wrap: str) -> None:
    sd = tiny.state_dict()
    obj = {"plain": sd, "params": {"params": sd}, "module-prefix": {f"module.{k}": v for k, v in sd.items()},
           "lightning": {"state_dict": {f"net.{k}": v for k, v in sd.items()}}}[wrap]
    torch.save(obj, tmp_path / "w.pth")
    # allow_pickle=False: these contain only tensors, so the safe unpickler must suffice.
    model = load_promptir(tmp_path / "w.pth", allow_pickle=False, **TINY_PROMPTIR_CONFIG)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert extract_state_dict(obj).keys() == sd.keys()


def test_tiny_forward_backward_odd_size(tiny: PromptIR) -> None:
    x = torch.rand(1, 3, 37, 45)
    y = tiny(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # Output = input + residual; at init the residual is small next to the [0, 1] image.
    assert (y - x).abs().mean() < 0.5
    y.square().mean().backward()
    for name, p in tiny.named_parameters():
        if name.split(".")[0] in UNUSED:
            assert p.grad is None, f"{name} is meant to be unused"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert tiny.prompt3.prompt_param.grad.abs().sum() > 0


def test_padding_is_identity_on_multiples_of_8(tiny: PromptIR) -> None:
    x = torch.rand(2, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(tiny(x), x + tiny.forward_features(x))
        assert tiny(torch.rand(1, 3, 5, 3)).shape == (1, 3, 5, 3)  # too small to reflect: replicate


def test_mismatched_checkpoint_gives_clear_error(tiny: PromptIR, published: PromptIR) -> None:
    sd = dict(tiny.state_dict())
    del sd["output.weight"]
    sd["extra.weight"] = torch.zeros(1)
    sd["patch_embed.proj.weight"] = torch.zeros(4, 3, 3, 3)
    with pytest.raises(PromptIRCheckpointError) as err:
        load_promptir({"state_dict": sd}, **TINY_PROMPTIR_CONFIG)
    msg = str(err.value)
    for part in ("1 missing keys: output.weight", "1 unexpected keys: extra.weight",
                 "patch_embed.proj.weight (checkpoint (4, 3, 3, 3) vs model (8, 3, 3, 3))"):
        assert part in msg
    # strict=False keeps what matches.
    model = load_promptir({"state_dict": sd}, strict=False, **TINY_PROMPTIR_CONFIG)
    assert torch.equal(model.encoder_level1[0].attn.qkv.weight, sd["encoder_level1.0.attn.qkv.weight"])
    # A published checkpoint into a tiny config: every shape differs, the list is truncated.
    with pytest.raises(PromptIRCheckpointError, match=r"shape mismatches: .* and \d+ more"):
        load_promptir(published.state_dict(), **TINY_PROMPTIR_CONFIG)
    with pytest.raises(PromptIRCheckpointError, match="no state dict"):
        load_promptir({"epoch": 3})


def test_invalid_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        PromptIR(**{**TINY_PROMPTIR_CONFIG, "heads": (3, 2, 2, 4)})
    with pytest.raises(ValueError, match="even"):
        PromptIR(**{**TINY_PROMPTIR_CONFIG, "dim": 7})

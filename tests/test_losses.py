"""Tests of the loss repository's built-in terms (pixel, perceptual, gan, lpips) and the registry."""

from __future__ import annotations

import copy
import math
import urllib.error

import pytest
import torch
from torch import nn

import agentloss as al
from agentloss.constraints import WeightError
from agentloss.losses import (
    LOSS_REGISTRY,
    ROLES,
    CharbonnierLoss,
    FFTLoss,
    GANLoss,
    L1Loss,
    LPIPSLoss,
    MSCNLoss,
    MSELoss,
    PatchDiscriminator,
    PerceptualLoss,
    SSIMLoss,
    create_loss,
    mscn,
    register_loss,
    resolve_loss_name,
    ssim,
)
from agentloss.losses import registry as registry_module

SHAPE = (1, 3, 32, 32)
# Options under which every built-in term can be built without downloading anything.
OFFLINE_OPTIONS: dict[str, dict] = {
    "l1": {},
    "mse": {},
    "charbonnier": {},
    "ssim": {},
    "fft": {},
    "mscn": {},
    "perceptual": {"weights": None, "layers": {"relu2_2": 1.0, "conv3_1": 1.0}},
    "gan": {"width": 4, "depth": 1},
    "lpips": {"net": "squeeze", "pretrained": False, "pretrained_backbone": False},
}


def _images(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


@pytest.fixture(scope="module")
def built_terms() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {name: create_loss(name, **opts) for name, opts in OFFLINE_OPTIONS.items()}


def _d_params(gan: GANLoss) -> list[torch.Tensor]:
    return [p.detach().clone() for p in gan.discriminator.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------- every term


def test_all_builtins_registered():
    assert set(OFFLINE_OPTIONS) <= set(al.list_losses())


@pytest.mark.parametrize("name", [n for n in OFFLINE_OPTIONS if n != "gan"])
def test_zero_for_identical_positive_otherwise(built_terms, name):
    term = built_terms[name]
    x, y = _images()
    same = term(x, x.clone()).item()
    expected_min = 1e-3 if name == "charbonnier" else 0.0  # charbonnier's minimum is eps
    assert same == pytest.approx(expected_min, abs=1e-6)
    assert term(x, y).item() > expected_min + 1e-4


@pytest.mark.parametrize("name", list(OFFLINE_OPTIONS))
def test_gradient_reaches_prediction(built_terms, name):
    term = built_terms[name]
    x, y = _images(1)
    pred = x.clone().requires_grad_(True)
    value = term(pred, y)
    assert value.dim() == 0 and torch.isfinite(value)
    value.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(OFFLINE_OPTIONS))
def test_registry_table_has_role_description_and_downloads(name):
    spec = LOSS_REGISTRY[name]
    assert (spec.downloads is not None) == (name in ("perceptual", "lpips"))
    assert spec.description and spec.prompt_text and spec.role in ROLES


# ---------------------------------------------------------------------------------- pixel terms


def test_known_values_l1_mse_charbonnier():
    pred, target = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert L1Loss()(pred, target).item() == pytest.approx(0.5)
    assert MSELoss()(pred, target).item() == pytest.approx(0.25)
    assert CharbonnierLoss()(pred, target).item() == pytest.approx(math.sqrt(0.25 + 1e-6))
    assert CharbonnierLoss(eps=0.1)(pred, pred).item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="eps"):
        CharbonnierLoss(eps=0.0)


def test_pixel_terms_check_target():
    with pytest.raises(ValueError, match="target=None"):
        L1Loss()(torch.zeros(1, 3, 4, 4), None)
    with pytest.raises(ValueError, match="shapes differ"):
        MSELoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_ssim_matches_scikit_image():
    skm = pytest.importorskip("skimage.metrics")
    x, y = _images(2)
    y = (0.7 * x + 0.3 * y).clamp(0, 1)  # correlated, so SSIM is far from 0 and from 1
    ours = ssim(x, y).item()
    ref = skm.structural_similarity(x[0].numpy(), y[0].numpy(), channel_axis=0, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert 0.2 < ref < 0.95
    assert ours == pytest.approx(ref, abs=1e-5)
    assert SSIMLoss()(x, y).item() == pytest.approx(1 - ref, abs=1e-5)


def test_ssim_per_image_and_size_check():
    x, y = _images(3, (2, 3, 16, 16))
    per_image = ssim(x, y, reduction="none")
    assert per_image.shape == (2,) and per_image.mean().item() == pytest.approx(ssim(x, y).item())
    with pytest.raises(ValueError, match="at least 11x11"):
        SSIMLoss()(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    assert SSIMLoss(win_size=7)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)).item() == pytest.approx(0.0)


def test_fft_known_values():
    # A constant difference d only touches the DC coefficient: d * sqrt(H*W) with norm="ortho".
    pred, target = torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8)
    dc = math.sqrt(64)
    n_coeffs = 8 * (8 // 2 + 1)  # per channel, rfft2 keeps W//2 + 1 columns
    assert FFTLoss()(pred, target).item() == pytest.approx(dc / (2 * n_coeffs))  # real and imag parts
    assert FFTLoss(component="amplitude")(pred, target).item() == pytest.approx(dc / n_coeffs)
    assert FFTLoss(norm="backward")(pred, target).item() == pytest.approx(64 / (2 * n_coeffs))
    with pytest.raises(ValueError):
        FFTLoss(norm="bogus")
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    FFTLoss(component="amplitude")(x, x.detach()).backward()  # |F| at equal spectra must not give NaN
    assert torch.isfinite(x.grad).all()


def test_mscn_known_properties():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g)
    m = mscn(x)
    assert m.shape == (2, 1, 32, 32)
    # A flat image has no structure: its MSCN map is zero, and so is the gradient through it (no NaN from sqrt).
    flat = torch.full((1, 3, 16, 16), 0.5, requires_grad=True)
    assert mscn(flat).abs().max().item() < 1e-4
    MSCNLoss()(flat, x[:1, :, :16, :16]).backward()
    assert torch.isfinite(flat.grad).all()
    # Contrast-normalised: a faint copy of a texture is nearly the same map, while blur is far from it.
    faint = 0.3 * x + 0.35
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    loss = MSCNLoss()
    assert loss(faint, x).item() < 0.1 * loss(blurred, x).item()
    # Grey and RGB agree when the channels are equal; half precision is computed in float32.
    grey = x[:, :1]
    assert torch.allclose(mscn(grey.expand(-1, 3, -1, -1)), mscn(grey), atol=1e-4)
    assert mscn(x.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="odd"):
        MSCNLoss(win_size=4)
    with pytest.raises(ValueError, match="image tensor"):
        mscn(torch.rand(1, 2, 8, 8))
    assert resolve_loss_name("nss") == "mscn" and LOSS_REGISTRY["mscn"].downloads is None


# ---------------------------------------------------------------------------------- registry


def test_aliases_and_case():
    assert resolve_loss_name("VGG") == "perceptual"
    assert resolve_loss_name("l2") == "mse"
    assert resolve_loss_name("adversarial") == "gan"
    assert isinstance(create_loss("l2"), MSELoss)
    assert isinstance(create_loss("vgg", weights=None, layers={"relu1_1": 1.0}), PerceptualLoss)


def test_unknown_name():
    with pytest.raises(KeyError, match="no loss named 'nope'"):
        create_loss("nope")
    with pytest.raises(WeightError, match="nope"):
        al.AgentWeightedLoss({"l1": 1.0, "nope": 1.0})


def test_duplicate_registration_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_loss("l1")(L1Loss)
    with pytest.raises(ValueError, match="already registered"):
        register_loss("vgg")(L1Loss)


@pytest.fixture
def user_term():
    @register_loss("test_offset_l1", description="L1 plus a constant", aliases=("test_off",))
    class OffsetL1(nn.Module):
        def __init__(self, offset: float = 0.0):
            super().__init__()
            self.offset = offset

        def forward(self, pred, target):
            return (pred - target).abs().mean() + self.offset

    yield OffsetL1
    LOSS_REGISTRY.pop("test_offset_l1", None)
    registry_module._ALIASES.pop("test_off", None)


def test_user_registered_term_in_weighted_loss(user_term):
    loss_fn = al.AgentWeightedLoss({"test_off": 2.0, "l1": 1.0}, terms={"test_off": {"offset": 0.25}})
    assert isinstance(loss_fn.terms["test_off"], user_term)
    pred = torch.zeros(1, 3, 4, 4, requires_grad=True)
    total = loss_fn(pred, torch.ones(1, 3, 4, 4))
    assert total.item() == pytest.approx(2.0 * 1.25 + 1.0)
    total.backward()
    assert pred.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------- weighted sums


def test_weighted_sum_of_builtin_terms(built_terms):
    weights = {"l1": 1.0, "l2": 0.5, "charbonnier": 0.25, "ssim": 2.0, "fft": 0.1, "vgg": 0.01, "lpips": 0.3}
    terms = {"vgg": built_terms["perceptual"], "lpips": built_terms["lpips"]}
    loss_fn = al.AgentWeightedLoss(weights, terms=terms)
    x, y = _images(4)
    pred = x.clone().requires_grad_(True)
    total = loss_fn(pred, y)
    singles = {"l1": L1Loss()(x, y), "l2": MSELoss()(x, y), "charbonnier": CharbonnierLoss()(x, y),
               "ssim": SSIMLoss()(x, y), "fft": FFTLoss()(x, y), "vgg": terms["vgg"](x, y),
               "lpips": terms["lpips"](x, y)}
    expected = sum(weights[n] * v.item() for n, v in singles.items())
    assert total.item() == pytest.approx(expected, rel=1e-5)
    for name, value in loss_fn.last_values.items():
        assert value == pytest.approx(singles[name].item(), rel=1e-5)
    total.backward()
    assert torch.isfinite(pred.grad).all()
    # The frozen networks contribute no parameters, so nothing of theirs can reach an optimizer.
    assert list(loss_fn.parameters()) == []
    assert not any(k.startswith(("terms.vgg.", "terms.lpips.")) for k in loss_fn.state_dict())


def test_weighted_sum_reacts_to_new_weights():
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "charbonnier": 1.0, "ssim": 1.0})
    x, y = _images(5)
    before = loss_fn(x, y).item()
    loss_fn.set_weights({"l1": 1.0, "charbonnier": 0.0, "ssim": 1.0})
    after = loss_fn(x, y).item()
    assert before - after == pytest.approx(CharbonnierLoss()(x, y).item(), rel=1e-5)
    assert math.isnan(loss_fn.last_values["charbonnier"])


# ---------------------------------------------------------------------------------- perceptual


def test_perceptual_offline_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):  # what an offline machine gives, without waiting on DNS
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    with pytest.raises(RuntimeError) as info:
        PerceptualLoss()
    message = str(info.value)
    assert "vgg19-dcbb9e9d.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth") in message
    assert "$TORCH_HOME/hub/checkpoints/" in message
    assert "weights_path=" in message and "weights=None" in message
    assert isinstance(info.value.__cause__, urllib.error.URLError)


def _random_vgg19_state(prefix: str = "features.") -> dict[str, torch.Tensor]:
    from torchvision.models.vgg import make_layers

    from agentloss.losses.perceptual import _VGG19_CFG

    torch.manual_seed(3)
    return {prefix + k: v for k, v in make_layers(list(_VGG19_CFG)).state_dict().items()}


def test_perceptual_imagenet_weights_come_from_torch_hub(monkeypatch):
    state = _random_vgg19_state()
    state["classifier.0.weight"] = torch.zeros(1)  # a full torchvision file also has the classifier
    seen = {}

    def fake_hub(url, *args, **kwargs):
        seen["url"] = url
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_hub)
    term = PerceptualLoss(layers={"conv1_2": 1.0})
    assert seen["url"].endswith("vgg19-dcbb9e9d.pth")
    assert torch.equal(term.vgg[2].weight, state["features.2.weight"])
    with pytest.raises(ValueError, match="VGG19_Weights"):
        PerceptualLoss(weights="NOT_A_WEIGHT")


def test_perceptual_weights_path(tmp_path):
    state = _random_vgg19_state()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    term = PerceptualLoss(layers={"relu1_1": 1.0}, weights_path=path)
    assert torch.equal(term.vgg[0].weight, state["features.0.weight"])
    assert len(term.vgg) == 2  # truncated after relu1_1
    vgg16_like = {k: v for k, v in state.items() if int(k.split(".")[1]) <= 28}
    torch.save(vgg16_like, path)
    with pytest.raises(ValueError, match="VGG19"):
        PerceptualLoss(layers={"relu1_1": 1.0}, weights_path=path)


def test_perceptual_random_weights_frozen_and_not_checkpointed(built_terms):
    term = built_terms["perceptual"]
    assert list(term.parameters()) == []
    assert all(not b.requires_grad for b in term.buffers())
    assert term.vgg[0].weight.shape == (64, 3, 3, 3)
    assert term.state_dict() == {}  # the VGG weights are not carried into checkpoints
    term.load_state_dict({})  # ... and a checkpoint without them loads strictly
    assert len(term.vgg) == 11  # conv3_1 is layer 10: nothing after it is kept
    parent = nn.ModuleDict({"p": term}).train()
    assert term.training and not term.vgg.training and not any(m.training for m in term.vgg.modules())
    parent.eval()


def test_perceptual_layers_before_and_after_relu():
    term = PerceptualLoss(layers={"conv1_1": 1.0, "relu1_1": 1.0}, weights=None)
    feats = term.features(torch.rand(1, 3, 16, 16))
    # An in-place ReLU would have clipped the stored conv output too.
    assert feats["conv1_1"].min() < 0 and feats["relu1_1"].min() >= 0
    assert torch.equal(feats["relu1_1"], feats["conv1_1"].clamp_min(0))
    with pytest.raises(ValueError, match="unknown"):
        PerceptualLoss(layers={"conv9_9": 1.0}, weights=None)
    with pytest.raises(ValueError, match="criterion"):
        PerceptualLoss(criterion="l3", weights=None)


def test_perceptual_follows_dtype():
    term = PerceptualLoss(layers={"relu1_2": 1.0}, criterion="l2", weights=None).to(torch.float64)
    assert term.vgg[0].weight.dtype == torch.float64 and term.mean.dtype == torch.float64
    x, y = _images(6)
    assert term(x.double(), y.double()).dtype == torch.float64


# ---------------------------------------------------------------------------------- gan


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_gan_modes_finite(mode):
    torch.manual_seed(0)
    gan = GANLoss(mode, width=4, depth=1)
    x, y = _images(7, (2, 3, 8, 8))
    d_loss = gan.discriminator_step(x, y)
    # a detached 0-d tensor, so that automatic updates never force a device sync
    assert isinstance(d_loss, torch.Tensor) and d_loss.dim() == 0 and not d_loss.requires_grad
    assert math.isfinite(d_loss) and gan.last_discriminator_loss is d_loss
    g_loss = gan(x.requires_grad_(True), y)
    assert g_loss.dim() == 0 and torch.isfinite(g_loss)
    if mode == "vanilla":  # D(x) near 0 at init: BCE(logit~0, 1) ~ log 2
        assert 0.2 < g_loss.item() < 2.0


def test_gan_bad_mode_and_missing_real():
    with pytest.raises(ValueError, match="mode"):
        GANLoss("wgan")
    with pytest.raises(ValueError, match="real images"):
        GANLoss(width=4, depth=1).discriminator_step(torch.zeros(1, 3, 8, 8), None)


def test_patch_discriminator_any_size():
    d = PatchDiscriminator(width=4, depth=3)
    for h, w in [(1, 1), (7, 13), (32, 32)]:
        out = d(torch.rand(2, 3, h, w))
        assert out.shape == (2, 1, math.ceil(h / 8), math.ceil(w / 8))


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge"])
def test_discriminator_learns_separable_case(mode):
    torch.manual_seed(0)
    gan = GANLoss(mode, width=4, depth=1, lr=1e-2)
    real, fake = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    before = _d_params(gan)
    losses = [gan.discriminator_step(fake, real) for _ in range(10)]
    assert not _same(before, _d_params(gan))
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():  # ... and it now scores real images above generated ones
        assert gan.discriminator(real).mean() > gan.discriminator(fake).mean() + 0.5


def test_generator_forward_leaves_no_discriminator_grads():
    torch.manual_seed(0)
    gan = GANLoss("vanilla", width=4, depth=1)
    first = next(gan.discriminator.parameters())
    first.requires_grad_(False)  # a user-frozen parameter must stay frozen afterwards
    pred = torch.rand(2, 3, 8, 8, requires_grad=True)
    gan(pred, None).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.discriminator.parameters())
    flags = [p.requires_grad for p in gan.discriminator.parameters()]
    assert flags[0] is False and all(flags[1:])  # restored as they were


def test_generator_forward_restores_flags_on_error():
    gan = GANLoss(width=4, depth=1)
    with pytest.raises(RuntimeError):
        gan(torch.rand(1, 5, 8, 8), None)  # wrong channel count
    assert all(p.requires_grad for p in gan.discriminator.parameters())


def test_gan_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(0)
    a = GANLoss("lsgan", width=4, depth=1, lr=1e-3)
    x, y = _images(8, (2, 3, 8, 8))
    for _ in range(3):
        a.discriminator_step(x, y)
    saved = copy.deepcopy(a.state_dict())
    assert saved["_extra_state"]["optimizer"]["state"]  # Adam moments are in the checkpoint
    torch.manual_seed(1)
    b = GANLoss("lsgan", width=4, depth=1, lr=1e-3)
    assert not _same(_d_params(a), _d_params(b))
    b.load_state_dict(saved)
    assert _same(_d_params(a), _d_params(b))
    assert a.discriminator_step(y, x) == b.discriminator_step(y, x)
    assert _same(_d_params(a), _d_params(b))  # same step from the same Adam state
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # assign=True replaces the parameter objects: the optimizer must follow the new ones.
    c = GANLoss("lsgan", width=4, depth=1, lr=1e-3)
    c.load_state_dict(copy.deepcopy(a.state_dict()), assign=True)
    assert a.discriminator_step(x, y) == c.discriminator_step(x, y)
    assert _same(_d_params(a), _d_params(c))
    assert all(p is q for p, q in zip(c.optimizer.param_groups[0]["params"], c.discriminator.parameters()))
    # A fresh term's checkpoint (no optimizer yet) loads too.
    GANLoss("lsgan", width=4, depth=1).load_state_dict(GANLoss("lsgan", width=4, depth=1).state_dict())


def test_gan_moves_with_to_and_keeps_optimizer_state():
    torch.manual_seed(0)
    gan = GANLoss("hinge", width=4, depth=1)
    x, y = _images(9, (2, 3, 8, 8))
    gan.discriminator_step(x, y)
    gan.to(torch.float64)
    params = list(gan.discriminator.parameters())
    assert all(p.dtype == torch.float64 for p in params)
    opt_params = gan.optimizer.param_groups[0]["params"]
    assert len(opt_params) == len(params) and all(p is q for p, q in zip(opt_params, params))
    state = gan.optimizer.state[params[0]]
    assert state["exp_avg"].dtype == torch.float64 and int(state["step"]) == 1
    before = _d_params(gan)
    assert math.isfinite(gan.discriminator_step(x.double(), y.double()))
    assert not _same(before, _d_params(gan))
    assert int(gan.optimizer.state[params[0]]["step"]) == 2


def test_gan_accepts_user_discriminator():
    disc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(4, 1, 1))
    gan = GANLoss("lsgan", discriminator=disc, lr=1e-2)
    assert gan.discriminator is disc
    before = _d_params(gan)
    gan.discriminator_step(torch.zeros(1, 3, 8, 8), torch.ones(1, 3, 8, 8))
    assert not _same(before, _d_params(gan))


def test_weighted_loss_updates_discriminator_in_train_mode_only():
    torch.manual_seed(0)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "gan": 0.01}, terms={"gan": {"width": 4, "depth": 1}})
    gan = loss_fn.terms["gan"]
    x, y = _images(10, (2, 3, 8, 8))

    loss_fn.eval()
    before = _d_params(gan)
    loss_fn(x, y)
    assert _same(before, _d_params(gan))  # eval: no discriminator step

    loss_fn.train()
    with torch.no_grad():
        loss_fn(x, y)
    assert _same(before, _d_params(gan))  # no_grad (validation inside training): no step either

    pred = x.clone().requires_grad_(True)
    total = loss_fn(pred, y)
    assert not _same(before, _d_params(gan))  # train: one automatic step
    total.backward()
    assert pred.grad is not None and all(p.grad is None for p in gan.discriminator.parameters())
    assert loss_fn.last_values["gan"] > 0


def test_weighted_loss_manual_discriminator_updates():
    torch.manual_seed(0)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "gan": 0.01},
                                   terms={"gan": {"width": 4, "depth": 1, "auto_update": False, "mode": "hinge"}})
    gan = loss_fn.terms["gan"]
    x, y = _images(11, (2, 3, 8, 8))
    before = _d_params(gan)
    loss_fn.train()(x.requires_grad_(True), y).backward()
    assert _same(before, _d_params(gan))
    out = loss_fn.update_discriminators(x, y)
    assert set(out) == {"gan"} and math.isfinite(out["gan"])
    assert not _same(before, _d_params(gan))


def test_weighted_loss_checkpoint_carries_discriminator_and_optimizer():
    torch.manual_seed(0)
    opts = {"gan": {"width": 4, "depth": 1}}
    a = al.AgentWeightedLoss({"l1": 1.0, "gan": 0.01}, terms=opts)
    x, y = _images(12, (2, 3, 8, 8))
    a(x, y)
    a.set_weights({"l1": 1.0, "gan": 0.05})
    saved = copy.deepcopy(a.state_dict())
    assert "terms.gan._extra_state" in saved and any(k.startswith("terms.gan.discriminator.") for k in saved)
    b = al.AgentWeightedLoss({"l1": 1.0, "gan": 0.01}, terms=opts)
    b.load_state_dict(saved)
    assert b.weights == {"l1": 1.0, "gan": 0.05}
    assert _same(_d_params(a.terms["gan"]), _d_params(b.terms["gan"]))
    assert a(x, y).item() == b(x, y).item()  # both take the same automatic step
    assert _same(_d_params(a.terms["gan"]), _d_params(b.terms["gan"]))


# ---------------------------------------------------------------------------------- lpips


def test_lpips_random_is_frozen_and_in_eval(built_terms):
    term = built_terms["lpips"]
    assert list(term.parameters()) == [] and term.state_dict() == {}
    nn.ModuleDict({"t": term}).train()
    assert term.training and not any(m.training for m in term.lpips.modules())
    x, y = _images(13)
    # Symmetric and deterministic (no dropout active).
    assert term(x, y).item() == pytest.approx(term(y, x).item(), rel=1e-5)
    assert term(x, y).item() == term(x, y).item()


def test_lpips_offline_error(monkeypatch, tmp_path):
    import pyiqa.utils.download_util as pyiqa_download

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)  # torchvision's backbone download
    monkeypatch.setattr(pyiqa_download, "download_url_to_file", no_network)  # pyiqa's LPIPS weights
    with pytest.raises(RuntimeError) as info:
        LPIPSLoss()
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth") in message
    assert "LPIPS_v0.1_alex-df73285e.pth" in message and "model_path=" in message
    assert "pretrained_backbone=False" in message


def test_lpips_argument_checks():
    with pytest.raises(ValueError, match="squeeze"):
        LPIPSLoss(net="alex", pretrained_backbone=False)
    with pytest.raises(ValueError, match="net"):
        LPIPSLoss(net="resnet")


# ------------------------------------------------------------------------- mixed precision


@pytest.mark.parametrize("name", ["ssim", "mscn"])
def test_statistics_terms_under_bf16_autocast_match_float32(name):
    torch.manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    term = create_loss(name)

    def value_and_grad(autocast: bool) -> tuple[float, torch.Tensor]:
        p = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            v = term(p * 1.0, y)
        v.backward()
        return float(v), p.grad

    v32, g32 = value_and_grad(False)
    v16, g16 = value_and_grad(True)
    assert v16 == pytest.approx(v32, rel=1e-5)
    assert torch.allclose(g16, g32, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_predictions_work_outside_autocast(dtype):
    torch.manual_seed(0)
    y = torch.rand(1, 3, 32, 32)
    pred = y.to(dtype).requires_grad_(True)
    for name in ("ssim", "mscn"):
        assert torch.isfinite(create_loss(name)(pred, y))
    gan = GANLoss(width=8, depth=1)
    gan.discriminator_step(pred.detach(), y)
    value = gan(pred, y)
    value.backward()
    assert torch.isfinite(value) and pred.grad is not None

"""BasicSR adapter: the loss-block mapping, its numbers against BasicSR's formulas, and an exact resume.

BasicSR is not installed (it pins old packages and runs code at install), so ``StandInBaseModel`` and
``StandInSRModel`` below reproduce what these tests rely on of BasicSR's ``BaseModel``/``SRModel``
(basicsr/models/base_model.py, sr_model.py) and ``run_basicsr`` its ``train_pipeline`` loop
(basicsr/train.py, utils/misc.check_resume): in particular ``save_training_state`` writes
``{'epoch', 'iter', 'optimizers', 'schedulers'}`` to ``training_states/{iter}.state`` and
``resume_training`` restores optimizers and LR schedulers only, networks coming back through
``pretrain_network_*`` paths. ``RefSRGANModel`` is BasicSR's ``SRGANModel`` step with the formulas of
BasicSR's ``L1Loss``, ``PerceptualLoss`` and ``GANLoss`` written out, to check the mapping's numbers.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import agentloss as al
from agentloss.datasets.io import write_image
from agentloss.integrations.basicsr import (
    STATE_KEY,
    AgentLossMixin,
    BasicSRConfigError,
    discriminator_optimizers,
    loss_from_basicsr,
    terms_from_basicsr,
)
from agentloss.records import read_records

ROOT = Path(__file__).resolve().parents[1]


def _load_example():
    spec = importlib.util.spec_from_file_location("basicsr_model_example", ROOT / "examples" / "basicsr_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


@pytest.fixture(autouse=True)
def _one_thread():
    # These tensors are tiny: a second thread only waits for the first (on a busy machine, 30x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- tiny networks, BasicSR-style registry ------------------------------------------------------------
class TinyG(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x):
        return x + self.body(x)


class TinyD(nn.Module):
    """With batch norm, as BasicSR's VGGStyleDiscriminator: its running statistics depend on the order of forwards."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.LeakyReLU(0.2), nn.Conv2d(8, 1, 3, 1, 1))

    def forward(self, x):
        return self.body(x)


NETS = {"TinyG": TinyG, "TinyD": TinyD}


def build_network(net_opt):  # basicsr.archs.build_network: the type names the class, the rest are its kwargs
    net_opt = dict(net_opt)
    return NETS[net_opt.pop("type")](**net_opt)


# -- the stand-in of BasicSR ----------------------------------------------------------------------------
class StandInBaseModel:
    """BasicSR's ``BaseModel``, single process, as far as the tests use it."""

    def __init__(self, opt):
        self.opt = opt
        self.device = torch.device("cuda" if opt["num_gpu"] != 0 else "cpu")
        self.is_train = opt["is_train"]
        self.schedulers = []
        self.optimizers = []

    def model_to_device(self, net):
        return net.to(self.device)  # BasicSR also wraps in (Distributed)DataParallel; not here

    def get_bare_model(self, net):
        return net

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        assert optim_type == "Adam", "the stand-in builds Adam only"
        return torch.optim.Adam(params, lr, **kwargs)

    def setup_schedulers(self):
        train_opt = self.opt["train"]
        scheduler_type = train_opt["scheduler"].pop("type")
        assert scheduler_type == "MultiStepLR"  # BasicSR's MultiStepRestartLR without restarts is MultiStepLR
        for optimizer in self.optimizers:
            self.schedulers.append(torch.optim.lr_scheduler.MultiStepLR(optimizer, **train_opt["scheduler"]))

    def update_learning_rate(self, current_iter, warmup_iter=-1):
        if current_iter > 1:
            for scheduler in self.schedulers:
                scheduler.step()
        assert warmup_iter == -1, "the stand-in has no warm-up"

    def model_ema(self, decay=0.999):
        g, ema = dict(self.net_g.named_parameters()), dict(self.net_g_ema.named_parameters())
        for k, p in ema.items():
            p.data.mul_(decay).add_(g[k].data, alpha=1 - decay)

    def save_network(self, net, net_label, current_iter, param_key="params"):
        if current_iter == -1:
            current_iter = "latest"
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        save_dict = {k: {n: p.cpu() for n, p in self.get_bare_model(m).state_dict().items()} for m, k in zip(nets, keys)}
        torch.save(save_dict, os.path.join(self.opt["path"]["models"], f"{net_label}_{current_iter}.pth"))

    def load_network(self, net, load_path, strict=True, param_key="params"):
        load_net = torch.load(load_path, map_location=lambda storage, loc: storage)
        if param_key is not None:
            if param_key not in load_net and "params" in load_net:
                param_key = "params"
            load_net = load_net[param_key]
        self.get_bare_model(net).load_state_dict(load_net, strict=strict)

    def save_training_state(self, epoch, current_iter):
        if current_iter != -1:
            state = {"epoch": epoch, "iter": current_iter, "optimizers": [], "schedulers": []}
            for o in self.optimizers:
                state["optimizers"].append(o.state_dict())
            for s in self.schedulers:
                state["schedulers"].append(s.state_dict())
            torch.save(state, os.path.join(self.opt["path"]["training_states"], f"{current_iter}.state"))

    def resume_training(self, resume_state):
        resume_optimizers = resume_state["optimizers"]
        resume_schedulers = resume_state["schedulers"]
        assert len(resume_optimizers) == len(self.optimizers), "Wrong lengths of optimizers"
        assert len(resume_schedulers) == len(self.schedulers), "Wrong lengths of schedulers"
        for i, o in enumerate(resume_optimizers):
            self.optimizers[i].load_state_dict(o)
        for i, s in enumerate(resume_schedulers):
            self.schedulers[i].load_state_dict(s)

    def reduce_loss_dict(self, loss_dict):
        with torch.no_grad():
            return OrderedDict((name, value.mean().item()) for name, value in loss_dict.items())


class StandInSRModel(StandInBaseModel):
    """BasicSR's ``SRModel`` (its ``init_training_settings`` builds BasicSR's losses: each test model overrides it)."""

    def __init__(self, opt):
        super().__init__(opt)
        self.net_g = self.model_to_device(build_network(opt["network_g"]))
        load_path = self.opt["path"].get("pretrain_network_g", None)
        if load_path is not None:
            self.load_network(self.net_g, load_path, self.opt["path"].get("strict_load_g", True),
                              self.opt["path"].get("param_key_g", "params"))
        if self.is_train:
            self.init_training_settings()

    def setup_optimizers(self):
        train_opt = self.opt["train"]
        optim_params = [v for v in self.net_g.parameters() if v.requires_grad]
        optim_type = train_opt["optim_g"].pop("type")
        self.optimizer_g = self.get_optimizer(optim_type, optim_params, **train_opt["optim_g"])
        self.optimizers.append(self.optimizer_g)

    def feed_data(self, data):
        self.lq = data["lq"].to(self.device)
        if "gt" in data:
            self.gt = data["gt"].to(self.device)

    def save(self, epoch, current_iter):
        self.save_network(self.net_g, "net_g", current_iter)
        self.save_training_state(epoch, current_iter)


def batch(current_iter: int) -> dict[str, torch.Tensor]:
    """The batch of an iteration depends on the iteration only, so a resumed run sees what the whole one saw."""
    g = torch.Generator().manual_seed(1000 + current_iter)
    gt = torch.rand(2, 3, 16, 16, generator=g)
    return {"lq": (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1), "gt": gt}


def check_resume(opt, resume_iter):  # basicsr.utils.misc.check_resume: networks come back as pretrain paths
    for network in [key for key in opt if key.startswith("network_")]:
        basename = network.replace("network_", "")
        opt["path"][f"pretrain_{network}"] = os.path.join(opt["path"]["models"], f"net_{basename}_{resume_iter}.pth")


def run_basicsr(opt, model_cls, *, auto_resume=False, crash_after=None):
    """basicsr/train.py's train_pipeline: (auto-)resume, build, resume_training, the iteration loop, checkpoints."""
    opt = copy.deepcopy(opt)
    resume_state = None
    states_dir = Path(opt["path"]["training_states"])
    if auto_resume and any(states_dir.glob("*.state")):
        latest = max(int(p.name.split(".state")[0]) for p in states_dir.glob("*.state"))
        resume_state = torch.load(states_dir / f"{latest}.state", map_location=lambda s, loc: s, weights_only=False)
        check_resume(opt, resume_state["iter"])
    else:
        for key in ("models", "training_states"):
            os.makedirs(opt["path"][key], exist_ok=True)
    torch.manual_seed(opt["manual_seed"])  # parse_options' set_random_seed, before the model is built
    model = model_cls(opt)
    current_iter = 0
    if resume_state:
        model.resume_training(resume_state)
        current_iter = resume_state["iter"]
    while current_iter < opt["train"]["total_iter"]:
        current_iter += 1
        model.update_learning_rate(current_iter, warmup_iter=opt["train"].get("warmup_iter", -1))
        model.feed_data(batch(current_iter))
        model.optimize_parameters(current_iter)
        if current_iter % opt["logger"]["save_checkpoint_freq"] == 0:
            model.save(0, current_iter)
        if current_iter == crash_after:
            break
    return model


# -- the example's model over the stand-in ----------------------------------------------------------------
CONTRAST = al.CallableObjective(lambda x: float(x.std()), name="contrast", higher_is_better=True)


class AgentModel(example.AgentSRModelLogic, StandInSRModel):
    """``AgentSRModel`` as the example defines it, over the stand-in instead of BasicSR's SRModel."""

    def build_net(self, net_opt):
        return build_network(net_opt)

    def agentloss_objectives(self):
        return [CONTRAST]


class NoMixinModel(AgentModel):
    """The same model with BasicSR's own save/resume: what a BasicSR model without AgentLossMixin does."""

    save_training_state = StandInBaseModel.save_training_state
    resume_training = StandInBaseModel.resume_training


def make_opt(root: Path, *, gan: bool = True, stage_length: int = 2, agent: dict | None = None) -> dict[str, Any]:
    probe = root / "probe"
    if not probe.is_dir():
        g = torch.Generator().manual_seed(7)
        for i in range(2):
            write_image(torch.rand(3, 16, 16, generator=g), probe / f"{i}.png")
    train: dict[str, Any] = {
        "optim_g": {"type": "Adam", "lr": 2e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
        "scheduler": {"type": "MultiStepLR", "milestones": [6], "gamma": 0.5},
        "total_iter": 8,
        "ema_decay": 0.5,  # the probe is restored with net_g_ema, which BasicSR saves as params_ema
        "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        "perceptual_opt": {"type": "PerceptualLoss", "layer_weights": {"conv1_2": 0.5, "relu2_1": 1.0},
                           "vgg_type": "vgg19", "use_input_norm": True, "perceptual_weight": 0.2,
                           "style_weight": 0, "criterion": "l1"},
    }
    opt: dict[str, Any] = {"name": "tiny", "model_type": "AgentSRModel", "num_gpu": 0, "is_train": True, "dist": False,
                           "manual_seed": 0, "network_g": {"type": "TinyG"}, "train": train,
                           "path": {"experiments_root": str(root), "models": str(root / "models"),
                                    "training_states": str(root / "training_states")},
                           "logger": {"save_checkpoint_freq": 4},
                           "agentloss": {"agent": agent or {"type": "random", "seed": 0}, "objectives": ["unused"],
                                         "probe": str(probe), "stage_length": stage_length,
                                         "perceptual_options": {"weights": None}}}  # random VGG19: no download
    if gan:
        opt["network_d"] = {"type": "TinyD"}
        train["optim_d"] = {"type": "Adam", "lr": 2e-3, "weight_decay": 0, "betas": [0.9, 0.99]}
        train["gan_opt"] = {"type": "GANLoss", "gan_type": "vanilla", "real_label_val": 1.0, "fake_label_val": 0.0,
                            "loss_weight": 0.1}
    return opt


def records(recs) -> list[dict]:
    return [{k: v for k, v in r.to_dict().items() if k != "timings"} for r in recs]


def params(model) -> list[torch.Tensor]:
    nets = [getattr(model, name) for name in ("net_g", "net_g_ema", "net_d") if getattr(model, name, None) is not None]
    return [t.detach().clone() for net in nets for t in net.state_dict().values()]


# -- resume --------------------------------------------------------------------------------------------------
def test_a_resumed_basicsr_run_equals_the_uninterrupted_one_exactly(tmp_path):
    whole = run_basicsr(make_opt(tmp_path / "whole"), AgentModel)
    opt = make_opt(tmp_path / "cut")
    run_basicsr(opt, AgentModel, crash_after=7)  # the last checkpoint is iter 4; stage 3 (iter 6) is redone
    state = torch.load(tmp_path / "cut/training_states/4.state", weights_only=False)
    assert set(state) == {"epoch", "iter", "optimizers", "schedulers", STATE_KEY} and len(state["optimizers"]) == 2
    assert state[STATE_KEY]["scheduler"]["iteration"] == 4
    resumed = run_basicsr(opt, AgentModel, auto_resume=True)

    initial = {"l1": 1.0, "perceptual": 0.2, "gan": 0.1}
    assert whole.stage_scheduler.history[2].next_weights != initial  # the agent had moved the weights by iter 4
    assert resumed.loss_fn.weights == whole.loss_fn.weights != initial
    assert records(resumed.stage_scheduler.history) == records(whole.stage_scheduler.history)
    assert [r.stage for r in whole.stage_scheduler.history] == [0, 1, 2, 3, 4]
    assert records(read_records(tmp_path / "cut/agentloss")) == records(read_records(tmp_path / "whole/agentloss"))
    assert resumed.stage_scheduler.probe_model is resumed.net_g_ema
    assert all(torch.equal(a, b) for a, b in zip(params(resumed), params(whole), strict=True))
    assert resumed.optimizer_d.state_dict()["state"][0]["step"] == whole.optimizer_d.state_dict()["state"][0]["step"]


def test_without_the_mixin_basicsr_resumes_with_the_yaml_weights(tmp_path):
    whole = run_basicsr(make_opt(tmp_path / "whole"), AgentModel)
    opt = make_opt(tmp_path / "cut")
    run_basicsr(opt, NoMixinModel, crash_after=4)
    assert STATE_KEY not in torch.load(tmp_path / "cut/training_states/4.state", weights_only=False)
    resumed = run_basicsr(opt, NoMixinModel, auto_resume=True)
    initial = {"l1": 1.0, "perceptual": 0.2, "gan": 0.1}
    after_resume = resumed.stage_scheduler.history
    # The first stage after the resume (iters 5-6) trained with the yaml's weights, not the agent's, and the
    # agent started over from a new S0 (its iteration counter at 0, not at 4).
    assert after_resume[0].iteration == 0 and after_resume[1].weights == initial
    assert whole.stage_scheduler.history[3].weights != initial
    assert resumed.loss_fn.weights != whole.loss_fn.weights
    assert records(after_resume) != records(whole.stage_scheduler.history)


def test_a_state_saved_without_the_agent_entry_is_refused_or_explicitly_continued(tmp_path, caplog):
    opt = make_opt(tmp_path, gan=False)
    run_basicsr(opt, NoMixinModel, crash_after=4)
    with pytest.raises(RuntimeError, match="agentloss_require_state = False"):
        run_basicsr(opt, AgentModel, auto_resume=True)

    class Lenient(AgentModel):
        agentloss_require_state = False

    with caplog.at_level(logging.WARNING, logger="agentloss"):
        resumed = run_basicsr(opt, Lenient, auto_resume=True)
    assert "new agent history" in caplog.text
    assert resumed.stage_scheduler.history[0].iteration == 0 and resumed.stage_scheduler.iteration == 4


def test_a_discriminator_optimiser_basicsr_does_not_hold_is_refused_at_save(tmp_path):
    class Forgetful(AgentModel):
        def setup_optimizers(self):
            StandInSRModel.setup_optimizers(self)  # the gan term's Adam never reaches self.optimizers
            self.optimizer_d = None

    with pytest.raises(RuntimeError, match=r"self.optimizers.extend\(discriminator_optimizers"):
        run_basicsr(make_opt(tmp_path), Forgetful)


# -- the mapping's numbers against BasicSR's formulas -----------------------------------------------------------
# Indices in BasicSR's NAMES['vgg19'] (basicsr/archs/vgg_arch.py): conv1_1, relu1_1, conv1_2, relu1_2, pool1,
# conv2_1, relu2_1, ...
BASICSR_VGG19_INDEX = {"conv1_2": 2, "relu2_1": 6}


class RefSRGANModel(StandInSRModel):
    """BasicSR's SRGANModel (standard GAN) with the formulas of its L1Loss, PerceptualLoss and GANLoss."""

    def init_training_settings(self):
        train_opt = self.opt["train"]
        self.net_d = self.model_to_device(build_network(self.opt["network_d"]))
        self.net_g.train()
        self.net_d.train()
        self.vgg = None  # set by the test: the same (random) VGG19 layers as the agentloss model's
        self.setup_optimizers()
        optim_d = dict(train_opt["optim_d"])
        self.optimizer_d = self.get_optimizer(optim_d.pop("type"), self.net_d.parameters(), **optim_d)
        self.optimizers.append(self.optimizer_d)
        self.setup_schedulers()

    def vgg_features(self, x):  # VGGFeatureExtractor: input normalisation, then the named layers' outputs
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        x, out = (x - mean) / std, {}
        wanted = {i: k for k, i in BASICSR_VGG19_INDEX.items()}
        for i, layer in enumerate(self.vgg):
            x = layer(x)
            if i in wanted:
                out[wanted[i]] = x.clone()
        return out

    def gan_loss(self, logits, target_is_real, is_disc):
        o = self.opt["train"]["gan_opt"]
        label = logits.new_ones(logits.size()) * (o["real_label_val"] if target_is_real else o["fake_label_val"])
        loss = F.binary_cross_entropy_with_logits(logits, label)
        return loss if is_disc else loss * o["loss_weight"]

    def optimize_parameters(self, current_iter):
        t = self.opt["train"]
        for p in self.net_d.parameters():
            p.requires_grad = False
        self.optimizer_g.zero_grad()
        self.output = self.net_g(self.lq)
        l_pix = t["pixel_opt"]["loss_weight"] * F.l1_loss(self.output, self.gt, reduction="none").mean()
        fx, fgt = self.vgg_features(self.output), self.vgg_features(self.gt.detach())
        po = t["perceptual_opt"]
        l_percep = sum(F.l1_loss(fx[k], fgt[k]) * w for k, w in po["layer_weights"].items()) * po["perceptual_weight"]
        l_gan = self.gan_loss(self.net_d(self.output), True, is_disc=False)
        (l_pix + l_percep + l_gan).backward()
        self.optimizer_g.step()
        for p in self.net_d.parameters():
            p.requires_grad = True
        self.optimizer_d.zero_grad()
        self.gan_loss(self.net_d(self.gt), True, is_disc=True).backward()
        self.gan_loss(self.net_d(self.output.detach()), False, is_disc=True).backward()
        self.optimizer_d.step()


def test_the_mapped_losses_train_as_basicsr_srgan_model_does(tmp_path):
    opt = make_opt(tmp_path, agent={"type": "fixed"}, stage_length=100)
    opt["train"]["total_iter"] = 4
    del opt["train"]["ema_decay"]  # the reference keeps no EMA (it does not change training)
    agent_model = run_basicsr(opt, AgentModel)
    ref_opt = copy.deepcopy(opt)
    ref_opt["path"] = {k: v.replace(str(tmp_path), str(tmp_path / "ref")) for k, v in opt["path"].items()}
    torch.manual_seed(opt["manual_seed"])
    ref = RefSRGANModel(copy.deepcopy(ref_opt))
    perceptual = agent_model.loss_fn.terms["perceptual"]
    ref.vgg = copy.deepcopy(perceptual.vgg)  # agentloss's layers are torchvision's vgg19().features[:7], same indices
    assert len(ref.vgg) == max(BASICSR_VGG19_INDEX.values()) + 1
    for current_iter in range(1, 5):
        ref.update_learning_rate(current_iter)
        ref.feed_data(batch(current_iter))
        ref.optimize_parameters(current_iter)
    for a, b in zip(params(agent_model), params(ref), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # summation order differs (one D backward vs two)
    assert agent_model.log_dict["w_gan"] == pytest.approx(0.1) and "l_d_gan" in agent_model.log_dict


def test_charbonnier_eps_is_basicsr_eps_under_the_square_root():
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    for eps in (1e-12, 1e-3, 0.25):
        loss_fn = loss_from_basicsr({"pixel_opt": {"type": "CharbonnierLoss", "loss_weight": 2.0, "eps": eps}})
        basicsr = 2.0 * torch.sqrt((pred - target) ** 2 + eps).mean()  # basicsr/losses/basic_loss.charbonnier_loss
        torch.testing.assert_close(loss_fn(pred, target), basicsr)


def test_mse_and_lsgan_and_hinge_map_to_their_terms():
    d = TinyD()
    spec = terms_from_basicsr({"pixel_opt": {"type": "MSELoss", "loss_weight": 0.5},
                               "gan_opt": {"type": "GANLoss", "gan_type": "hinge", "real_label_val": 0.9},
                               "optim_d": {"type": "Adam", "lr": 1e-4}}, discriminator=d)
    assert spec.weights == {"mse": 0.5, "gan": 1.0}
    assert spec.terms["gan"] == {"mode": "hinge", "discriminator": d, "auto_update": False, "lr": 1e-4,
                                 "betas": (0.9, 0.999), "weight_decay": 0.0}  # BasicSR's Adam gets torch's betas
    loss_fn = spec.build()
    (optimizer,) = discriminator_optimizers(loss_fn)
    assert optimizer.defaults["betas"] == (0.9, 0.999) and optimizer.param_groups[0]["params"][0] is d.body[0].weight


# -- errors name the option -------------------------------------------------------------------------------------
PERCEPTUAL = {"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1.0}}
GAN = {"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 0.1}
OPTIM_D = {"type": "Adam", "lr": 1e-4}


@pytest.mark.parametrize("train, message", [
    ({"pixel_opt": {"type": "WeightedTVLoss"}}, r"train.pixel_opt.type = 'WeightedTVLoss'"),
    ({"pixel_opt": {"type": "L1Loss", "reduction": "sum"}}, r"train.pixel_opt.reduction = 'sum'"),
    ({"pixel_opt": {"type": "L1Loss", "loss_weight": "1e-2"}}, r"train.pixel_opt.loss_weight = '1e-2' .*!!float"),
    ({"pixel_opt": {"type": "L1Loss", "weight": 1.0}}, r"train.pixel_opt: unknown option\(s\) \['weight'\]"),
    ({"pixel_opt": {"type": "CharbonnierLoss", "eps": 0}}, r"train.pixel_opt.eps = 0.0"),
    ({"perceptual_opt": {**PERCEPTUAL, "style_weight": 1.0}}, r"train.perceptual_opt.style_weight = 1.0"),
    ({"perceptual_opt": {**PERCEPTUAL, "vgg_type": "vgg16"}}, r"train.perceptual_opt.vgg_type = 'vgg16'"),
    ({"perceptual_opt": {**PERCEPTUAL, "criterion": "fro"}}, r"train.perceptual_opt.criterion = 'fro'"),
    ({"perceptual_opt": {**PERCEPTUAL, "range_norm": True}}, r"train.perceptual_opt.range_norm"),
    ({"perceptual_opt": {**PERCEPTUAL, "layer_weights": {"conv6_1": 1.0}}}, r"unknown VGG19 layer\(s\) \['conv6_1'\]"),
    ({"perceptual_opt": {**PERCEPTUAL, "loss_weight": 1.0}}, r"train.perceptual_opt: unknown option\(s\) \['loss_weight'\]"),
    ({"gan_opt": {**GAN, "gan_type": "wgan_softplus"}, "optim_d": OPTIM_D}, r"train.gan_opt.gan_type = 'wgan_softplus'"),
    ({"gan_opt": {**GAN, "real_label_val": 0.9}, "optim_d": OPTIM_D}, r"train.gan_opt.real_label_val = 0.9"),
    ({"gan_opt": GAN}, r"train.optim_d is missing"),
    ({"gan_opt": GAN, "optim_d": {"type": "SGD", "lr": 0.1}}, r"train.optim_d.type = 'SGD'"),
    ({"gan_opt": GAN, "optim_d": {"lr": 0.1}}, r"train.optim_d.type is missing.*popped"),
    ({"gan_opt": GAN, "optim_d": {**OPTIM_D, "amsgrad": True}}, r"train.optim_d: option\(s\) \['amsgrad'\]"),
    ({"pixel_opt": {"type": "L1Loss"}, "ldl_opt": {"type": "L1Loss"}}, r"train.ldl_opt: .*ignore=\('ldl_opt',\)"),
    ({"pixel_opt": {"type": "L1Loss", "loss_weight": 0}}, r"every loss weight is 0"),
    ({"optim_g": {"type": "Adam"}, "perceptual_opt": None}, r"the train block has no loss"),
])
def test_what_cannot_be_mapped_faithfully_is_refused_naming_the_option(train, message):
    with pytest.raises(BasicSRConfigError, match=message):
        terms_from_basicsr(train, discriminator=TinyD() if "gan_opt" in train else None)


def test_gan_needs_basicsr_discriminator_and_esrgan_is_refused():
    with pytest.raises(BasicSRConfigError, match=r"discriminator=self.net_d"):
        terms_from_basicsr({"gan_opt": GAN, "optim_d": OPTIM_D})
    with pytest.raises(BasicSRConfigError, match="relativistic"):
        terms_from_basicsr({"model_type": "ESRGANModel", "train": {"gan_opt": GAN, "optim_d": OPTIM_D}},
                           discriminator=TinyD())
    with pytest.raises(BasicSRConfigError, match="no gan_opt"):
        terms_from_basicsr({"pixel_opt": {"type": "L1Loss"}}, discriminator=TinyD())
    spec = terms_from_basicsr({"pixel_opt": {"type": "L1Loss"}, "ldl_opt": {"type": "L1Loss"}}, ignore=("ldl_opt",))
    assert spec.weights == {"l1": 1.0} and spec.sources == {"l1": "train.pixel_opt"}


# -- the example ------------------------------------------------------------------------------------------------
def test_the_example_imports_without_basicsr_and_says_how_to_get_it():
    if example.AgentSRModel is not None:
        pytest.skip("BasicSR is installed here")
    assert isinstance(example.BASICSR_IMPORT_ERROR, ImportError)
    with pytest.raises(SystemExit, match="pip install basicsr"):
        example.main()


def test_the_example_refuses_a_yaml_without_its_agentloss_block_before_building_anything(tmp_path):
    opt = make_opt(tmp_path)
    del opt["agentloss"]
    with pytest.raises(ValueError, match="needs an agentloss: block"):
        run_basicsr(opt, AgentModel)
    opt = make_opt(tmp_path)
    opt["agentloss"]["stage_length"] = "5000"
    with pytest.raises(ValueError, match="stage_length must be a positive integer"):
        run_basicsr(opt, AgentModel)


def test_the_mixin_needs_a_stage_scheduler(tmp_path):
    class Bare(AgentLossMixin, StandInSRModel):
        def init_training_settings(self):
            self.setup_optimizers()

    model = Bare(make_opt(tmp_path, gan=False))
    with pytest.raises(AttributeError, match="set self.stage_scheduler"):
        model.save_training_state(0, 1)

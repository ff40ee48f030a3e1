"""Folder data, degradations, benchmark discovery and evaluation (tiny images written with PIL to tmp folders)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agentloss.data import EVAL_PHOTOS, NATURAL_PHOTOS, bicubic_downsample
from agentloss.datasets import (
    BenchmarkNotFoundError,
    BicubicDegradation,
    DegradationOrder,
    GaussianNoise,
    HRFolder,
    ImagePair,
    PairedFolder,
    PairingError,
    RealWorldDegradation,
    RealWorldDegradationConfig,
    RestorationStream,
    builtin_eval_pairs,
    evaluate,
    find_benchmark,
    make_loader,
    read_image,
    write_image,
)
from agentloss.datasets.kernels import gaussian_kernel, sinc_kernel


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: more threads only add overhead (and the machine may be busy).
    torch.set_num_threads(1)
    yield


def _rand_image(h: int, w: int, seed: int) -> torch.Tensor:
    # Smooth-ish content so that bicubic/area resampling relations are meaningful.
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(1, 3, max(2, h // 4), max(2, w // 4), generator=g)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0]


@pytest.fixture
def hr_dir(tmp_path: Path) -> Path:
    for i, (h, w) in enumerate([(24, 28), (30, 30), (26, 32)]):
        write_image(_rand_image(h, w, i), tmp_path / "hr" / f"img{i}.png")
    return tmp_path / "hr"


# ---- folders and streams ---------------------------------------------------------------------------------------


def _is_window(patch: torch.Tensor, images: list[torch.Tensor]) -> bool:
    """Whether ``patch`` is a window of one of ``images`` under one of the 8 flips/rot90."""
    p = patch.shape[-1]
    for img in images:
        for t in range(8):
            cand = patch
            if t & 4:
                cand = cand.transpose(-2, -1)
            if t & 2:
                cand = cand.flip(-2)
            if t & 1:
                cand = cand.flip(-1)
            h, w = img.shape[-2:]
            for y in range(h - p + 1):
                for x in range(w - p + 1):
                    if torch.equal(img[:, y: y + p, x: x + p], cand):
                        return True
    return False


def test_hr_folder_stream_shapes_crops_and_bicubic_lq(hr_dir: Path):
    src = HRFolder(hr_dir)
    stream = RestorationStream(src, patch=16, batch=4, seed=3, degradation=BicubicDegradation(2))
    lq, gt = next(stream)
    assert lq.shape == (4, 3, 8, 8) and gt.shape == (4, 3, 16, 16)
    assert torch.equal(lq, bicubic_downsample(gt, 2))  # LQ is made from the GT patch
    images = [read_image(p) for p in src.paths]
    assert all(_is_window(p, images) for p in gt)  # every GT patch is a real (flipped/rotated) crop


def test_stream_determinism_resume_and_loader(hr_dir: Path):
    def make(seed: int) -> RestorationStream:
        return RestorationStream(HRFolder(hr_dir), patch=12, batch=3, seed=seed, degradation=BicubicDegradation(2))

    a, b, c = make(0), make(0), make(1)
    batches = [next(a) for _ in range(4)]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(batches, [next(b) for _ in range(4)]))
    assert not torch.equal(batches[0][1], next(c)[1])
    # Resume from a saved position: the next batch is the one the uninterrupted run drew.
    r = make(0)
    r.load_state_dict({"index": 2, "seed": 0})
    assert torch.equal(next(r)[1], batches[2][1])
    assert r.state_dict() == {"index": 3, "seed": 0}
    # A DataLoader started at batch 1 yields the stream's batches 1, 2, ...
    it = iter(make_loader(make(0).dataset, 3, start_batch=1))
    lq1, gt1 = next(it)
    assert torch.equal(gt1, batches[1][1]) and torch.equal(lq1, batches[1][0])


def test_paired_sr_folder_aligns_lq_with_gt(tmp_path: Path):
    # LQ = 2x2 area average of the GT: it commutes with flips/rot90, so an aligned crop keeps the relation.
    for i, (h, w) in enumerate([(20, 24), (24, 20)]):
        gt = _rand_image(h, w, 10 + i)
        write_image(gt, tmp_path / "GT" / f"{i:04d}.png")
        write_image(F.avg_pool2d(read_image(tmp_path / "GT" / f"{i:04d}.png").unsqueeze(0), 2)[0],
                    tmp_path / "LQ" / f"{i:04d}x2.png")
    src = PairedFolder(tmp_path / "LQ", tmp_path / "GT", scale=2)
    stream = RestorationStream(src, patch=8, batch=6, seed=0)
    lq, gt = next(stream)
    assert lq.shape == (6, 3, 4, 4) and gt.shape == (6, 3, 8, 8)
    assert (F.avg_pool2d(gt, 2) - lq).abs().max() <= 0.5 / 255 + 1e-6


def test_paired_folder_same_size_and_unmatched_error(tmp_path: Path):
    for i in (1, 2):
        write_image(_rand_image(16, 16, i), tmp_path / "rainy" / f"rain-{i:03d}.png")
        write_image(_rand_image(16, 16, 5 + i), tmp_path / "norain" / f"norain-{i:03d}.png")
    src = PairedFolder(tmp_path / "rainy", tmp_path / "norain")
    stream = RestorationStream(src, patch=8, batch=2, seed=0)
    lq, gt = next(stream)
    assert lq.shape == gt.shape == (2, 3, 8, 8) and not torch.equal(lq, gt)

    write_image(_rand_image(16, 16, 9), tmp_path / "rainy" / "rain-003.png")
    write_image(_rand_image(16, 16, 9), tmp_path / "norain" / "sunny.png")
    with pytest.raises(PairingError) as e:
        PairedFolder(tmp_path / "rainy", tmp_path / "norain")
    msg = str(e.value)
    assert "rain-003.png" in msg and "sunny.png" in msg and "have no GT" in msg and "have no LQ" in msg


def test_denoising_stream_noise_level(hr_dir: Path):
    stream = RestorationStream(HRFolder(hr_dir), patch=16, batch=4, seed=0, degradation=GaussianNoise(sigmas=(25,)))
    lq, gt = next(stream)
    assert lq.shape == gt.shape
    assert abs(float((lq - gt).std()) * 255 - 25) < 2.5


# ---- degradations ----------------------------------------------------------------------------------------------


def test_kernels_match_their_formulas():
    k = gaussian_kernel(7, 1.3)
    r = torch.arange(7.0) - 3
    g1 = torch.exp(-(r**2) / (2 * 1.3**2))
    assert torch.allclose(k, torch.outer(g1, g1) / torch.outer(g1, g1).sum(), atol=1e-6)
    # Rotating an anisotropic kernel by 90 degrees is the same as swapping its axes.
    assert torch.allclose(gaussian_kernel(9, 1.0, 2.5, math.pi / 2), gaussian_kernel(9, 2.5, 1.0, 0.0), atol=1e-6)
    s = sinc_kernel(11, math.pi / 2)
    assert torch.allclose(s, s.flip(0)) and torch.allclose(s, s.T) and abs(float(s.sum()) - 1) < 1e-5
    assert float(s.min()) < 0  # the side lobes that make ringing


def test_real_world_degradation_shape_range_reproducible():
    hr = _rand_image(48, 48, 0).unsqueeze(0).repeat(2, 1, 1, 1)
    deg = RealWorldDegradation(scale=4)
    a = deg(hr, torch.Generator().manual_seed(5))
    b = deg(hr, torch.Generator().manual_seed(5))
    c = deg(hr, torch.Generator().manual_seed(6))
    assert a.shape == (2, 3, 12, 12)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(a, (a * 255).round() / 255)  # 8-bit levels, like a saved photo
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # per-image randomness within a batch


def test_every_real_world_stage_changes_the_image():
    # Force every stage on, with blur strong enough to see and resizes that change the size.
    first = DegradationOrder(blur_sigma=(1.0, 2.0), sinc_prob=0.0, resize_probs=(0.0, 1.0, 0.0),
                             resize_range=(0.5, 0.9))
    second = DegradationOrder(blur_prob=1.0, blur_sigma=(1.0, 2.0), sinc_prob=0.0, resize_probs=(0.0, 1.0, 0.0),
                              resize_range=(0.5, 0.9), noise_sigma=(10.0, 20.0), poisson_scale=(1.0, 2.0))
    cfg = RealWorldDegradationConfig(first=first, second=second, final_sinc_prob=1.0)
    hr = _rand_image(64, 64, 1).unsqueeze(0)
    orders = set()
    for seed in (1, 2):  # seed 1 resizes+sincs before the final JPEG, seed 2 after it
        lq, stages = RealWorldDegradation(2, cfg).trace(hr, torch.Generator().manual_seed(seed))
        names = [n for n, _ in stages]
        assert set(names) == {"blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2", "jpeg2",
                              "resize_final", "sinc_final", "jpeg_final"}
        orders.add(names[-1])
        prev = hr
        for name, out in stages:
            changed = out.shape != prev.shape or float((out - prev).abs().mean()) > 1e-3
            assert changed, f"stage {name} left the image unchanged (seed {seed})"
            prev = out
        assert lq.shape == (1, 3, 32, 32)
    assert orders == {"jpeg_final", "sinc_final"}


# ---- benchmark discovery ---------------------------------------------------------------------------------------


def test_find_benchmark_layouts(tmp_path: Path):
    for stem in ("baby", "bird"):  # Set5/HR + Set5/LR_bicubic/X2/<name>x2.png
        write_image(_rand_image(12, 12, 0), tmp_path / "Set5" / "HR" / f"{stem}.png")
        write_image(_rand_image(6, 6, 0), tmp_path / "Set5" / "LR_bicubic" / "X2" / f"{stem}x2.png")
    for stem in ("lenna", "zebra"):  # BasicSR layout, nested one level
        write_image(_rand_image(12, 12, 0), tmp_path / "benchmark" / "Set14" / "GTmod12" / f"{stem}.png")
        write_image(_rand_image(4, 4, 0), tmp_path / "benchmark" / "Set14" / "LRbicx3" / f"{stem}.png")
    write_image(_rand_image(13, 11, 0), tmp_path / "BSD100" / "3096.png")  # flat HR folder under an alias
    for i in (1, 2):  # Rain100L/rainy + norain-xxx.png in the folder (PReNet release)
        write_image(_rand_image(8, 8, i), tmp_path / "Rain100L" / "rainy" / f"rain-{i:03d}.png")
        write_image(_rand_image(8, 8, i), tmp_path / "Rain100L" / f"norain-{i:03d}.png")
    write_image(_rand_image(10, 10, 0), tmp_path / "SOTS" / "outdoor" / "hazy" / "0001_0.8_0.2.jpg")
    write_image(_rand_image(10, 10, 0), tmp_path / "SOTS" / "outdoor" / "gt" / "0001.png")
    write_image(_rand_image(10, 10, 0), tmp_path / "CBSD68" / "101085.png")

    set5 = find_benchmark(tmp_path, "Set5", scale=2)
    assert (set5.task, len(set5), set5.layout) == ("sr", 2, "HR/ + LR_bicubic/X2/")
    assert [p.name for p in set5.pairs()] == ["baby", "bird"]
    set14 = find_benchmark(tmp_path, "set14", scale=3)
    assert set14.layout == "GTmod12/ + LRbicx3/" and set14.pairs()[0].lq.shape == (3, 4, 4)
    b100 = find_benchmark(tmp_path, "B100", scale=2)
    assert b100.synthesized == "bicubic"
    pair = b100.pairs()[0]
    assert pair.gt.shape == (3, 12, 10) and pair.lq.shape == (3, 6, 5)  # mod-cropped HR, bicubic LR
    rain = find_benchmark(tmp_path, "Rain100L")
    assert rain.task == "derain" and len(rain) == 2 and rain.eval_kwargs == {"y_channel": True, "crop_border": 0}
    sots = find_benchmark(tmp_path, "SOTS")
    assert sots.root.name == "outdoor" and [p.name for p in sots.pairs()] == ["0001"]
    cbsd = find_benchmark(tmp_path, "CBSD68", noise_sigma=25)
    p1, p2 = cbsd.pairs(seed=1)[0], cbsd.pairs(seed=1)[0]
    assert torch.equal(p1.lq, p2.lq) and not torch.equal(p1.lq, p1.gt)


def test_find_benchmark_errors_say_what_was_looked_for(tmp_path: Path):
    (tmp_path / "Urban100").mkdir()
    with pytest.raises(BenchmarkNotFoundError) as e:
        find_benchmark(tmp_path, "Manga109", scale=4)
    assert "manga109" in str(e.value) and "Urban100/" in str(e.value)
    write_image(_rand_image(8, 8, 0), tmp_path / "Rain100L" / "misc" / "a.png")
    with pytest.raises(BenchmarkNotFoundError) as e:
        find_benchmark(tmp_path, "Rain100L")
    msg = str(e.value)
    assert "rainy" in msg and "norain" in msg and "target" in msg and "misc/" in msg
    with pytest.raises(ValueError, match="scale"):
        find_benchmark(tmp_path, "Urban100")
    with pytest.raises(ValueError, match="task="):
        find_benchmark(tmp_path, "MyPhotos")


# ---- evaluation ------------------------------------------------------------------------------------------------


def test_identity_gives_inf_psnr_and_restores_training_mode():
    gt = (_rand_image(20, 20, 0) * 255).round() / 255  # 8-bit levels, like an image read from disk
    model = torch.nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        model.bias.zero_()
    model.train()
    res = evaluate(model, [ImagePair("a", gt, gt), (gt, gt)], scale=1)
    assert model.training
    assert res.per_image["a"]["psnr"] == math.inf and res.mean["psnr"] == math.inf
    assert abs(res.mean["ssim"] - 1) < 1e-6
    assert set(res.per_image) == {"a", "image_001"}


def test_bicubic_x2_psnr_is_plausible_and_beats_nearest():
    assert not set(EVAL_PHOTOS) & set(NATURAL_PHOTOS)
    pairs = builtin_eval_pairs("sr", scale=2, size=96)[:2]
    bic = evaluate(None, pairs, 2, restore_fn=lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"))
    near = evaluate(None, pairs, 2, restore_fn=lambda x: F.interpolate(x, scale_factor=2, mode="nearest"))
    assert 20 < bic.mean["psnr"] < 40 and 0.5 < bic.mean["ssim"] < 1
    assert bic.mean["psnr"] > near.mean["psnr"]
    tiled = evaluate(None, pairs, 2, restore_fn=lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), tile=20)
    assert tiled.per_image == near.per_image


def test_psnr_on_y_with_border_crop_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 12, 12, generator=g) * 0.8 + 0.1
    out = (gt + 0.05 * torch.randn(3, 12, 12, generator=g)).clamp(0, 1)
    res = evaluate(None, [(out, gt)], scale=2, restore_fn=lambda x: x * 0 + out.unsqueeze(0), metrics=["psnr"],
                   quantize=False)

    def y(img: torch.Tensor) -> torch.Tensor:  # ITU-R BT.601 luma of RGB in [0, 1], in [16, 235] / 255
        return (16 + 65.481 * img[0] + 128.553 * img[1] + 24.966 * img[2]) / 255

    mse = float(((y(out) - y(gt))[2:-2, 2:-2] ** 2).mean())  # crop_border = scale = 2
    assert abs(res.mean["psnr"] - 10 * math.log10(1 / mse)) < 1e-3
    # A difference confined to the cropped border does not count.
    edged = gt.clone()
    edged[:, :2, :] = 0
    edged[:, :, -2:] = 1
    res = evaluate(None, [(edged, gt)], scale=2, restore_fn=lambda x: x * 0 + edged.unsqueeze(0), metrics=["psnr"],
                   quantize=False)
    assert res.mean["psnr"] == math.inf
    rgb = evaluate(None, [(out, gt)], 2, restore_fn=lambda x: x * 0 + out.unsqueeze(0), metrics=["psnr"],
                   y_channel=False, quantize=False)
    assert abs(rgb.mean["psnr"] - 10 * math.log10(1 / float(((out - gt)[:, 2:-2, 2:-2] ** 2).mean()))) < 1e-3


def test_no_reference_metric_and_missing_gt(niqe_kwargs):
    pair = builtin_eval_pairs("sr", scale=2, size=192)[0]
    res = evaluate(None, [ImagePair("real", pair.lq, None)], 2, metrics=["psnr", "niqe"],
                   restore_fn=lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"),
                   metric_kwargs={"niqe": {"pretrained_model_path": niqe_kwargs["pretrained_model_path"]}})
    assert set(res.per_image["real"]) == {"niqe"} and math.isfinite(res.mean["niqe"])


def test_a_metric_failing_on_one_image_scores_nan_and_evaluation_goes_on(niqe_kwargs):
    pairs = builtin_eval_pairs("sr", scale=2, size=192)[:2]
    flat_first = iter([True, False])

    def restore(x: torch.Tensor) -> torch.Tensor:  # the first output collapses to a flat grey image
        up = F.interpolate(x, scale_factor=2, mode="bicubic")
        return up * 0 + 0.5 if next(flat_first) else up

    with pytest.warns(UserWarning, match="niqe failed"):
        res = evaluate(None, pairs, 2, metrics=["psnr", "niqe"], restore_fn=restore,
                       metric_kwargs={"niqe": {"pretrained_model_path": niqe_kwargs["pretrained_model_path"]}})
    first, second = res.per_image.values()
    assert math.isnan(first["niqe"]) and math.isfinite(first["psnr"]) and math.isfinite(second["niqe"])
    assert math.isnan(res.mean["niqe"]) and len(res.settings["failures"]) == 1

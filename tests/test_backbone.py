import json
import shutil
from dataclasses import asdict

import numpy as np
import pytest
import torch

from diffclass_cli.backbone import train as train_module
from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import (
    DDPMConfig,
    DiffusionConfig,
    Prediction,
    Schedule,
    TrainConfig,
    UNetConfig,
    Weights,
)
from diffclass_cli.backbone.diffusion import alphas_cumprod, predicted_noise, q_sample, training_loss, v_target
from diffclass_cli.backbone.shifts import random_shifts
from diffclass_cli.backbone.train import plan_run, run_training, snapshot_path, train_backbone
from diffclass_cli.backbone.unet import UNet, timestep_embedding
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from tests.conftest import TINY_UNET

CPU = torch.device("cpu")
DATA = {"source": "mnist-sample:train", "images": 512}


@pytest.mark.parametrize("config", [TINY_UNET, UNetConfig(image_size=32, channels=3, width=8),
                                    UNetConfig(image_size=16, width=8, channel_mults=(1, 2)),
                                    UNetConfig(width=8, mid_attention=True)])
def test_unet_shapes_and_taps(config):
    model = UNet(config).eval()
    x = torch.randn(2, config.channels, config.image_size, config.image_size)
    t = torch.tensor([1, 500])
    assert model(x, t).shape == x.shape
    feats = model.forward_intermediates(x, t, config.tap_names)
    assert [tap.name for tap in model.taps()] == config.tap_names
    for tap in model.taps():
        assert feats[tap.name].shape == (2, tap.channels, tap.size, tap.size)


def test_forward_is_the_intermediate_pass_plus_output_conv():
    torch.manual_seed(0)
    model = UNet(TINY_UNET).eval()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([5, 50, 500])
    up0 = model.forward_intermediates(x, t, ["up0"])["up0"]
    torch.testing.assert_close(model(x, t), model.out(up0))
    early = model.forward_intermediates(x, t, ["down1", "mid"])
    torch.testing.assert_close(early["mid"], model.forward_intermediates(x, t, ["mid", "up0"])["mid"])


def test_mid_attention_starts_as_identity_and_mixes_positions():
    torch.manual_seed(0)
    config = UNetConfig(width=8, mid_attention=True)
    model = UNet(config).eval()
    attention = model.mid.blocks[1]
    x = torch.randn(2, 16, 7, 7)
    torch.testing.assert_close(attention(x), x)  # zero output projection: a new block changes nothing
    torch.nn.init.normal_(attention.proj.weight)
    moved = x.clone()
    moved[:, :, 0, 0] += 1.0
    changed = (attention(moved) - attention(x)).abs().amax(dim=1)
    assert (changed[:, 1:, 1:] > 1e-4).all()  # one position moved every other one: not a per-pixel layer
    # a permutation of the positions permutes the output the same way (no positional bias)
    order = torch.randperm(49)
    flat = x.flatten(2)
    permuted = attention(flat[:, :, order].reshape_as(x)).flatten(2)
    torch.testing.assert_close(permuted, attention(x).flatten(2)[:, :, order])
    plain = UNet(UNetConfig(width=8))
    assert sum(p.numel() for p in model.parameters()) > sum(p.numel() for p in plain.parameters())


def test_unknown_tap_and_bad_sizes():
    with pytest.raises(DiffclassError, match="unknown tap"):
        UNet(TINY_UNET).forward_intermediates(torch.zeros(1, 1, 28, 28), torch.zeros(1), ["up9"])
    with pytest.raises(DiffclassError, match="multiple of 4"):
        UNetConfig(image_size=30)
    with pytest.raises(DiffclassError, match="channels must be"):
        UNetConfig(channels=2)


def test_sinusoidal_embedding_is_standard():
    emb = timestep_embedding(torch.tensor([0.0, 10.0]), 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-np.log(10_000.0) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(10 * freqs), torch.sin(10 * freqs)]))


def test_schedules_and_forward_noising():
    for schedule in Schedule:
        abar = alphas_cumprod(DiffusionConfig(schedule=schedule))
        assert abar.shape == (1000,) and (abar.diff() < 0).all() and 0 < abar[-1] < 0.01
    abar = alphas_cumprod(DiffusionConfig())
    x0, noise = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    xt = q_sample(x0, abar[torch.tensor([0, 999])], noise)
    assert torch.allclose(xt[0], abar[0].sqrt().float() * x0[0])


@pytest.mark.parametrize("prediction", list(Prediction))
def test_loss_targets_and_min_snr_weights(prediction):
    abar = alphas_cumprod(DiffusionConfig()).float()
    silent = lambda x, t: torch.zeros_like(x)  # noqa: E731  (its error is the target itself)
    x0 = torch.rand(64, 1, 4, 4) * 2 - 1
    plain, weighted = (training_loss(silent, x0, abar, torch.Generator().manual_seed(0), prediction=prediction,
                                     min_snr=gamma)
                       for gamma in (0, 5))
    gen = torch.Generator().manual_seed(0)  # the same draws as the loss makes
    t = torch.randint(0, 1000, (64,), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    target = noise if prediction == Prediction.eps else v_target(x0, abar[t], noise)
    errors = target.pow(2).flatten(1).mean(1)
    snr = abar[t] / (1 - abar[t])
    assert (snr > 5).any() and (snr < 5).any()
    torch.testing.assert_close(plain, errors.mean())
    denominator = snr if prediction == Prediction.eps else snr + 1
    torch.testing.assert_close(weighted, (errors * snr.clamp(max=5) / denominator).mean())


def test_v_prediction_converts_back_to_the_noise():
    abar = alphas_cumprod(DiffusionConfig())[torch.tensor([0, 100, 999])].float()
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    x_t = q_sample(x0, abar, noise)
    torch.testing.assert_close(predicted_noise(v_target(x0, abar, noise), x_t, abar, Prediction.v), noise)
    assert predicted_noise(noise, x_t, abar, Prediction.eps) is noise
    config = DDPMConfig.from_options(image_size=28, channels=1, width=8, channel_mults=(1, 2), prediction=Prediction.v,
                                     min_snr=5)
    raw = json.loads(json.dumps(asdict(config)))
    assert DDPMConfig.from_dict(raw) == config
    del raw["diffusion"]["prediction"], raw["diffusion"]["min_snr"]  # a checkpoint from before these options
    assert DDPMConfig.from_dict(raw).diffusion == DiffusionConfig()


def _train(pixels, out, steps, compiled=False, **kw):
    train = TrainConfig(steps=steps, batch_size=32, warmup=5, save_every=10, **kw)
    return train_backbone(pixels, DDPMConfig(unet=TINY_UNET), train, out, CPU, data=DATA, compiled=compiled)


def test_short_training_loss_falls_and_checkpoint_round_trips(mnist_train_pixels, tmp_path):
    ckpt = _train(mnist_train_pixels, tmp_path / "bb.ckpt", steps=40)
    losses = [loss for _, loss in ckpt.training["losses"]]
    assert losses[-1] < 0.6 * losses[0]
    loaded = load_checkpoint(tmp_path / "bb.ckpt")
    assert loaded.step == 40 and loaded.config == ckpt.config
    assert loaded.training["data"] == DATA
    for name, value in ckpt.ema.items():
        assert torch.equal(loaded.ema[name], value)
    assert not torch.equal(loaded.build(Weights.ema).stem.weight, loaded.build(Weights.raw).stem.weight)


def test_same_seed_same_weights_and_resume_matches_uninterrupted(mnist_train_pixels, tmp_path):
    full = _train(mnist_train_pixels, tmp_path / "full.ckpt", steps=20, snapshot_every=10, augment_shift=1)
    again = _train(mnist_train_pixels, tmp_path / "again.ckpt", steps=20, augment_shift=1)
    # The step-10 snapshot is what a run killed between steps 10 and 20 leaves behind.
    shutil.copy(snapshot_path(tmp_path / "full.ckpt", 10), tmp_path / "resumed.ckpt")
    config, train, state = plan_run(tmp_path / "resumed.ckpt", DDPMConfig(), TrainConfig(steps=20, snapshot_every=5),
                                    DATA["source"], resume=True, overwrite=False)
    assert state.step == 10 and train.batch_size == 32 and train.augment_shift == 1  # the checkpoint's recipe
    assert train.snapshot_every == 5  # but this run's snapshots
    resumed = train_backbone(mnist_train_pixels, config, train, tmp_path / "resumed.ckpt", CPU, data=DATA, state=state)
    assert resumed.step == 20
    for name in full.model:
        assert torch.equal(full.model[name], again.model[name])
        torch.testing.assert_close(full.model[name], resumed.model[name], rtol=1e-5, atol=1e-6)


def test_compiled_training_follows_the_eager_run(mnist_train_pixels, tmp_path):
    eager = _train(mnist_train_pixels, tmp_path / "eager.ckpt", steps=4)
    compiled = _train(mnist_train_pixels, tmp_path / "compiled.ckpt", steps=4, compiled=True)
    assert compiled.model.keys() == eager.model.keys()  # the plain module's names, loadable without compiling
    for name in eager.model:
        torch.testing.assert_close(compiled.model[name], eager.model[name], rtol=1e-3, atol=1e-4)


def test_compile_without_a_compiler_says_so_before_loading_images(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(train_module, "load_all", lambda *args: pytest.fail("images loaded before the check"))
    with pytest.raises(DiffclassError, match="C\\+\\+ compiler"):
        run_training(open_source("digits:train"), DDPMConfig(unet=TINY_UNET), TrainConfig(steps=2),
                     tmp_path / "bb.ckpt", CPU, compiled=True)
    assert not (tmp_path / "bb.ckpt").exists()


def test_random_shifts_move_each_image_within_the_limit():
    images = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    moved = random_shifts(images, 2, torch.Generator().manual_seed(1))
    assert torch.equal(moved, random_shifts(images, 2, torch.Generator().manual_seed(1)))
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="replicate")
    offsets = set()
    for out, pad in zip(moved, padded):
        found = [(y, x) for y in range(5) for x in range(5) if torch.equal(out, pad[:, y:y + 8, x:x + 8])]
        assert found, "each image is its padded self, cropped at an offset of at most 2 pixels"
        offsets.add(found[0])
    assert len(offsets) > 10  # the offsets vary from image to image
    assert random_shifts(images, 0, torch.Generator()) is images


def test_snapshots_are_kept(mnist_train_pixels, tmp_path):
    _train(mnist_train_pixels, tmp_path / "bb.ckpt", steps=20, snapshot_every=10)
    assert load_checkpoint(snapshot_path(tmp_path / "bb.ckpt", 10)).step == 10
    assert load_checkpoint(snapshot_path(tmp_path / "bb.ckpt", 20)).step == 20


def test_refuses_to_overwrite_and_rejects_foreign_files(tmp_path):
    existing = tmp_path / "bb.ckpt"
    existing.write_bytes(b"not a checkpoint")
    with pytest.raises(DiffclassError, match="--overwrite"):
        plan_run(existing, DDPMConfig(), TrainConfig(), "x", resume=False, overwrite=False)
    with pytest.raises(DiffclassError, match="not a diffclass checkpoint"):
        load_checkpoint(existing)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(existing))
    with pytest.raises(DiffclassError, match="not a diffclass checkpoint"):
        load_checkpoint(existing)

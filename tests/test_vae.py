"""The VAE backbone, through the same pipeline as the DDPM one (train, resume, export, sample, benchmark)."""

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import TrainConfig, VAEConfig
from diffclass_cli.backbone.train import plan_run, snapshot_path, train_backbone
from diffclass_cli.backbone.vae import VAE
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.extractor import VAEExtractor
from diffclass_cli.extractors.onnx_export import build_extractor, export_onnx
from diffclass_cli.extractors.spec import ExtractorSpec
from tests.test_export import run_onnx

CPU = torch.device("cpu")
DATA = {"source": "mnist-sample:train", "images": 512}
TINY_VAE = VAEConfig(image_size=28, channels=1, width=8, channel_mults=(1, 2, 2), latent_dim=8)


def _train(pixels, out, steps, config=TINY_VAE, **kw):
    train = TrainConfig(steps=steps, batch_size=32, warmup=5, save_every=10, lr=2e-3, **kw)
    return train_backbone(pixels, config, train, out, CPU, data=DATA)


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory, mnist_train_pixels):
    out = tmp_path_factory.mktemp("vae") / "vae.ckpt"
    _train(mnist_train_pixels, out, steps=30)
    return out


@pytest.mark.parametrize("config", [TINY_VAE, VAEConfig(image_size=32, channels=3, width=8),
                                    VAEConfig(image_size=16, width=8, channel_mults=(1, 2))])
def test_vae_shapes_and_taps(config):
    model = VAE(config).eval()
    x = torch.randn(2, config.channels, config.image_size, config.image_size)
    found = model.forward_intermediates(x, config.tap_names)
    assert [tap.name for tap in model.taps()] == config.tap_names
    for tap in model.taps():
        shape = (2, tap.channels) if tap.size is None else (2, tap.channels, tap.size, tap.size)
        assert found[tap.name].shape == shape
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, config.latent_dim)
    torch.testing.assert_close(found["latent"], mean)
    # The decoder taps are the deterministic decode of the posterior mean.
    torch.testing.assert_close(model.out(found["dec0"]), model.decode(mean))
    assert model.decode(mean).shape == x.shape


def test_vae_config_rules():
    with pytest.raises(DiffclassError, match="multiple of 4"):
        VAEConfig(image_size=30)
    with pytest.raises(DiffclassError, match="--latent-dim"):
        VAEConfig(latent_dim=0)
    with pytest.raises(DiffclassError, match="--beta"):
        VAEConfig(beta=0)


def test_vae_training_loss_falls_and_checkpoint_round_trips(mnist_train_pixels, tmp_path):
    ckpt = _train(mnist_train_pixels, tmp_path / "vae.ckpt", steps=40)
    losses = [loss for _, loss in ckpt.training["losses"]]
    assert losses[-1] < 0.8 * losses[0]
    loaded = load_checkpoint(tmp_path / "vae.ckpt")
    assert loaded.step == 40 and loaded.config == TINY_VAE and loaded.config.kind == "vae"
    assert isinstance(loaded.build(), VAE)
    for name, value in ckpt.ema.items():
        assert torch.equal(loaded.ema[name], value)


def test_vae_same_seed_same_weights_and_resume_matches_uninterrupted(mnist_train_pixels, tmp_path):
    full = _train(mnist_train_pixels, tmp_path / "full.ckpt", steps=20, snapshot_every=10)
    again = _train(mnist_train_pixels, tmp_path / "again.ckpt", steps=20)
    shutil.copy(snapshot_path(tmp_path / "full.ckpt", 10), tmp_path / "resumed.ckpt")
    config, train, state = plan_run(tmp_path / "resumed.ckpt", VAEConfig(), TrainConfig(steps=20),
                                    DATA["source"], resume=True, overwrite=False)
    assert config == TINY_VAE and state.step == 10
    resumed = train_backbone(mnist_train_pixels, config, train, tmp_path / "resumed.ckpt", CPU, data=DATA, state=state)
    for name in full.model:
        assert torch.equal(full.model[name], again.model[name])
        torch.testing.assert_close(full.model[name], resumed.model[name], rtol=1e-5, atol=1e-6)


def test_resuming_with_the_other_kind_is_refused(tiny_vae, tiny_checkpoint, tmp_path):
    from diffclass_cli.backbone.config import DDPMConfig

    with pytest.raises(DiffclassError, match="holds a vae backbone"):
        plan_run(tiny_vae, DDPMConfig(), TrainConfig(steps=100), DATA["source"], resume=True, overwrite=False)
    with pytest.raises(DiffclassError, match="holds a ddpm backbone"):
        plan_run(tiny_checkpoint, VAEConfig(), TrainConfig(steps=100), DATA["source"], resume=True, overwrite=False)


@pytest.mark.parametrize("taps, expected_dim", [
    ((), (8 + 16 + 16) * 4 + 8),  # default: the encoder blocks (2x2 pooled) and the latent mean
    (("encoder",), (8 + 16 + 16) * 4 + 8),
    (("decoder",), (16 + 16 + 8) * 4),
    (("all",), (8 + 16 + 16) * 4 + 8 + (16 + 16 + 8) * 4),
    (("latent",), 8),
    (("enc1", "dec1"), 16 * 4 + 16 * 4),
])
def test_vae_export_matches_pytorch_and_taps_set_the_width(tiny_vae, tmp_path, taps, expected_dim):
    spec = ExtractorSpec(taps=taps, pool=2)
    meta = export_onnx(tiny_vae, tmp_path / "vae.onnx", spec)
    assert meta["feature_dim"] == expected_dim == meta["feature_groups"][-1]["stop"]
    assert meta["backbone_kind"] == "vae" and "noise_draws" not in meta and meta["timesteps"] == []
    extractor, _ = build_extractor(tiny_vae, spec)
    for batch in (1, 9):
        images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            expected = extractor(images).numpy()
        got = run_onnx(tmp_path / "vae.onnx", images.numpy())
        assert got.shape == (batch, expected_dim)
        assert np.abs(got - expected).max() < 1e-4
    np.testing.assert_array_equal(got, run_onnx(tmp_path / "vae.onnx", images.numpy()))  # no randomness


def test_vae_extractor_pieces_are_the_network_outputs(tiny_vae):
    ckpt = load_checkpoint(tiny_vae)
    vae = ckpt.build()
    extractor = VAEExtractor(ckpt.build(), ExtractorSpec(taps=("latent", "dec0"), pool=1))
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        features = extractor(images)
        mean, _ = vae.encode(images * 2 - 1)
        dec0 = vae.forward_intermediates(images * 2 - 1, ["dec0"])["dec0"]
    torch.testing.assert_close(features[:, :8], mean)
    torch.testing.assert_close(features[:, 8:], dec0.mean(dim=(2, 3)))
    groups = [g.name for g in extractor.feature_groups()]
    assert groups == ["latent", "dec0/global"]


def test_vae_export_cli_refuses_diffusion_options_and_lists_taps(cli, tiny_vae, tmp_path):
    result = cli("export", tiny_vae, "--out", tmp_path / "x.onnx", "--timestep", 50)
    assert result.exit_code == 1 and "no timesteps or noise" in result.stderr
    assert not (tmp_path / "x.onnx").exists()
    listed = cli("export", "--list-taps", tiny_vae)
    assert listed.exit_code == 0
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert lines[3] == ["latent", "8 channels", "vector"]
    assert ["encoder", "enc0,enc1,enc2,latent"] in lines and ["decoder", "dec2,dec1,dec0"] in lines
    result = cli("export", tiny_vae, "--out", tmp_path / "x.onnx", "--taps", "mid")
    assert result.exit_code == 1 and "unknown tap" in result.stderr
    result = cli("export", tiny_vae, "--out", tmp_path / "stacked.onnx", "--taps", "all")
    assert result.exit_code == 0, result.output
    info = cli("info", tmp_path / "stacked.onnx")
    assert "backbone_kind: vae" in info.stdout and "latent [" in info.stdout


def test_vae_cli_train_resume_and_sample(cli, tmp_path):
    ckpt = tmp_path / "vae.ckpt"
    args = ["train-backbone", "digits", "--out", ckpt, "--kind", "vae", "--width", 8, "--channel-mults", "1,2",
            "--latent-dim", 4, "--beta", 0.5, "--batch-size", 16, "--warmup", 1]
    result = cli(*args, "--steps", 3)
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(ckpt)
    assert loaded.config == VAEConfig(image_size=8, width=8, channel_mults=(1, 2), latent_dim=4, beta=0.5)
    assert cli(*args, "--steps", 5, "--resume").exit_code == 0
    assert load_checkpoint(ckpt).step == 5

    grid = tmp_path / "grid.png"
    result = cli("sample", ckpt, "--out", grid, "--n", 4, "--out-dir", tmp_path / "each")
    assert result.exit_code == 0, result.output
    assert Image.open(grid).size == (2 * 8 + 3 * 2,) * 2
    assert len(list((tmp_path / "each").glob("*.png"))) == 4


def test_benchmark_compares_vae_and_diffusion_feature_sets(cli, tiny_vae, tiny_checkpoint, tmp_path):
    assert cli("-q", "export", tiny_vae, "--out", tmp_path / "vae-decoder.onnx", "--taps", "decoder").exit_code == 0
    out = tmp_path / "bench"
    result = cli("benchmark", tiny_checkpoint, tiny_vae, tmp_path / "vae-decoder.onnx", "--out", out, "--quick",
                 "--baselines", "pixels", "--heads", "logreg")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {r["feature_set"] for r in rows} == {"diffusion:tiny", "vae:vae", "vae:vae-decoder", "pixels"}
    assert {r["head"] for r in rows} == {"logreg"}  # --quick keeps the heads asked for
    top = max(int(r["per_class"]) for r in rows)
    assert min(float(r["accuracy"]) for r in rows if r["feature_set"] == "pixels" and int(r["per_class"]) == top) > 0.5

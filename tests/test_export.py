import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from diffclass_cli.backbone.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from diffclass_cli.backbone.config import DDPMConfig, UNetConfig
from diffclass_cli.backbone.unet import UNet
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.extractors.choose import (
    CANDIDATE_TIMESTEPS,
    MIN_SNR,
    _choose,
    candidate_tap_sets,
    cluster_separation,
    neighbour_agreement,
    tap_columns,
)
from diffclass_cli.extractors.extractor import resolve_taps
from diffclass_cli.extractors.onnx_export import build_extractor, export_onnx, pytorch_features
from diffclass_cli.extractors.spec import (
    DEFAULT_POOL,
    DEFAULT_TIMESTEPS,
    ExtractorSpec,
    parse_pool,
    pool_name,
    timesteps_name,
)
from tests.conftest import assert_one_line_error


def run_onnx(path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["features"], {"images": images})[0]


@pytest.fixture
def exported(tiny_onnx):
    return tiny_onnx


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_onnxruntime_matches_pytorch(exported, tiny_checkpoint, batch):
    extractor, _ = build_extractor(tiny_checkpoint, ExtractorSpec())
    images = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = extractor(images).numpy()
    got = run_onnx(exported, images.numpy())
    assert got.shape == (batch, read_metadata(exported)["feature_dim"])
    assert np.abs(got - expected).max() < 1e-4


def test_deterministic_across_runs_and_processes(exported, tmp_path):
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    first, second = run_onnx(exported, images), run_onnx(exported, images)
    assert np.array_equal(first, second)
    script = ("import sys, numpy as np; from tests.test_export import run_onnx; "
              "np.save(sys.argv[2], run_onnx(sys.argv[1], np.load(sys.argv[3])))")
    subprocess.run([sys.executable, "-c", script, str(exported), str(tmp_path / "out.npy"),
                    str(tmp_path / "images.npy")], check=True)
    assert np.array_equal(first, np.load(tmp_path / "out.npy"))


def test_metadata_describes_the_graph(exported, tiny_checkpoint):
    meta = read_metadata(exported)
    ckpt = load_checkpoint(tiny_checkpoint)
    assert meta["taps"] == ["mid", "up2"] and meta["pool"] == pool_name(DEFAULT_POOL) == "3x3"
    assert meta["timesteps"] == list(DEFAULT_TIMESTEPS) and meta["noise_draws"] == 1
    assert meta["feature_dim"] == (16 + 16) * 9 == meta["feature_groups"][-1]["stop"]
    assert meta["image_size"] == 28 and meta["channels"] == 1 and meta["input_range"] == [0.0, 1.0]
    assert meta["checkpoint_step"] == ckpt.step and meta["trained_on"]["source"] == "mnist-sample:train"
    assert len(meta["checkpoint_sha256"]) == 64
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]  # no label input, ever
    assert not any(i.name.startswith("network.out.") for i in model.graph.initializer)


def test_only_the_blocks_up_to_the_deepest_tap_are_exported(tiny_checkpoint, tmp_path):
    out = tmp_path / "mid.onnx"
    meta = export_onnx(tiny_checkpoint, out, ExtractorSpec(taps=("mid",), pool=1))
    names = [i.name for i in onnx.load(str(out)).graph.initializer]
    assert meta["feature_dim"] == 16
    assert any(n.startswith("network.mid.") for n in names)
    assert not any(n.startswith(("network.up.", "network.upsample.", "network.out.")) for n in names)


def test_timesteps_concatenate_and_noise_draws_average(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    images = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))

    def features(spec, noise=None):
        extractor = ckpt.config.extractor(ckpt.build(), spec)
        if noise is not None:
            extractor.noise = noise
        with torch.no_grad():
            return extractor(images), extractor

    single, _ = features(ExtractorSpec(timesteps=(100,)))
    early, _ = features(ExtractorSpec(timesteps=(25,)))
    both, _ = features(ExtractorSpec(timesteps=(25, 100)))
    assert both.shape[1] == 2 * single.shape[1]
    torch.testing.assert_close(both, torch.cat([early, single], dim=1))

    two, extractor = features(ExtractorSpec(noise_draws=2))
    assert two.shape == single.shape and not torch.allclose(two, single)
    first, _ = features(ExtractorSpec(), extractor.noise[:1])
    second, _ = features(ExtractorSpec(), extractor.noise[1:])
    torch.testing.assert_close(two, (first + second) / 2)


def test_shifts_average_the_features_of_the_moved_images(tiny_checkpoint, tmp_path):
    ckpt = load_checkpoint(tiny_checkpoint)
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    plain = ckpt.config.extractor(ckpt.build(), ExtractorSpec())
    averaged = ckpt.config.extractor(ckpt.build(), ExtractorSpec(shifts=5))
    # the image moved one pixel down, up, right, left, by hand: edge rows / columns repeated
    down = torch.cat([images[..., :1, :], images[..., :-1, :]], dim=-2)
    up = torch.cat([images[..., 1:, :], images[..., -1:, :]], dim=-2)
    right = torch.cat([images[..., :1], images[..., :-1]], dim=-1)
    left = torch.cat([images[..., 1:], images[..., -1:]], dim=-1)
    with torch.no_grad():
        expected = torch.stack([plain(x) for x in (images, right, down, left, up)]).mean(dim=0)
        got = averaged(images)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain(images))

    out = tmp_path / "shifts.onnx"
    meta = export_onnx(tiny_checkpoint, out, ExtractorSpec(shifts=5))
    assert meta["shifts"] == [[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]]
    assert np.abs(run_onnx(out, images.numpy()) - got.numpy()).max() < 1e-4
    with pytest.raises(DiffclassError, match="--shifts must be between 1 and 9"):
        ExtractorSpec(shifts=10)


def test_a_backbone_with_mid_attention_exports_and_matches_pytorch(tmp_path):
    config = DDPMConfig(unet=UNetConfig(width=8, mid_attention=True))
    torch.manual_seed(0)
    network = UNet(config.unet)
    torch.nn.init.normal_(network.mid.blocks[1].proj.weight)  # a trained block is not the identity
    weights = network.state_dict()
    save_checkpoint(Checkpoint(config, 0, weights, weights), tmp_path / "att.ckpt")
    assert load_checkpoint(tmp_path / "att.ckpt").config == config
    meta = export_onnx(tmp_path / "att.ckpt", tmp_path / "att.onnx", ExtractorSpec())
    assert meta["backbone_config"]["unet"]["mid_attention"] is True
    extractor, _ = build_extractor(tmp_path / "att.ckpt", ExtractorSpec())
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = extractor(images).numpy()
    assert np.abs(run_onnx(tmp_path / "att.onnx", images.numpy()) - expected).max() < 1e-4


def test_a_map_smaller_than_the_grid_is_kept_whole(tiny_checkpoint):
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    features = {}
    for grid in ("7x7", "14x14"):
        spec = ExtractorSpec.from_options(taps="mid,up1", pool=grid)
        extractor, _ = build_extractor(tiny_checkpoint, spec)
        features[grid] = pytorch_features(tiny_checkpoint, spec)(images)
        names = [group.name for group in extractor.feature_groups()]
    prefix = timesteps_name(DEFAULT_TIMESTEPS)
    assert names == [f"{prefix}/mid/7x7", f"{prefix}/up1/14x14"]  # mid's map is 7x7, up1's 14x14
    mid = 16 * 7 * 7
    assert np.allclose(features["7x7"][:, :mid], features["14x14"][:, :mid], atol=1e-6)
    assert features["14x14"].shape[1] == mid + 16 * 14 * 14


def test_pool_parsing():
    assert parse_pool("global") == 1 and parse_pool("2x2") == 2 and parse_pool("3") == 3
    for bad in ("2x3", "x", "0x0", "avg"):
        with pytest.raises(DiffclassError, match="--pool"):
            parse_pool(bad)


@pytest.mark.parametrize("args, message", [
    (["--taps", "mid,up7"], "unknown tap"),
    (["--timestep", "1000"], "outside [0, 1000)"),
    (["--timesteps", "10,x"], "comma-separated whole numbers"),
    (["--pool", "2x3"], "--pool"),
    (["--opset", "21"], "--opset"),
    (["--noise-draws", "0"], "--noise-draws"),
])
def test_bad_export_options_fail_cleanly(cli, tiny_checkpoint, tmp_path, args, message):
    result = cli("export", tiny_checkpoint, "--out", tmp_path / "x.onnx", *args)
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "x.onnx.partial").exists()


def test_export_cli_list_taps_info_and_refusals(cli, tiny_checkpoint, exported, tmp_path):
    listed = cli("export", "--list-taps", tiny_checkpoint)
    assert listed.exit_code == 0
    assert listed.stdout.splitlines()[0].split("\t") == ["down0", "8 channels", "28x28"]
    info = cli("info", exported)
    assert info.exit_code == 0 and "feature_dim: 288" in info.stdout
    assert cli("export", tiny_checkpoint, "--out", exported).exit_code == 1
    (tmp_path / "foreign.ckpt").write_bytes(b"junk")
    result = cli("export", tmp_path / "foreign.ckpt", "--out", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "not a diffclass checkpoint" in result.stderr
    result = cli("info", tmp_path / "foreign.ckpt")
    assert result.exit_code == 1 and "not a file diffclass wrote" in result.stderr


def test_pixel_baseline_extractor(cli, tmp_path):
    result = cli("export", "--pixels", "--image-size", 16, "--channels", 3, "--out", tmp_path / "px.onnx")
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "px.onnx")
    assert meta["backbone_kind"] == "pixels" and meta["feature_dim"] == 3 * 16 * 16
    images = np.random.default_rng(0).random((3, 3, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(run_onnx(tmp_path / "px.onnx", images), images.reshape(3, -1))
    bad = cli("export", "--pixels", "--image-size", 30, "--out", tmp_path / "bad.onnx")
    assert bad.exit_code == 1 and "multiple of 4" in bad.stderr


def test_neighbour_agreement_is_about_neighbours_not_scale():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 16))
    assert neighbour_agreement(features, features) == 1.0
    assert neighbour_agreement(features, features * rng.uniform(0.5, 2, 16) + 3) == 1.0  # columns standardised
    assert neighbour_agreement(features, rng.normal(size=(200, 16))) < 0.15  # about 10 / 199 by chance


def test_cluster_separation_tells_clusters_from_noise():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16)) * 10
    clustered = centres[rng.integers(0, 20, 400)] + rng.normal(size=(400, 16))
    assert cluster_separation(clustered) > 0.9 and cluster_separation(rng.normal(size=(400, 16))) < 0.2


def test_tap_columns_are_the_features_of_those_taps_alone(tiny_checkpoint):
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    every = ExtractorSpec(taps=("all",))
    extractor, ckpt = build_extractor(tiny_checkpoint, every)
    all_features = pytorch_features(tiny_checkpoint, every)(images)
    for taps in (("mid",), ("up0",), ("default",)):
        columns = tap_columns(extractor.feature_groups(), resolve_taps(ckpt.config, taps))
        alone = pytorch_features(tiny_checkpoint, ExtractorSpec(taps=taps))(images)
        np.testing.assert_allclose(all_features[:, columns], alone, rtol=1e-5, atol=1e-6)


def test_export_timestep_auto_chooses_from_unlabeled_images(cli, tiny_checkpoint, tmp_path):
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    source = open_source("mnist-sample:test")
    for i in range(60):
        source.load(i).save(folder / f"{i}.png")
    out = tmp_path / "auto.onnx"
    result = cli("export", tiny_checkpoint, "--out", out, "--timestep", "auto", "--taps", "auto",
                 "--choose-on", folder)
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    choice = meta["timestep_choice"]
    assert choice["images"] == str(folder) and choice["sample"] == 60
    config = load_checkpoint(tiny_checkpoint).config
    abar = config.alphas_cumprod().numpy()
    first = DEFAULT_TIMESTEPS[0]
    assert [int(t) for t in choice["scores"]] == [first] + [t for t in CANDIDATE_TIMESTEPS
                                                            if t > first and abar[t] / (1 - abar[t]) >= MIN_SNR]
    assert [int(t) for t in choice["scores"]] == [first]  # none of the linear schedule's above 200
    for record, default, chosen in ((choice, str(first), str(meta["timesteps"][0])),
                                    (meta["taps_choice"], "default", None)):
        best = max(record["scores"], key=record["scores"].get)
        replicated = all(halves[best] > halves[default]
                         for halves in ({k: v[i] for k, v in record["half_scores"].items()} for i in (0, 1)))
        expected = best if replicated else default
        if chosen is not None:
            assert chosen == expected
        else:
            assert meta["taps"] == resolve_taps(config, tuple(expected.split("+")))
    tap_sets = list(meta["taps_choice"]["scores"])
    assert tap_sets == ["+".join(taps) for taps in candidate_tap_sets(config)]
    assert tap_sets == ["default", "default+up1", "default+up0"]  # the default taps kept, one decoder tap added
    assert_one_line_error(cli("export", tiny_checkpoint, "--out", out, "--timestep", "auto"), "--overwrite")
    assert_one_line_error(cli("export", tiny_checkpoint, "--out", tmp_path / "x.onnx", "--timestep", "ten"),
                          "whole number of steps or 'auto'")
    assert_one_line_error(cli("export", tiny_checkpoint, "--out", tmp_path / "x.onnx", "--taps", "auto",
                              "--choose-on", "fashion-mnist:train", "--data-root", tmp_path),
                          f"not found under {tmp_path}")
    assert_one_line_error(cli("export", tiny_checkpoint, "--out", tmp_path / "x.onnx", "--data-root", tmp_path),
                          "--data-root are for --timestep auto")


def test_the_label_free_choice_leaves_the_default_unless_both_halves_agree():
    by = {"by": "", "images": "x", "sample": torch.zeros(4)}
    moved, record = _choose("timestep", {100: (0.20, 0.20, 0.20), 250: (0.25, 0.26, 0.24)}, 100, *by.values())
    assert moved == 250 and record["chose"] == "the best score"
    kept, record = _choose("timestep", {100: (0.20, 0.20, 0.20), 250: (0.25, 0.31, 0.19)}, 100, *by.values())
    assert kept == 100 and "not on both halves" in record["chose"]
    assert record["half_scores"] == {"100": [0.2, 0.2], "250": [0.31, 0.19]}

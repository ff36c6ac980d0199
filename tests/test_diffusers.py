"""Pretrained diffusers UNets as backbones (`diffusers:PATH`): a tiny UNet2DModel saved in the
test (no network) exports through the same contract, its features equal the diffusers model's
own block outputs, and fine-tuning from it trains, resumes and exports."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.extractors.choose import CANDIDATE_TIMESTEPS, MIN_SNR
from diffclass_cli.extractors.spec import DEFAULT_TIMESTEPS
from diffclass_cli.features.runtime import ExtractorSession
from tests.conftest import assert_one_line_error, write_image

diffusers = pytest.importorskip("diffusers")

TAPS = ["down0", "down1", "mid", "up1", "up0"]


def _tiny_unet(**changes) -> "diffusers.UNet2DModel":
    torch.manual_seed(0)
    options = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                   down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                   norm_num_groups=4, attention_head_dim=8)
    return diffusers.UNet2DModel(**{**options, **changes})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A saved UNet2DModel (about 45 000 parameters) with a cosine-schedule scheduler beside it."""
    folder = tmp_path_factory.mktemp("pretrained") / "tiny-ddpm"
    _tiny_unet().save_pretrained(folder)
    diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rgb_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("rgb")
    for i in range(12):
        write_image(root / ("a" if i % 2 else "b") / f"{i}.png", size=(20, 20), seed=i)
    return root


def _block_outputs(model, scheduler, images: torch.Tensor, t: int, noise: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diffusers model's own block outputs (forward hooks) on images noised by its scheduler."""
    x0 = images * 2 - 1
    xt = scheduler.add_noise(x0, noise.expand_as(x0), torch.full((len(x0),), t))
    found, levels = {}, len(model.down_blocks)
    blocks = {f"down{i}": b for i, b in enumerate(model.down_blocks)} | {"mid": model.mid_block}
    blocks |= {f"up{levels - 1 - j}": b for j, b in enumerate(model.up_blocks)}
    hooks = [block.register_forward_hook(lambda _m, _i, out, name=name: found.__setitem__(
        name, out[0] if isinstance(out, tuple) else out)) for name, block in blocks.items()]
    with torch.no_grad():
        model(xt, torch.full((len(x0),), t))
    for hook in hooks:
        hook.remove()
    return found


@pytest.mark.parametrize("timestep", [10, 250])
def test_onnx_features_equal_the_diffusers_block_outputs_at_every_tap(cli, pretrained, tmp_path, timestep):
    out = tmp_path / "x.onnx"
    result = cli("export", f"diffusers:{pretrained}", "--out", out, "--taps", "all", "--pool", "2x2",
                 "--timestep", timestep)
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert meta["backbone_kind"] == "diffusers" and meta["image_size"] == 16 and meta["channels"] == 3
    assert meta["taps"] == TAPS and meta["backbone_config"]["scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    images = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    features = ExtractorSession(out)(images.numpy())
    model = diffusers.UNet2DModel.from_pretrained(pretrained).eval()
    scheduler = diffusers.DDPMScheduler.from_pretrained(pretrained)
    noise = torch.randn((1, 3, 16, 16), generator=torch.Generator().manual_seed(0))  # the extractor's fixed noise
    found = _block_outputs(model, scheduler, images, timestep, noise)
    for group in meta["feature_groups"]:
        tap = group["name"].split("/")[1]
        expected = F.adaptive_avg_pool2d(found[tap], 2).flatten(1).numpy()
        np.testing.assert_allclose(features[:, group["start"]:group["stop"]], expected, atol=1e-4, err_msg=tap)


def test_list_taps_and_the_pipeline_run_on_a_pretrained_model(cli, pretrained, rgb_images, tmp_path):
    listed = cli("export", "--list-taps", f"diffusers:{pretrained}")
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()][:5] == TAPS
    for args in (["export", f"diffusers:{pretrained}", "--out", tmp_path / "x.onnx"],
                 ["featurize", rgb_images, tmp_path / "f.h5", "--model", tmp_path / "x.onnx"],
                 ["fit", tmp_path / "f.h5", "--out", tmp_path / "h.skops", "--head", "logreg"],
                 ["predict", rgb_images, "--head", tmp_path / "h.skops"]):
        result = cli(*args)
        assert result.exit_code == 0, (args, result.output)
    assert len(result.stdout.splitlines()) == 13


def test_the_label_free_choice_works_on_a_pretrained_model(cli, pretrained, rgb_images, tmp_path):
    out = tmp_path / "auto.onnx"
    result = cli("export", f"diffusers:{pretrained}", "--out", out, "--timestep", "auto", "--choose-on", rgb_images)
    assert result.exit_code == 0, result.output
    scores = read_metadata(out)["timestep_choice"]["scores"]
    abar = load_checkpoint(f"diffusers:{pretrained}").config.alphas_cumprod().numpy()  # the model's own schedule
    default = DEFAULT_TIMESTEPS[0]
    expected = [default] + [t for t in CANDIDATE_TIMESTEPS if t > default and abar[t] / (1 - abar[t]) >= MIN_SNR]
    assert [int(t) for t in scores] == expected


def test_fine_tuning_trains_resumes_like_one_run_and_exports(cli, pretrained, rgb_images, tmp_path):
    common = ["train-backbone", rgb_images, "--init", f"diffusers:{pretrained}", "--batch-size", 4,
              "--save-every", 2, "--warmup", 1, "--lr", 1e-3]
    assert cli(*common, "--out", tmp_path / "whole.ckpt", "--steps", 4).exit_code == 0
    assert cli(*common, "--out", tmp_path / "part.ckpt", "--steps", 2).exit_code == 0
    resumed = cli(*common, "--out", tmp_path / "part.ckpt", "--steps", 4, "--resume")
    assert resumed.exit_code == 0 and "resuming" in resumed.stderr, resumed.output
    whole, part, start = (load_checkpoint(p) for p in (tmp_path / "whole.ckpt", tmp_path / "part.ckpt",
                                                        f"diffusers:{pretrained}"))
    assert whole.step == part.step == 4 and whole.config == start.config
    for name, value in whole.model.items():
        torch.testing.assert_close(part.model[name], value, msg=name)
    assert any(not torch.equal(whole.model[n], start.model[n]) for n in start.model)  # it learned something
    result = cli("export", tmp_path / "whole.ckpt", "--out", tmp_path / "ft.onnx")
    assert result.exit_code == 0, result.output
    meta = read_metadata(tmp_path / "ft.onnx")
    assert meta["backbone_kind"] == "diffusers" and meta["checkpoint_step"] == 4


def test_pretrained_model_mistakes_are_one_line(cli, pretrained, rgb_images, tmp_path):
    conditional = tmp_path / "conditional"
    _tiny_unet(num_class_embeds=10).save_pretrained(conditional)
    pickled = tmp_path / "pickled"
    _tiny_unet().save_pretrained(pickled, safe_serialization=False)
    cases = [
        (["export", f"diffusers:{tmp_path / 'missing'}", "--out", tmp_path / "x.onnx"], "cannot load"),
        (["export", f"diffusers:{pickled}", "--out", tmp_path / "x.onnx"], "cannot load"),
        (["export", f"diffusers:{conditional}", "--out", tmp_path / "x.onnx"], "class conditioning"),
        (["train-backbone", rgb_images, "--init", str(pretrained), "--out", tmp_path / "c.ckpt"], "--init takes"),
        (["train-backbone", rgb_images, "--init", f"diffusers:{pretrained}", "--image-size", 32,
          "--out", tmp_path / "c.ckpt"], "--image-size 32 differs"),
    ]
    for args, message in cases:
        assert_one_line_error(cli(*args), message)
    assert not (tmp_path / "x.onnx").exists()


def test_without_diffusers_the_error_says_how_to_get_it(pretrained, tmp_path):
    code = ("import sys\nsys.modules['diffusers'] = None\nfrom diffclass_cli.cli import app\n"
            f"sys.argv = ['diffclass', 'export', 'diffusers:{pretrained}', '--out', '{tmp_path / 'x.onnx'}']\napp()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "diffclass: error: diffusers:PATH needs the diffusers package: pip install 'diffclass[diffusers]'")


def test_the_checkpoint_of_a_fine_tuned_model_says_where_it_came_from(cli, pretrained, rgb_images, tmp_path):
    assert cli("train-backbone", rgb_images, "--init", f"diffusers:{pretrained}", "--out", tmp_path / "f.ckpt",
               "--steps", 1, "--batch-size", 2).exit_code == 0
    described = json.loads(cli("info", tmp_path / "f.ckpt", "--json").stdout)
    assert described["config"]["kind"] == "diffusers" and described["config"]["source"] == str(pretrained)

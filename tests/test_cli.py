import subprocess
import sys

import pytest
import torch
from PIL import Image

from diffclass_cli import __version__
from diffclass_cli.backbone.checkpoint import load_checkpoint
from tests.conftest import assert_one_line_error, write_image


def test_version_and_help_in_a_subprocess():
    out = subprocess.run([sys.executable, "-m", "diffclass_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"diffclass {__version__}"
    helped = subprocess.run([sys.executable, "-m", "diffclass_cli", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0
    for command in ("train-backbone", "sample"):
        assert command in helped.stdout


def test_train_on_a_folder_then_sample_a_grid(cli, tmp_path):
    for i in range(6):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(16, 16), mode="L", seed=i)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"garbage")
    ckpt = tmp_path / "bb.ckpt"
    result = cli("train-backbone", tmp_path / "imgs", "--out", ckpt, "--steps", 3, "--width", 8,
                 "--channel-mults", "1,2", "--batch-size", 4, "--warmup", 1, "--prediction", "v", "--min-snr", 5)
    assert result.exit_code == 0, result.output
    assert "skipped bad.png" in result.stderr and result.stdout == ""
    loaded = load_checkpoint(ckpt)
    assert loaded.step == 3 and loaded.config.unet.image_size == 16 and loaded.config.unet.channels == 1
    assert loaded.config.diffusion.prediction == "v" and loaded.config.diffusion.min_snr == 5
    assert loaded.training["data"]["images"] == 6

    grid = tmp_path / "grid.png"
    result = cli("sample", ckpt, "--out", grid, "--n", 4, "--ddim-steps", 5, "--out-dir", tmp_path / "each")
    assert result.exit_code == 0, result.output
    side = 2 * 16 + 3 * 2  # torchvision's grid: 2 columns, 2 px padding
    assert Image.open(grid).size == (side, side)
    assert len(list((tmp_path / "each").glob("*.png"))) == 4
    again = cli("sample", ckpt, "--out", grid, "--n", 4, "--ddim-steps", 5)
    assert again.exit_code == 1 and "--overwrite" in again.stderr


def test_ddpm_sampling_over_all_steps(cli, tiny_checkpoint, tmp_path):
    result = cli("-q", "sample", tiny_checkpoint, "--out", tmp_path / "g.png", "--n", 1)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "g.png").size == (28, 28)  # a grid of one has no padding


@pytest.mark.parametrize("args, message", [
    (["train-backbone", "/no/such/folder", "--out", "x.ckpt"], "neither a folder nor a known source"),
    (["train-backbone", "mnist-sample", "--out", "x.ckpt", "--image-size", "30"], "multiple of 4"),
    (["train-backbone", "mnist-sample", "--out", "x.ckpt", "--steps", "5", "--epochs", "1"], "not both"),
    (["sample", "nothing.ckpt", "--out", "g.png"], "does not exist"),
])
def test_user_errors_are_one_line_and_exit_1(cli, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli(*args), message)


def test_empty_folder_and_foreign_checkpoint(cli, tmp_path):
    (tmp_path / "empty").mkdir()
    result = cli("train-backbone", tmp_path / "empty", "--out", tmp_path / "x.ckpt")
    assert result.exit_code == 1 and "no images found" in result.stderr
    (tmp_path / "foreign.ckpt").write_bytes(b"\x00" * 100)
    result = cli("sample", tmp_path / "foreign.ckpt", "--out", tmp_path / "g.png")
    assert result.exit_code == 1 and "not a diffclass checkpoint" in result.stderr


def test_cuda_asked_but_absent(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("train-backbone", "digits", "--out", tmp_path / "x.ckpt", "--device", "cuda")
    assert result.exit_code == 1 and "no usable CUDA GPU" in result.stderr


def test_bad_usage_exits_2(cli):
    assert cli("train-backbone", "digits", "--out", "x", "--device", "tpu").exit_code == 2
    # a value out of its range is a user error (exit 1, one line), like every other range
    assert cli("train-backbone", "digits", "--out", "x", "--min-snr", "-1").exit_code == 1
    assert cli("no-such-command").exit_code == 2


def test_training_says_how_long_the_rest_will_take(cli, tmp_path):
    for i in range(4):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(8, 8), mode="L", seed=i)
    result = cli("train-backbone", tmp_path / "imgs", "--out", tmp_path / "bb.ckpt", "--steps", 25, "--width", 8,
                 "--channel-mults", "1,2", "--batch-size", 2, "--warmup", 1, "--save-every", 25)
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "s per step so far" in line]
    assert len(said) == 1 and "the 5 steps left will take about" in said[0]
    # and again at each save before the last, at the pace since the save before
    result = cli("train-backbone", tmp_path / "imgs", "--out", tmp_path / "bb2.ckpt", "--steps", 25, "--width", 8,
                 "--channel-mults", "1,2", "--batch-size", 2, "--warmup", 1, "--save-every", 10)
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "since the last save" in line]
    assert [line.split(",")[0] for line in said] == ["step 10 of 25", "step 20 of 25"]
    assert all("the rest will take about" in line for line in said)

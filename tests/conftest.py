"""Shared fixtures: tiny backbones, generated image folders, a CLI runner."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffclass_cli.backbone.config import DDPMConfig, TrainConfig, UNetConfig
from diffclass_cli.backbone.train import train_backbone
from diffclass_cli.cli import app
from diffclass_cli.data.sources import open_source

TINY_UNET = UNetConfig(image_size=28, channels=1, width=8, channel_mults=(1, 2, 2))


class Runner:
    """Invoke the CLI in-process; stdout and stderr are kept apart."""

    def __init__(self):
        self.runner = CliRunner()

    def __call__(self, *args, input=None):
        return self.runner.invoke(app, [str(a) for a in args], input=input)


def assert_one_line_error(result, message: str) -> None:
    """A user mistake: exit 1, and the last line of stderr is `diffclass: error: ...message...`."""
    assert result.exit_code == 1, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("diffclass: error: ") and message in last, last
    assert "Traceback" not in result.output


@pytest.fixture
def cli():
    return Runner()


@pytest.fixture(scope="session")
def mnist_train_pixels():
    """The first 512 digits of mnist-sample:train as uint8 [N, 1, 28, 28]."""
    source = open_source("mnist-sample:train")
    return np.stack([np.asarray(source.load(i))[None] for i in range(512)])


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, mnist_train_pixels):
    """A width-8 backbone trained for 30 steps: enough to be non-random, quick to make."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    train = TrainConfig(steps=30, batch_size=32, warmup=5, save_every=30)
    train_backbone(mnist_train_pixels, DDPMConfig(unet=TINY_UNET), train, out,
                   torch.device("cpu"), data={"source": "mnist-sample:train", "images": 512})
    return out


def write_image(path: Path, size=(20, 20), mode="RGB", seed=0) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


@pytest.fixture
def class_tree(tmp_path) -> Path:
    """cats/ (3 png), dogs/ (2 jpg, one nested), a corrupt png, a text file, one unlabeled image."""
    root = tmp_path / "images"
    for i in range(3):
        write_image(root / "cats" / f"c{i}.png", seed=i)
    write_image(root / "dogs" / "d0.jpg", seed=10)
    write_image(root / "dogs" / "more" / "d1.jpg", seed=11, mode="L")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    (root / "cats" / "notes.txt").write_text("not an image")
    write_image(root / "loose.bmp", seed=20)
    return root


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, tmp_path_factory):
    """The tiny gray 28x28 backbone exported with default options."""
    from diffclass_cli.extractors.onnx_export import export_onnx
    from diffclass_cli.extractors.spec import ExtractorSpec

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(tiny_checkpoint, out, ExtractorSpec())
    return out


@pytest.fixture(scope="session")
def rgb_onnx(tmp_path_factory):
    """A randomly initialised RGB 16x16 backbone, exported (global pooling of `mid`)."""
    from diffclass_cli.backbone.checkpoint import Checkpoint, save_checkpoint
    from diffclass_cli.backbone.unet import UNet
    from diffclass_cli.extractors.onnx_export import export_onnx
    from diffclass_cli.extractors.spec import ExtractorSpec

    folder = tmp_path_factory.mktemp("rgb")
    config = DDPMConfig(unet=UNetConfig(image_size=16, channels=3, width=8, channel_mults=(1, 2)))
    torch.manual_seed(0)
    weights = UNet(config.unet).state_dict()
    save_checkpoint(Checkpoint(config, 0, weights, weights), folder / "rgb.ckpt")
    export_onnx(folder / "rgb.ckpt", folder / "rgb.onnx", ExtractorSpec(taps=("mid",), pool=1))
    return folder / "rgb.onnx"


def write_feature_file(path: Path, features, labels, paths, class_names, extractor_sha256="raw-pixels",
                       attrs: dict | None = None) -> Path:
    """A feature file written through the real writer (for heads tests without an extractor);
    `attrs` replace the made-up record of its extractor and source (e.g. a real file's)."""
    from diffclass_cli.features.h5 import FeatureWriter

    attrs = attrs or {"extractor_sha256": extractor_sha256, "extractor_name": "pixels", "source": "test"}
    writer = FeatureWriter(path, features.shape[1], attrs, class_names)
    writer.append(features.astype(np.float32), np.asarray(labels), list(paths), [], len(paths))
    writer.close()
    return path


def _pixel_files(folder: Path, name: str) -> dict[str, Path]:
    files = {}
    for split in ("train", "test"):
        source = open_source(f"{name}:{split}")
        pixels = np.stack([np.asarray(source.load(i), dtype=np.float32).ravel() / 255 for i in range(len(source))])
        files[split] = write_feature_file(folder / f"{split}.h5", pixels, source.labels, source.ids,
                                          source.class_names)
    return files


@pytest.fixture(scope="session")
def digit_files(tmp_path_factory):
    """Raw-pixel feature files of digits:train and digits:test."""
    return _pixel_files(tmp_path_factory.mktemp("digits"), "digits")


@pytest.fixture(scope="session")
def mnist_pixel_files(tmp_path_factory):
    """Raw-pixel feature files of mnist-sample:train (4000) and :test (1000)."""
    return _pixel_files(tmp_path_factory.mktemp("mnist"), "mnist-sample")


def assert_same_feature_file(a: Path, b: Path) -> None:
    """Two feature files hold the same rows, values, skipped files and progress, bit for bit."""
    import h5py

    from diffclass_cli.features.h5 import read_features

    fa, fb = read_features(a), read_features(b)
    assert fa.paths == fb.paths and fa.class_names == fb.class_names
    np.testing.assert_array_equal(fa.labels, fb.labels)
    np.testing.assert_array_equal(fa.features, fb.features)
    with h5py.File(a) as x, h5py.File(b) as y:
        np.testing.assert_array_equal(x["skipped"][:], y["skipped"][:])
        for key in ("rows", "source_rows_done", "extractor_sha256", "source_fingerprint", "shard"):
            assert x.attrs[key] == y.attrs[key], key


def unlabeled_copy(features: Path, out: Path) -> Path:
    """`features` with every row unlabeled: a pool of images nobody has labeled yet, made by the
    same extractor from the same source."""
    import h5py

    from diffclass_cli.features.h5 import read_features

    table = read_features(features)
    with h5py.File(features, "r") as f:
        attrs = {k: v for k, v in f.attrs.items() if k.startswith(("extractor", "source", "feature", "timesteps",
                                                                     "taps", "pool"))}
    return write_feature_file(out, table.features, np.full(len(table.paths), -1), table.paths, [], attrs=attrs)


def write_two_blobs(path: Path, per_class: int = 10, dims: int = 3, class_names=("x", "y"), paths=None,
                    labels=None) -> Path:
    """A feature file of two well-separated classes, `per_class` rows each (labeled by class
    unless `labels` says otherwise), named `0.png`, `1.png`, ... unless `paths` names them."""
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (per_class, dims)), rng.normal(5, 1, (per_class, dims))])
    labels = np.repeat([0, 1], per_class) if labels is None else labels
    paths = [f"{i}.png" for i in range(2 * per_class)] if paths is None else paths
    return write_feature_file(path, features, labels, paths, list(class_names))

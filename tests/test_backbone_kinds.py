"""The backbone contract: a new kind, defined here and registered as a kind's module registers
itself, trains, checkpoints, samples, exports and featurizes without a line elsewhere, and its
own options (declared on its config) reach the Python API's `train`."""

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli import train
from diffclass_cli.backbone import config as backbone_config
from diffclass_cli.backbone.blocks import Tap
from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import TrainConfig, Weights, picked
from diffclass_cli.backbone.sampling import sample_to_png
from diffclass_cli.backbone.train import train_backbone
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.extractor import TapExtractor
from diffclass_cli.extractors.onnx_export import export_onnx
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.features.extract import featurize
from diffclass_cli.features.h5 import read_features
from diffclass_cli.options import check_options, option, option_fields
from diffclass_cli.runs import training_options


class ToyAutoencoder(nn.Module):
    """One conv in (tap `enc`), one conv out (tap `dec`)."""

    def __init__(self, config: "ToyConfig"):
        super().__init__()
        self.config = config
        self.encode = nn.Conv2d(config.channels, config.hidden, 3, padding=1)
        self.decode = nn.Conv2d(config.hidden, config.channels, 3, padding=1)

    def taps(self) -> list[Tap]:
        size = self.config.image_size
        return [Tap("enc", self.config.hidden, size), Tap("dec", self.config.channels, size)]

    def prune_intermediate_layers(self, taps) -> None:
        pass

    def forward_intermediates(self, x: torch.Tensor, taps) -> dict[str, torch.Tensor]:
        found = {"enc": F.relu(self.encode(x))}
        found["dec"] = self.decode(found["enc"])
        return {name: found[name] for name in taps}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_intermediates(x, ["dec"])["dec"]


@dataclass(frozen=True)
class ToyConfig:
    image_size: int = 8
    channels: int = 1
    hidden: int = option("toy: channels of its one hidden layer.", 8, low=1, high=64)
    kind: str = "toy"
    feature_family: ClassVar[str] = "toy"
    summary: ClassVar[str] = "a one-layer autoencoder"
    noised: ClassVar[bool] = False
    tap_names: ClassVar[list[str]] = ["enc", "dec"]
    tap_groups: ClassVar[dict[str, list[str]]] = {"encoder": ["enc"], "decoder": ["dec"], "all": ["enc", "dec"],
                                                  "default": ["enc"]}

    def __post_init__(self):
        check_options(self)

    @classmethod
    def train_options(cls) -> list:
        return option_fields(cls)

    @classmethod
    def from_options(cls, *, image_size: int, channels: int, **options) -> "ToyConfig":
        return cls(image_size, channels, **picked(options, cls))

    @classmethod
    def from_dict(cls, raw: dict) -> "ToyConfig":
        return cls(**raw)

    def build(self) -> ToyAutoencoder:
        return ToyAutoencoder(self)

    def loss_fn(self, device):
        return lambda model, pixels, generator: F.mse_loss(model(pixels * 2 - 1), pixels * 2 - 1)

    def sample(self, model, n: int, generator, ddim_steps):
        noise = torch.randn((n, self.channels, self.image_size, self.image_size), generator=generator)
        return model(noise).clamp(-1, 1)

    def extractor(self, network: ToyAutoencoder, spec: ExtractorSpec) -> "ToyExtractor":
        return ToyExtractor(network, spec)


class ToyExtractor(TapExtractor):
    def __init__(self, network: ToyAutoencoder, spec: ExtractorSpec):
        super().__init__(network, spec, [""])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.pooled(self.network.forward_intermediates(images * 2 - 1, self.taps)), dim=1)


def test_a_new_kind_defined_in_one_place_trains_samples_exports_and_featurizes(monkeypatch, tmp_path):
    monkeypatch.setitem(backbone_config.BACKBONES, "toy", ToyConfig)  # what @register_backbone does, undone after

    source = open_source("digits:train")
    images = np.stack([np.asarray(source.load(i))[None] for i in range(256)])
    config = backbone_config.BACKBONES["toy"].from_options(image_size=8, channels=1, width=32, channel_mults=(1,))
    train = TrainConfig(steps=20, batch_size=32, warmup=2, save_every=20)
    train_backbone(images, config, train, tmp_path / "toy.ckpt", torch.device("cpu"),
                   data={"source": "digits:train", "images": len(images)})
    ckpt = load_checkpoint(tmp_path / "toy.ckpt")
    assert ckpt.config == config and ckpt.step == 20

    sample_to_png(tmp_path / "toy.ckpt", tmp_path / "grid.png", 4, ddim_steps=None, out_dir=None, weights=Weights.ema,
                  device=torch.device("cpu"), seed=0,
                  overwrite=False)
    meta = export_onnx(tmp_path / "toy.ckpt", tmp_path / "toy.onnx", ExtractorSpec(pool=2))
    assert meta["backbone_kind"] == "toy" and meta["feature_dim"] == 8 * 2 * 2
    featurize(open_source("digits:test"), tmp_path / "toy.h5", tmp_path / "toy.onnx")
    features = read_features(tmp_path / "toy.h5").features
    assert features.shape == (len(open_source("digits:test")), 32) and np.isfinite(features).all()
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_a_new_kinds_own_option_reaches_the_python_api(monkeypatch, tmp_path):
    monkeypatch.setitem(backbone_config.BACKBONES, "toy", ToyConfig)
    assert "hidden" in {f.name for f in training_options()}

    train("digits:train", tmp_path / "toy.ckpt", kind="toy", hidden=4, steps=4, batch_size=32, warmup=1)
    config = load_checkpoint(tmp_path / "toy.ckpt").config
    assert config == ToyConfig(image_size=8, channels=1, hidden=4)
    with pytest.raises(DiffclassError, match="--hidden must be at most 64, not 65"):
        train("digits:train", tmp_path / "bad.ckpt", kind="toy", hidden=65, steps=1)

"""Pretrained diffusion models from `diffusers` as a backbone kind: the config (no torch here;
the network and the loading are in diffusers_unet.py).

`diffusers:PATH` names a `UNet2DModel` folder saved with `save_pretrained` (config.json and
safetensors weights; a pipeline folder with `unet/` and `scheduler/` works too) or, where the
machine is online, a hub id. It goes wherever a checkpoint does: `export` (and `--list-taps`),
`sample`, and `train-backbone --init` to fine-tune it on your own images. Its noise schedule
is the model's own scheduler config. Weights are read from safetensors only, never pickle.

Taps follow our UNet's names: `down{i}` is diffusers' `down_blocks[i]`, `mid` its `mid_block`,
`up{i}` its `up_blocks[L-1-i]` (so `up0` is the last, full-resolution block). Each tap is the
block's output, after the block's own down- or upsampler.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from diffclass_cli.backbone.config import (
    Prediction,
    UNetConfig,
    deepest_taps,
    level_tap_groups,
    level_tap_names,
    register_backbone,
)
from diffclass_cli.errors import DiffclassError

PREFIX = "diffusers:"
PREDICTIONS = {"epsilon": Prediction.eps, "v_prediction": Prediction.v}


def is_diffusers_ref(ref: str | Path) -> bool:
    return str(ref).startswith(PREFIX)


@register_backbone
@dataclass(frozen=True)
class DiffusersConfig:
    """A pretrained UNet2DModel: its config and its scheduler's, as diffusers saved them."""

    unet: dict
    scheduler: dict
    source: str = ""  # the folder or hub id it came from
    min_snr: float = 0.0  # as DiffusionConfig.min_snr, for fine-tuning
    kind: str = "diffusers"
    feature_family: ClassVar[str] = "diffusion"
    summary: ClassVar[str] = "a pretrained diffusers UNet2DModel, fine-tuned: give --init diffusers:PATH"
    noised: ClassVar[bool] = True

    def __post_init__(self):
        blocks = [*self.unet.get("down_block_types", ()), *self.unet.get("up_block_types", ())]
        problems = [
            (self.channels not in (1, 3), f"{self.channels} input channels (diffclass reads gray or RGB images)"),
            (self.unet.get("out_channels", self.channels) != self.channels, "an output unlike its input"),
            (self.unet.get("class_embed_type") or self.unet.get("num_class_embeds"),
             "class conditioning (an extractor has no label input)"),
            (any("Skip" in b for b in blocks), "skip blocks (score-SDE models)"),
            (self.scheduler.get("prediction_type", "epsilon") not in PREDICTIONS,
             f"prediction type {self.scheduler.get('prediction_type')!r}"),
            (not 8 <= self.image_size <= 1024, f"{self.image_size}px samples"),
        ]
        for bad, what in problems:
            if bad:
                raise DiffclassError(f"{self.source or 'this diffusers model'} is not supported: {what}")

    @classmethod
    def train_options(cls) -> list:
        return []  # its shape and schedule are the pretrained model's

    @classmethod
    def from_options(cls, **_) -> "DiffusersConfig":
        raise DiffclassError("a diffusers backbone starts from a pretrained model: "
                             "train-backbone --init diffusers:PATH")

    @classmethod
    def from_dict(cls, raw: dict) -> "DiffusersConfig":
        return cls(**{key: raw[key] for key in ("unet", "scheduler", "source", "min_snr") if key in raw})

    @property
    def image_size(self) -> int:
        size = self.unet.get("sample_size")
        if isinstance(size, list | tuple):
            if len(size) != 2 or size[0] != size[1]:
                raise DiffclassError(f"{self.source}: samples of {size} are not square")
            size = size[0]
        return int(size or 0)

    @property
    def channels(self) -> int:
        return int(self.unet.get("in_channels", 3))

    @property
    def levels(self) -> int:
        return len(self.unet["down_block_types"])

    @property
    def tap_names(self) -> list[str]:
        return level_tap_names(self.levels, UNetConfig.tap_kinds)

    @property
    def tap_groups(self) -> dict[str, list[str]]:
        groups = level_tap_groups(self.tap_names, "mid")
        return {**groups, "default": deepest_taps(groups)}

    @property
    def prediction(self) -> Prediction:
        return PREDICTIONS[self.scheduler.get("prediction_type", "epsilon")]

    def alphas_cumprod(self):
        """`[T]` float64 abar of the model's own scheduler."""
        import torch

        from diffclass_cli.backbone.diffusers_unet import diffusers_package

        scheduler = diffusers_package().DDPMScheduler.from_config(self.scheduler)
        return scheduler.alphas_cumprod.to(torch.float64)

    def build(self):
        from diffclass_cli.backbone.diffusers_unet import DiffusersUNet

        return DiffusersUNet(self)

    def extractor(self, network, spec):
        from diffclass_cli.extractors.extractor import DiffusionExtractor

        return DiffusionExtractor(network, self.alphas_cumprod(), spec)

    def loss_fn(self, device) -> Callable:
        from diffclass_cli.backbone.diffusion import to_model_range, training_loss

        abar = self.alphas_cumprod().float().to(device)
        return lambda model, pixels, generator: training_loss(model, to_model_range(pixels), abar, generator,
                                                              prediction=self.prediction, min_snr=self.min_snr)

    def sample(self, model, n: int, generator, ddim_steps: int | None):
        from diffclass_cli.backbone.diffusion import sample

        return sample(model, self.alphas_cumprod(), self.prediction,
                      (n, self.channels, self.image_size, self.image_size), generator, ddim_steps=ddim_steps)

"""The diffusion backbone's config: a UNet and the noise schedule it is trained with."""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from diffclass_cli.backbone.diffusion import DiffusionConfig, alphas_cumprod, to_model_range, training_loss
from diffclass_cli.backbone.unet import UNet, UNetConfig


@dataclass(frozen=True)
class DDPMConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    kind: str = "ddpm"

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def channels(self) -> int:
        return self.unet.channels

    @property
    def tap_names(self) -> list[str]:
        return self.unet.tap_names

    @property
    def tap_groups(self) -> dict[str, list[str]]:
        return self.unet.tap_groups

    def build(self) -> UNet:
        return UNet(self.unet)

    def loss_fn(self, device: torch.device) -> Callable:
        abar = alphas_cumprod(self.diffusion).float().to(device)
        return lambda model, pixels, generator: training_loss(model, to_model_range(pixels), abar, generator)

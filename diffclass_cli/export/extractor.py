"""The frozen feature extractor: images in [0, 1] -> noised to fixed timesteps with fixed
noise -> UNet run to its deepest tap -> each tap pooled -> one feature vector per image.

This module is what gets exported to ONNX; the PyTorch and ONNX paths share it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.backbone.diffusion import DiffusionConfig, alphas_cumprod, to_model_range
from diffclass_cli.backbone.unet import UNet
from diffclass_cli.errors import DiffclassError

DEFAULT_TIMESTEPS = (100,)
DEFAULT_POOL = 3  # 3x3 beat 2x2 at 1 label per class on validation (see the model card)


def default_taps(tap_names: list[str]) -> tuple[str, ...]:
    """The bottleneck and every decoder block."""
    return tuple(tap_names[tap_names.index("mid"):])


def parse_pool(text: str) -> int:
    """`global` -> 1, `RxR` (or `R`) -> R: the side of the grid of averages per block."""
    if text == "global":
        return 1
    side, _, other = text.lower().partition("x")
    if not side.isdigit() or (other and other != side) or int(side) < 1:
        raise DiffclassError(f"--pool is 'global' or a square grid like '2x2', not {text!r}")
    return int(side)


def pool_name(grid: int) -> str:
    return "global" if grid == 1 else f"{grid}x{grid}"


@dataclass(frozen=True)
class ExtractorSpec:
    """What the extractor computes, beyond the backbone's own weights."""

    timesteps: tuple[int, ...] = DEFAULT_TIMESTEPS
    taps: tuple[str, ...] = ()  # empty: default_taps
    pool: int = DEFAULT_POOL
    noise_seed: int = 0
    noise_draws: int = 1


@dataclass(frozen=True)
class FeatureGroup:
    """Columns [start, stop) of the feature vector come from one tap at one timestep."""

    name: str
    start: int
    stop: int


class FeatureExtractor(nn.Module):
    """`images` `[N, C, H, W]` in [0, 1] -> `features` `[N, D]`, deterministically."""

    def __init__(self, unet: UNet, diffusion: DiffusionConfig, spec: ExtractorSpec):
        super().__init__()
        T = diffusion.num_timesteps
        bad = [t for t in spec.timesteps if not 0 <= t < T]
        if bad:
            raise DiffclassError(f"timestep(s) {bad} outside [0, {T}) of this backbone")
        if spec.noise_draws < 1:
            raise DiffclassError("--noise-draws must be at least 1")
        if spec.pool < 1:
            raise DiffclassError("the pooling grid must be at least 1x1")
        tap_names = unet.config.tap_names
        wanted = spec.taps or default_taps(tap_names)
        unknown = sorted(set(wanted) - set(tap_names))
        if unknown:
            raise DiffclassError(f"unknown tap(s) {unknown}; this backbone has {tap_names}")
        self.taps = [name for name in tap_names if name in wanted]  # forward order
        self.spec = spec
        unet.prune_intermediate_layers(self.taps)
        self.unet = unet.eval().requires_grad_(False)
        abar = alphas_cumprod(diffusion)[list(spec.timesteps)]
        self.register_buffer("sqrt_abar", abar.sqrt().float())
        self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().float())
        cfg = unet.config
        generator = torch.Generator().manual_seed(spec.noise_seed)
        noise = torch.randn((spec.noise_draws, cfg.channels, cfg.image_size, cfg.image_size), generator=generator)
        self.register_buffer("noise", noise)
        self.eval()

    def feature_groups(self) -> list[FeatureGroup]:
        channels = {tap.name: tap.channels for tap in self.unet.taps()}
        groups, start = [], 0
        for t in self.spec.timesteps:
            for name in self.taps:
                width = channels[name] * self.spec.pool**2
                groups.append(FeatureGroup(f"t{t}/{name}/{pool_name(self.spec.pool)}", start, start + width))
                start += width
        return groups

    @property
    def feature_dim(self) -> int:
        return self.feature_groups()[-1].stop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x0 = to_model_range(images)
        n, draws = x0.shape[0], self.noise.shape[0]
        features = []
        for j, t in enumerate(self.spec.timesteps):
            # Every image is noised with each of the fixed noise tensors: [N * draws, C, H, W].
            xt = self.sqrt_abar[j] * x0[:, None] + self.sqrt_one_minus_abar[j] * self.noise[None]
            xt = xt.reshape(n * draws, *x0.shape[1:])
            timesteps = torch.full((n * draws,), float(t), device=xt.device)
            taps = self.unet.forward_intermediates(xt, timesteps, self.taps)
            for name in self.taps:
                pooled = F.adaptive_avg_pool2d(taps[name], self.spec.pool).flatten(1)
                features.append(pooled.reshape(n, draws, -1).mean(dim=1))
        return torch.cat(features, dim=1)

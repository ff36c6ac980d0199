"""The frozen feature extractors: images in [0, 1] -> the backbone run to its deepest tap
(a UNet on images noised to fixed timesteps with fixed noise, or a VAE on the images) ->
each tap pooled -> one feature vector per image.

This module is what gets exported to ONNX; the PyTorch and ONNX paths share it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.backbone.config import Backbone
from diffclass_cli.backbone.diffusion import q_sample, to_model_range
from diffclass_cli.backbone.shifts import shifted
from diffclass_cli.backbone.vae import VAE
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.spec import ExtractorSpec, pool_name, timesteps_name


@dataclass(frozen=True)
class FeatureGroup:
    """Columns [start, stop) of the feature vector come from one tap (at one timestep)."""

    name: str
    start: int
    stop: int


def resolve_taps(config, wanted: tuple[str, ...]) -> list[str]:
    """`--taps` names (taps, or groups such as `encoder`) -> tap names in forward order."""
    groups = config.tap_groups
    names = {tap for name in wanted or ("default",) for tap in groups.get(name, [name])}
    unknown = sorted(names - set(config.tap_names))
    if unknown:
        raise DiffclassError(f"unknown tap(s) {unknown}; this backbone has {config.tap_names} "
                             f"and the groups {sorted(groups)}")
    return [name for name in config.tap_names if name in names]


class TapExtractor(nn.Module):
    """Shared by the backbones' extractors: chosen taps, each pooled to a grid (vectors kept
    as they are) and concatenated, once per prefix (a diffusion timestep)."""

    def __init__(self, network: nn.Module, spec: ExtractorSpec, prefixes: list[str]):
        super().__init__()
        if spec.pool < 1:
            raise DiffclassError("the pooling grid must be at least 1x1")
        side = network.config.image_size
        if spec.pool > side:
            raise DiffclassError(f"--pool {pool_name(spec.pool)} is finer than the {side}x{side} images; "
                                 f"use at most {pool_name(side)} (each map is pooled to at most its own side)")
        self.taps = resolve_taps(network.config, spec.taps)
        self.spec, self.prefixes = spec, prefixes
        self.grids = {tap.name: tap.grid(spec.pool) for tap in network.taps() if tap.size is not None}
        network.prune_intermediate_layers(self.taps)
        self.network = network.eval().requires_grad_(False)

    def feature_groups(self) -> list[FeatureGroup]:
        taps = {tap.name: tap for tap in self.network.taps()}
        groups, start = [], 0
        for prefix in self.prefixes:
            for name in self.taps:
                tap, stop = taps[name], start + taps[name].width(self.spec.pool)
                suffix = "" if tap.size is None else f"/{pool_name(self.grids[name])}"
                groups.append(FeatureGroup(f"{prefix}{name}{suffix}", start, stop))
                start = stop
        return groups

    @property
    def feature_dim(self) -> int:
        return self.feature_groups()[-1].stop

    def pooled(self, found: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The chosen taps' outputs, each `[N, width]`, in order."""
        return [found[name] if found[name].dim() == 2 else
                F.adaptive_avg_pool2d(found[name], self.grids[name]).flatten(1) for name in self.taps]

    def describe(self) -> dict:
        """What the ONNX metadata records of the extractor itself."""
        return {"timesteps": [], "taps": self.taps, "pool": pool_name(self.spec.pool),
                "shifts": [list(offset) for offset in self.spec.shift_offsets]}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """`images` `[N, C, H, W]` in [0, 1] -> `[N, D]`: the features of each image, averaged
        over its fixed shifts (one, the image itself, unless `--shifts`)."""
        offsets = self.spec.shift_offsets
        if len(offsets) == 1:  # no shifts: no concatenation or mean in the exported graph
            return self.features(images)
        views = torch.cat([shifted(images, offset) for offset in offsets])
        return self.features(views).reshape(len(offsets), images.shape[0], -1).mean(dim=0)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DiffusionExtractor(TapExtractor):
    """Diffusion features: `images` `[N, C, H, W]` in [0, 1] -> noised to fixed timesteps with
    fixed noise (the schedule `abar` `[T]`) -> UNet taps -> `features` `[N, D]`, deterministically.
    `unet`: any network with our UNet's tap interface (ours, or a diffusers UNet2DModel's)."""

    def __init__(self, unet: nn.Module, abar: torch.Tensor, spec: ExtractorSpec):
        timesteps = spec.diffusion_timesteps
        T = len(abar)
        bad = [t for t in timesteps if not 0 <= t < T]
        if bad:
            raise DiffclassError(f"timestep(s) {bad} outside [0, {T}) of this backbone")
        if spec.noise_draws < 1:
            raise DiffclassError("--noise-draws must be at least 1")
        super().__init__(unet, spec, [f"{timesteps_name((t,))}/" for t in timesteps])
        self.timesteps = timesteps
        self.register_buffer("abar", abar[list(timesteps)].float())
        cfg = unet.config
        generator = torch.Generator().manual_seed(spec.noise_seed)
        noise = torch.randn((spec.noise_draws, cfg.channels, cfg.image_size, cfg.image_size), generator=generator)
        self.register_buffer("noise", noise)
        self.eval()

    def describe(self) -> dict:
        return {**super().describe(), "timesteps": list(self.timesteps), "noise_seed": self.spec.noise_seed,
                "noise_draws": self.spec.noise_draws}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x0 = to_model_range(images)
        n, draws = x0.shape[0], self.noise.shape[0]
        features = []
        for j, t in enumerate(self.timesteps):
            # Every image is noised with each of the fixed noise tensors: [N * draws, C, H, W].
            xt = q_sample(x0[:, None], self.abar[j].expand(n), self.noise[None]).reshape(n * draws, *x0.shape[1:])
            timesteps = torch.full((n * draws,), float(t), device=xt.device)
            found = self.network.forward_intermediates(xt, timesteps, self.taps)
            features += [f.reshape(n, draws, -1).mean(dim=1) for f in self.pooled(found)]
        return torch.cat(features, dim=1)


class VAEExtractor(TapExtractor):
    """VAE features: `images` in [0, 1] -> encoder taps, the posterior mean, and decoder taps
    decoded from that mean -> `features` `[N, D]`. No noise, no timesteps."""

    def __init__(self, vae: VAE, spec: ExtractorSpec):
        if spec.timesteps or spec.noise_draws != 1 or spec.noise_seed:
            raise DiffclassError("a VAE extractor has no timesteps or noise: drop --timestep(s) and --noise-*")
        super().__init__(vae, spec, [""])
        self.eval()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        found = self.network.forward_intermediates(to_model_range(images), self.taps)
        return torch.cat(self.pooled(found), dim=1)


def make_extractor(network: nn.Module, config: Backbone, spec: ExtractorSpec) -> TapExtractor:
    """The extractor of a backbone network of any kind."""
    return config.extractor(network, spec)

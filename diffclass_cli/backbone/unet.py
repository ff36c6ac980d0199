"""The denoising UNet. It knows nothing about noise schedules (see diffusion.py).

Its blocks are named feature taps, in the order the forward pass reaches them:
`down0 .. down{L-1}`, `mid`, `up{L-1} .. up0` (L = len(channel_mults)). `down{i}` and
`up{i}` work at 1/2**i of the image size. `forward_intermediates` runs the network only
as far as the deepest requested tap; `forward` is that same pass to `up0` plus the output
conv, so features and denoising can never drift apart.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.errors import DiffclassError


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 28
    channels: int = 1
    width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        check_network_shape(self.image_size, self.channels, self.width, len(self.channel_mults))

    @property
    def level_channels(self) -> list[int]:
        return [self.width * m for m in self.channel_mults]

    @property
    def tap_names(self) -> list[str]:
        levels = range(len(self.channel_mults))
        return [f"down{i}" for i in levels] + ["mid"] + [f"up{i}" for i in reversed(levels)]

    @property
    def tap_groups(self) -> dict[str, list[str]]:
        """Names that stand for several taps in `--taps`; `default` is what extractors use."""
        names = self.tap_names
        middle = names.index("mid")
        return {"encoder": names[:middle + 1], "decoder": names[middle + 1:], "all": names,
                "default": names[middle:]}  # the bottleneck and every decoder block


def check_network_shape(image_size: int, channels: int, width: int, levels: int) -> None:
    """The input and width rules every backbone network shares."""
    if image_size < 8 or image_size % 4:
        raise DiffclassError(
            f"image size {image_size} is not supported: use a multiple of 4 that is at "
            "least 8 (28 for MNIST, 32 for CIFAR-10, any multiple of 8)"
        )
    if channels not in (1, 3):
        raise DiffclassError(f"channels must be 1 (gray) or 3 (RGB), not {channels}")
    if width < 8 or width % 8:
        raise DiffclassError(f"width must be a multiple of 8, not {width}")
    if levels < 1 or image_size >> (levels - 1) < 2:
        raise DiffclassError(f"{levels} levels are too deep for {image_size}px images")


def level_sizes(image_size: int, levels: int) -> list[int]:
    """Feature-map side at each level: stride-2 convs with padding 1 round up (28 -> 14 -> 7 -> 4)."""
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append((sizes[-1] + 1) // 2)
    return sizes


@dataclass(frozen=True)
class Tap:
    """A block whose output can be used as features: `[N, channels, size, size]`, or a
    vector `[N, channels]` when `size` is None (a VAE's latent mean)."""

    name: str
    channels: int
    size: int | None

    def width(self, pool: int) -> int:
        """Features it gives when pooled to a `pool` x `pool` grid (vectors are not pooled)."""
        return self.channels if self.size is None else self.channels * pool**2


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard sinusoidal embedding: `[N]` -> `[N, dim]` (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding (if any) added in between, plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch)) if emb_dim else None
        self.out_layers = nn.Sequential(
            _norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class Stage(nn.Module):
    """`blocks` ResBlocks at one resolution; its output is one feature tap."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, blocks: int, dropout: float):
        super().__init__()
        chans = [in_ch] + [out_ch] * blocks
        self.blocks = nn.ModuleList(ResBlock(a, b, emb_dim, dropout) for a, b in zip(chans, chans[1:]))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return x


class UNet(nn.Module):
    """Predicts the noise in `x` `[N, C, H, W]` at `timesteps` `[N]`."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        w, chans, emb_dim = config.width, config.level_channels, 4 * config.width
        args = dict(emb_dim=emb_dim, blocks=config.blocks_per_level, dropout=config.dropout)
        self.time_embed = nn.Sequential(nn.Linear(w, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.stem = nn.Conv2d(config.channels, w, 3, padding=1)
        self.down = nn.ModuleList(Stage(a, b, **args) for a, b in zip([w] + chans, chans))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans[:-1])
        self.mid = Stage(chans[-1], chans[-1], **args)
        self.upsample = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in chans[1:])
        self.up = nn.ModuleList(
            Stage(c_in + c_skip, c_skip, **args)
            for c_in, c_skip in zip(chans[1:] + chans[-1:], chans)
        )
        self.out = nn.Sequential(_norm(chans[0]), nn.SiLU(),
                                 nn.Conv2d(chans[0], config.channels, 3, padding=1))

    def taps(self) -> list[Tap]:
        """The named blocks, in forward order, with their output channels and sizes."""
        chans = self.config.level_channels
        sizes = level_sizes(self.config.image_size, len(chans))
        levels = range(len(chans))
        return ([Tap(f"down{i}", chans[i], sizes[i]) for i in levels]
                + [Tap("mid", chans[-1], sizes[-1])]
                + [Tap(f"up{i}", chans[i], sizes[i]) for i in reversed(levels)])

    def prune_intermediate_layers(self, taps: Sequence[str]) -> None:
        """Replace every block after the deepest of `taps`, and the output conv, with
        Identity, so an extractor holds only the weights it uses."""
        order = self.config.tap_names
        deepest = max(order.index(name) for name in taps)
        levels = len(self.down)
        for i in range(levels):
            if order.index(f"down{i}") > deepest:
                self.down[i] = nn.Identity()
                self.downsample[i - 1] = nn.Identity()
            if order.index(f"up{i}") > deepest:
                self.up[i] = nn.Identity()
                if i < levels - 1:
                    self.upsample[i] = nn.Identity()
        if order.index("mid") > deepest:
            self.mid = nn.Identity()
        self.out = nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, timesteps: torch.Tensor,
                              taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of the named blocks; stops after the deepest one asked for."""
        unknown = set(taps) - set(self.config.tap_names)
        if unknown:
            raise DiffclassError(f"unknown tap(s) {sorted(unknown)}; taps are {self.config.tap_names}")
        wanted, found = set(taps), {}

        def keep(name: str, h: torch.Tensor) -> bool:
            if name in wanted:
                found[name] = h
            return len(found) == len(wanted)

        emb = self.time_embed(timestep_embedding(timesteps, self.config.width))
        h, skips = self.stem(x), []
        for i, stage in enumerate(self.down):
            if i:
                h = self.downsample[i - 1](h)
            h = stage(h, emb)
            skips.append(h)
            if keep(f"down{i}", h):
                return found
        h = self.mid(h, emb)
        if keep("mid", h):
            return found
        for i in reversed(range(len(self.up))):
            if i < len(self.up) - 1:  # the deepest up block works at the mid block's size
                h = self.upsample[i](F.interpolate(h, size=skips[i].shape[-2:], mode="nearest"))
            h = self.up[i](torch.cat([h, skips[i]], dim=1), emb)
            if keep(f"up{i}", h):
                return found
        return found

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.out(self.forward_intermediates(x, timesteps, ["up0"])["up0"])

"""The denoising UNet. It knows nothing about noise schedules (see diffusion.py).

Its blocks are named feature taps, in the order the forward pass reaches them:
`down0 .. down{L-1}`, `mid`, `up{L-1} .. up0` (L = len(channel_mults)). `down{i}` and
`up{i}` work at 1/2**i of the image size. `forward_intermediates` runs the network only
as far as the deepest requested tap; `forward` is that same pass to `up0` plus the output
conv, so features and denoising can never drift apart.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.backbone.blocks import ResBlock, SelfAttention, Tap, TapCollector, group_norm
from diffclass_cli.backbone.config import UNetConfig


def timestep_embedding(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Standard sinusoidal embedding: `[N]` -> `[N, dim]` (cos half, then sin half)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class Stage(nn.Module):
    """`blocks` ResBlocks at one resolution (self-attention after the first, if asked); its
    output is one feature tap."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, blocks: int, dropout: float, attention: bool = False):
        super().__init__()
        chans = [in_ch] + [out_ch] * blocks
        self.blocks = nn.ModuleList(ResBlock(a, b, emb_dim, dropout) for a, b in zip(chans, chans[1:]))
        if attention:  # after the first block, as improved-diffusion's middle block
            self.blocks.insert(1, SelfAttention(out_ch))

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
        self.mid = Stage(chans[-1], chans[-1], **args, attention=config.mid_attention)
        self.upsample = nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in chans[1:])
        self.up = nn.ModuleList(
            Stage(c_in + c_skip, c_skip, **args)
            for c_in, c_skip in zip(chans[1:] + chans[-1:], chans)
        )
        self.out = nn.Sequential(group_norm(chans[0]), nn.SiLU(),
                                 nn.Conv2d(chans[0], config.channels, 3, padding=1))

    def taps(self) -> list[Tap]:
        """The named blocks, in forward order, with their output channels and sizes."""
        chans, sizes = self.config.level_channels, self.config.level_sizes
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
        collector = TapCollector(taps, self.config.tap_names)
        keep, found = collector.keep, collector.found
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

"""A convolutional VAE backbone: the research's comparison for diffusion features.

Its blocks are named feature taps, in the order the forward pass reaches them:
`enc0 .. enc{L-1}` (encoder, `enc{i}` at 1/2**i of the image size), `latent` (the
posterior mean, a vector), `dec{L-1} .. dec0` (decoder, run from the posterior mean).
Features never sample, so extraction is deterministic.
"""

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffclass_cli.backbone.blocks import ResBlock, Tap, TapCollector, group_norm
from diffclass_cli.backbone.config import VAEConfig
from diffclass_cli.backbone.diffusion import to_model_range


class VAE(nn.Module):
    """Encodes `[N, C, H, W]` images in [-1, 1] to a diagonal Gaussian posterior and decodes a
    latent to Bernoulli logits of the [0, 1] pixels."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        w, chans = config.width, config.level_channels
        self.sizes = config.level_sizes
        self.bottom = (self.sizes[-1] + 1) // 2
        flat = chans[-1] * self.bottom**2
        self.stem = nn.Conv2d(config.channels, w, 3, padding=1)
        self.enc = nn.ModuleList(ResBlock(a, b) for a, b in zip([w] + chans, chans))
        self.downsample = nn.ModuleList(nn.Conv2d(c, c, 3, stride=2, padding=1) for c in chans)
        self.to_latent = nn.Linear(flat, 2 * config.latent_dim)
        self.from_latent = nn.Linear(config.latent_dim, flat)
        self.dec = nn.ModuleList(ResBlock(c_in, c) for c_in, c in zip(chans[1:] + chans[-1:], chans))
        self.out = nn.Sequential(group_norm(chans[0]), nn.SiLU(), nn.Conv2d(chans[0], config.channels, 3, padding=1))

    def taps(self) -> list[Tap]:
        chans, levels = self.config.level_channels, range(len(self.config.channel_mults))
        return ([Tap(f"enc{i}", chans[i], self.sizes[i]) for i in levels]
                + [Tap("latent", self.config.latent_dim, None)]
                + [Tap(f"dec{i}", chans[i], self.sizes[i]) for i in reversed(levels)])

    def prune_intermediate_layers(self, taps: Sequence[str]) -> None:
        """Replace every block after the deepest of `taps` with Identity."""
        order = self.config.tap_names
        deepest = max(order.index(name) for name in taps)
        for i in range(len(self.enc)):
            if order.index(f"enc{i}") > deepest:
                self.enc[i] = nn.Identity()
            if order.index(f"enc{i}") >= deepest:  # downsampling only feeds deeper blocks
                self.downsample[i] = nn.Identity()
            if order.index(f"dec{i}") > deepest:
                self.dec[i] = nn.Identity()
        if order.index("latent") > deepest:
            self.to_latent = nn.Identity()
        if order.index(f"dec{len(self.dec) - 1}") > deepest:
            self.from_latent = nn.Identity()
        self.out = nn.Identity()

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance `[N, latent_dim]` each."""
        return self._encode(x, lambda name, h: False)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits `[N, C, H, W]` of latents `z`."""
        return self.out(self._decode(z, lambda name, h: False))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The training pass: pixel logits of the latent `mean + std * eps`, and the posterior."""
        mean, logvar = self.encode(x)
        return self.decode(mean + (0.5 * logvar).exp() * eps), mean, logvar

    def forward_intermediates(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """Outputs of the named blocks, decoding from the posterior mean; stops after the
        deepest one asked for."""
        collector = TapCollector(taps, self.config.tap_names)
        posterior = self._encode(x, collector.keep)
        if posterior is not None and len(collector.found) < len(collector.wanted):
            self._decode(posterior[0], collector.keep)
        return collector.found

    def _encode(self, x: torch.Tensor, keep: Callable[[str, torch.Tensor], bool]
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
        h = self.stem(x)
        for i, block in enumerate(self.enc):
            h = block(h)
            if keep(f"enc{i}", h):
                return None
            h = self.downsample[i](h)
        mean, logvar = self.to_latent(h.flatten(1)).chunk(2, dim=1)
        keep("latent", mean)
        return mean, logvar

    def _decode(self, z: torch.Tensor, keep: Callable[[str, torch.Tensor], bool]) -> torch.Tensor:
        h = self.from_latent(z).unflatten(1, (-1, self.bottom, self.bottom))
        for i in reversed(range(len(self.dec))):
            h = self.dec[i](F.interpolate(h, size=self.sizes[i], mode="nearest"))
            if keep(f"dec{i}", h):
                break
        return h


def elbo_loss(model: nn.Module, pixels: torch.Tensor, beta: float, latent_dim: int,
              generator: torch.Generator) -> torch.Tensor:
    """Negative ELBO per pixel (Bernoulli likelihood of [0, 1] pixels, KL weighted by `beta`),
    with one reparameterised latent draw per image. `model` may be wrapped (DDP), so only
    its forward is called."""
    eps = torch.randn((len(pixels), latent_dim), generator=generator, device=pixels.device)
    logits, mean, logvar = model(to_model_range(pixels), eps)
    reconstruction = F.binary_cross_entropy_with_logits(logits.float(), pixels, reduction="sum")
    kl = -0.5 * (1 + logvar - mean.pow(2) - logvar.exp()).float().sum()
    return (reconstruction + beta * kl) / pixels.numel()


@torch.no_grad()
def sample_vae(model: VAE, n: int, generator: torch.Generator) -> torch.Tensor:
    """Decode `n` draws from the prior: images `[n, C, H, W]` in [-1, 1]."""
    device = next(model.parameters()).device
    z = torch.randn((n, model.config.latent_dim), generator=generator, device=device)
    return to_model_range(torch.sigmoid(model.decode(z)))

"""Pieces every backbone network shares: the shape rules of its levels, the residual block,
and the named feature taps (what they are, and collecting them during a forward pass)."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from diffclass_cli.errors import DiffclassError


@dataclass(frozen=True)
class Tap:
    """A block whose output can be used as features: `[N, channels, size, size]`, or a
    vector `[N, channels]` when `size` is None (a VAE's latent mean)."""

    name: str
    channels: int
    size: int | None

    def grid(self, pool: int) -> int:
        """The side of the grid its map is pooled to: `pool`, or the map's own side where that is
        smaller (a finer grid would only repeat its values)."""
        return min(pool, self.size)

    def width(self, pool: int) -> int:
        """Features it gives when pooled to at most a `pool` x `pool` grid (vectors are not pooled)."""
        return self.channels if self.size is None else self.channels * self.grid(pool)**2


class TapCollector:
    """Keeps the requested taps during a forward pass; `keep` says when all have been seen,
    so the pass can stop at the deepest one."""

    def __init__(self, wanted: Sequence[str], known: list[str]):
        unknown = set(wanted) - set(known)
        if unknown:
            raise DiffclassError(f"unknown tap(s) {sorted(unknown)}; taps are {known}")
        self.wanted, self.found = set(wanted), {}

    def keep(self, name: str, h: torch.Tensor) -> bool:
        if name in self.wanted:
            self.found[name] = h
        return len(self.found) == len(self.wanted)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the time embedding (if any) added in between, plus a skip."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, out_ch)) if emb_dim else None
        self.out_layers = nn.Sequential(
            group_norm(out_ch), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1)
        )
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.in_layers(x)
        if self.emb is not None:
            h = h + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the positions of a feature map, added to its input
    (improved-diffusion's AttentionBlock). The output projection starts at zero, so a new
    block begins as the identity."""

    def __init__(self, channels: int, head_channels: int = 32):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        n, c, *spatial = x.shape
        q, k, v = self.qkv(self.norm(x).reshape(n, c, -1)).reshape(n * self.heads, 3 * c // self.heads, -1).chunk(3, 1)
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) * (c // self.heads) ** -0.5, dim=-1)
        h = torch.einsum("bij,bcj->bci", weights, v).reshape(n, c, -1)
        return x + self.proj(h).reshape(n, c, *spatial)

"""Pieces every backbone network shares: the shape rules of its levels, the residual block,
and the named feature taps (what they are, and collecting them during a forward pass)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from diffclass_cli.errors import DiffclassError


@dataclass(frozen=True)
class LevelsConfig:
    """Input images and the channels of each level (each level halves the size), and the names
    of the taps: `{encoder}0..`, the middle one, `{decoder}{L-1}..{decoder}0`."""

    tap_kinds: ClassVar[tuple[str, str, str]]  # (encoder prefix, middle tap, decoder prefix)
    image_size: int = 28
    channels: int = 1
    width: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)

    def __post_init__(self):
        if self.image_size < 8 or self.image_size % 4:
            raise DiffclassError(
                f"image size {self.image_size} is not supported: use a multiple of 4 that is at "
                "least 8 (28 for MNIST, 32 for CIFAR-10, any multiple of 8)"
            )
        if self.channels not in (1, 3):
            raise DiffclassError(f"channels must be 1 (gray) or 3 (RGB), not {self.channels}")
        if self.width < 8 or self.width % 8:
            raise DiffclassError(f"width must be a multiple of 8, not {self.width}")
        if any(m < 1 for m in self.channel_mults):
            raise DiffclassError(f"channel multipliers must be at least 1, not {self.channel_mults}")
        levels = len(self.channel_mults)
        if levels < 1 or self.image_size >> (levels - 1) < 2:
            raise DiffclassError(f"{levels} levels are too deep for {self.image_size}px images")

    @property
    def level_channels(self) -> list[int]:
        return [self.width * m for m in self.channel_mults]

    @property
    def level_sizes(self) -> list[int]:
        """Feature-map side at each level: stride-2 convs with padding 1 round up (28 -> 14 -> 7)."""
        sizes = [self.image_size]
        for _ in self.channel_mults[1:]:
            sizes.append((sizes[-1] + 1) // 2)
        return sizes

    @property
    def tap_names(self) -> list[str]:
        """The taps in forward order."""
        encoder, middle, decoder = self.tap_kinds
        levels = range(len(self.channel_mults))
        return [f"{encoder}{i}" for i in levels] + [middle] + [f"{decoder}{i}" for i in reversed(levels)]

    @property
    def tap_groups(self) -> dict[str, list[str]]:
        """Names that stand for several taps in `--taps`: up to and including the middle tap
        (`encoder`), after it (`decoder`), `all`, and `default` (what extractors use)."""
        names = self.tap_names
        cut = names.index(self.tap_kinds[1]) + 1
        groups = {"encoder": names[:cut], "decoder": names[cut:], "all": names}
        return {**groups, "default": self.default_taps(groups)}

    def default_taps(self, groups: dict[str, list[str]]) -> list[str]:
        raise NotImplementedError


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

"""Every backbone and training setting as plain data: what a checkpoint stores and what
`train-backbone` is told. No torch here, so the command line and the inference commands can
import it; each config builds its network and its loss (importing torch) only when asked.
"""

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import ClassVar, Protocol

from diffclass_cli.errors import DiffclassError


class Weights(str, Enum):
    ema = "ema"
    raw = "raw"


class BackboneKind(str, Enum):
    ddpm = "ddpm"
    vae = "vae"


def level_tap_names(levels: int, kinds: tuple[str, str, str]) -> list[str]:
    """The taps of a network of `levels` levels in forward order: `{encoder}0..`, the middle one,
    `{decoder}{levels-1}..{decoder}0` (`kinds`: encoder prefix, middle tap, decoder prefix)."""
    encoder, middle, decoder = kinds
    return [f"{encoder}{i}" for i in range(levels)] + [middle] + [f"{decoder}{i}" for i in reversed(range(levels))]


def level_tap_groups(names: list[str], middle: str) -> dict[str, list[str]]:
    """Names that stand for several taps in `--taps`: up to and including the middle tap
    (`encoder`), after it (`decoder`) and `all`; each kind adds its `default` (what extractors use)."""
    cut = names.index(middle) + 1
    return {"encoder": names[:cut], "decoder": names[cut:], "all": names}


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
        return level_tap_names(len(self.channel_mults), self.tap_kinds)

    @property
    def tap_groups(self) -> dict[str, list[str]]:
        groups = level_tap_groups(self.tap_names, self.tap_kinds[1])
        return {**groups, "default": self.default_taps(groups)}

    def default_taps(self, groups: dict[str, list[str]]) -> list[str]:
        raise NotImplementedError


@dataclass(frozen=True)
class UNetConfig(LevelsConfig):
    tap_kinds = ("down", "mid", "up")
    blocks_per_level: int = 1
    dropout: float = 0.0
    mid_attention: bool = False  # self-attention in the middle block (at the lowest resolution)

    def __post_init__(self):
        super().__post_init__()
        if self.blocks_per_level < 1:
            raise DiffclassError(f"--blocks-per-level must be at least 1, not {self.blocks_per_level}")

    def default_taps(self, groups: dict[str, list[str]]) -> list[str]:
        """The bottleneck and every decoder block."""
        return ["mid", *groups["decoder"]]


class Schedule(str, Enum):
    linear = "linear"
    cosine = "cosine"


class Prediction(str, Enum):
    """What the UNet is trained to output: the noise, or v = sqrt(abar) noise - sqrt(1 - abar) x0
    (Salimans & Ho 2022)."""

    eps = "eps"
    v = "v"


@dataclass(frozen=True)
class DiffusionConfig:
    num_timesteps: int = 1000
    schedule: Schedule = Schedule.linear
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: Prediction = Prediction.eps
    min_snr: float = 0.0  # > 0: Min-SNR-gamma loss weighting (Hang et al. 2023) with this gamma; 0: plain MSE


class Backbone(Protocol):
    """What every kind of backbone provides. Its config is plain data; the methods that need
    torch import the kind's own module when called. A new kind implements this in its own
    module and registers itself with @register_backbone (backbone/__init__.py imports the
    kinds' modules)."""

    kind: str  # stored in checkpoints and extractor metadata
    feature_family: ClassVar[str]  # what benchmark tables call its features
    noised: ClassVar[bool]  # whether its features depend on a diffusion timestep (and noise)
    image_size: int
    channels: int
    tap_names: list[str]
    tap_groups: dict[str, list[str]]

    @classmethod
    def from_options(cls, **options) -> "Backbone":
        """From `train-backbone`'s options (each kind takes the ones it knows)."""

    @classmethod
    def from_dict(cls, raw: dict) -> "Backbone":
        """The inverse of `dataclasses.asdict` (JSON-decoded)."""

    def build(self):
        """The network (torch.nn.Module), untrained."""

    def loss_fn(self, device) -> Callable:
        """`loss(model, pixels in [0, 1], generator) -> scalar` for training."""

    def sample(self, model, n: int, generator, ddim_steps: int | None):
        """`n` generated images `[n, C, H, W]` in [-1, 1]."""

    def extractor(self, network, spec):
        """The frozen feature extractor (export.extractor.TapExtractor) of its built `network`."""


BACKBONES: dict[str, type[Backbone]] = {}  # each kind's config class, by its `kind`


def register_backbone(cls: type) -> type:
    """Class decorator: checkpoint loading, training, sampling, export and the benchmark's
    names find the kind through BACKBONES."""
    BACKBONES[cls.kind] = cls
    return cls


@register_backbone
@dataclass(frozen=True)
class DDPMConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    kind: str = "ddpm"
    feature_family: ClassVar[str] = "diffusion"
    noised: ClassVar[bool] = True

    @classmethod
    def from_options(cls, image_size: int, channels: int, width: int = UNetConfig.width,
                     channel_mults: tuple[int, ...] = UNetConfig.channel_mults, blocks_per_level: int = 1,
                     mid_attention: bool = False, schedule: Schedule = Schedule.linear,
                     prediction: Prediction = Prediction.eps, min_snr: float = 0.0, **_) -> "DDPMConfig":
        return cls(unet=UNetConfig(image_size=image_size, channels=channels, width=width, channel_mults=channel_mults,
                                   blocks_per_level=blocks_per_level, mid_attention=mid_attention),
                   diffusion=DiffusionConfig(schedule=schedule, prediction=prediction, min_snr=min_snr))

    @classmethod
    def from_dict(cls, raw: dict) -> "DDPMConfig":
        unet = UNetConfig(**{**raw["unet"], "channel_mults": tuple(raw["unet"]["channel_mults"])})
        diffusion = raw["diffusion"]
        return cls(unet=unet, diffusion=DiffusionConfig(**{
            **diffusion, "schedule": Schedule(diffusion["schedule"]),
            "prediction": Prediction(diffusion.get("prediction", DiffusionConfig.prediction))}))

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

    def build(self):
        from diffclass_cli.backbone.unet import UNet

        return UNet(self.unet)

    def loss_fn(self, device) -> Callable:
        from diffclass_cli.backbone.diffusion import alphas_cumprod, to_model_range, training_loss

        abar = alphas_cumprod(self.diffusion).float().to(device)
        diffusion = self.diffusion
        return lambda model, pixels, generator: training_loss(model, to_model_range(pixels), abar, generator,
                                                              prediction=diffusion.prediction,
                                                              min_snr=diffusion.min_snr)

    def sample(self, model, n: int, generator, ddim_steps: int | None):
        from diffclass_cli.backbone.diffusion import alphas_cumprod, sample

        return sample(model, alphas_cumprod(self.diffusion), self.diffusion.prediction,
                      (n, self.channels, self.image_size, self.image_size), generator, ddim_steps=ddim_steps)

    def extractor(self, network, spec):
        from diffclass_cli.backbone.diffusion import alphas_cumprod
        from diffclass_cli.extractors.extractor import DiffusionExtractor

        return DiffusionExtractor(network, alphas_cumprod(self.diffusion), spec)


@register_backbone
@dataclass(frozen=True)
class VAEConfig(LevelsConfig):
    tap_kinds = ("enc", "latent", "dec")
    latent_dim: int = 32
    beta: float = 1.0  # weight of the KL term in the ELBO
    kind: str = "vae"
    feature_family: ClassVar[str] = "vae"
    noised: ClassVar[bool] = False

    def __post_init__(self):
        super().__post_init__()
        if self.latent_dim < 1:
            raise DiffclassError(f"--latent-dim must be at least 1, not {self.latent_dim}")
        if self.beta <= 0:
            raise DiffclassError(f"--beta must be positive, not {self.beta}")

    @classmethod
    def from_options(cls, image_size: int, channels: int, width: int = LevelsConfig.width,
                     channel_mults: tuple[int, ...] = LevelsConfig.channel_mults, latent_dim: int = 32,
                     beta: float = 1.0, **_) -> "VAEConfig":
        return cls(image_size=image_size, channels=channels, width=width, channel_mults=channel_mults,
                   latent_dim=latent_dim, beta=beta)

    @classmethod
    def from_dict(cls, raw: dict) -> "VAEConfig":
        return cls(**{**raw, "channel_mults": tuple(raw["channel_mults"])})

    def default_taps(self, groups: dict[str, list[str]]) -> list[str]:
        """The encoder blocks and the latent mean (the research's encoder features; `decoder`
        and `all` are its decoder and stacked ones)."""
        return groups["encoder"]

    def build(self):
        from diffclass_cli.backbone.vae import VAE

        return VAE(self)

    def loss_fn(self, device) -> Callable:
        from diffclass_cli.backbone.vae import elbo_loss

        return lambda model, pixels, generator: elbo_loss(model, pixels, self.beta, self.latent_dim, generator)

    def sample(self, model, n: int, generator, ddim_steps: int | None):
        from diffclass_cli.backbone.vae import sample_vae

        return sample_vae(model, n, generator)

    def extractor(self, network, spec):
        from diffclass_cli.extractors.extractor import VAEExtractor

        return VAEExtractor(network, spec)


def backbone_class(kind: str) -> type[Backbone]:
    if kind not in BACKBONES:
        raise DiffclassError(f"unknown backbone kind {kind!r}; this diffclass knows {', '.join(BACKBONES)}")
    return BACKBONES[kind]


def config_to_json(config: Backbone) -> str:
    return json.dumps(asdict(config))


def config_from_json(text: str) -> Backbone:
    raw = json.loads(text)
    return backbone_class(raw["kind"]).from_dict(raw)


class LRSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: LRSchedule = LRSchedule.cosine
    warmup: int = 100
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    augment_shift: int = 0  # each training image moved by up to this many pixels each way
    seed: int = 0
    save_every: int = 500
    snapshot_every: int = 0  # also keep CKPT-step{N} copies, to pick a checkpoint by a probe later

    def __post_init__(self):
        for option, value, smallest in (("steps", self.steps, 1), ("batch-size", self.batch_size, 1),
                                        ("save-every", self.save_every, 1), ("warmup", self.warmup, 0),
                                        ("snapshot-every", self.snapshot_every, 0),
                                        ("augment-shift", self.augment_shift, 0)):
            if value < smallest:
                raise DiffclassError(f"--{option} must be at least {smallest}, not {value}")
        if not self.lr > 0:
            raise DiffclassError(f"--lr must be above 0, not {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise DiffclassError(f"--ema-decay must be in [0, 1), not {self.ema_decay}")

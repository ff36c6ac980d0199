"""Every backbone and training setting as plain data: what a checkpoint stores and what
`train-backbone` is told. No torch here, so the command line and the inference commands can
import it; each config builds its network and its loss (importing torch) only when asked.
"""

import json
from collections.abc import Callable
from dataclasses import Field, asdict, dataclass, field
from enum import Enum
from typing import ClassVar, Protocol

from diffclass_cli.errors import DiffclassError
from diffclass_cli.options import check_options, option, option_fields, parse_ints, seed_option


class Weights(str, Enum):
    ema = "ema"
    raw = "raw"


DEFAULT_KIND = "ddpm"


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


def deepest_taps(groups: dict[str, list[str]]) -> list[str]:
    """A UNet's default taps: the bottleneck and the decoder block after it. With a timestep of
    200 they lifted new domains above raw pixels where every decoder block did not (docs/results.md)
    and the network stops there."""
    return ["mid", groups["decoder"][0]]


MAX_MULT, MAX_LEVELS, MAX_IMAGE_SIZE = 16, 8, 4096  # what a file's config may ask for: no network past these
MAX_TIMESTEPS = 100_000


@dataclass(frozen=True)
class LevelsConfig:
    """Input images and the channels of each level (each level halves the size), and the names
    of the taps: `{encoder}0..`, the middle one, `{decoder}{L-1}..{decoder}0`."""

    tap_kinds: ClassVar[tuple[str, str, str]]  # (encoder prefix, middle tap, decoder prefix)
    image_size: int = 28
    channels: int = 1
    width: int = option("Channels of the first level.", 32, low=8, high=4096)
    channel_mults: tuple[int, ...] = option("Width multiplier per level.", (1, 2, 2), text=parse_ints)

    def __post_init__(self):
        check_options(self)
        if self.image_size < 8 or self.image_size % 4:
            raise DiffclassError(
                f"image size {self.image_size} is not supported: use a multiple of 4 that is at "
                "least 8 (28 for MNIST, 32 for CIFAR-10, any multiple of 8)"
            )
        if self.channels not in (1, 3):
            raise DiffclassError(f"channels must be 1 (gray) or 3 (RGB), not {self.channels}")
        if self.width < 8 or self.width % 8:
            raise DiffclassError(f"width must be a multiple of 8, not {self.width}")
        if any(not 1 <= m <= MAX_MULT for m in self.channel_mults) or len(self.channel_mults) > MAX_LEVELS:
            raise DiffclassError(f"channel multipliers are 1 to {MAX_MULT} for at most {MAX_LEVELS} levels, not "
                                 f"{self.channel_mults}")
        if self.image_size > MAX_IMAGE_SIZE:
            raise DiffclassError(f"image size {self.image_size} is over {MAX_IMAGE_SIZE}")
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
    blocks_per_level: int = option("ddpm: ResBlocks per UNet level.", 1, low=1, high=64)
    dropout: float = 0.0
    mid_attention: bool = option("ddpm: self-attention in the middle block, at the lowest resolution.", False,
                                 negatable=True)

    def default_taps(self, groups: dict[str, list[str]]) -> list[str]:
        return deepest_taps(groups)


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
    schedule: Schedule = option("ddpm: noise schedule.", Schedule.linear)
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction: Prediction = option(
        "ddpm: train the UNet to predict the noise (eps) or v = sqrt(abar) noise - sqrt(1 - abar) image.",
        Prediction.eps)
    min_snr: float = option(  # Min-SNR-gamma loss weighting (Hang et al. 2023)
        "ddpm: weigh each image's loss by min(SNR, GAMMA) / SNR (/ (SNR + 1) with --prediction v): Min-SNR-gamma, "
        "e.g. 5; 0: off.", 0.0, low=0, metavar="GAMMA")

    def __post_init__(self):
        check_options(self)
        if not (isinstance(self.num_timesteps, int) and 1 <= self.num_timesteps <= MAX_TIMESTEPS):
            raise DiffclassError(f"a diffusion has 1 to {MAX_TIMESTEPS} steps, not {self.num_timesteps!r}")
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise DiffclassError(f"the noise schedule's betas must rise within (0, 1), not {self.beta_start!r} to "
                                 f"{self.beta_end!r}")


class Backbone(Protocol):
    """What every kind of backbone provides. Its config is plain data; the methods that need
    torch import the kind's own module when called. A new kind implements this in its own
    module and registers itself with @register_backbone (backbone/__init__.py imports the
    kinds' modules)."""

    kind: str  # stored in checkpoints and extractor metadata
    feature_family: ClassVar[str]  # what benchmark tables call its features
    summary: ClassVar[str]  # what `train-backbone --kind` says of it
    noised: ClassVar[bool]  # whether its features depend on a diffusion timestep (and noise): then it has
    # alphas_cumprod(), the `[T]` abar of its noise schedule
    image_size: int
    channels: int
    tap_names: list[str]
    tap_groups: dict[str, list[str]]

    @classmethod
    def train_options(cls) -> list[Field]:
        """The config fields `train-backbone` offers for this kind (made with options.option)."""

    @classmethod
    def from_options(cls, *, image_size: int, channels: int, **options) -> "Backbone":
        """From `train-backbone`'s options: those of `train_options()` that are given (the rest
        keep their defaults), and the input shape."""

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


def picked(options: dict, config: type) -> dict:
    """The given (not None) values of `options` that are option fields of `config`."""
    return {f.name: options[f.name] for f in option_fields(config) if options.get(f.name) is not None}


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
    summary: ClassVar[str] = "a diffusion UNet"
    noised: ClassVar[bool] = True

    @classmethod
    def train_options(cls) -> list[Field]:
        return option_fields(UNetConfig) + option_fields(DiffusionConfig)

    @classmethod
    def from_options(cls, *, image_size: int, channels: int, **options) -> "DDPMConfig":
        return cls(unet=UNetConfig(image_size=image_size, channels=channels, **picked(options, UNetConfig)),
                   diffusion=DiffusionConfig(**picked(options, DiffusionConfig)))

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

    def alphas_cumprod(self):
        """`[T]` float64 abar of its noise schedule (torch)."""
        from diffclass_cli.backbone.diffusion import alphas_cumprod

        return alphas_cumprod(self.diffusion)

    def loss_fn(self, device) -> Callable:
        from diffclass_cli.backbone.diffusion import to_model_range, training_loss

        abar = self.alphas_cumprod().float().to(device)
        diffusion = self.diffusion
        return lambda model, pixels, generator: training_loss(model, to_model_range(pixels), abar, generator,
                                                              prediction=diffusion.prediction,
                                                              min_snr=diffusion.min_snr)

    def sample(self, model, n: int, generator, ddim_steps: int | None):
        from diffclass_cli.backbone.diffusion import sample

        return sample(model, self.alphas_cumprod(), self.diffusion.prediction,
                      (n, self.channels, self.image_size, self.image_size), generator, ddim_steps=ddim_steps)

    def extractor(self, network, spec):
        from diffclass_cli.extractors.extractor import DiffusionExtractor

        return DiffusionExtractor(network, self.alphas_cumprod(), spec)


@register_backbone
@dataclass(frozen=True)
class VAEConfig(LevelsConfig):
    tap_kinds = ("enc", "latent", "dec")
    latent_dim: int = option("vae: size of the latent vector.", 32, low=1, high=65_536)
    beta: float = option("vae: weight of the KL term of the ELBO.", 1.0, low=0, above=True)
    kind: str = "vae"
    feature_family: ClassVar[str] = "vae"
    summary: ClassVar[str] = "a convolutional VAE (the research's comparison)"
    noised: ClassVar[bool] = False
    @classmethod
    def train_options(cls) -> list[Field]:
        return option_fields(cls)

    @classmethod
    def from_options(cls, *, image_size: int, channels: int, **options) -> "VAEConfig":
        return cls(image_size=image_size, channels=channels, **picked(options, cls))

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
    """A backbone's config as a file stores it; a missing key or a value of the wrong type (a file
    we did not write) is one line of error."""
    try:
        raw = json.loads(text)
        return backbone_class(raw["kind"]).from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise DiffclassError(f"the backbone's config is damaged or not diffclass's ({type(err).__name__}: "
                             f"{str(err)[:200]})") from None


class LRSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings; each is a `train-backbone` option."""

    steps: int = option("Optimizer steps.", 3000, low=1, high=10**9)
    batch_size: int = option("Images per step.", 128, low=1, high=1_000_000)
    lr: float = option("Peak learning rate (AdamW).", 1e-3, low=0, above=True)
    lr_schedule: LRSchedule = option("After warm-up.", LRSchedule.cosine)
    warmup: int = option("Linear warm-up steps.", 100, low=0, high=10**9)
    ema_decay: float = option("Decay of the weight average (below 1).", 0.999, low=0, high=1)
    grad_clip: float = 1.0
    augment_shift: int = option("Move each training image by up to N pixels each way (0: off; less than the image "
                                "size).", 0, low=0, high=4096)
    seed: int = seed_option()
    save_every: int = option("Write a checkpoint every N steps.", 500, low=1, high=10**9)
    snapshot_every: int = option("Also keep a copy CKPT-step{N} every N steps (0: none).", 0, low=0, high=10**9)

    def __post_init__(self):
        check_options(self)
        if self.ema_decay == 1:
            raise DiffclassError("--ema-decay must be below 1 (at 1 the average never moves)")

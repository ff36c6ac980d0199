"""The `diffclass` command line: thin commands that parse options and call the library.

Data goes to stdout, everything else to stderr. A DiffclassError (a user mistake: a value out
of range, a missing or damaged file) or an OSError (a full disk, no permission) becomes one
line on stderr and exit code 1; Typer's own usage errors (an unknown option, a missing
argument, a value that is not a choice) exit with 2. A number option's range is declared
where the option is, with `callback=at_least(...)`; the configs check their own fields.
"""

import math
import os
import sys
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from diffclass_cli import __version__
from diffclass_cli.backbone.config import (
    BackboneKind,
    DiffusionConfig,
    LRSchedule,
    Prediction,
    Schedule,
    TrainConfig,
    UNetConfig,
    VAEConfig,
    Weights,
)
from diffclass_cli.choices import Device, Engine, FeatureDtype, HeadKind, LabelChoice, OutputFormat, Projection
from diffclass_cli.console import configure, log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.spec import DEFAULT_POOL, DEFAULT_TIMESTEPS, ExtractorSpec, pool_name
from diffclass_cli.heads import MAX_UNLABELED

TRAINING_MODULES = {"torch", "torchvision", "onnxscript", "safetensors"}  # the [train] extra


GLOBAL_FLAGS = ("-q", "--quiet", "--progress")  # accepted after the command too
CHECKPOINT_HELP = ("Backbone checkpoint, or diffusers:PATH: a pretrained diffusers UNet2DModel folder (safetensors "
                   "weights; a hub id where online).")


class _UserErrorsAsExitCodes(TyperGroup):
    """Turns the errors a user can cause into one line and an exit code."""

    def main(self, *args, **kwargs):
        """An OSError (a full disk, no permission) is one line, whether a command raised it or what
        runs before one (--help, --version)."""
        try:
            return super().main(*args, **kwargs)
        except OSError as err:  # Typer has handled a broken pipe itself by then
            _say_error(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
            sys.exit(1)

    def parse_args(self, ctx, args):
        """`diffclass fit ... -q` means `diffclass -q fit ...`: the global flags may follow the command."""
        end = args.index("--") if "--" in args else len(args)
        lifted = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        return super().parse_args(ctx, lifted + rest)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): all it wanted, so exit 0
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except DiffclassError as err:
            _fail(str(err))
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] not in TRAINING_MODULES:
                raise
            _fail(f"{ctx.invoked_subcommand} needs {err.name}, which the base install leaves out: "
                  "pip install 'diffclass[train]'")


def _say_error(message: str) -> None:
    try:
        typer.echo(f"diffclass: error: {message}", err=True)
    except OSError:  # standard error is gone too: the exit code says it
        pass


def _fail(message: str) -> None:
    _say_error(message)
    raise typer.Exit(1)


INT_LIMIT = 2**31 - 1  # no count, size or step of ours comes near it; past it libraries overflow


def at_least(low: float, above: bool = False, high: float = INT_LIMIT):
    """An option callback that refuses values below `low` (or, with `above`, not above it), above
    `high`, and NaN or infinities."""

    def check(param: typer.CallbackParam, value):
        if value is None:
            return value
        if not math.isfinite(value) or (value <= low if above else value < low) or value > high:
            bound = f"{'above' if above else 'at least'} {low:g}" + (f" and at most {high:g}" if value > high else "")
            raise DiffclassError(f"{param.opts[0]} must be {bound}, not {value:g}")
        return value

    return check


def in_range(low: float, high: float):
    """An option callback that refuses values outside [low, high] (and NaN)."""

    def check(param: typer.CallbackParam, value):
        if value is not None and not low <= value <= high:
            raise DiffclassError(f"{param.opts[0]} must be between {low:g} and {high:g}, not {value:g}")
        return value

    return check


SEED_RANGE = in_range(0, 2**32 - 1)  # what numpy and torch take as a seed


app = typer.Typer(
    cls=_UserErrorsAsExitCodes,
    help="Few-shot image classification with features of a diffusion model trained on "
    "unlabeled images.\n\nPipeline: train-backbone -> export -> featurize -> fit -> predict.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help text is plain: "diffclass[ray]" stays as written
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Options shared by several commands.
SourceArg = Annotated[str, typer.Argument(
    help="A folder of images (subfolders = classes), '-' for paths on stdin, or a built-in "
    "source: mnist-sample[:train|:test], digits[:train|:test], mnist-sample-colour[:train|:test] (the same "
    "digits as 32x32 RGB in random colours), mnist / fashion-mnist / "
    "cifar10[:train|:test] (with --data-root).", show_default=False)]
DataRootOpt = Annotated[Path | None, typer.Option(help="Folder with torchvision's dataset files.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Let torchvision download a missing dataset.")]
DeviceOpt = Annotated[Device, typer.Option(help="Where to run: auto picks CUDA when usable.")]
SeedOpt = Annotated[int, typer.Option(help="Random seed; the same seed gives the same result.",
                                      callback=SEED_RANGE)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file.")]
WeightsOpt = Annotated[Weights, typer.Option(help="The averaged (EMA) or the raw trained weights.")]
MAX_PROCESSES = 1024
WorkersOpt = Annotated[int, typer.Option(help="Processes that decode images in parallel.",
                                         callback=at_least(0, high=MAX_PROCESSES))]
ModelOpt = Annotated[Path | None, typer.Option(
    help="Exported extractor (.onnx) (default: the shipped mnist-sample-ddpm.onnx).")]
BatchSizeOpt = Annotated[int, typer.Option(help="Images per onnxruntime call.", callback=at_least(1))]
LabelsOpt = Annotated[Path | None, typer.Option(
    help="A CSV table of 'path,label' rows (a header is optional) that labels the images instead of their class "
    "folders; images it does not name are unlabeled.")]


# The extractor's options, shared by `export` and `benchmark` (see extractors/spec.py).
TimestepOpt = Annotated[int | None, typer.Option(
    help=f"Diffusion step the images are noised to (default: {DEFAULT_TIMESTEPS[0]}).", callback=at_least(0))]
TimestepsOpt = Annotated[str | None, typer.Option(
    help="Several steps, comma-separated (e.g. 25,100): their features are concatenated.")]
TAPS_HELP = ("Blocks to take features from, comma-separated (see export --list-taps), or the groups encoder, decoder, "
             "all (default: ddpm: mid and every up block; vae: the encoder blocks and the latent mean).")
TapsOpt = Annotated[str | None, typer.Option(help=TAPS_HELP)]
PoolOpt = Annotated[str, typer.Option(help="'global' average per block, or an RxR grid of averages such as '2x2'.")]
NoiseDrawsOpt = Annotated[int, typer.Option(help="Average the features over this many fixed noise tensors.",
                                            callback=at_least(1, high=1024))]
NoiseSeedOpt = Annotated[int, typer.Option(help="Seed of the fixed noise stored in the extractor.",
                                           callback=SEED_RANGE)]
ShiftsOpt = Annotated[int, typer.Option(
    help="Average the features over the image moved by N fixed small shifts (1: none; 5: itself and one pixel "
    "up, down, left, right; 9: also the diagonals). Costs N times the compute.", callback=at_least(1, high=9))]


def _extractor_spec(timestep: int | None, timesteps: str | None, taps: str | None, pool: str, noise_seed: int,
                    noise_draws: int, shifts: int) -> ExtractorSpec:
    return ExtractorSpec.from_options(
        timestep=timestep, timesteps=_parse_ints(timesteps, "--timesteps") if timesteps else (), taps=taps, pool=pool,
        noise_seed=noise_seed, noise_draws=noise_draws, shifts=shifts)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffclass {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only warnings and errors on stderr (also accepted after the command).")] = False,
    show_progress: Annotated[bool, typer.Option(
        "--progress", help="Show progress bars even when stderr is not a terminal (by default they are shown only "
        "on a terminal).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    configure(quiet, show_progress)


def _parse_ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DiffclassError(f"{option} takes comma-separated whole numbers, not {text!r}") from None
    if not values:
        raise DiffclassError(f"{option} needs at least one number")
    return values


@app.command("train-backbone")
def train_backbone_cmd(
    source: SourceArg,
    out: Annotated[Path, typer.Option(help="Checkpoint file to write (safetensors).")],
    kind: Annotated[BackboneKind, typer.Option(
        help="ddpm: a diffusion UNet; vae: a convolutional VAE (the research's comparison).")] = BackboneKind.ddpm,
    init: Annotated[str | None, typer.Option(
        help="Fine-tune a pretrained model instead of training one from scratch: diffusers:PATH, a diffusers "
        "UNet2DModel folder (or hub id, online). Its architecture, image size, channels and noise schedule are "
        "the model's; images are resized to it.", metavar="diffusers:PATH")] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps (default: 3000).",
        callback=at_least(1, high=10**9))] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the images (instead of --steps).",
                                                 callback=at_least(0, above=True))] = None,
    batch_size: Annotated[int, typer.Option(help="Images per step.",
        callback=at_least(1, high=1_000_000))] = TrainConfig.batch_size,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW).", callback=at_least(0, above=True))
                  ] = TrainConfig.lr,
    lr_schedule: Annotated[LRSchedule, typer.Option(help="After warm-up.")] = TrainConfig.lr_schedule,
    warmup: Annotated[int, typer.Option(help="Linear warm-up steps.",
        callback=at_least(0, high=10**9))] = TrainConfig.warmup,
    image_size: Annotated[int | None, typer.Option(
        help="Side of the square images the backbone sees (a multiple of 4) (default: the first image's).",
        callback=at_least(4, high=4096))] = None,
    channels: Annotated[int | None, typer.Option(
        help="1 (gray) or 3 (RGB) (default: the first image's).", callback=in_range(1, 3))] = None,
    width: Annotated[int, typer.Option(help="Channels of the first level.",
        callback=at_least(8, high=4096))] = UNetConfig.width,
    channel_mults: Annotated[str, typer.Option(help="Width multiplier per level.")] = ",".join(
        map(str, UNetConfig.channel_mults)),
    blocks_per_level: Annotated[int, typer.Option(
        help="ddpm: ResBlocks per UNet level.", callback=at_least(1, high=64))] = UNetConfig.blocks_per_level,
    mid_attention: Annotated[bool, typer.Option(
        help="ddpm: self-attention in the middle block, at the lowest resolution.")] = UNetConfig.mid_attention,
    schedule: Annotated[Schedule, typer.Option(help="ddpm: noise schedule.")] = DiffusionConfig.schedule,
    prediction: Annotated[Prediction, typer.Option(
        help="ddpm: train the UNet to predict the noise (eps) or v = sqrt(abar) noise - sqrt(1 - abar) image.")
    ] = DiffusionConfig.prediction,
    min_snr: Annotated[float, typer.Option(
        help="ddpm: weigh each image's loss by min(SNR, GAMMA) / SNR (/ (SNR + 1) with --prediction v): "
        "Min-SNR-gamma, e.g. 5; 0: off.",
        metavar="GAMMA", callback=at_least(0))] = DiffusionConfig.min_snr,
    latent_dim: Annotated[int, typer.Option(help="vae: size of the latent vector.",
        callback=at_least(1, high=65_536))] = VAEConfig.latent_dim,
    beta: Annotated[float, typer.Option(help="vae: weight of the KL term of the ELBO.", callback=at_least(0))
                    ] = VAEConfig.beta,
    ema_decay: Annotated[float, typer.Option(help="Decay of the weight average.", callback=in_range(0, 1))
                         ] = TrainConfig.ema_decay,
    augment_shift: Annotated[int, typer.Option(
        help="Move each training image by up to N pixels each way (0: off; less than the image size).",
        callback=at_least(0, high=4096))] = TrainConfig.augment_shift,
    save_every: Annotated[int, typer.Option(help="Write a checkpoint every N steps.",
        callback=at_least(1, high=10**9))] = TrainConfig.save_every,
    snapshot_every: Annotated[int, typer.Option(
        help="Also keep a copy CKPT-step{N} every N steps (0: none).",
        callback=at_least(0, high=10**9))] = TrainConfig.snapshot_every,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from --out if it exists.")] = False,
    compile_network: Annotated[bool, typer.Option(
        "--compile", help="Run the network through torch.compile: shorter steps after a minute of compiling "
        "(needs a C++ compiler on CPU; docs/guide.md). Not part of the recipe: "
        "a run may switch it on or off when it resumes.")] = False,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = TrainConfig.seed,
    workers: WorkersOpt = 0,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Train an unconditional diffusion backbone (or a VAE) on the images of SOURCE (labels are ignored).

    Examples:\n
      diffclass train-backbone photos/ --out runs/bb.ckpt --steps 5000\n
      diffclass train-backbone mnist-sample:train --out runs/bb.ckpt --steps 300\n
      diffclass train-backbone mnist-sample:train --out runs/bb.ckpt --steps 600 --resume\n
      diffclass train-backbone mnist-sample:train --out runs/vae.ckpt --kind vae --latent-dim 32\n
      diffclass train-backbone photos/unlabeled --out runs/ft.ckpt --init diffusers:ddpm-cifar10 --steps 2000 --lr 1e-4
    """
    from diffclass_cli.api import train
    from diffclass_cli.data.sources import open_source

    if steps is not None and epochs is not None:
        raise DiffclassError("give --steps or --epochs, not both")
    options = {name: value for name, value in locals().items() if name in TRAINING_OPTIONS}
    train(open_source(source, data_root, download), out, init=init, device=device, resume=resume,
          overwrite=overwrite, workers=workers, epochs=epochs, compiled=compile_network,
          **options, channel_mults=_parse_ints(channel_mults, "--channel-mults"))


# What train-backbone hands to the training configs as they are (api.train, backbone.train.plan_config).
TRAINING_OPTIONS = {"kind", "steps", "batch_size", "lr", "lr_schedule", "warmup", "image_size", "channels", "width",
                    "blocks_per_level", "mid_attention", "schedule", "prediction", "min_snr", "latent_dim", "beta",
                    "ema_decay", "augment_shift", "save_every", "snapshot_every", "seed"}


@app.command()
def sample(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP, show_default=False)],
    out: Annotated[Path, typer.Option(help="PNG file for the grid of samples.")],
    n: Annotated[int, typer.Option("--n", help="How many images.", callback=at_least(1))] = 16,
    ddim_steps: Annotated[int | None, typer.Option(
        help="Sample with DDIM in this many steps (fast) instead of all DDPM steps.", callback=at_least(1))] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Also save each image as a PNG here.")] = None,
    weights: WeightsOpt = Weights.ema,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Generate images from a backbone, to see what it learned.

    Examples:\n
      diffclass sample runs/bb.ckpt --out grid.png --n 16 --ddim-steps 50
    """
    from diffclass_cli.backbone.sampling import sample_to_png
    from diffclass_cli.device import torch_device

    sample_to_png(checkpoint, out, n, ddim_steps=ddim_steps, out_dir=out_dir, weights=weights,
                  device=torch_device(device), seed=seed, overwrite=overwrite)


@app.command()
def export(
    checkpoint: Annotated[Path | None, typer.Argument(help=CHECKPOINT_HELP, show_default=False)] = None,
    out: Annotated[Path | None, typer.Option(help="ONNX file to write.")] = None,
    pixels: Annotated[bool, typer.Option(
        "--pixels", help="Write the raw-pixel baseline extractor instead (needs --image-size, --channels).")] = False,
    image_size: Annotated[int, typer.Option(help="With --pixels: side of the square images.",
        callback=at_least(4, high=4096))] = 28,
    channels: Annotated[int, typer.Option(help="With --pixels: 1 (gray) or 3 (RGB).", callback=in_range(1, 3))] = 1,
    list_taps: Annotated[bool, typer.Option("--list-taps", help="Print the backbone's taps and exit.")] = False,
    timestep: Annotated[str | None, typer.Option(
        help=f"Diffusion step the images are noised to (default: {DEFAULT_TIMESTEPS[0]}), or 'auto' (experimental): "
        "chosen from unlabeled images (--choose-on), no labels: the step whose features keep their nearest "
        "neighbours under another noise draw and a one-pixel shift and form well-separated clusters (a minute or "
        "two). Check its choice with labels where you can (docs/guide.md).")] = None,
    choose_on: Annotated[str | None, typer.Option(
        help="With --timestep auto or --taps auto: the unlabeled images to choose on, any SOURCE (default: the "
        "images the backbone was trained on).")] = None,
    timesteps: TimestepsOpt = None,
    taps: Annotated[str | None, typer.Option(
        help=TAPS_HELP + " Or 'auto' (experimental): chosen from unlabeled images like --timestep auto (after it), "
        "among each tap alone, the default set and all taps.")] = None,
    pool: PoolOpt = pool_name(DEFAULT_POOL),
    noise_draws: NoiseDrawsOpt = 1,
    noise_seed: NoiseSeedOpt = 0,
    shifts: ShiftsOpt = 1,
    data_root: DataRootOpt = None,
    opset: Annotated[int, typer.Option(help="ONNX opset (17 to 20).", callback=in_range(17, 20))] = 18,
    weights: WeightsOpt = Weights.ema,
    overwrite: OverwriteOpt = False,
) -> None:
    """Freeze a backbone into a deterministic ONNX feature extractor (no PyTorch needed to run it).

    Examples:\n
      diffclass export --list-taps runs/bb.ckpt\n
      diffclass export runs/bb.ckpt --out exports/bb.onnx --timestep 100\n
      diffclass export runs/bb.ckpt --out bb.onnx --timestep auto --taps auto --choose-on photos/unlabeled\n
      diffclass export runs/bb.ckpt --out bb.onnx --timesteps 25,100 --noise-draws 4 --taps mid,up1 --pool global\n
      diffclass export diffusers:models/ddpm-cifar10 --out cifar.onnx --timestep 100 --taps mid,up3\n
      diffclass export --pixels --image-size 28 --channels 1 --out pixels.onnx
    """
    from diffclass_cli.extractors.onnx_export import export_onnx, export_pixels

    if out is None and not list_taps:
        raise typer.BadParameter("missing: give the ONNX file to write (or --list-taps)", param_hint="'--out'")
    if pixels:
        UNetConfig(image_size=image_size, channels=channels)  # the same size rules as a backbone
        export_pixels(out, image_size, channels, opset, overwrite)
        return
    if checkpoint is None:
        raise DiffclassError("give a CHECKPOINT (or --pixels)")
    if list_taps:
        from diffclass_cli.backbone.checkpoint import load_checkpoint

        config = load_checkpoint(checkpoint).config
        for tap in config.build().taps():
            shape = "vector" if tap.size is None else f"{tap.size}x{tap.size}"
            typer.echo(f"{tap.name}\t{tap.channels} channels\t{shape}")
        for group, names in config.tap_groups.items():
            typer.echo(f"{group}\t{','.join(names)}")
        return
    auto_timestep, auto_taps = timestep == "auto", taps == "auto"
    if (choose_on or data_root) and not (auto_timestep or auto_taps):
        raise DiffclassError("--choose-on and --data-root are for --timestep auto and --taps auto")
    if auto_timestep and timesteps:
        raise DiffclassError("give --timestep or --timesteps, not both")
    if timestep and not auto_timestep and not timestep.isdecimal():
        raise DiffclassError(f"--timestep is a whole number of steps or 'auto', not {timestep!r}")
    spec = _extractor_spec(int(timestep) if timestep and not auto_timestep else None, timesteps,
                           None if auto_taps else taps, pool, noise_seed, noise_draws, shifts)
    notes = {}
    if auto_timestep or auto_taps:
        from diffclass_cli.extractors.choose import choose_unlabeled
        from diffclass_cli.files import refuse_overwrite

        refuse_overwrite(out, overwrite)  # before minutes of choosing, not after
        spec, notes = choose_unlabeled(checkpoint, spec, timestep=auto_timestep, taps=auto_taps, images=choose_on,
                                       data_root=data_root)
    export_onnx(checkpoint, out, spec, weights=weights, opset=opset, overwrite=overwrite, notes=notes)


@app.command()
def info(
    path: Annotated[Path, typer.Argument(
        help="A file diffclass wrote: a checkpoint, an extractor (.onnx), a head (.skops) or a feature file (.h5).",
        show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """Print what a checkpoint, extractor, head or feature file holds and how it was made.

    Examples:\n
      diffclass info exports/mnist-sample-ddpm.onnx\n
      diffclass info head.skops      (classes, kind, what auto chose and why, the extractor, fitted rows)\n
      diffclass info train.h5 --json (rows, labeled and unlabeled per class, extractor, skipped files)
    """
    import json

    from diffclass_cli.describe import describe, format_description

    description = describe(path)
    typer.echo(json.dumps(description, indent=2, ensure_ascii=False) if as_json else format_description(description))


@app.command("featurize")
def featurize_cmd(
    source: SourceArg,
    out: Annotated[Path, typer.Argument(help="HDF5 feature file to write.", show_default=False)],
    model: ModelOpt = None,
    device: DeviceOpt = Device.auto,
    batch_size: BatchSizeOpt = 256,
    threads: Annotated[int | None, typer.Option(help="onnxruntime threads (default: all cores).",
                                                callback=at_least(1, high=MAX_PROCESSES))] = None,
    workers: Annotated[int, typer.Option(
        help="local: processes that decode images in parallel; ray: actors, each with its own onnxruntime session.",
        callback=at_least(0, high=MAX_PROCESSES))] = 1,
    shard: Annotated[str | None, typer.Option(
        help="Only shard I of N (0-based, e.g. 3/8): a fixed block of the source, for job arrays; "
        "join the parts with `diffclass merge`.")] = None,
    engine: Annotated[Engine, typer.Option(
        help="local: this process; ray: a Ray Data actor pool (RAY_ADDRESS=auto joins a running cluster; "
        "needs diffclass[ray]).")] = Engine.local,
    resume: Annotated[bool, typer.Option("--resume", help="Continue OUT.partial from an interrupted run.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unreadable image.")] = False,
    dtype: Annotated[FeatureDtype, typer.Option(
        help="How features are stored: float16 halves the file (readers get float32 back; docs/scale.md "
        "measures the accuracy change).")] = FeatureDtype.float32,
    labels: LabelsOpt = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Turn the images of SOURCE into a feature file, with onnxruntime (CUDA when usable).

    Examples:\n
      diffclass featurize photos/ photos.h5 --model exports/bb.onnx\n
      find photos -name '*.jpg' | diffclass featurize - photos.h5 --model exports/bb.onnx\n
      diffclass featurize mnist-sample:test test.h5\n
      diffclass featurize photos/ part-3.h5 --model bb.onnx --shard 3/8    (then: diffclass merge ...)\n
      diffclass featurize photos/ photos.h5 --model bb.onnx --engine ray --workers 8
    """
    from diffclass_cli.data.sources import open_source
    from diffclass_cli.features.extract import Shard, featurize, resolve_model

    images = open_source(source, data_root, download)
    if labels is not None:
        images = images.relabeled(labels)
    featurize(images, out, resolve_model(model), device=device, batch_size=batch_size, threads=threads,
              workers=workers, overwrite=overwrite, resume=resume, strict=strict,
              shard=Shard.parse(shard) if shard else Shard(), engine=engine, dtype=dtype)


@app.command("merge")
def merge_cmd(
    out: Annotated[Path, typer.Argument(help="Feature file to write.", show_default=False)],
    parts: Annotated[list[Path], typer.Argument(help="The shard files (any order).", show_default=False)],
    overwrite: OverwriteOpt = False,
) -> None:
    """Join the files of `featurize --shard I/N` into the file one `featurize` run would write.

    Every shard must be there exactly once, from the same extractor and the same source.

    Examples:\n
      diffclass merge photos.h5 parts/part-*.h5
    """
    from diffclass_cli.features.merge import merge

    merge(out, parts, overwrite)


FeaturesArg = Annotated[Path, typer.Argument(help="A feature file made by `diffclass featurize`.", show_default=False)]
HeadOpt = Annotated[Path, typer.Option("--head", help="A head file made by `diffclass fit` (.skops), or a classifier "
                                      "made by `diffclass export-classifier` (.onnx).")]
HeadModelOpt = Annotated[Path | None, typer.Option(
    help="With images and a skops head: the extractor (.onnx) to featurize them with (default: the one the head "
    "was fitted on, found where featurize ran it, or the shipped one).")]


@app.command()
def fit(
    features: FeaturesArg,
    out: Annotated[Path, typer.Option(help="Head file to write (.skops).")],
    head: Annotated[HeadKind, typer.Option(
        help="auto: semi where the unlabeled rows help, else logreg, decided from this file's rows (cross-"
        "validation over the labeled rows; with one label per class, the clusters' stability) and printed; "
        "logreg: scaled logistic regression on the labeled rows; mlp: one hidden ReLU layer; semi: also "
        "learns from the unlabeled rows (pseudo-labels from spectral clustering, named by the labeled rows)."
    )] = HeadKind.auto,
    per_class: Annotated[int | None, typer.Option(
        help="Use only K labeled rows per class, drawn with --seed (the rest count as unlabeled).",
        callback=at_least(1))] = None,
    seed: SeedOpt = 0,
    C: Annotated[float, typer.Option("--C", help="logreg: inverse regularisation strength.",
                                     callback=at_least(0, above=True))] = 1.0,
    alpha: Annotated[float, typer.Option(help="mlp: L2 penalty.", callback=at_least(0))] = 1e-3,
    hidden: Annotated[int, typer.Option(help="mlp: hidden units.", callback=at_least(1))] = 128,
    cv: Annotated[int | None, typer.Option(
        help="Choose --C / --alpha by K-fold cross-validation on the labeled rows.", callback=at_least(2))] = None,
    max_unlabeled: Annotated[int, typer.Option(
        help="semi / auto: cluster at most this many unlabeled rows, a sample spread evenly over the file "
        "(drawn with --seed); bounds time and memory on large files.", callback=at_least(1))] = MAX_UNLABELED,
    unlabeled: Annotated[list[Path] | None, typer.Option(
        help="semi / auto: another feature file of the same extractor whose rows are all used as unlabeled, "
        "whatever their folders (repeat the option for several).")] = None,
    labels: LabelsOpt = None,
    strict_labels: Annotated[bool, typer.Option(
        "--strict-labels", help="Fail, instead of warning, when labeled images sit with another class.")] = False,
    overwrite: OverwriteOpt = False,
) -> None:
    """Fit a small classifier on the labeled rows of a feature file (only the rows it uses are read).

    Labeled images whose features sit with another class's labeled images are listed on stderr
    (path, given class, the class they look like, a score) and in `diffclass info HEAD`.

    Examples:\n
      diffclass fit train.h5 --out head.skops\n
      diffclass fit labeled.h5 --unlabeled pool.h5 --out head.skops\n
      diffclass fit pool.h5 --labels labels.csv --out head.skops\n
      diffclass fit train.h5 --out head.skops --per-class 10 --seed 1 --head logreg
    """
    from diffclass_cli.heads.fit import fit_head

    fit_head(features, out, head, per_class=per_class, seed=seed, C=C, alpha=alpha, hidden=hidden, cv=cv,
             max_unlabeled=max_unlabeled, overwrite=overwrite,
             unlabeled=unlabeled or (), labels=labels, strict_labels=strict_labels)


@app.command("export-classifier")
def export_classifier_cmd(
    head: Annotated[Path, typer.Argument(help="A head file made by `diffclass fit`.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Classifier file to write (.onnx).")],
    model: Annotated[Path | None, typer.Option(
        help="The extractor (.onnx) the head was fitted on, checked by sha256 (default: found where featurize "
        "ran it, or the shipped one).")] = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Join a head and the extractor it was fitted on into one ONNX file: images in, class
    probabilities (and features) out.

    It runs anywhere onnxruntime does, without diffclass, scikit-learn or torch; `predict`,
    `evaluate` and `info` take it in place of the head, on images or on feature files of the
    same extractor. Class names, head kind and how it was fitted are in its metadata.

    Examples:\n
      diffclass export-classifier head.skops --out classifier.onnx\n
      diffclass predict photos/new --head classifier.onnx
    """
    from diffclass_cli.heads.to_onnx import export_classifier

    export_classifier(head, out, model, overwrite)


@app.command("suggest")
def suggest_cmd(
    pool: Annotated[Path, typer.Argument(help="A feature file of unlabeled (and maybe some labeled) images.",
                                         show_default=False)],
    budget: Annotated[int, typer.Option(help="How many images to suggest.", callback=at_least(1))] = 10,
    labeled: Annotated[Path | None, typer.Option(
        help="A feature file of images labeled already (same extractor): their clusters count as covered.")] = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", help="csv or jsonl.")] = OutputFormat.csv,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Write the list here instead of standard output ('-': standard output).")] = None,
    copy_to: Annotated[Path | None, typer.Option(
        help="Also copy the suggested images into this folder, to sort into class subfolders.")] = None,
    seed: SeedOpt = 0,
    max_rows: Annotated[int, typer.Option(
        help="Cluster at most this many unlabeled rows, spread evenly over the file.", callback=at_least(2))]
    = MAX_UNLABELED,
    overwrite: OverwriteOpt = False,
) -> None:
    """Suggest which images to label first: the most typical image of each of the largest clusters of
    the pool that no labeled image covers yet (TypiClust), chosen without any label.

    The list (path, rank, cluster, cluster size, typicality, an empty label column, why) is best first.
    Fill in its label column and pass it to `fit --labels`, or sort the --copy-to folder into class
    subfolders and featurize it.

    Examples:\n
      diffclass suggest pool.h5 --budget 10 > to-label.csv\n
      diffclass fit pool.h5 --labels to-label.csv --out head.skops     (after filling in the labels)\n
      diffclass suggest pool.h5 --budget 20 --labeled labeled.h5 --copy-to to-label/
    """
    from diffclass_cli.files import STDOUT, atomic_output, refuse_overwrite
    from diffclass_cli.heads import suggest

    if out not in (None, STDOUT):
        refuse_overwrite(Path(out), overwrite, inputs=(pool, labeled))
    paths, chosen = suggest.suggest(pool, budget, labeled=labeled, seed=seed, max_rows=max_rows)
    if out in (None, STDOUT):
        suggest.write_suggestions(paths, chosen, sys.stdout, output_format)
    else:
        with atomic_output(Path(out), overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as stream:
            suggest.write_suggestions(paths, chosen, stream, output_format)
    if copy_to is not None:
        log.info(f"copied {suggest.copy_suggested(pool, paths, chosen, copy_to)} images to {copy_to}")


InputsArg = Annotated[list[str], typer.Argument(
    help="Feature files made by `diffclass featurize`, or images: image files, folders (class subfolders = the "
    "true classes), '-' for paths on standard input, or one built-in source.", show_default=False)]


@app.command()
def predict(
    inputs: InputsArg,
    head: HeadOpt,
    model: HeadModelOpt = None,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="csv: path,label,confidence[,...]; jsonl: one JSON object per line.")] = OutputFormat.csv,
    top_k: Annotated[int, typer.Option(help="Also give the next K-1 most likely classes of each row.",
                                       callback=at_least(1))] = 1,
    min_confidence: Annotated[float | None, typer.Option(
        help="Below this probability a row gets no label, and its status says so.",
        callback=in_range(0, 1))] = None,
    proba: Annotated[bool, typer.Option("--proba", help="Add one probability column per class.")] = False,
    no_header: Annotated[bool, typer.Option("--no-header", help="CSV without its header line.")] = False,
    absolute_paths: Annotated[bool, typer.Option(
        "--absolute-paths", help="Images' paths as absolute paths (default: as given on the command line).")] = False,
    out: Annotated[str | None, typer.Option(
        "--out", "-o", help="Write the predictions here instead of standard output ('-': standard output).")] = None,
    batch_size: BatchSizeOpt = 256,
    workers: WorkersOpt = 1,
    device: DeviceOpt = Device.auto,
    data_root: DataRootOpt = None,
    overwrite: OverwriteOpt = False,
) -> None:
    """Label every row of feature files, or every image given: one row each (CSV `path,label,confidence`
    or JSON lines) on standard output, written as it goes.

    Images are featurized in memory with the extractor the head was fitted on.

    Examples:\n
      diffclass predict new.h5 --head head.skops > predictions.csv\n
      diffclass predict photos/new --head head.skops > predictions.csv\n
      diffclass predict photos/new/img1009.png --head head.skops --top-k 3\n
      find photos/new -name '*.jpg' | diffclass predict - --head head.skops --format jsonl --min-confidence 0.8\n
      diffclass predict new.h5 --head head.skops --proba --out predictions.csv
    """
    from diffclass_cli.files import STDOUT, atomic_output
    from diffclass_cli.heads import apply as heads

    style = heads.PredictionFormat(output_format, top_k, proba, min_confidence, header=not no_header)
    from diffclass_cli.describe import feature_files

    features = feature_files(inputs)
    if features is not None:
        if model is not None:
            raise DiffclassError(f"{inputs[0]} is a feature file; --model is for images")
        names, chunks = heads.predict(features, head)
    else:
        from diffclass_cli.data.sources import open_inputs

        source = open_inputs(inputs, data_root, absolute_paths)
        names, chunks = heads.predict_images(source, head, model=model, batch_size=batch_size, workers=workers,
                                             device=device)
    with closing(chunks):  # on an error, the progress bar ends before the message, not at exit
        if out in (None, STDOUT):
            heads.write_predictions(chunks, sys.stdout, names, style)
            return
        with atomic_output(Path(out), overwrite, inputs=features or ()) as tmp, \
                open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as stream:
            rows = heads.write_predictions(chunks, stream, names, style)
    log.info(f"wrote {rows} predictions to {out}")


@app.command("evaluate")
def evaluate_cmd(
    inputs: InputsArg,
    head: HeadOpt,
    model: HeadModelOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    batch_size: BatchSizeOpt = 256,
    workers: WorkersOpt = 1,
    device: DeviceOpt = Device.auto,
    data_root: DataRootOpt = None,
) -> None:
    """Score a head on labeled rows or images: accuracy, balanced accuracy, per-class precision, recall
    and F1, and the confusion matrix.

    Classes the head never saw are counted as errors (with a warning); data none of whose classes the
    head knows is refused.

    Examples:\n
      diffclass evaluate test.h5 --head head.skops\n
      diffclass evaluate photos/heldout --head head.skops\n
      diffclass evaluate test.h5 --head head.skops --json | jq .accuracy
    """
    import json

    from diffclass_cli.describe import feature_files
    from diffclass_cli.heads.apply import evaluate, evaluate_images, format_report

    features = feature_files(inputs)
    if features is not None:
        if len(features) > 1 or model is not None:
            raise DiffclassError("evaluate takes one feature file (and --model only with images)")
        report = evaluate(features[0], head)
    else:
        from diffclass_cli.data.sources import open_inputs

        report = evaluate_images(open_inputs(inputs, data_root), head, model=model, batch_size=batch_size,
                                 workers=workers, device=device)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@app.command()
def benchmark(
    models: Annotated[list[Path], typer.Argument(
        help="Backbone checkpoints or exported extractors (.onnx); each is one feature set.", show_default=False)],
    out: Annotated[Path, typer.Option(help="Folder for results.csv, summary.md and the plots.")],
    train: Annotated[str, typer.Option(help="Labeled pool the few labels are drawn from.")] = "mnist-sample:train",
    test: Annotated[str, typer.Option(help="Held-out labeled split accuracy is measured on.")] = "mnist-sample:test",
    per_class: Annotated[str | None, typer.Option(
        help="Labels per class, comma-separated (default: those of 1,2,5,10,32,100 that every class of the train "
        "split can give).", show_default=False)] = None,
    draws: Annotated[int, typer.Option(help="Seeded draws of the labeled set per K.", callback=at_least(1))] = 5,
    draws_few: Annotated[int, typer.Option(
        help="Draws per K at 1 and 2 labels per class, where results are bimodal (the worst draw is reported).",
        callback=at_least(1))] = 20,
    heads: Annotated[str | None, typer.Option(
        help="Heads, comma-separated: auto, logreg, mlp, semi (default: auto,logreg,semi; with --quick: auto,logreg).",
        show_default=False)] = None,
    baselines: Annotated[str, typer.Option(
        help="Comparisons, comma-separated: pixels, pca (of pixels), cnn (supervised, from scratch).")]
    = "pixels,pca,cnn",
    cnn_steps: Annotated[int, typer.Option(help="Training steps of the supervised CNN per draw.",
                                           callback=at_least(1))] = 300,
    timestep: TimestepOpt = None,
    timesteps: TimestepsOpt = None,
    taps: TapsOpt = None,
    pool: PoolOpt = pool_name(DEFAULT_POOL),
    noise_draws: NoiseDrawsOpt = 1,
    noise_seed: NoiseSeedOpt = 0,
    shifts: ShiftsOpt = 1,
    sweep_timestep: Annotated[str | None, typer.Option(
        help="Also compare these timesteps (e.g. 10,25,50,100,250,500; 50+100 concatenates two), logreg head, "
        "on a validation part of the train split.")] = None,
    sweep_taps: Annotated[bool, typer.Option("--sweep-taps", help="Also compare each tap alone.")] = False,
    sweep_pool: Annotated[bool, typer.Option("--sweep-pool", help="Also compare global, 2x2, 3x3 pooling.")]
    = False,
    quick: Annotated[bool, typer.Option("--quick", help="A small grid for smoke tests (a couple of minutes).")]
    = False,
    labels: Annotated[LabelChoice, typer.Option(
        help="How the labeled images of each draw are chosen: random (K per class) or suggest (K x classes, as "
        "`diffclass suggest` picks them from the pool's features, their true labels then revealed; one draw per "
        "seed of its clustering).")] = LabelChoice.random,
    on_validation: Annotated[bool, typer.Option(
        "--on-validation", help="Score on a validation part of the train split instead of the test split: "
        "use this to choose checkpoints or options.")] = False,
    seed: SeedOpt = 0,
    data_root: DataRootOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the files of an existing --out folder.")]
    = False,
) -> None:
    """Few-shot accuracy curves of diffusion features against raw pixels, PCA and a supervised CNN.

    Accuracy is measured on the held-out test split (or, with --on-validation, on a validation part of the
    train split), as mean and std over seeded draws of the labeled set.

    Examples:\n
      diffclass benchmark runs/bb.ckpt --out bench/\n
      diffclass benchmark runs/bb.ckpt --out bench/ --sweep-timestep 10,25,50,100,250,500 --sweep-taps\n
      diffclass benchmark exports/mnist-sample-ddpm.onnx --out bench/ --quick
    """
    from diffclass_cli.benchmark.protocol import Protocol
    from diffclass_cli.benchmark.suite import DEFAULT_HEADS, QUICK, run_benchmark

    known = {"pixels", "pca", "cnn"}
    chosen = tuple(b.strip() for b in baselines.split(",") if b.strip())
    if set(chosen) - known:
        raise DiffclassError(f"unknown baseline(s) {sorted(set(chosen) - known)}; choose from {sorted(known)}")
    try:
        head_kinds = (tuple(HeadKind(h.strip()) for h in heads.split(",") if h.strip()) if heads
                      else QUICK.heads if quick else DEFAULT_HEADS)
    except ValueError:
        raise DiffclassError(f"--heads takes {', '.join(h.value for h in HeadKind)}, not {heads!r}") from None
    spec = _extractor_spec(timestep, timesteps, taps, pool, noise_seed, noise_draws, shifts)
    protocol = Protocol(per_class=_parse_ints(per_class, "--per-class") if per_class else (), draws=draws,
                        heads=head_kinds, seed=seed, cnn_steps=cnn_steps, draws_few_labels=draws_few, labels=labels)
    sweep = tuple(_parse_ints(group.replace("+", ","), "--sweep-timestep")
                  for group in sweep_timestep.split(",")) if sweep_timestep else ()
    summary = run_benchmark(models, out, spec, protocol, train=train, test=test, baselines=chosen,
                            sweep_timesteps=sweep, sweep_taps=sweep_taps, sweep_pool=sweep_pool, quick=quick,
                            data_root=data_root, on_validation=on_validation, overwrite=overwrite)
    typer.echo(summary)


@app.command()
def plot(
    features: FeaturesArg,
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    method: Annotated[Projection, typer.Option(help="How to project to 2-D.")] = Projection.umap,
    compare: Annotated[Path | None, typer.Option(
        help="A second feature file drawn beside the first (e.g. raw pixels).")] = None,
    thumbnails: Annotated[str | None, typer.Option(
        help="The SOURCE the features came from: draw a sample of its images at their positions.")] = None,
    max_points: Annotated[int | None, typer.Option(help="Plot a reproducible sample of at most N rows.",
                                                   callback=at_least(3))] = 5000,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
) -> None:
    """Draw a feature file as a 2-D map coloured by class, and print how well classes separate
    (5-NN accuracy in the map, cross-validated over the labeled rows).

    Examples:\n
      diffclass plot train.h5 --out map.png\n
      diffclass plot train.h5 --out map.png --compare pixels.h5 --thumbnails mnist-sample:train
    """
    from diffclass_cli.plot import plot_feature_map

    scores = plot_feature_map(features, out, method=method, max_points=max_points, seed=seed, thumbnails=thumbnails,
                              compare=compare, overwrite=overwrite)
    for path, score in scores.items():
        typer.echo(f"{path}\t5nn_accuracy_in_map\t{'n/a' if score is None else f'{score:.4f}'}")


@app.command("show-predictions")
def show_predictions(
    predictions: Annotated[str, typer.Argument(help="predict's CSV file, or - for standard input.",
                                               show_default=False)],
    source: Annotated[str, typer.Option(help="The SOURCE the predicted images came from.")],
    out: Annotated[Path, typer.Option(help="PNG file to write.")],
    n: Annotated[int, typer.Option("--n", help="How many images.", callback=at_least(1))] = 40,
    overwrite: OverwriteOpt = False,
) -> None:
    """Draw predicted images with their labels; wrong ones (when SOURCE knows the truth) in red.

    Examples:\n
      diffclass predict test.h5 --head head.skops | diffclass show-predictions - --source mnist-sample:test --out p.png
    """
    from diffclass_cli.plot import prediction_grid

    shown, wrong = prediction_grid(predictions, source, out, n=n, overwrite=overwrite)
    log.info(f"wrote {out}: {shown} images, {wrong} wrong")

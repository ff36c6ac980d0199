"""Train a backbone (a DDPM, or a VAE) on unlabeled images; resumable and deterministic per seed.

Each step's batch rows and the loss's randomness (timesteps and noise, latent draws) are drawn from generators seeded by
(seed, step), so a resumed run draws exactly what an uninterrupted one would have.
"""

import copy
import math
import os
import shutil
import time
from dataclasses import asdict, fields
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from diffclass_cli.backbone.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from diffclass_cli.backbone.config import (
    BACKBONES,
    DEFAULT_KIND,
    Backbone,
    LRSchedule,
    TrainConfig,
    backbone_class,
)
from diffclass_cli.backbone.diffusers_config import PREFIX, is_diffusers_ref
from diffclass_cli.backbone.distributed import Launch, detect_launch, rank_rows, start, stop, sum_over_ranks
from diffclass_cli.backbone.shifts import random_shifts
from diffclass_cli.console import configure, log, progress
from diffclass_cli.data.loading import load_all, to_unit_range
from diffclass_cli.data.sources import ImageSource, UnreadableImage
from diffclass_cli.device import torch_device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import refuse_overwrite
from diffclass_cli.options import refuse_unknown
from diffclass_cli.runs import TrainRun

ESTIMATE_AFTER = 20  # steps timed before the expected duration is said (the first ones include warm-up)

def learning_rate(train: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to a tenth of `lr`."""
    if step < train.warmup:
        return train.lr * (step + 1) / train.warmup
    if train.lr_schedule == LRSchedule.constant:
        return train.lr
    progress_ = (step - train.warmup) / max(1, train.steps - train.warmup)
    return train.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress_))))


def batch_rows(seed: int, step: int, n_images: int, batch_size: int, launch: Launch = Launch()) -> np.ndarray:
    """The image rows of one step: distinct within the batch, reproducible from (seed, step)
    (and the rank, when several processes train together)."""
    key = [seed, step, launch.rank] if launch.is_distributed else [seed, step]
    return np.random.default_rng(key).choice(n_images, min(batch_size, n_images), replace=False)


def snapshot_path(out: Path, step: int) -> Path:
    return out.with_name(f"{out.stem}-step{step}{out.suffix}")


# How long to train and how often to save: a resumed run takes these from its own options, the
# rest of the recipe from the checkpoint.
PER_RUN_OPTIONS = ("steps", "save_every", "snapshot_every")


def plan_run(out: Path, config: Backbone, train: TrainConfig, source: str, *, resume: bool,
             overwrite: bool) -> tuple[Backbone, TrainConfig, Checkpoint | None]:
    """With --resume and an existing `out`, the checkpoint's config and options win but for
    `PER_RUN_OPTIONS` (steps may grow); otherwise `out` must not exist unless `overwrite`."""
    if not (resume and out.exists()):
        refuse_overwrite(out, overwrite)
        return config, train, None
    state = load_checkpoint(out)
    if state.optimizer is None:
        raise DiffclassError(f"{out} has no optimizer state to resume from")
    if state.config.kind != config.kind:
        raise DiffclassError(f"{out} holds a {state.config.kind} backbone, not a {config.kind} one")
    if train.steps < state.step:
        raise DiffclassError(f"{out} is already at step {state.step}, past --steps {train.steps}")
    trained_on = state.training["data"].get("source")
    if trained_on != source:
        log.warning(f"resuming on {source!r}, but {out} was trained on {trained_on!r}")
    options = state.training["options"]
    options |= {name: getattr(train, name) for name in PER_RUN_OPTIONS}
    options["lr_schedule"] = LRSchedule(options["lr_schedule"])
    return state.config, TrainConfig(**options), state


TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def plan_config(source: ImageSource, init: str | None = None, kind: str = DEFAULT_KIND,
                image_size: int | None = None, channels: int | None = None,
                **options) -> tuple[Backbone, TrainConfig, dict[str, torch.Tensor] | None]:
    """The backbone config, the training config and the initial weights (None: random) of a new
    run, from `train-backbone`'s options: the TrainConfig fields (None: its default) and the
    backbone kind's (width, channel_mults, ...; the kind's defaults where left out).
    `init='diffusers:PATH'` starts from a pretrained model, whose own shape and schedule win."""
    known = TRAIN_FIELDS | {f.name for kind in BACKBONES.values() for f in kind.train_options()}
    refuse_unknown(options, known, "training option")
    train = TrainConfig(**{k: v for k, v in options.items() if k in TRAIN_FIELDS and v is not None})
    backbone_options = {k: v for k, v in options.items() if k not in TRAIN_FIELDS}
    if init is not None:
        config, initial = _pretrained(init, image_size, channels)
        return config, train, initial
    size, chans = _image_shape(source, image_size, channels)
    config = backbone_class(kind).from_options(image_size=size, channels=chans, **backbone_options)
    return config, train, None


def _pretrained(init: str, image_size: int | None, channels: int | None):
    """`--init diffusers:PATH`: the pretrained model's config and weights; its input shape wins."""
    if not is_diffusers_ref(init):
        raise DiffclassError(f"--init takes {PREFIX}PATH (a diffusers UNet2DModel folder), not {init!r}")
    pretrained = load_checkpoint(init)
    config = pretrained.config
    for option, given, own in (("--image-size", image_size, config.image_size),
                               ("--channels", channels, config.channels)):
        if given is not None and given != own:
            raise DiffclassError(f"{option} {given} differs from the pretrained model's {own}; leave it out")
    log.info(f"fine-tuning {init}: {config.channels} channel(s), {config.image_size}x{config.image_size}")
    return config, pretrained.model


def _image_shape(source: ImageSource, image_size: int | None, channels: int | None) -> tuple[int, int]:
    """The backbone's input shape: as given, else taken from the source's first image."""
    if image_size is not None and channels is not None:
        return image_size, channels
    for row in range(min(len(source), 100)):
        try:
            first = source.load(row)
            break
        except UnreadableImage:
            continue
    else:
        raise DiffclassError("could not read any of the first images; pass --image-size and --channels")
    size = image_size or (first.width if first.width == first.height and first.width % 4 == 0 else 32)
    chans = channels or (1 if first.mode in ("1", "L", "I", "I;16", "F") else 3)
    log.info(f"backbone input: {chans} channel(s), {size}x{size} (from {source.ids[row]})")
    return size, chans


def train_backbone(images: np.ndarray, config: Backbone, train: TrainConfig, out: Path,
                   device: torch.device, *, data: dict, state: Checkpoint | None = None,
                   launch: Launch = Launch(), compiled: bool = False,
                   initial: dict[str, torch.Tensor] | None = None) -> Checkpoint:
    """Train on uint8 `images` `[N, C, H, W]`, writing checkpoints to `out`; returns the last.

    `state` is the checkpoint to continue from (see `plan_run`); `initial`, pretrained weights
    to start a new run from (fine-tuning) instead of random ones. Under torchrun (`launch`),
    `images` are this rank's shard, gradients are averaged by DistributedDataParallel and
    only rank 0 writes checkpoints. `compiled`: run the network's steps through torch.compile
    (the same weights and checkpoints; a run can switch it on or off when it resumes)."""
    if len(images) == 0:
        raise DiffclassError("no readable images to train on")
    _check_images(images, config, train)
    torch.manual_seed(train.seed)
    model = config.build()
    if initial is not None:
        model.load_state_dict(initial)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    trainer = model
    if launch.is_distributed:  # same initial weights everywhere: DDP broadcasts rank 0's
        trainer = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiled:
        trainer = torch.compile(trainer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=0.0)
    start, losses = 0, []
    if state is not None:
        model.load_state_dict(state.model)
        ema.load_state_dict(state.ema)
        optimizer.load_state_dict(state.optimizer)
        start, losses = state.step, state.training["losses"]
        log.info(f"resuming {out} at step {start} of {train.steps}")
    n_params = sum(p.numel() for p in model.parameters())
    batch = min(train.batch_size, len(images))
    per_step = f"{batch}" if not launch.is_distributed else (
        f"{batch} per rank x {launch.world_size} ranks = {batch * launch.world_size} (effective batch size)")
    log.info(f"training a {n_params / 1e6:.2f} M-parameter {type(model).__name__} on {data['images']} images, "
             f"{train.steps} steps of {per_step} on {device}")
    loss_fn = config.loss_fn(device)
    generator = torch.Generator(device)
    window, began = [], time.perf_counter()
    saved = (start, began)  # the step and time of the last save

    def checkpoint(step: int) -> Checkpoint:
        training = {"options": asdict(train), "data": data, "losses": losses}
        ckpt = Checkpoint(config, step, model.state_dict(), ema.state_dict(), optimizer.state_dict(), training)
        if launch.is_main:
            save_checkpoint(ckpt, out)
        return ckpt

    ckpt = None
    with progress(total=train.steps, initial=start, desc="training", unit="step") as bar:
        for step in range(start, train.steps):
            rows = batch_rows(train.seed, step, len(images), train.batch_size, launch)
            pixels = torch.from_numpy(to_unit_range(images[rows])).to(device)
            generator.manual_seed(train.seed * 1_000_003 + step + launch.rank * 7_919_000_003)
            pixels = random_shifts(pixels, train.augment_shift, generator)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(train, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = loss_fn(trainer, pixels, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            decay = min(train.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
            window.append(loss.item())
            elapsed = time.perf_counter() - began
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False,
                            img_s=f"{(step + 1 - start) * len(rows) * launch.world_size / elapsed:.0f}")
            bar.update()
            done = step + 1
            if done - start == ESTIMATE_AFTER and done < train.steps:
                _say_expected_duration(elapsed / (done - start), train.steps - done)
            if done % train.save_every == 0 or done == train.steps:
                losses.append([done, float(np.mean(window))])
                window = []
                ckpt = checkpoint(done)
                if done < train.steps:  # the pace since the last save: other work on the machine changes it
                    now = time.perf_counter()
                    _say_progress(done, train.steps, losses[-1][1], (now - saved[1]) / (done - saved[0]))
                    saved = (done, now)
            if train.snapshot_every and done % train.snapshot_every == 0:
                if ckpt is None or ckpt.step != done:
                    ckpt = checkpoint(done)
                if launch.is_main:
                    shutil.copyfile(out, snapshot_path(out, done))
    if ckpt is None:  # already at the requested step count
        ckpt = checkpoint(start)
    log.info(f"wrote {out} (step {ckpt.step}, recent loss {losses[-1][1]:.4f})" if losses else f"wrote {out}")
    return ckpt


def train_run(run: TrainRun, source: ImageSource, **options) -> Checkpoint:
    """`train-backbone`: a backbone trained on `source` as `run` says, written to `run.out`.
    `options`: the given ones of TrainConfig's fields and the backbone kind's (the rest keep
    their configs' defaults)."""
    if run.epochs is not None and options.get("steps") is not None:
        raise DiffclassError("give --steps or --epochs, not both")
    device = torch_device(run.device)  # a device that cannot run: said before any loading
    config, train, initial = plan_config(source, run.init, kind=run.kind, image_size=run.image_size,
                                         channels=run.channels, **options)
    return run.call(run_training, source=source, config=config, train=train, device=device, initial=initial)


def run_training(source: ImageSource, config: Backbone, train: TrainConfig, out: Path,
                 device: torch.device, *, resume: bool = False, overwrite: bool = False, workers: int = 0,
                 epochs: float | None = None, compiled: bool = False,
                 initial: dict[str, torch.Tensor] | None = None) -> Checkpoint:
    """Load the images of `source` and train on them, from `initial` weights if given (a resumed
    run continues from its checkpoint instead); under torchrun each rank loads and trains on its
    own shard (see `train_backbone`)."""
    launch = detect_launch()
    config, train, state = plan_run(out, config, train, source.spec, resume=resume, overwrite=overwrite)
    if compiled:
        _check_compiler(device)
    if launch.is_distributed:
        device = start(launch, device)
        if not launch.is_main:
            configure(quiet=True)  # one progress bar and one log: rank 0's
        source = source.subset(rank_rows(len(source), launch))
    try:
        _check_memory(len(source), config)
        images, _, skipped = load_all(source, config.image_size, config.channels, workers)
        n_images = sum_over_ranks(len(images), launch, device)
        if epochs is not None:
            steps = math.ceil(epochs * n_images / (train.batch_size * launch.world_size))
            train = TrainConfig(**{**asdict(train), "steps": steps})
        data = {"source": source.spec, "images": n_images, "skipped": sum_over_ranks(len(skipped), launch, device),
                "processes": launch.world_size}
        return train_backbone(images, config, train, out, device, data=data, state=state, launch=launch,
                              compiled=compiled,
                              initial=initial if state is None else None)
    finally:
        stop(launch)


def _check_memory(n_images: int, config: Backbone) -> None:
    """Training holds every image in memory (uint8): refuse, before loading, a set that cannot fit."""
    need = n_images * config.channels * config.image_size**2
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else need * 2
    if need > total // 2:
        raise DiffclassError(f"{n_images} images of {config.image_size}x{config.image_size} take "
                             f"{need / 2**30:.1f} GB, more than half of this machine's {total / 2**30:.0f} GB: "
                             "use a smaller --image-size or fewer images")


def _check_images(images: np.ndarray, config: Backbone, train: TrainConfig) -> None:
    expected = (config.channels, config.image_size, config.image_size)
    if images.shape[1:] != expected:
        raise DiffclassError(f"images are {images.shape[1:]} but the backbone expects {expected}")
    if train.augment_shift >= config.image_size:  # it would move every image out of itself
        raise DiffclassError(f"--augment-shift {train.augment_shift} must be less than the image size "
                             f"{config.image_size}")


def _check_compiler(device: torch.device) -> None:
    """torch.compile builds C++ kernels for the CPU: without a compiler it would fail at the first
    step, after every image was loaded."""
    if device.type == "cpu" and not any(map(shutil.which, ("c++", "g++", "clang++"))):
        raise DiffclassError("--compile needs a C++ compiler (c++, g++ or clang++) on the PATH to build CPU kernels; "
                             "install one or train without --compile")


def _say_expected_duration(seconds_per_step: float, steps_left: int) -> None:
    """One line, also in logs where no progress bar is drawn: how long the rest will take."""
    log.info(f"{seconds_per_step:.2f} s per step so far: the {steps_left} steps left will take about "
             f"{_time_left(seconds_per_step * steps_left)}")


def _say_progress(step: int, steps: int, loss: float, seconds_per_step: float) -> None:
    """At each save: the step, the recent loss and the time left at the pace since the last save."""
    log.info(f"step {step} of {steps}, loss {loss:.4f}: {seconds_per_step:.2f} s per step since the last save; "
             f"the rest will take about {_time_left(seconds_per_step * (steps - step))}")


def _time_left(seconds: float) -> str:
    finish = datetime.now() + timedelta(seconds=seconds)
    return f"{_duration(seconds)} (until about {finish:%H:%M})"


def _duration(seconds: float) -> str:
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{max(minutes, 1)} min"

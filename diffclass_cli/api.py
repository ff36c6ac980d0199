"""The Python API: what the commands do, as functions with keyword-only options and the
command line's defaults (both take them from the same configs and functions).

    from diffclass_cli import featurize, fit, predict

    train = featurize("photos/train")                      # arrays: features, paths, labels, class names
    featurize("photos/train", "train.h5")                  # or a feature file, as `diffclass featurize`
    fit("train.h5", "head.skops")
    for p in predict("photos/new", head="head.skops"):     # images, feature files or a feature array
        print(p.path, p.label, p.confidence)

Nothing heavy is imported until a function is called: `import diffclass_cli` stays as light as
`diffclass --version`.
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffclass_cli.choices import Device, HeadKind


@dataclass
class Features:
    """Features computed in memory: `features` float32 `[N, D]`, one row per readable image."""

    features: np.ndarray
    paths: list[str]
    labels: np.ndarray  # index into class_names, -1 where unlabeled
    class_names: list[str]
    skipped: list[tuple[str, str]]  # (path, reason) of the images that could not be read


@dataclass
class Prediction:
    path: str
    label: str
    confidence: float
    proba: dict[str, float]


def _source(images, data_root: Path | None = None):
    """A SOURCE as the commands take it: a folder, image files, '-', or a built-in name."""
    from diffclass_cli.data.sources import ImageSource, open_inputs

    if isinstance(images, ImageSource):
        return images
    specs = [str(images)] if isinstance(images, str | Path) else [str(i) for i in images]
    return open_inputs(specs, data_root)


def train(images, out: Path, *, init: str | None = None, device: Device = Device.auto, resume: bool = False,
          overwrite: bool = False, workers: int = 0, epochs: float | None = None, compiled: bool = False,
          **options) -> Path:
    """Train a backbone on unlabeled `images` (any SOURCE) and write its checkpoint to `out`,
    as `diffclass train-backbone`; `init='diffusers:PATH'` fine-tunes a pretrained model.
    `options`: the fields of backbone.config.TrainConfig (steps, batch_size, lr, ...) and of the
    backbone kind (kind, image_size, channels, width, channel_mults, ...)."""
    from diffclass_cli.backbone.train import plan_config, run_training
    from diffclass_cli.device import torch_device

    device, source = torch_device(device), _source(images)  # a device that cannot run: said before any loading
    config, train_config, initial = plan_config(source, init, **options)
    run_training(source, config, train_config, Path(out), device, resume=resume, overwrite=overwrite,
                 workers=workers, epochs=epochs, compiled=compiled, initial=initial)
    return Path(out)


def export(checkpoint: Path | str, out: Path, *, timestep: int | None = None, timesteps: Sequence[int] = (),
           taps: str | None = None, pool: str | None = None, shifts: int = 1, noise_draws: int = 1,
           noise_seed: int = 0, overwrite: bool = False) -> dict:
    """Freeze a checkpoint (or `diffusers:PATH`) into an ONNX extractor at `out`, as `diffclass
    export`; returns its metadata."""
    from diffclass_cli.extractors.onnx_export import export_onnx
    from diffclass_cli.extractors.spec import ExtractorSpec

    spec = ExtractorSpec.from_options(timestep=timestep, timesteps=tuple(timesteps), taps=taps, pool=pool,
                                      noise_seed=noise_seed, noise_draws=noise_draws, shifts=shifts)
    return export_onnx(Path(checkpoint), Path(out), spec, overwrite=overwrite)


def featurize(images, out: Path | None = None, *, model: Path | None = None, batch_size: int = 256,
              workers: int = 0, device: Device = Device.auto, overwrite: bool = False) -> Features | Path:
    """The features of `images` (any SOURCE) by the extractor `model` (default: the shipped one):
    written to the feature file `out` as `diffclass featurize`, or, without `out`, returned."""
    from diffclass_cli.features.extract import features_in_memory, resolve_model
    from diffclass_cli.features.extract import featurize as featurize_to_file

    source, model = _source(images), resolve_model(model)
    if out is not None:
        featurize_to_file(source, Path(out), model, device=device, batch_size=batch_size, workers=workers,
                          overwrite=overwrite)
        return Path(out)
    features, rows, skipped = features_in_memory(source, model, batch_size, workers, device)
    return Features(features, [source.ids[r] for r in rows], source.labels[rows], list(source.class_names),
                    skipped)


def fit(features: Path, out: Path, *, head: HeadKind | str = HeadKind.auto, per_class: int | None = None,
        seed: int = 0, unlabeled: Sequence[Path] = (), labels: Path | None = None, overwrite: bool = False) -> dict:
    """Fit a head on the labeled rows of a feature file and save it (skops), as `diffclass fit`;
    returns what it recorded (classes, what auto chose, the extractor, ...)."""
    from diffclass_cli.heads.fit import fit_head

    return fit_head(Path(features), Path(out), HeadKind(head), per_class=per_class, seed=seed, overwrite=overwrite,
                    unlabeled=[Path(u) for u in unlabeled], labels=labels)


def load_extractor(path: Path | None = None, *, device: Device = Device.auto):
    """An extractor in onnxruntime: call it on float32 images `[N, C, S, S]` in [0, 1] to get
    features `[N, D]`; `.metadata` says what it computes (default: the shipped extractor)."""
    from diffclass_cli.features.extract import resolve_model
    from diffclass_cli.features.runtime import ExtractorSession

    return ExtractorSession(resolve_model(path), device)


def load_head(path: Path):
    """A head (skops) or a one-file classifier (ONNX): `.predict_proba(features)` and
    `.class_names` (the probability columns), `.info`."""
    from diffclass_cli.heads.apply import load_any_head

    return load_any_head(Path(path))


def predict(inputs, *, head: Path, model: Path | None = None, batch_size: int = 256) -> Iterator[Prediction]:
    """Predictions for `inputs`: a feature array `[N, D]`, feature files, or images (any SOURCE,
    featurized with the extractor the head was fitted on, or `model`), as `diffclass predict`."""
    from diffclass_cli.heads import apply

    if isinstance(inputs, np.ndarray):
        loaded = load_head(head)
        names, chunks = loaded.class_names, [apply.predictions(loaded, inputs, [str(i) for i in range(len(inputs))],
                                                               np.full(len(inputs), -1), [])]
    elif (files := _feature_files(inputs)) is not None:
        names, chunks = apply.predict(files, Path(head))
    else:
        names, chunks = apply.predict_images(_source(inputs), Path(head), model=model, batch_size=batch_size, workers=0)
    for chunk in chunks:
        for i, path in enumerate(chunk.paths):
            yield Prediction(path, chunk.labels[i], float(chunk.confidence[i]),
                             {name: float(p) for name, p in zip(names, chunk.proba[i])})


def evaluate(inputs, *, head: Path, model: Path | None = None) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix of a
    head on a labeled feature file or labeled images, as `diffclass evaluate --json`."""
    from diffclass_cli.heads import apply

    files = _feature_files(inputs)
    if files is not None:
        return apply.evaluate(files[0], Path(head))
    return apply.evaluate_images(_source(inputs), Path(head), model=model)


def _feature_files(inputs) -> list[Path] | None:
    """`inputs` as feature files when they are, None for images (describe.feature_files)."""
    from diffclass_cli.data.sources import ImageSource
    from diffclass_cli.describe import feature_files

    if isinstance(inputs, ImageSource):
        return None
    return feature_files([inputs] if isinstance(inputs, str | Path) else list(inputs))

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

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from diffclass_cli.choices import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.runs import ExportRun, FeaturizeRun, FitRun, PredictRun, TrainRun


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


def _spec(images) -> str:
    """How a run records its SOURCE."""
    from diffclass_cli.data.sources import ImageSource

    if isinstance(images, ImageSource):
        return images.spec
    return str(images) if isinstance(images, str | Path) else " ".join(map(str, images))


def _source(images, data_root: Path | None = None, *, one_source: bool = False):
    """Images as the commands take them: a folder, image files, '-', or a built-in name.
    `one_source`: one SOURCE as featurize and train-backbone read it (a folder's paths stored
    relative to it), else as predict and evaluate read their inputs (paths as given)."""
    from diffclass_cli.data.sources import ImageSource, open_inputs, open_source

    if isinstance(images, ImageSource):
        return images
    if one_source and isinstance(images, str | Path):
        return open_source(str(images), data_root)
    specs = [str(images)] if isinstance(images, str | Path) else [str(i) for i in images]
    return open_inputs(specs, data_root)


def _options_help(run_class: type, skip: tuple[str, ...] = ()) -> str:
    """The options of a command's run config, one per line with its default and meaning: the
    keyword arguments its API function takes (generated, so it never drifts from the command)."""
    from dataclasses import MISSING

    from diffclass_cli.options import option_fields

    lines = ["", "Options (keyword arguments; the command line's flags by their Python names):"]
    for f in option_fields(run_class):
        if f.name in skip:
            continue
        default = "required" if f.default is MISSING else f"default {getattr(f.default, 'value', f.default)!r}"
        lines.append(f"    {f.name} ({default}): {f.metadata['help']}")
    return "\n".join(lines)


def _documented(run_class: type, *skip: str):
    """Append the options of `run_class` to the function's docstring."""

    def document(function):
        function.__doc__ = (function.__doc__ or "") + "\n" + _options_help(run_class, skip)
        return function

    return document


@_documented(TrainRun, "source", "out")
def train(images, out: Path, **options) -> Path:
    """Train a backbone on unlabeled `images` (any SOURCE) and write its checkpoint to `out`,
    as `diffclass train-backbone`; `init='diffusers:PATH'` fine-tunes a pretrained model.
    `options`: train-backbone's, by their Python names: runs.TrainRun's (kind, init, epochs,
    image_size, channels, resume, compiled, device, workers, overwrite), the training loop's
    (backbone.config.TrainConfig: steps, batch_size, lr, ...) and the backbone kind's (width,
    channel_mults, ...)."""
    from diffclass_cli.backbone.train import train_run

    own = {f.name for f in fields(TrainRun)}
    run = TrainRun.of(source=_spec(images), out=Path(out), **{k: v for k, v in options.items() if k in own})
    source = _source(images, run.data_root, one_source=True)
    train_run(run, source, **{k: v for k, v in options.items() if k not in own})
    return run.out


@_documented(ExportRun, "checkpoint", "out")
def export(checkpoint: Path | str, out: Path, **options) -> dict:
    """Freeze a checkpoint (or `diffusers:PATH`) into an ONNX extractor at `out`, as `diffclass
    export`; returns its metadata. `options`: export's (runs.ExportRun: timestep, which may be
    'auto', timesteps, taps, pool, shifts, noise_draws, noise_seed, weights, opset, overwrite, ...)."""
    from diffclass_cli.extractors.onnx_export import export_run

    return export_run(ExportRun.of(checkpoint=Path(checkpoint), out=Path(out), **options))


@_documented(FeaturizeRun, "source", "out")
def featurize(images, out: Path | None = None, **options) -> Features | Path:
    """The features of `images` (any SOURCE) by the extractor `model` (default: the shipped one):
    written to the feature file `out` as `diffclass featurize`, or, without `out`, returned.
    `options`: featurize's (runs.FeaturizeRun: model, batch_size, workers, device, ...)."""
    from diffclass_cli.features.extract import features_in_memory, featurize_run, resolve_model

    run = FeaturizeRun.of(source=_spec(images), out=Path(out or "."), **options)
    source = _source(images, run.data_root, one_source=True)
    if out is not None:
        featurize_run(run, source)
        return run.out
    features, rows, skipped = run.call(features_in_memory, source=source, model=resolve_model(run.model))
    return Features(features, [source.ids[r] for r in rows], source.labels[rows], list(source.class_names),
                    skipped)


@_documented(FitRun, "features", "out")
def fit(features: Path, out: Path, **options) -> dict:
    """Fit a head on the labeled rows of a feature file and save it (skops), as `diffclass fit`;
    returns what it recorded (classes, the extractor, ...) with the head it fitted as
    `chosen_head` (what auto chose) and `reason`. `options`: fit's
    (runs.FitRun: head, per_class, seed, unlabeled, labels, C, ...)."""
    from diffclass_cli.heads.fit import fit_head

    info = FitRun.of(features=features, out=out, **options).call(fit_head)
    params = info["params"]
    return {**info, "chosen_head": params.get("choice", info["head"]), "reason": params.get("reason", "")}


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


def predict(inputs, *, head: Path, model: Path | None = None,
            batch_size: int = PredictRun.batch_size) -> Iterator[Prediction]:
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
        if len(files) > 1:
            raise DiffclassError("evaluate takes one feature file")
        return apply.evaluate(files[0], Path(head))
    return apply.evaluate_images(_source(inputs), Path(head), model=model)


def _feature_files(inputs) -> list[Path] | None:
    """`inputs` as feature files when they are, None for images (describe.feature_files)."""
    from diffclass_cli.data.sources import ImageSource
    from diffclass_cli.describe import feature_files

    if isinstance(inputs, ImageSource):
        return None
    return feature_files([inputs] if isinstance(inputs, str | Path) else list(inputs))

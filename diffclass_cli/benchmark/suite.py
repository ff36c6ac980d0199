"""`diffclass benchmark`: load the splits, build the feature sets, run the protocol and the
sweeps, and write results.csv, summary.md and the plots."""

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from diffclass_cli.backbone.config import BACKBONES
from diffclass_cli.benchmark.features import (
    extractor_features,
    model_input_shape,
    pca_features,
    pixel_features,
)
from diffclass_cli.benchmark.protocol import FEW_LABELS, Protocol, Split, cnn_fits_in, run_protocol
from diffclass_cli.benchmark.report import (
    ResultsFile,
    plot_curves,
    plot_timesteps,
    summary_markdown,
)
from diffclass_cli.console import log
from diffclass_cli.data.loading import load_all
from diffclass_cli.data.sources import UNLABELED, open_source, stratified_split
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.extractors.spec import ExtractorSpec, pool_name, timesteps_name
from diffclass_cli.files import atomic_folder, refuse_folder
from diffclass_cli.heads.models import HeadKind
from diffclass_cli.options import parse_ints
from diffclass_cli.runs import BenchmarkRun

DEFAULT_HEADS = (HeadKind.auto, HeadKind.logreg, HeadKind.semi)
QUICK = Protocol(per_class=(1, 10), draws=2, heads=(HeadKind.auto, HeadKind.logreg), cnn_steps=40,
                 draws_few_labels=2)
QUICK_TRAIN_PER_CLASS, QUICK_TEST_PER_CLASS = 100, 30
SWEEP_POOLS = (1, 2, 3)
DEFAULT_BASELINES = ("pixels", "pca")  # and the CNN where it fits in CNN_MINUTES
CNN_MINUTES = 2.0


def load_split(spec: str, size: int, channels: int, data_root: Path | None, *, held_out: bool = False) -> Split:
    """The images of `spec` with their labels. A train split keeps its unlabeled images (the
    pool of the heads that learn from them); a held-out split is scored, so only its labeled
    images are kept."""
    source = open_source(spec, data_root)
    if not source.is_labeled:
        raise DiffclassError(f"{spec} has no labels: the benchmark needs a labeled train and test split")
    if held_out and not (source.labels >= 0).all():
        log.info(f"{spec}: {int((source.labels < 0).sum())} unlabeled images left out (only labeled ones are scored)")
        source = source.subset(np.flatnonzero(source.labels >= 0))
    images, kept, _ = load_all(source, size, channels)
    return Split(images, source.labels[kept], [source.ids[i] for i in kept], source.class_names)


def _rows(split: Split, rows: np.ndarray) -> Split:
    return Split(split.images[rows], split.labels[rows], [split.ids[i] for i in rows], split.class_names)


def aligned_classes(held_out: Split, train_split: Split, test: str, train: str) -> Split:
    """The held-out split with its labels numbered as the train split's classes (matched by name)."""
    if held_out.class_names == train_split.class_names:
        return held_out
    unknown = sorted(set(held_out.class_names) - set(train_split.class_names))
    if unknown:
        raise DiffclassError(f"{test} has classes that {train} has no labeled images of: {', '.join(unknown)}")
    codes = np.array([train_split.class_names.index(name) for name in held_out.class_names])
    return replace(held_out, labels=codes[held_out.labels], class_names=train_split.class_names)


def labels_per_class(train_split: Split, asked: tuple[int, ...], train: str,
                     grid: tuple[int, ...] = Protocol.per_class) -> tuple[int, ...]:
    """The K values to draw: as asked, each checked against the smallest class of the train split, or by
    default those of `grid` that every class can give."""
    labeled = train_split.labels[train_split.labels != UNLABELED]
    counts = np.bincount(labeled, minlength=len(train_split.class_names))
    smallest = int(np.argmin(counts))
    name = repr(train_split.class_names[smallest]) if train_split.class_names else str(smallest)
    if asked:
        if max(asked) > counts[smallest]:
            raise DiffclassError(f"class {name} has {counts[smallest]} labeled images in {train}, fewer than the "
                                 f"{max(asked)} per class asked for (--per-class)")
        return asked
    possible = tuple(k for k in grid if k <= counts[smallest])
    if not possible:
        raise DiffclassError(f"class {name} has no labeled images in {train}")
    log.info(f"labels per class: {','.join(map(str, possible))} (the smallest class, {name}, has "
             f"{counts[smallest]} labeled images)")
    return possible


def at_most(split: Split, per_class: int, seed: int = 0) -> Split:
    """At most `per_class` images of each class (and of the unlabeled ones), drawn with `seed`."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(split.labels == c))[:per_class] for c in np.unique(split.labels)]
    return _rows(split, np.sort(np.concatenate(rows)))


def refuse_shared_images(train_split: Split, held_out: Split, train: str, test: str) -> None:
    """The test split must be held out: compared by decoded pixels, so files that merely share
    names (`A/cat/001.png`, `B/cat/001.png`) pass and one image under two names does not."""
    in_train = {hashlib.sha256(image.tobytes()).digest(): i for i, image in enumerate(train_split.images)}
    shared = [(train_split.ids[in_train[key]], held_out.ids[j]) for j, image in enumerate(held_out.images)
              if (key := hashlib.sha256(image.tobytes()).digest()) in in_train]
    if shared:
        examples = ", ".join(f"{a} = {b}" for a, b in shared[:3])
        raise DiffclassError(f"{train} and {test} share {len(shared)} image(s) ({examples}"
                             f"{', ...' if len(shared) > 3 else ''}): the test split must be held out")


def validation_split(train_split: Split) -> tuple[Split, Split]:
    """Sweeps choose settings, so they are measured on a validation part of the train split (the
    same stratified 80/20 rule as the built-in splits), never on the test split."""
    fit_rows, validation_rows = stratified_split(train_split.labels)
    validation_rows = validation_rows[train_split.labels[validation_rows] != UNLABELED]  # only labels are scored
    return _rows(train_split, fit_rows), _rows(train_split, validation_rows)


def feature_set_name(model: Path) -> str:
    """`diffusion:NAME` or `vae:NAME`, from the file's own record of its backbone."""
    if model.suffix == ".onnx":
        kind = read_metadata(model)["backbone_kind"]
    else:
        from diffclass_cli.backbone.checkpoint import read_checkpoint_metadata

        kind = json.loads(read_checkpoint_metadata(model)["config"])["kind"]
    return f"{BACKBONES[kind].feature_family if kind in BACKBONES else kind}:{model.stem}"


def benchmark_run(run: BenchmarkRun) -> str:
    """`benchmark`: `run_benchmark` with the grid, heads and baselines `run` names."""
    try:
        heads = (tuple(HeadKind(h.strip()) for h in run.heads.split(",") if h.strip()) if run.heads
                 else QUICK.heads if run.quick else DEFAULT_HEADS)
    except ValueError:
        raise DiffclassError(f"--heads takes {', '.join(h.value for h in HeadKind)}, not {run.heads!r}") from None
    protocol = Protocol(per_class=parse_ints(run.per_class, "--per-class") if run.per_class else (), draws=run.draws,
                        heads=heads, seed=run.seed, cnn_steps=run.cnn_steps, draws_few_labels=run.draws_few,
                        labels=run.labels)
    return run.call(run_benchmark, spec=run.spec(), protocol=protocol,
                    baselines=None if run.baselines is None else run.baseline_names)


def run_benchmark(models: list[Path], out: Path, spec: ExtractorSpec, protocol: Protocol,
                  *, train: str = "mnist-sample:train", test: str = "mnist-sample:test",
                  baselines: tuple[str, ...] | None = None, sweep_timesteps: tuple[tuple[int, ...], ...] = (),
                  sweep_taps: bool = False, sweep_pool: bool = False, quick: bool = False,
                  data_root: Path | None = None, on_validation: bool = False, overwrite: bool = False) -> str:
    """Run everything and write the outputs into the folder `out` (atomically; each result row as
    it is finished, so a stopped run keeps them); returns the summary markdown. `baselines` None:
    pixels, pca, and the supervised CNN where it fits in CNN_MINUTES."""
    refuse_folder(out, overwrite)  # before minutes of work, not after
    began = time.perf_counter()
    size, channels = model_input_shape(models[0])
    train_split = load_split(train, size, channels, data_root)
    if on_validation:  # for choosing checkpoints and options: the test split is not even loaded
        train_split, held_out = validation_split(train_split)
        test = f"the validation part of {train}"
    else:
        held_out = aligned_classes(load_split(test, size, channels, data_root, held_out=True), train_split, test,
                                   train)
    grid = Protocol.per_class
    if quick:
        protocol = replace(protocol, draws=QUICK.draws, draws_few_labels=QUICK.draws_few_labels,
                           cnn_steps=min(protocol.cnn_steps, QUICK.cnn_steps))
        grid = QUICK.per_class
        train_split = at_most(train_split, QUICK_TRAIN_PER_CLASS)
        held_out = at_most(held_out, QUICK_TEST_PER_CLASS)
    protocol = replace(protocol, per_class=labels_per_class(train_split, protocol.per_class, train, grid))
    refuse_shared_images(train_split, held_out, train, test)

    feature_sets = [extractor_features(feature_set_name(m), m, spec, train_split.images, held_out.images)
                    for m in models]
    chosen = DEFAULT_BASELINES if baselines is None else baselines
    if "pixels" in chosen:
        feature_sets.append(pixel_features(train_split.images, held_out.images))
    if "pca" in chosen:
        feature_sets.append(pca_features(train_split.images, held_out.images, protocol.seed))
    cnn = "cnn" in chosen or (baselines is None and cnn_fits_in(CNN_MINUTES, train_split, held_out, protocol))

    # Sweeps vary one export option of the first model; logreg keeps them cheap and comparable.
    if (sweep_timesteps or sweep_taps or sweep_pool) and models[0].suffix == ".onnx":
        raise DiffclassError("the sweeps re-export the backbone: give a checkpoint, not an .onnx file")
    sweeps = {
        "timestep": [(timesteps_name(group), replace(spec, timesteps=group))
                     for group in sweep_timesteps],
        "taps": [(f"taps={'+'.join(taps)}", replace(spec, taps=taps)) for taps in _tap_sets(models[0])]
        if sweep_taps else [],
        "pool": [(f"pool={pool_name(g)}", replace(spec, pool=g)) for g in SWEEP_POOLS] if sweep_pool else [],
    }
    with atomic_folder(out, overwrite, keep_partial=True) as folder, ResultsFile(folder / "results.csv") as results:
        rows, draws = run_protocol(feature_sets, train_split, held_out, protocol=protocol, cnn=cnn,
                                   on_row=results.write)
        sweep_train, validation = validation_split(train_split)
        for sweep, variants in sweeps.items():
            if variants:
                sets = [extractor_features(name, models[0], variant, sweep_train.images, validation.images)
                        for name, variant in variants]
                sweep_rows, _ = run_protocol(sets, sweep_train, validation, protocol=protocol, sweep=sweep,
                                             heads=(HeadKind.logreg,), cnn=False, on_row=results.write)
                rows += sweep_rows

        minutes = (time.perf_counter() - began) / 60
        preamble = (f"# diffclass benchmark\n\nModels: {', '.join(str(m) for m in models)}; train split {train} "
                    f"({int((train_split.labels != UNLABELED).sum())} labeled and "
                    f"{int((train_split.labels == UNLABELED).sum())} unlabeled images), main grid scored on {test} "
                    f"({len(held_out.labels)} images); {protocol.draws} draws per K ({protocol.draws_few_labels} at "
                    f"K <= {FEW_LABELS}); {_describe(spec, models)}; "
                    f"total time {minutes:.1f} min. Sweeps (if any) draw their labels from "
                    f"{len(sweep_train.labels)} train images and are scored on the other {len(validation.labels)} "
                    "train images (a validation split), never on the test split.\n")
        summary = summary_markdown(rows, preamble)
        _write_outputs(folder, rows, draws=draws, summary=summary, test=test, train=train, sweeps=sweeps)
    log.info(f"benchmark finished in {minutes:.1f} min; wrote {out}/")
    return summary


def _write_outputs(folder: Path, rows: list[dict], *, draws: dict, summary: str, test: str, train: str,
                   sweeps: dict) -> None:
    """summary.md, labeled_draws.json and the plots (results.csv is written as the rows come)."""
    (folder / "summary.md").write_text(summary)
    (folder / "labeled_draws.json").write_text(json.dumps(draws))
    plot_curves(rows, "main", folder / "accuracy_vs_labels.png", f"Few-shot accuracy on {test}")
    scored = f"validation part of {train}"
    if sweeps["timestep"]:
        plot_timesteps(rows, folder / "accuracy_vs_timestep.png", f"Accuracy vs diffusion timestep ({scored})")
    for sweep in ("taps", "pool"):
        if sweeps[sweep]:
            plot_curves(rows, sweep, folder / f"sweep_{sweep}.png", f"Feature design: {sweep} ({scored})")


def _tap_sets(model: Path) -> list[tuple[str, ...]]:
    from diffclass_cli.backbone.checkpoint import load_checkpoint
    from diffclass_cli.extractors.choose import candidate_tap_sets

    return candidate_tap_sets(load_checkpoint(model).config)


def _describe(spec: ExtractorSpec, models: list[Path]) -> str:
    """The extractor options, which only checkpoints are exported with: an ONNX model carries its own."""
    if all(m.suffix == ".onnx" for m in models):
        return "each ONNX model's own extractor options (`diffclass info MODEL`)"
    taps = ",".join(spec.taps) if spec.taps else "default"
    timesteps = ",".join(map(str, spec.diffusion_timesteps))
    return (f"extractor options for checkpoints: timesteps {timesteps} (diffusion), taps {taps}, "
            f"pool {pool_name(spec.pool)}, noise draws {spec.noise_draws}, shifts {spec.shifts}")

"""Turn an image source into a feature file: decode in workers, run onnxruntime, append to HDF5."""

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.resources import files
from pathlib import Path

import numpy as np

from diffclass_cli import __version__
from diffclass_cli.choices import Engine, FeatureDtype
from diffclass_cli.console import log, progress
from diffclass_cli.data.loading import GRAY_MODES, Decoders, report_skipped, to_unit_range
from diffclass_cli.data.sources import ImageSource, UnreadableImage
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.features.h5 import FeatureWriter
from diffclass_cli.features.runtime import ExtractorSession, FeatureBatch
from diffclass_cli.files import atomic_output, refuse_overwrite, sha256_file
from diffclass_cli.runs import FeaturizeRun

# The shipped extractor: package data (in the repository, diffclass_cli/exports links to exports/).
DEFAULT_MODEL = Path(str(files("diffclass_cli") / "exports" / "mnist-sample-ddpm.onnx"))


def resolve_model(model: Path | None) -> Path:
    """`--model`, or the shipped default extractor when it is left out."""
    if model is not None:
        return model
    if not DEFAULT_MODEL.is_file():
        raise DiffclassError(f"no --model given and the default extractor {DEFAULT_MODEL} is not there")
    return DEFAULT_MODEL


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): one contiguous block of the source's rows, so the
    same command on the same source always gives the same shard."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> "Shard":
        index, _, count = text.partition("/")
        if not (index.isdecimal() and count.isdecimal()) or not 0 <= int(index) < int(count):
            raise DiffclassError(f"--shard is I/N with 0 <= I < N (e.g. 0/8), not {text!r}")
        return cls(int(index), int(count))

    def rows(self, n: int) -> np.ndarray:
        return np.arange(self.index * n // self.count, (self.index + 1) * n // self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def featurize_run(run: FeaturizeRun, source: ImageSource) -> dict:
    """`featurize`: the features of `source` (labeled by the table `run.labels` where given)
    written to `run.out` as `run` says."""
    if run.labels is not None:
        source = source.relabeled(run.labels)
    return run.call(featurize, source=source, model=resolve_model(run.model),
                    shard=Shard.parse(run.shard) if run.shard else Shard())


NO_PROVIDER = "none"  # the provider of a file to which no batch was written


def source_fingerprint(source: ImageSource) -> str:
    """Identifies a source's listing, so shards of different listings are never merged."""
    return hashlib.sha256("\n".join(source.ids).encode("utf-8", "surrogateescape")).hexdigest()


def featurize(source: ImageSource, out: Path, model: Path, *, device: Device = Device.auto,
              batch_size: int = 256, threads: int | None = None, workers: int = 0,
              overwrite: bool = False, resume: bool = False, strict: bool = False,
              shard: Shard = Shard(), engine: Engine = Engine.local,
              dtype: FeatureDtype = FeatureDtype.float32) -> dict:
    """Write the features of every readable image of `source` (or of its `shard`) to `out`, stored
    as `dtype`; returns a summary. `engine` ray runs decoding and onnxruntime in `workers` Ray
    Data actors; local decodes in `workers` processes and runs one session here."""
    refuse_overwrite(out, overwrite)
    meta = read_metadata(model)
    attrs = _file_attrs(source, model, meta, shard)
    if shard.count > 1:
        source = source.subset(shard.rows(len(source)), keep_skipped=shard.index == 0)
    describe_conversion(source, meta, model)
    local = engine == Engine.local
    # The decoding workers start before the output is opened, so they never hold it; the session
    # (which may refuse the device) starts before the output is touched.
    with Decoders(source, meta["image_size"], meta["channels"], workers if local else 0) as decoders:
        session = ExtractorSession(model, device, threads) if local else None
        with atomic_output(out, overwrite, keep_partial=True) as partial:
            if partial.stat().st_size and not resume:
                log.info(f"starting over: {partial} is left from an earlier run (pass --resume to continue it)")
            writer = FeatureWriter(partial, meta["feature_dim"], attrs, source.class_names, resume, dtype)
            try:
                if local:
                    batches = feature_batches(decoders, session, batch_size, writer.source_rows_done)
                else:
                    from diffclass_cli.features.ray_engine import ray_feature_batches

                    batches = ray_feature_batches(source, model, meta, batch_size=batch_size, workers=workers,
                                                  start=writer.source_rows_done, device=device)
                summary = _write_batches(source, batches, writer, strict=strict, shard=shard, model=model,
                                         engine=engine, workers=workers)
            except DiffclassError as err:
                writer.close()
                if not (err.resumable or writer.resumed):
                    partial.unlink()  # a mistake to fix in a fresh run; an earlier run's rows are kept
                raise
            finally:
                writer.close()  # an interrupted run leaves a closed, resumable partial file
    log.info(f"wrote {out}: {summary['rows']} rows x {meta['feature_dim']} features "
             f"({summary['images'] / max(summary['seconds'], 1e-9):.0f} images/s on {summary['provider']})")
    return summary


def _file_attrs(source: ImageSource, model: Path, meta: dict, shard: Shard) -> dict:
    return {
        "extractor_sha256": sha256_file(model),
        "extractor_name": model.stem,
        "extractor_path": str(Path(model).resolve()),  # where predict finds it again from a head
        "feature_dim": meta["feature_dim"],
        "timesteps": meta["timesteps"],
        "taps": meta["taps"],
        "pool": meta["pool"],
        "extractor_metadata": json.dumps(meta),
        "source": source.spec,
        "source_images": len(source),
        "source_fingerprint": source_fingerprint(source),
        "shard": str(shard),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "diffclass_version": __version__,
    }


def _write_batches(source: ImageSource, batches: Iterator[FeatureBatch], writer: FeatureWriter, *, strict: bool,
                   shard: Shard, model: Path, engine: Engine, workers: int) -> dict:
    """Append every batch to `writer`; report what was skipped; refuse a run that read nothing."""
    start = writer.source_rows_done
    where = f" (shard {shard}: {len(source)} images)" if shard.count > 1 else ""
    log.info(f"featurizing {len(source)} images from {source.spec}{where} with {model.name}"
             + (f" on Ray, {workers} actors" if engine == Engine.ray else ""))
    skipped_total, began = [], time.perf_counter()
    if writer.resumed:
        log.info(f"resuming {writer.file.filename} at image {start} of {len(source)}")
    elif source.skipped:  # files the folder scan already ruled out
        _check_strict(strict, source.skipped)
        writer.append(np.empty((0, writer.feature_dim), np.float32), np.empty(0, np.int64), [], source.skipped,
                      source_rows=0)
        skipped_total += source.skipped
    providers = set()
    with progress(total=len(source), initial=start, desc="featurizing", unit="img") as bar:
        for batch in batches:
            providers.add(batch.provider)
            skipped = [(source.ids[row], reason) for row, reason in batch.skipped]
            _check_strict(strict, skipped)
            writer.append(batch.features, source.labels[batch.rows], [source.ids[i] for i in batch.rows],
                          skipped, source_rows=len(batch.rows) + len(batch.skipped))
            skipped_total += skipped
            bar.update(len(batch.rows) + len(batch.skipped))
    if providers or "provider" not in writer.file.attrs:
        writer.file.attrs["provider"] = ",".join(sorted(providers)) or NO_PROVIDER
    rows = int(writer.file.attrs["rows"])
    report_skipped(skipped_total)
    log.info(summarise(writer.file["labels"][:], source.class_names, len(skipped_total)))
    if rows == 0 and shard.count == 1:
        raise DiffclassError(f"none of the {len(source)} images of {source.spec} could be read")
    if rows == 0:  # an empty part still tells merge that this shard was done
        log.warning(f"shard {shard} has no readable images; its file holds no rows")
    return {"rows": rows, "skipped": len(skipped_total), "provider": writer.file.attrs["provider"],
            "images": len(source) - start, "seconds": time.perf_counter() - began}


def summarise(labels: np.ndarray, class_names: list[str], skipped: int) -> str:
    """One line: the rows of each class, how many are labeled and unlabeled, how many files were skipped."""
    counts = np.bincount(labels[labels >= 0], minlength=len(class_names))
    classes = ", ".join(f"{name} {n}" for name, n in zip(class_names, counts))
    labeled = f"{len(class_names)} classes ({classes}): {counts.sum()} labeled" if class_names else "no classes"
    return f"{labeled}, {int((labels < 0).sum())} unlabeled" + (f", {skipped} skipped" if skipped else "")


SAMPLED_IMAGES = 5  # images looked at to say what the extractor makes of a source


def describe_conversion(source: ImageSource, meta, model: Path) -> None:
    """Say once what featurize does to images whose size or colour differ from the extractor's
    (a few images spread over the source are looked at), and point photos met by the shipped
    digits extractor to a backbone of their own."""
    size, gray = int(meta["image_size"]), int(meta["channels"]) == 1
    seen = []
    for row in np.linspace(0, len(source) - 1, min(SAMPLED_IMAGES, len(source))).astype(int):
        try:
            image = source.load(int(row))
        except UnreadableImage:
            continue
        seen.append((image.mode not in GRAY_MODES, image.size))
    differ = [(colour, dims) for colour, dims in seen if dims != (size, size) or (colour and gray)]
    if not differ:
        return
    colour, (width, height) = differ[0]
    shown = f"{'colour' if colour else 'gray'} images of {width}x{height}" + (" and others" if len(set(seen)) > 1
                                                                          else "")
    log.info(f"{shown}, read as {size}x{size} {'gray' if gray else 'RGB'} for this extractor (resized whole)")
    if Path(model).resolve() == DEFAULT_MODEL.resolve() and (any(c for c, _ in seen) or max(width, height) > 2 * size):
        log.warning("the shipped extractor was trained on 28x28 gray MNIST digits; for photos, train a backbone on "
                    "your own images (diffclass train-backbone) or export a pretrained diffusers model "
                    "(docs/guide.md)")


BATCH_BYTES = 512 * 1024 * 1024  # the most pixel bytes (as float32) one onnxruntime call is given


def bounded_batch(batch_size: int, meta: dict) -> int:
    """`batch_size`, made smaller where images are so large that a batch would not fit in BATCH_BYTES."""
    per_image = 4 * meta["channels"] * meta["image_size"] ** 2
    bounded = max(1, min(batch_size, BATCH_BYTES // per_image))
    if bounded < batch_size:
        log.info(f"batches of {bounded} images, not {batch_size}: {meta['image_size']}x{meta['image_size']} images "
                 f"take {per_image / 2**20:.0f} MB each")
    return bounded


def feature_batches(decoders: Decoders, session: ExtractorSession, batch_size: int,
                    start: int = 0) -> Iterator[FeatureBatch]:
    """The features of the decoders' source from row `start` on: decoded in their processes,
    computed by the session in this one, in batches of at most `batch_size` (bounded_batch)."""
    empty = np.empty((0, session.metadata["feature_dim"]), np.float32)
    for batch in decoders.batches(np.arange(start, len(decoders.source)), bounded_batch(batch_size, session.metadata)):
        features = session(to_unit_range(batch.images)) if len(batch.rows) else empty
        yield FeatureBatch(batch.rows, features, batch.skipped, session.provider)


def source_batches(source: ImageSource, session: ExtractorSession, batch_size: int, workers: int, desc: str,
                   skipped: list[tuple[str, str]]) -> Iterator[FeatureBatch]:
    """feature_batches of every image of `source`, decoded in `workers` processes, with a progress
    bar; (path, reason) of each image that could not be read (the source's own first) is added to
    `skipped`, and all of them are reported at the end. Nothing is written."""
    skipped += source.skipped
    meta = session.metadata
    with Decoders(source, meta["image_size"], meta["channels"], workers) as decoders, \
            progress(total=len(source), desc=desc, unit="img") as bar:
        for batch in feature_batches(decoders, session, batch_size):
            skipped += [(source.ids[row], reason) for row, reason in batch.skipped]
            bar.update(len(batch.rows) + len(batch.skipped))
            yield batch
    report_skipped(skipped)


def features_in_memory(source: ImageSource, model: Path, batch_size: int = 256, workers: int = 0,
                       device: Device = Device.auto) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """The features `[N, D]` of every readable image of `source`, the source rows they are of, and
    (path, reason) of the images that could not be read; nothing written."""
    session, skipped = ExtractorSession(model, device), []
    parts, rows = [np.empty((0, session.metadata["feature_dim"]), np.float32)], [np.empty(0, np.int64)]
    for batch in source_batches(source, session, batch_size, workers, "featurizing", skipped):
        parts.append(batch.features)
        rows.append(batch.rows)
    return np.concatenate(parts), np.concatenate(rows), skipped


def _check_strict(strict: bool, skipped: list[tuple[str, str]]) -> None:
    if strict and skipped:
        name, reason = skipped[0]
        raise DiffclassError(f"--strict: could not read {name}: {reason}")

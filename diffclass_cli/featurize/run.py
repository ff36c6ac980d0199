"""Turn an image source into a feature file: decode in workers, run onnxruntime, append to HDF5."""

import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from diffclass_cli import __version__
from diffclass_cli.console import log, progress
from diffclass_cli.data.loading import iter_batches, report_skipped, to_unit_range
from diffclass_cli.data.sources import ImageSource
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.export.onnx_export import read_metadata
from diffclass_cli.featurize.h5 import FeatureWriter
from diffclass_cli.featurize.runtime import ExtractorSession
from diffclass_cli.files import partial_path, refuse_overwrite, sha256_file

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "exports" / "mnist-sample-ddpm.onnx"


def resolve_model(model: Path | None) -> Path:
    """`--model`, or the shipped default extractor when it is left out."""
    if model is not None:
        return model
    if not DEFAULT_MODEL.is_file():
        raise DiffclassError(f"no --model given and the default extractor {DEFAULT_MODEL} is not there")
    return DEFAULT_MODEL


def featurize(source: ImageSource, out: Path, model: Path, device: Device = Device.auto,
              batch_size: int = 256, threads: int | None = None, workers: int = 0,
              overwrite: bool = False, resume: bool = False, strict: bool = False) -> dict:
    """Write the features of every readable image of `source` to `out`; returns a summary."""
    refuse_overwrite(out, overwrite)
    meta = read_metadata(model)
    session = ExtractorSession(model, device, threads)
    log.info(f"featurizing {len(source)} images from {source.spec} with {model.name} on {session.provider}")
    attrs = {
        "extractor_sha256": sha256_file(model),
        "extractor_name": model.stem,
        "feature_dim": meta["feature_dim"],
        "timesteps": meta["timesteps"],
        "taps": meta["taps"],
        "pool": meta["pool"],
        "extractor_metadata": json.dumps(meta),
        "source": source.spec,
        "provider": session.provider,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "diffclass_version": __version__,
    }
    partial = partial_path(out)
    resuming = resume and partial.exists()
    if partial.exists() and not resume:
        log.info(f"starting over: {partial} is left from an earlier run (pass --resume to continue it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = FeatureWriter(partial, meta["feature_dim"], attrs, source.class_names, resume=resuming)
    start = writer.source_rows_done
    if resuming:
        log.info(f"resuming {partial} at image {start} of {len(source)}")
    empty = np.empty((0, meta["feature_dim"]), np.float32)
    skipped_total = []
    began = time.perf_counter()
    try:
        if not resuming and source.skipped:  # files the folder scan already ruled out
            _check_strict(strict, source.skipped)
            writer.append(empty, np.empty(0, np.int64), [], source.skipped, source_rows=0)
            skipped_total += source.skipped
        with progress(total=len(source), initial=start, desc="featurizing", unit="img") as bar:
            for batch in iter_batches(source, meta["image_size"], meta["channels"], batch_size, workers,
                                      rows=np.arange(start, len(source))):
                skipped = [(source.ids[row], reason) for row, reason in batch.skipped]
                _check_strict(strict, skipped)
                features = session(to_unit_range(batch.images)) if len(batch.indices) else empty
                writer.append(features, source.labels[batch.indices], [source.ids[i] for i in batch.indices],
                              skipped, source_rows=len(batch.indices) + len(batch.skipped))
                skipped_total += skipped
                bar.update(len(batch.indices) + len(batch.skipped))
        rows = int(writer.file.attrs["rows"])
    except DiffclassError:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    if rows == 0:
        partial.unlink(missing_ok=True)
        raise DiffclassError(f"none of the {len(source)} images of {source.spec} could be read")
    os.replace(partial, out)
    report_skipped(skipped_total)
    seconds = time.perf_counter() - began
    log.info(f"wrote {out}: {rows} rows x {meta['feature_dim']} features "
             f"({(len(source) - start) / max(seconds, 1e-9):.0f} images/s on {session.provider})")
    return {"rows": rows, "skipped": len(skipped_total), "provider": session.provider, "seconds": seconds}


def _check_strict(strict: bool, skipped: list[tuple[str, str]]) -> None:
    if strict and skipped:
        name, reason = skipped[0]
        raise DiffclassError(f"--strict: could not read {name}: {reason}")

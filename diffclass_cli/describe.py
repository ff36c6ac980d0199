"""`diffclass info`: what a file the tool wrote holds, for any of its five kinds (checkpoint,
extractor, classifier, head, feature file), recognised by content, not by name. Nothing here
imports torch."""

import json
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import PNG_SOFTWARE, existing_file

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"
ONNX_START = b"\x08"  # an ONNX model's first protobuf field: its IR version
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_STARTS = {bytes([c]) for c in b"{\"'\xefabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./ \t\r\n"}
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024
CHECKPOINT_FORMAT = "diffclass-backbone"  # backbone/checkpoint.py writes it


def kind_of(path: Path) -> str:
    """'features', 'head', 'checkpoint', 'picture', 'table', 'extractor' (an ONNX file) or
    'unknown', from the file's first bytes."""
    with open(existing_file(path, "file"), "rb") as f:
        start = f.read(16)
    if start.startswith(HDF5_SIGNATURE):
        return "features"
    if start.startswith(ZIP_SIGNATURE):
        return "head"
    if start.startswith(PNG_SIGNATURE):
        return "picture"
    if len(start) >= 9 and start[8:9] == b"{":  # safetensors: an 8-byte header length, then JSON
        return "checkpoint"
    if start[:1] in TEXT_STARTS:
        return "table"
    if start[:1] == ONNX_START:
        return "extractor"
    return "unknown"


def feature_files(inputs: Sequence[str | Path]) -> list[Path] | None:
    """The inputs as feature files when they all are, None when none is; a mix is refused."""
    kinds = [Path(i).is_file() and kind_of(Path(i)) == "features" for i in inputs]
    if all(kinds):
        return [Path(i) for i in inputs]
    if any(kinds):
        raise DiffclassError("give feature files or images, not both")
    return None


def describe(path: Path) -> dict:
    """What `path` holds, as plain JSON-able data, with its `kind` first; a file or folder that
    diffclass did not write is one line of error."""
    path = Path(path)
    if path.is_dir():
        return {"kind": "benchmark", **_benchmark_folder(path)}
    kind = kind_of(path)
    if kind == "extractor":
        return _onnx(path)
    if kind == "table":
        return _table(path)
    if kind == "unknown":
        raise _not_ours(path, "neither a feature file, head, checkpoint, ONNX file, table nor picture")
    readers = {"features": _features, "head": _head, "checkpoint": _checkpoint, "picture": _picture}
    return {"kind": kind, **readers[kind](path)}


def _not_ours(path: Path, what: str) -> DiffclassError:
    return DiffclassError(f"{path} is {what}, not a file diffclass wrote")


def _picture(path: Path) -> dict:
    from PIL import Image

    try:
        with Image.open(path) as image:
            text, size = dict(image.text), image.size
    except (OSError, ValueError) as err:
        raise _not_ours(path, f"a damaged PNG ({err})") from None
    if not str(text.get("Software", "")).startswith(PNG_SOFTWARE):
        raise _not_ours(path, f"a {size[0]}x{size[1]} PNG image")
    return {"made_by": text["Software"], "what": text.get("Description", ""), "size": list(size)}


# The text tables diffclass writes, told apart by their columns (a header, or JSON keys).
TABLES = (("predictions", ("path", "label", "confidence")), ("suggestions", ("path", "rank", "cluster")),
          ("benchmark results", ("sweep", "feature_set", "head", "per_class", "accuracy")),
          ("labels table", ("path", "label")))


def _table(path: Path) -> dict:
    """A CSV or JSON lines table we write: predictions, suggestions, benchmark results, labels."""
    import csv

    from diffclass_cli.data.labels_table import MAX_TABLE_BYTES

    if path.stat().st_size > MAX_TABLE_BYTES:
        raise _not_ours(path, "a text file larger than any table diffclass writes")
    text = path.read_bytes().decode("utf-8-sig", "replace")
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        if lines and lines[0].lstrip().startswith("{"):
            records, form = [json.loads(line) for line in lines], "jsonl"
            if not all(isinstance(r, dict) for r in records):
                raise ValueError
            columns = list(records[0])
        else:
            records, form = list(csv.DictReader(lines)), "csv"
            columns = list(records[0]) if records else next(csv.reader(lines[:1]), [])
    except (ValueError, RecursionError, csv.Error):
        raise _not_ours(path, "a text file") from None
    kind = next((name for name, needed in TABLES if set(needed) <= set(columns)), None)
    if kind is None:
        raise _not_ours(path, f"a text file (columns: {', '.join(map(str, columns[:6]))[:120]})")
    labels = [str(r.get("label")) for r in records if r.get("label") not in (None, "")]
    found = {"kind": kind, "format": form, "rows": len(records), "columns": columns}
    if labels:
        found["rows_per_label"] = {name: labels.count(name) for name in sorted(set(labels))[:1000]}
    if kind == "benchmark results":
        found |= {key: sorted({str(r.get(key)) for r in records}) for key in ("feature_set", "head", "per_class")}
    return found


def _benchmark_folder(path: Path) -> dict:
    results, summary = path / "results.csv", path / "summary.md"
    if not (results.is_file() and summary.is_file()):
        raise _not_ours(path, "a folder without results.csv and summary.md")
    described = _table(results)
    if described["kind"] != "benchmark results":
        raise _not_ours(path, "a folder whose results.csv is not a benchmark's")
    first = next((line for line in summary.read_text(errors="replace").splitlines()[2:] if line.strip()), "")
    return {**{k: v for k, v in described.items() if k not in ("kind", "format", "columns")},
            "about": first[:2000], "files": sorted(p.name for p in path.iterdir())}


def _onnx(path: Path) -> dict:
    """An extractor or a classifier, told apart by the format its metadata declares."""
    from diffclass_cli.classifier_format import FORMAT, describe_classifier
    from diffclass_cli.extractor_format import file_format, light_session, read_metadata

    if file_format(light_session(path)) == FORMAT:
        return {"kind": "classifier", **describe_classifier(path)}
    return {"kind": "extractor", **read_metadata(path)}


def _features(path: Path) -> dict:
    from diffclass_cli.features.h5 import open_feature_file

    with open_feature_file(path) as reader:
        counts = np.bincount(reader.labels[reader.labels >= 0], minlength=len(reader.class_names))
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in reader.attrs.items()
                 if k not in ("extractor_metadata", "committed")}
        skipped = reader.file["skipped"]
        return {
            "rows": reader.rows,
            "feature_dim": reader.feature_dim,
            "dtype": reader.dtype,
            "labeled_rows": int(counts.sum()),
            "unlabeled_rows": int((reader.labels < 0).sum()),
            "rows_per_class": {name: int(n) for name, n in zip(reader.class_names, counts)},
            "skipped_files": int(skipped.shape[0]),
            "skipped_examples": [[p.decode(errors="replace"), r.decode(errors="replace")]
                                 for p, r in skipped[:5]],
            "attributes": {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in attrs.items()},
        }


def _head(path: Path) -> dict:
    from diffclass_cli.heads.store import load_head

    head, info = load_head(path)
    return {"classes": [info["class_names"][c] for c in head.classes_], **info}


def _checkpoint(path: Path) -> dict:
    """The checkpoint's metadata, read from the safetensors header alone (no torch, no tensors)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise _not_ours(path, f"damaged or not a checkpoint: its header claims {length} bytes")
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DiffclassError(f"{path} is not a diffclass file ({err})") from err
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or metadata.get("format") != CHECKPOINT_FORMAT:
        raise DiffclassError(f"{path} is a safetensors file but not a diffclass checkpoint")
    decoded = {}
    for key, value in metadata.items():
        try:
            decoded[key] = json.loads(value) if key in ("config", "training", "step") else value
        except json.JSONDecodeError:
            decoded[key] = value
    decoded.pop("optimizer_groups", None)
    decoded["tensors"] = len(header) - 1
    return decoded


def format_description(description: dict) -> str:
    """`key: value` lines for people; nested values as JSON on one line."""
    lines = []
    for key, value in description.items():
        if key == "feature_groups":
            value = ", ".join(f"{g['name']} [{g['start']}:{g['stop']}]" for g in value)
        elif not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False)
        lines.append(f"{key}: {value}")
    return "\n".join(lines)

"""The extractor file: an ONNX graph `images [N, C, S, S] -> features [N, D]` whose metadata
(`metadata_props`, all strings; structured values as JSON) says what it computes.

`export` writes it (`metadata_props`), `featurize` and `info` read it (`read_metadata`), and
every reader goes through `validated_metadata`, so a forged or damaged file is refused in one
line before it is used. Needs onnxruntime only, never torch or onnx.
"""

import json
from pathlib import Path

import onnxruntime as ort

from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import existing_file

FORMAT = "diffclass-extractor"
FORMAT_VERSION = 1
INPUT_NAME, OUTPUT_NAME = "images", "features"
NOT_ONNX = "is not an ONNX file onnxruntime can load"
MAX_IMAGE_SIZE = 4096
MAX_FEATURES = 10_000_000
MAX_METADATA_CHARS = 1_000_000  # per value; ours are a few kB
MAX_LONG_CHARS = 256_000_000  # a value named in long_values (a classifier's own head model)
# key -> the JSON type its value must have
SCHEMA = {"format_version": int, "image_size": int, "channels": int, "feature_dim": int, "timesteps": list,
          "taps": list, "pool": str, "feature_groups": list, "backbone_kind": str}


def metadata_props(metadata: dict) -> dict[str, str]:
    """The metadata as ONNX stores it: every value JSON-encoded."""
    return {key: json.dumps(value) for key, value in metadata.items()}


def open_session(path: Path, options: ort.SessionOptions | None = None,
                 providers: list[str] | None = None) -> ort.InferenceSession:
    """An onnxruntime session of the file at `path`; a clear error when onnxruntime cannot load it."""
    path = existing_file(path, "extractor")
    try:
        return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...) for bad bytes
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DiffclassError(f"{path} {NOT_ONNX} ({reason[:200]})") from err


def light_session(path: Path) -> ort.InferenceSession:
    """A single-threaded, unoptimised session: enough to read a file's metadata and graph."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return open_session(path, options)


def read_metadata(path: Path) -> dict:
    """The validated metadata of a diffclass extractor."""
    return validated_metadata(light_session(path), path)


def file_format(session: ort.InferenceSession) -> str | None:
    """The `format` an ONNX file of ours declares (an extractor, a classifier), None for others."""
    text = session.get_modelmeta().custom_metadata_map.get("format", "")
    return text[1:-1] if len(text) < 100 and text.startswith('"') and text.endswith('"') else None


def validated_metadata(session: ort.InferenceSession, path: Path, kind: str = FORMAT,
                       outputs: tuple[str, ...] = (OUTPUT_NAME,), long_values: frozenset[str] = frozenset()) -> dict:
    """The metadata of `session`'s file, decoded and checked against the schema and the graph.
    `kind`: the format it must declare; `outputs`: the graph's outputs, the features last;
    `long_values`: keys whose values may be longer than MAX_METADATA_CHARS (up to MAX_LONG_CHARS)."""
    props = session.get_modelmeta().custom_metadata_map
    if file_format(session) != kind:
        raise DiffclassError(f"{path} is an ONNX file but not a {kind.replace('-', ' ')} (no '{kind}' metadata)")
    metadata = {}
    for key, text in props.items():
        limit = MAX_LONG_CHARS if key in long_values else MAX_METADATA_CHARS
        if len(text) > limit:
            raise DiffclassError(f"{path} has damaged metadata: {key} is longer than {limit} characters")
        try:
            metadata[key] = json.loads(text)
        except (json.JSONDecodeError, RecursionError):  # nested deeper than any metadata of ours
            raise DiffclassError(f"{path} has damaged metadata: {key} is not JSON of a diffclass extractor") from None
    for key, kind in SCHEMA.items():
        if key not in metadata:
            raise DiffclassError(f"{path} has damaged metadata: no {key}")
        if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
            raise DiffclassError(f"{path} has damaged metadata: {key} is not a{'n' if kind is int else ''} "
                                 f"{kind.__name__}")
    groups = metadata["feature_groups"]
    if not all(isinstance(g, dict) and isinstance(g.get("name"), str) and isinstance(g.get("start"), int)
               and isinstance(g.get("stop"), int) for g in groups):
        raise DiffclassError(f"{path} has damaged metadata: feature_groups are not named column ranges")
    if metadata["format_version"] > FORMAT_VERSION:
        raise DiffclassError(f"{path} was written by a newer diffclass ({metadata.get('diffclass_version', '?')})")
    _check_graph(session, metadata, path, outputs)
    return metadata


def _check_graph(session: ort.InferenceSession, metadata: dict, path: Path, names: tuple[str, ...]) -> None:
    """The graph's input and outputs must be what the metadata promises."""
    size, channels, dim = metadata["image_size"], metadata["channels"], metadata["feature_dim"]
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or tuple(o.name for o in outputs) != names:
        raise DiffclassError(f"{path} does not map '{INPUT_NAME}' to {', '.join(repr(n) for n in names)}")
    for name, promised, shape in (("input", [channels, size, size], inputs[0].shape[1:]),
                                  ("output", [dim], outputs[-1].shape[1:])):
        if len(shape) != len(promised) or any(isinstance(s, int) and s != p for s, p in zip(shape, promised)):
            raise DiffclassError(f"{path}: the graph's {name} is {['N', *shape]} but its metadata says "
                                 f"{['N', *promised]}")
    if channels not in (1, 3) or not 1 <= size <= MAX_IMAGE_SIZE or not 1 <= dim <= MAX_FEATURES:
        raise DiffclassError(f"{path} has damaged metadata: {channels} channels, {size}x{size} images, "
                             f"{dim} features")


def check_output(features, metadata: dict, path: Path) -> None:
    """What the graph computed must have the promised width (it may be symbolic in the graph)."""
    if features.ndim != 2 or features.shape[1] != metadata["feature_dim"]:
        raise DiffclassError(f"{path} computed features of shape {list(features.shape)}, not "
                             f"[N, {metadata['feature_dim']}] as its metadata says")

"""The classifier file: an extractor and a head fitted on its features in one ONNX graph,
`images [N, C, S, S] -> probabilities [N, K], features [N, D]`, written by `export-classifier`
(heads/to_onnx.py).

Its metadata is the extractor's (format `diffclass-classifier`) plus the head's: the class names
in the order of the probability columns, the head's kind and how it was fitted, the extractor's
sha256, and the head alone as an ONNX model (`features -> probabilities`, base64), so that
feature files made by the same extractor are classified without running it again. Reading it
needs onnxruntime only: no scikit-learn, skops or torch.
"""

import base64
from pathlib import Path

import numpy as np
import onnxruntime as ort

from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import OUTPUT_NAME, light_session, metadata_props, validated_metadata
from diffclass_cli.features.runtime import ExtractorSession

FORMAT = "diffclass-classifier"
FORMAT_VERSION = 1
PROBABILITIES = "probabilities"
HEAD_MODEL = "head_model"
MAX_CLASSES = 100_000
# key -> the JSON type its value must have, beyond the extractor's keys
SCHEMA = {"classifier_format_version": int, "class_names": list, "head": str, "head_info": dict,
          "extractor_sha256": str, "extractor_name": str, HEAD_MODEL: str}


def classifier_props(extractor_metadata: dict, head: dict, head_model: bytes) -> dict[str, str]:
    """The metadata_props of a classifier: the extractor's metadata with the head's keys
    (`head`: the SCHEMA keys but the head model) and the head model itself."""
    metadata = {**extractor_metadata, **head, "format": FORMAT, "classifier_format_version": FORMAT_VERSION,
                HEAD_MODEL: base64.b64encode(head_model).decode("ascii")}
    return metadata_props(metadata)


def validated_classifier(session: ort.InferenceSession, path: Path) -> dict:
    """The metadata of a classifier file, decoded and checked against the schema and the graph."""
    metadata = validated_metadata(session, path, FORMAT, (PROBABILITIES, OUTPUT_NAME), frozenset({HEAD_MODEL}))
    for key, kind in SCHEMA.items():
        if not isinstance(metadata.get(key), kind) or isinstance(metadata[key], bool):
            raise DiffclassError(f"{path} has damaged metadata: no {key} of type {kind.__name__}")
    if metadata["classifier_format_version"] > FORMAT_VERSION:
        raise DiffclassError(f"{path} was written by a newer diffclass ({metadata.get('diffclass_version', '?')})")
    names = metadata["class_names"]
    if not (2 <= len(names) <= MAX_CLASSES and all(isinstance(n, str) for n in names)):
        raise DiffclassError(f"{path} has damaged metadata: class_names is not a list of 2 or more names")
    columns = session.get_outputs()[0].shape[1:]
    if len(columns) != 1 or (isinstance(columns[0], int) and columns[0] != len(names)):
        raise DiffclassError(f"{path}: the graph's probabilities are {['N', *columns]} for {len(names)} classes")
    return metadata


def read_classifier_metadata(path: Path) -> dict:
    """The validated metadata of a classifier file."""
    return validated_classifier(light_session(path), path)


class OnnxClassifier:
    """A classifier file, loaded: `predict_proba` of features (by the head alone), and
    `extractor_session` to featurize images with the whole graph. `info` holds what a skops
    head's info holds that predict and evaluate read."""

    def __init__(self, path: Path):
        self.path = path
        self.metadata = read_classifier_metadata(path)
        self.class_names: list[str] = self.metadata["class_names"]
        self.info = {**self.metadata["head_info"], "head": self.metadata["head"], "class_names": self.class_names,
                     "feature_dim": self.metadata["feature_dim"], "extractor_sha256": self.metadata["extractor_sha256"],
                     "extractor_name": self.metadata["extractor_name"]}
        self._head = self._head_session()

    def _head_session(self) -> ort.InferenceSession:
        try:
            model = base64.b64decode(self.metadata[HEAD_MODEL], validate=True)
            session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as err:  # bad base64 (ValueError) or onnxruntime's own types for bad bytes
            raise DiffclassError(f"{self.path} has a damaged head model ({str(err)[:200]})") from err
        if [i.name for i in session.get_inputs()] != [OUTPUT_NAME] or \
                [o.name for o in session.get_outputs()] != [PROBABILITIES]:
            raise DiffclassError(f"{self.path} has a damaged head model (not features -> probabilities)")
        return session

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """float `[N, D]` -> float64 `[N, K]`, columns in `class_names` order."""
        if features.ndim != 2 or features.shape[1] != self.metadata["feature_dim"]:
            raise DiffclassError(f"{self.path} classifies rows of {self.metadata['feature_dim']} features, "
                                 f"not {list(features.shape)}")
        proba = self._head.run([PROBABILITIES], {OUTPUT_NAME: features.astype(np.float32, copy=False)})[0]
        if proba.shape != (len(features), len(self.class_names)):
            raise DiffclassError(f"{self.path} computed probabilities of shape {list(proba.shape)}, not "
                                 f"[{len(features)}, {len(self.class_names)}]")
        return proba.astype(np.float64)

    def extractor_session(self, model: Path | None = None, device: Device = Device.auto,
                          threads: int | None = None) -> ExtractorSession:
        """The whole graph as an extractor: images -> features (the probabilities come from
        predict_proba, the same head)."""
        if model is not None:
            raise DiffclassError(f"{self.path} holds its extractor; --model is for skops heads")
        return ExtractorSession(self.path, device, threads, reads=validated_classifier)


def describe_classifier(path: Path) -> dict:
    """`info`'s view of a classifier: its metadata, the head model by its size."""
    metadata = read_classifier_metadata(path)
    head_model = metadata.pop(HEAD_MODEL)
    first = {key: metadata.pop(key) for key in ("class_names", "head", "head_info", "head_sha256", "extractor_name",
                                                "extractor_sha256") if key in metadata}
    return {**first, "head_model_bytes": len(head_model) * 3 // 4, **dict(sorted(metadata.items()))}


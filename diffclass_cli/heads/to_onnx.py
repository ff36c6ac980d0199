"""`export-classifier`: a fitted head and its extractor joined into one ONNX classifier
(classifier_format.py), so that images become class probabilities with onnxruntime alone.

Every head ends in a scaler and a logistic regression or an MLP (semi and auto fit a logistic
regression last), which skl2onnx converts; the head computes in float64 like scikit-learn, and
`onnx.compose` joins it to the extractor's graph at the features.
"""

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from diffclass_cli import __version__
from diffclass_cli.classifier_format import PROBABILITIES, classifier_props
from diffclass_cli.console import log
from diffclass_cli.extractor_format import OUTPUT_NAME, read_metadata
from diffclass_cli.files import atomic_output, refuse_overwrite, sha256_file
from diffclass_cli.heads.apply import head_extractor
from diffclass_cli.heads.models import AutoHead, SpectralPseudoLabels
from diffclass_cli.heads.store import load_head

ML_OPSET = 3  # ai.onnx.ml


def export_classifier(head_path: Path, out: Path, model: Path | None = None, overwrite: bool = False) -> dict:
    """Write the head at `head_path` and the extractor it was fitted on (`model`, or found as
    predict finds it) as one ONNX classifier at `out`; returns its metadata."""
    refuse_overwrite(out, overwrite, inputs=(head_path, *([model] if model else [])))
    head, info = load_head(head_path)
    extractor_path = head_extractor(info, head_path, model)
    extractor = onnx.load(str(extractor_path))
    opset = next(o.version for o in extractor.opset_import if o.domain in ("", "ai.onnx"))
    head_model = head_graph(head, info["feature_dim"], opset, extractor.ir_version)
    joined = joined_graph(extractor, head_model)
    names = [info["class_names"][c] for c in head.classes_]
    # head_extractor found the file by the head's extractor_sha256, so that is the file's
    described = {"class_names": names, "head": info["head"], "extractor_sha256": info["extractor_sha256"],
                 "extractor_name": info.get("extractor_name") or extractor_path.stem,
                 "head_sha256": sha256_file(head_path),
                 "head_info": {k: info[k] for k in ("params", "fitted_on", "created") if k in info},
                 "diffclass_version": __version__, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    del joined.metadata_props[:]
    onnx.helper.set_model_props(joined, classifier_props(read_metadata(extractor_path), described,
                                                         head_model.SerializeToString()))
    with atomic_output(out, overwrite) as tmp:
        onnx.save(joined, str(tmp))
    log.info(f"wrote {out}: {info['head']} head on {extractor_path.name}, {len(names)} classes "
             f"({out.stat().st_size / 1e6:.1f} MB)")
    return described


def joined_graph(extractor: onnx.ModelProto, head_model: onnx.ModelProto) -> onnx.ModelProto:
    """images -> (probabilities, features): the head's graph fed by the extractor's features,
    its names prefixed so that none meets one of the extractor's."""
    head_part = onnx.compose.add_prefix(head_model, "head/")
    _rename(head_part.graph, f"head/{PROBABILITIES}", PROBABILITIES)
    joined = onnx.compose.merge_models(extractor, head_part, io_map=[(OUTPUT_NAME, f"head/{OUTPUT_NAME}")],
                                       outputs=[PROBABILITIES, OUTPUT_NAME], producer_name="diffclass",
                                       producer_version=__version__)
    outputs = sorted(joined.graph.output, key=lambda o: o.name != PROBABILITIES)  # probabilities first
    del joined.graph.output[:]
    joined.graph.output.extend(outputs)
    return joined


def head_graph(head: Pipeline, feature_dim: int, opset: int, ir_version: int) -> onnx.ModelProto:
    """The head as ONNX: float32 features `[N, D]` -> float32 probabilities `[N, K]`, columns in
    `head.classes_` order, computed in float64 in between."""
    plain, columns = plain_pipeline(head)
    converted = convert_sklearn(plain, initial_types=[("scaled_input", DoubleTensorType([None, feature_dim]))],
                                options={id(plain.steps[-1][1]): {"zipmap": False}},
                                target_opset={"": opset, "ai.onnx.ml": ML_OPSET})
    converted = onnx.utils.Extractor(converted).extract_model(["scaled_input"], [PROBABILITIES])
    graph = converted.graph
    del graph.value_info[:]  # inferred again below, after the renaming
    graph.input[0].CopyFrom(helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", feature_dim]))
    graph.node.insert(0, helper.make_node("Cast", [OUTPUT_NAME], ["scaled_input"], to=TensorProto.DOUBLE))
    last = "probabilities_f64"
    _rename(graph, PROBABILITIES, last)
    if columns is not None:  # a classifier that saw fewer classes: its columns placed among all classes
        graph.initializer.append(numpy_helper.from_array(columns, "head_columns"))
        graph.node.append(helper.make_node("MatMul", [last, "head_columns"], ["placed_f64"]))
        last = "placed_f64"
    graph.node.append(helper.make_node("Cast", [last], [PROBABILITIES], to=TensorProto.FLOAT))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["batch", len(head.classes_)]))
    converted = onnx.version_converter.convert_version(converted, opset)  # skl2onnx picks the lowest it needs
    converted.ir_version = ir_version
    onnx.checker.check_model(converted, full_check=True)
    return converted


def _rename(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Rename the value `old` where it is made (a node's output, a graph output); nothing reads it."""
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
    for output in graph.output:
        if output.name == old:
            output.name = new


def plain_pipeline(head: Pipeline) -> tuple[Pipeline, np.ndarray | None]:
    """The scaler and the classifier that compute the head's probabilities, as a Pipeline
    skl2onnx converts, and where the classifier's columns go among the head's classes (None:
    they are the head's classes)."""
    scaler, last = head.steps[0][1], head.steps[-1][1]
    if isinstance(last, AutoHead):
        last = last.model_
    if not isinstance(last, SpectralPseudoLabels):
        return Pipeline([("scale", scaler), ("classify", last)]), None
    classifier: LogisticRegression = last.classifier_
    columns = np.zeros((len(classifier.classes_), len(head.classes_)))
    columns[np.arange(len(classifier.classes_)), classifier.classes_] = 1.0
    whole = len(classifier.classes_) == len(head.classes_)
    return Pipeline([("scale", scaler), ("classify", classifier)]), None if whole else columns


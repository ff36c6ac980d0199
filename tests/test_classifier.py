"""export-classifier: the extractor and a fitted head in one ONNX file, which predict, evaluate and
info take in place of the head, and which runs on onnxruntime alone."""

import base64
import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from diffclass_cli.classifier_format import HEAD_MODEL, OnnxClassifier
from diffclass_cli.data.sources import open_source
from diffclass_cli.features.extract import featurize
from diffclass_cli.heads.apply import SkopsHead, predict
from diffclass_cli.heads.fit import fit_head
from diffclass_cli.heads.models import HeadKind, make_head
from diffclass_cli.heads.to_onnx import head_graph, plain_pipeline
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
HEADS = [HeadKind.auto, HeadKind.semi, HeadKind.logreg, HeadKind.mlp]


@pytest.fixture(scope="session")
def tiny_features(tiny_onnx, tmp_path_factory):
    """Features of the tiny extractor: digits:train / :test and the first 600 / next 400 of mnist-sample:test."""
    folder = tmp_path_factory.mktemp("tiny-features")
    mnist = open_source("mnist-sample:test")
    sources = {"digits": (open_source("digits:train"), open_source("digits:test")),
               "mnist": (mnist.subset(np.arange(600)), mnist.subset(np.arange(600, 1000)))}
    files = {}
    for name, (train, test) in sources.items():
        files[name] = []
        for split, source in (("train", train), ("test", test)):
            featurize(source, folder / f"{name}-{split}.h5", tiny_onnx, workers=0)
            files[name].append(folder / f"{name}-{split}.h5")
    return files


def _fit_and_export(cli, train: Path, kind: HeadKind, folder: Path, per_class: int = 5) -> tuple[Path, Path]:
    head, classifier = folder / f"{kind.value}.skops", folder / f"{kind.value}.onnx"
    fit_head(train, head, kind, per_class=per_class, seed=1)
    result = cli("export-classifier", head, "--out", classifier)
    assert result.exit_code == 0, result.output
    return head, classifier


def _all_predictions(features: Path, head: Path) -> tuple[list[str], np.ndarray, list[str]]:
    names, chunks = predict(features, head)
    chunks = list(chunks)
    return [label for c in chunks for label in c.labels], np.concatenate([c.proba for c in chunks]), names


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
@pytest.mark.parametrize("kind", HEADS)
def test_the_classifier_gives_the_heads_labels_and_probabilities(cli, tiny_features, tmp_path, dataset, kind):
    train, test = tiny_features[dataset]
    head, classifier = _fit_and_export(cli, train, kind, tmp_path)
    labels, proba, names = _all_predictions(test, head)
    onnx_labels, onnx_proba, onnx_names = _all_predictions(test, classifier)
    assert onnx_names == names
    assert onnx_labels == labels
    np.testing.assert_allclose(onnx_proba, proba, atol=1e-5, rtol=0)


def test_on_images_the_classifier_runs_its_own_extractor(cli, tiny_features, tmp_path):
    head, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.logreg, tmp_path)
    outputs = {}
    for name, path in (("skops", head), ("onnx", classifier)):
        result = cli("predict", "digits:test", "--head", path, "--proba")
        assert result.exit_code == 0, result.output
        outputs[name] = list(csv.reader(io.StringIO(result.stdout)))
    assert [r[:2] for r in outputs["onnx"]] == [r[:2] for r in outputs["skops"]]
    np.testing.assert_allclose(np.array([r[2:] for r in outputs["onnx"][1:]], float),
                               np.array([r[2:] for r in outputs["skops"][1:]], float), atol=2e-6)
    evaluated = [json.loads(cli("evaluate", "digits:test", "--head", p, "--json").stdout) for p in (head, classifier)]
    assert evaluated[0] == evaluated[1]


def test_a_classifier_that_saw_fewer_classes_places_its_columns(tiny_features):
    """The semi head's last classifier may have lost a class to the pseudo-labels: its columns
    go where that class's would be, and the lost class gets 0, as in scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    from diffclass_cli.features.h5 import read_features

    table = read_features(tiny_features["digits"][0])
    head = make_head(HeadKind.semi).fit(table.features, table.labels)
    semi = head.steps[-1][1]
    kept = semi.classifier_.classes_ != 3
    rows = np.isin(table.labels, semi.classes_[semi.classifier_.classes_[kept]])
    codes = np.searchsorted(semi.classes_, table.labels[rows])
    semi.classifier_ = LogisticRegression(max_iter=500).fit(head.steps[0][1].transform(table.features[rows]), codes)
    assert plain_pipeline(head)[1] is not None
    graph = head_graph(head, table.features.shape[1], 18, 10)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    proba = session.run(None, {"features": table.features[:50]})[0]
    np.testing.assert_allclose(proba, head.predict_proba(table.features[:50]), atol=1e-5)
    assert (proba[:, 3] == 0).all()


def test_the_classifier_says_what_it_is(cli, tiny_features, tmp_path, tiny_onnx):
    head, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.auto, tmp_path)
    described = json.loads(cli("info", classifier, "--json").stdout)
    assert described["kind"] == "classifier"
    assert described["class_names"] == SkopsHead(head).class_names
    assert described["head"] == "auto" and described["head_info"]["params"]["choice"] in ("semi", "logreg")
    assert described["extractor_name"] == tiny_onnx.stem and described["image_size"] == 28
    assert HEAD_MODEL not in described and described["head_model_bytes"] > 0
    model = onnx.load(str(classifier))
    assert [o.name for o in model.graph.output] == ["probabilities", "features"]


def test_mistakes_with_a_classifier_are_one_line(cli, tiny_features, tmp_path, tiny_onnx):
    head, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.logreg, tmp_path)
    assert_one_line_error(cli("predict", "digits:test", "--head", classifier, "--model", tiny_onnx),
                          "holds its extractor")
    assert_one_line_error(cli("predict", tiny_features["digits"][1], "--head", tiny_onnx),
                          "not a diffclass classifier")
    assert_one_line_error(cli("export-classifier", head, "--out", classifier), "exists")
    assert_one_line_error(cli("featurize", "digits:test", tmp_path / "x.h5", "--model", classifier),
                          "not a diffclass extractor")
    assert cli("predict", tiny_features["mnist"][1], "--head", classifier).exit_code == 0  # same extractor


def test_a_damaged_head_model_is_refused_in_one_line(cli, tiny_features, tmp_path):
    _, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.logreg, tmp_path)
    for damage in ("not base64!", base64.b64encode(b"\x08\x07 not onnx").decode()):
        model = onnx.load(str(classifier))
        next(p for p in model.metadata_props if p.key == HEAD_MODEL).value = json.dumps(damage)
        forged = tmp_path / "forged.onnx"
        onnx.save(model, str(forged))
        assert_one_line_error(cli("predict", tiny_features["digits"][1], "--head", forged), "damaged head model")
    with pytest.raises(Exception, match="damaged head model"):
        OnnxClassifier(forged)


def test_predict_and_evaluate_with_a_classifier_import_no_scikit_learn_skops_or_torch(cli, tiny_features, tmp_path):
    _, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.mlp, tmp_path)
    digits = open_source("digits:test")  # the built-in source needs scikit-learn's data: images on disk do not
    for i in range(4):
        Image.fromarray(np.asarray(digits.load(i))).save(tmp_path / f"{i}.png")
    for args in (["predict", tiny_features["digits"][1]], ["evaluate", tiny_features["digits"][1]],
                 ["predict", *sorted(tmp_path.glob("*.png"))]):
        code = ("import sys\nfrom diffclass_cli.cli import app\n"
                f"sys.argv = ['diffclass', *{[str(a) for a in args]!r}, '--head', {str(classifier)!r}]\n"
                "try:\n    app()\nexcept SystemExit as done:\n    assert not done.code, done.code\n"
                "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'skops', 'torch', 'scipy'}),"
                " file=sys.stderr)")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr.strip().splitlines()[-1] == "[]", (args, result.stderr)


def _plain_example() -> str:
    """The README's plain-onnxruntime example, as it is printed there."""
    readme = (REPO / "README.md").read_text()
    found = re.search(r"<!-- plain-onnxruntime -->\n```python\n(.*?)```", readme, re.S)
    assert found, "the README has no plain-onnxruntime example"
    return found.group(1)


def test_the_readmes_plain_onnxruntime_example_runs_and_agrees(cli, tiny_features, tmp_path):
    _, classifier = _fit_and_export(cli, tiny_features["digits"][0], HeadKind.logreg, tmp_path)
    image = tmp_path / "digit.png"
    Image.fromarray(np.asarray(open_source("digits:test").load(5))).save(image)
    (tmp_path / "classifier.onnx").write_bytes(classifier.read_bytes())
    script = tmp_path / "example.py"
    script.write_text(_plain_example())
    assert "diffclass" not in script.read_text()  # numpy, pillow and onnxruntime only
    result = subprocess.run([sys.executable, "-I", str(script), str(image)], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = list(csv.reader(io.StringIO(cli("predict", image, "--head", classifier).stdout)))[1]
    label, confidence = result.stdout.split()
    assert label == expected[1] and abs(float(confidence) - float(expected[2])) < 1e-5


@pytest.mark.parametrize("kind", HEADS)
def test_two_class_heads_convert_too(kind, tmp_path):
    """scikit-learn's binary logistic regression has one decision column; the graph gives two."""
    from tests.conftest import write_feature_file

    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (60, 20)), rng.normal(1.5, 1, (60, 20))]).astype(np.float32)
    labeled = write_feature_file(tmp_path / "two.h5", features, np.repeat([0, 1], 60),
                                 [f"{i}.png" for i in range(120)], ["a", "b"])
    fit_head(labeled, tmp_path / "h.skops", kind, per_class=5)
    head = SkopsHead(tmp_path / "h.skops")
    session = ort.InferenceSession(head_graph(head.pipeline, 20, 18, 10).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"features": features})[0], head.predict_proba(features), atol=1e-5)

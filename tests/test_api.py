"""The Python API (`from diffclass_cli import ...`): the README's example runs as written, and
the functions give what the commands give."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffclass_cli
from diffclass_cli import evaluate, export, featurize, fit, load_extractor, load_head, predict, train
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import read_features

ROOT = Path(__file__).resolve().parents[1]


def test_the_readmes_python_example_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text()
    after = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", after, flags=re.S).group(1)
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert float(lines[0]) > 0.5 and len(lines) == 5
    assert all(re.fullmatch(r"\d \d\.\d+", line) for line in lines[1:4]), lines
    assert re.fullmatch(r"digits:\d+ \d \d\.\d+", lines[4]), lines[4]


def test_the_api_is_listed_and_imported_lazily():
    assert sorted(diffclass_cli.__all__) == sorted(n for n in dir(diffclass_cli) if n in diffclass_cli.__all__)
    loaded = subprocess.run([sys.executable, "-c", "import sys, diffclass_cli; print(sorted({m.split('.')[0] for m "
                             "in sys.modules} & {'torch', 'sklearn', 'onnxruntime', 'h5py'}))"],
                            capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
    with pytest.raises(AttributeError):
        diffclass_cli.no_such_function  # noqa: B018


def test_features_in_memory_equal_the_feature_file(cli, tiny_onnx, tmp_path):
    in_memory = featurize("digits:test", model=tiny_onnx)
    written = featurize("digits:test", tmp_path / "d.h5", model=tiny_onnx)
    on_disk = read_features(written)
    np.testing.assert_array_equal(in_memory.features, on_disk.features)
    assert in_memory.paths == on_disk.paths and in_memory.class_names == on_disk.class_names
    np.testing.assert_array_equal(in_memory.labels, on_disk.labels)
    extractor = load_extractor(tiny_onnx)
    images = np.stack([np.asarray(open_source("digits:test").load(i).resize((28, 28), 2))[None]
                       for i in range(4)]).astype(np.float32) / 255
    assert extractor(images).shape == (4, extractor.metadata["feature_dim"])


def test_fit_predict_and_evaluate_agree_with_the_commands(cli, tiny_onnx, tmp_path):
    featurize("digits:train", tmp_path / "train.h5", model=tiny_onnx)
    info = fit(tmp_path / "train.h5", tmp_path / "head.skops", head="logreg", per_class=5)
    assert info["head"] == "logreg" and info["fitted_on"]["labeled_rows"] == 50
    report = evaluate("digits:test", head=tmp_path / "head.skops")
    command = cli("evaluate", "digits:test", "--head", tmp_path / "head.skops", "--json")
    assert abs(report["accuracy"] - float(re.search(r'"accuracy": ([0-9.]+)', command.stdout).group(1))) < 1e-12
    from_images = list(predict("digits:test", head=tmp_path / "head.skops"))
    test = featurize("digits:test", model=tiny_onnx)
    from_arrays = list(predict(test.features, head=tmp_path / "head.skops"))
    assert [p.label for p in from_images] == [p.label for p in from_arrays]
    assert load_head(tmp_path / "head.skops").class_names == list(from_images[0].proba)


def test_train_and_export_from_python(tmp_path, mnist_train_pixels):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(16):
        Image.fromarray(mnist_train_pixels[i, 0]).save(images / f"{i}.png")
    ckpt = train(images, tmp_path / "bb.ckpt", steps=2, batch_size=8, width=8, channel_mults=(1, 2))
    meta = export(ckpt, tmp_path / "bb.onnx", timestep=50, taps="mid", pool="global")
    assert meta["timesteps"] == [50] and meta["taps"] == ["mid"] and meta["image_size"] == 28
    with pytest.raises(DiffclassError, match="unknown training option.* stepz"):
        train(images, tmp_path / "typo.ckpt", stepz=2)
    with pytest.raises(DiffclassError, match="would lie in an input of this command"):
        train(images, images / "bb.ckpt", steps=2)

"""The inference half of diffclass without the training stack: no torch in featurize / fit /
predict / ..., a wheel that works outside the checkout, and `predict` straight from images."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from diffclass_cli.choices import HeadKind
from diffclass_cli.data.sources import open_source
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.heads import apply as heads
from tests.conftest import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
BLOCKER = 'raise ModuleNotFoundError("No module named {0!r} (blocked by the test)", name={0!r})\n'


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory):
    """Environment variables under which `import torch` (and the rest of the [train] extra) fails
    as if it were not installed."""
    blocked = tmp_path_factory.mktemp("blocked")
    for name in ("torch", "torchvision", "onnxscript", "safetensors"):
        (blocked / name).mkdir()
        (blocked / name / "__init__.py").write_text(BLOCKER.format(name))
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO)])}


def _run(env, cwd, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffclass_cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_inference_commands_run_without_torch(without_torch, tmp_path):
    steps = [
        ["--version"],
        ["info", DEFAULT_MODEL],
        ["-q", "featurize", "digits:test", "part0.h5", "--shard", "0/2"],
        ["-q", "featurize", "digits:test", "part1.h5", "--shard", "1/2"],
        ["-q", "merge", "test.h5", "part0.h5", "part1.h5"],
        ["-q", "fit", "test.h5", "--out", "head.skops", "--per-class", "5", "--head", "logreg"],
        ["predict", "test.h5", "--head", "head.skops", "--out", "p.csv"],
        ["-q", "predict", "digits:test", "--head", "head.skops", "--out", "p2.csv"],
        ["evaluate", "test.h5", "--head", "head.skops", "--json"],
        ["-q", "export-classifier", "head.skops", "--out", "classifier.onnx"],
        ["-q", "predict", "digits:test", "--head", "classifier.onnx", "--out", "p3.csv"],
        ["-q", "plot", "test.h5", "--out", "map.png", "--method", "pca"],
        ["-q", "show-predictions", "p.csv", "--source", "digits:test", "--out", "grid.png"],
    ]
    outputs = {}
    for args in steps:
        result = _run(without_torch, tmp_path, *args)
        assert result.returncode == 0, (args, result.stderr)
        outputs[args[0] if args[0] != "-q" else args[1]] = result.stdout
    assert outputs["--version"].startswith("diffclass ") and json.loads(outputs["evaluate"])["accuracy"] > 0.5
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "path,label,confidence"
    assert all((tmp_path / name).stat().st_size > 0 for name in ("p2.csv", "map.png", "grid.png"))
    skops_rows, onnx_rows = ([r.split(",") for r in (tmp_path / name).read_text().splitlines()[1:]]
                             for name in ("p2.csv", "p3.csv"))
    assert [r[:2] for r in onnx_rows] == [r[:2] for r in skops_rows]
    assert max(abs(float(a[2]) - float(b[2])) for a, b in zip(onnx_rows, skops_rows)) <= 2e-6
    result = _run(without_torch, tmp_path, "train-backbone", "digits", "--out", "x.ckpt")
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "diffclass: error: train-backbone needs torch, which the base install leaves out: "
        "pip install 'diffclass[train]'")


def test_the_inference_modules_leave_an_installed_torch_alone():
    """torch is installed here (the [train] extra): the inference wing must still not load it."""
    code = ("import sys\n"
            "import diffclass_cli.cli, diffclass_cli.features.extract, diffclass_cli.features.merge\n"
            "import diffclass_cli.heads.apply, diffclass_cli.plot\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'torchvision', 'onnx', 'safetensors'}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"


def test_the_wheel_works_outside_the_checkout(without_torch, tmp_path):
    """Built and installed into a fresh folder, run from elsewhere: the default extractor is there."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md", "exports"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tree / name)
    shutil.copytree(REPO / "diffclass_cli", tree / "diffclass_cli", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                    "-w", tmp_path / "wheel"], cwd=tree, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("diffclass-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp_path / "site", wheel],
                   check=True, capture_output=True, timeout=300)
    env = {**without_torch, "PYTHONPATH": os.pathsep.join([without_torch["PYTHONPATH"].split(os.pathsep)[0],
                                                           str(tmp_path / "site")])}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = _run(env, elsewhere, "featurize", "digits:test", "o.h5")
    assert result.returncode == 0, result.stderr
    assert f"with {DEFAULT_MODEL.name}" in result.stderr and (elsewhere / "o.h5").exists()
    located = subprocess.run([sys.executable, "-c", "import diffclass_cli; print(diffclass_cli.__file__)"],
                             env=env, cwd=elsewhere, capture_output=True, text=True, check=True)
    assert located.stdout.startswith(str(tmp_path / "site"))


@pytest.fixture(scope="module")
def digits_head(tmp_path_factory, tiny_onnx):
    """Features of digits:train and :test by the tiny extractor, and a logreg head on the first."""
    from diffclass_cli.features.extract import featurize
    from diffclass_cli.heads.fit import fit_head

    folder = tmp_path_factory.mktemp("digits-head")
    for split in ("train", "test"):
        featurize(open_source(f"digits:{split}"), folder / f"{split}.h5", tiny_onnx, batch_size=64)
    fit_head(folder / "train.h5", folder / "head.skops", HeadKind.logreg, per_class=5)
    return folder


def test_predict_from_images_equals_featurize_then_predict(cli, digits_head, tmp_path):
    from_file = cli("predict", digits_head / "test.h5", "--head", digits_head / "head.skops", "--proba")
    from_images = cli("predict", "digits:test", "--head", digits_head / "head.skops", "--proba", "--batch-size", 64)
    assert from_file.exit_code == 0 and from_images.exit_code == 0, from_images.output
    a, b = (np.array([line.split(",") for line in r.stdout.splitlines()]) for r in (from_file, from_images))
    assert a.shape == b.shape == (len(open_source("digits:test")) + 1, 3 + 10)
    np.testing.assert_array_equal(a[:, :2], b[:, :2])  # header, paths and labels
    np.testing.assert_allclose(a[1:, 2:].astype(float), b[1:, 2:].astype(float), atol=1e-5)  # BLAS batch shapes


def test_predict_from_images_streams_and_checks_the_extractor(cli, digits_head, tmp_path, tiny_onnx):
    source = open_source("digits:test")
    loads = []
    real_load = source.load
    source.load = lambda i: loads.append(i) or real_load(i)
    names, chunks = heads.predict_images(source, digits_head / "head.skops", model=tiny_onnx, batch_size=32,
                                         workers=0)
    assert names == [str(d) for d in range(10)]
    first = next(chunks)
    assert len(first.paths) == 32 and len(loads) == 32 < len(source)  # rows out before the rest is read
    assert sum(len(c.paths) for c in chunks) + 32 == len(source)

    other = tmp_path / "other.onnx"
    other.write_bytes(tiny_onnx.read_bytes() + b"\0")
    assert_one_line_error(cli("predict", "digits:test", "--head", digits_head / "head.skops", "--model", other),
                          "pass that extractor as --model")
    assert_one_line_error(cli("predict", digits_head / "test.h5", "--head", digits_head / "head.skops",
                              "--model", tiny_onnx), "--model is for images")

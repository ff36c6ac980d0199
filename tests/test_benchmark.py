import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffclass_cli.benchmark.features import FeatureSet
from diffclass_cli.benchmark.protocol import Protocol, Split, run_protocol
from diffclass_cli.benchmark.report import COLUMNS
from diffclass_cli.benchmark.suite import _describe, refuse_shared_images
from diffclass_cli.data.sources import open_source
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.spec import DEFAULT_TIMESTEPS, ExtractorSpec
from diffclass_cli.heads.models import HeadKind
from tests.conftest import write_image


def test_quick_benchmark_end_to_end(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "bench"
    result = cli("benchmark", tiny_checkpoint, "--out", out, "--quick", "--baselines", "pixels,cnn",
                 "--cnn-steps", 5, "--sweep-timestep", "10,100,10+100")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0]) == COLUMNS
    main = [r for r in rows if r["sweep"] == "main"]
    assert {(r["feature_set"], r["head"]) for r in main} == {
        ("diffusion:tiny", "auto"), ("diffusion:tiny", "logreg"), ("pixels", "auto"), ("pixels", "logreg"),
        ("cnn", "supervised")}
    assert {r["per_class"] for r in main} == {"1", "10"} and {r["draw"] for r in main} == {"0", "1"}
    pixels_at_10 = [float(r["accuracy"]) for r in main if r["feature_set"] == "pixels" and r["head"] == "logreg"
                    and r["per_class"] == "10"]
    assert len(pixels_at_10) == 2 and min(pixels_at_10) > 0.5  # real digits, really scored: far above chance
    assert {r["feature_set"] for r in rows if r["sweep"] == "timestep"} == {"t10", "t100", "t10+100"}
    summary = (out / "summary.md").read_text()
    assert "| diffusion:tiny | logreg |" in summary and "±" in summary and summary in result.stdout
    assert (f"extractor options for checkpoints: timesteps {DEFAULT_TIMESTEPS[0]} (diffusion), taps default, pool 3x3"
            in summary)

    draws = json.loads((out / "labeled_draws.json").read_text())
    train_ids = set(open_source("mnist-sample:train").ids)
    test_ids = set(open_source("mnist-sample:test").ids)
    labeled = {i for ids in draws.values() for i in ids}
    assert labeled <= train_ids and not labeled & test_ids  # no test row is ever labeled
    assert len(draws["1/0"]) == 10 and draws["1/0"] != draws["1/1"]

    for name in ("accuracy_vs_labels.png", "accuracy_vs_timestep.png"):
        with Image.open(out / name) as image:
            image.verify()
            assert image.format == "PNG"


def test_draws_repeat_for_a_seed_and_differ_between_seeds():
    rng = np.random.default_rng(0)
    labels = np.tile(np.arange(3), 40)
    features = np.eye(3)[labels] * 3 + rng.normal(size=(120, 3))
    pool = Split(np.zeros((80, 1, 8, 8), np.uint8), labels[:80], [f"p{i}" for i in range(80)])
    test = Split(np.zeros((40, 1, 8, 8), np.uint8), labels[80:], [f"t{i}" for i in range(40)])
    sets = [FeatureSet("toy", features[:80], features[80:])]
    protocol = Protocol(per_class=(2,), draws=3, draws_few_labels=3, heads=(HeadKind.logreg,), seed=0, cnn_steps=0)
    rows_a, draws_a = run_protocol(sets, pool, test, protocol=protocol)
    rows_b, draws_b = run_protocol(sets, pool, test, protocol=protocol)
    rows_c, draws_c = run_protocol(sets, pool, test, protocol=Protocol(**{**protocol.__dict__, "seed": 1}))
    assert draws_a == draws_b and rows_a == rows_b
    assert draws_a != draws_c
    assert len({tuple(v) for v in draws_a.values()}) == 3  # the draws of one K differ


def test_on_validation_never_touches_the_test_split(cli, tiny_checkpoint, tmp_path, monkeypatch):
    import diffclass_cli.benchmark.suite as run

    loaded = []
    real = run.load_split
    monkeypatch.setattr(run, "load_split", lambda spec, *a: loaded.append(spec) or real(spec, *a))
    result = cli("benchmark", tiny_checkpoint, "--out", tmp_path / "v", "--quick", "--baselines", "pixels",
                 "--on-validation", "--heads", "logreg")  # the splits are the point, not the heads
    assert result.exit_code == 0, result.output
    assert loaded == ["mnist-sample:train"]
    draws = json.loads((tmp_path / "v" / "labeled_draws.json").read_text())
    assert "validation part of mnist-sample:train" in (tmp_path / "v" / "summary.md").read_text()
    assert all(i.startswith("mnist-sample:") for ids in draws.values() for i in ids)


def test_draws_at_few_labels_per_class_are_more():
    labels = np.repeat(np.arange(3), 30)
    split = Split(np.zeros((90, 1, 8, 8), np.uint8), labels)
    sets = [FeatureSet("toy", np.eye(3)[labels], np.eye(3)[labels])]
    protocol = Protocol(per_class=(1, 2, 5), draws=2, draws_few_labels=7, heads=(HeadKind.logreg,), cnn_steps=0)
    rows, _ = run_protocol(sets, split, split, protocol=protocol)
    assert [sum(r["per_class"] == k for r in rows) for k in (1, 2, 5)] == [7, 7, 2]


def test_train_and_test_compared_by_content_not_by_name():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 1, 8, 8), dtype=np.uint8)
    pool = Split(images[:2], np.array([0, 1]), ["cat/001.png", "dog/001.png"])
    same_names = Split(images[2:], np.array([0, 1]), ["cat/001.png", "dog/001.png"])
    refuse_shared_images(pool, same_names, "A", "B")  # other images under the same names: fine
    renamed = Split(images[[3, 1]], np.array([0, 1]), ["cat/002.png", "dog/copy.png"])
    with pytest.raises(DiffclassError, match="share 1 image.*dog/001.png = dog/copy.png"):
        refuse_shared_images(pool, renamed, "A", "B")


def test_benchmark_refuses_a_test_folder_that_repeats_a_train_image(cli, tiny_checkpoint, tmp_path):
    seeds = {("train", "a"): 1, ("train", "b"): 2, ("test", "a"): 3, ("test", "b"): 4}
    for (split, label), seed in seeds.items():  # the same names in both, other images
        write_image(tmp_path / split / label / "001.png", (28, 28), "L", seed)
    write_image(tmp_path / "test" / "b" / "002.png", (28, 28), "L", seed=2)  # train's b/001.png again
    result = cli("benchmark", tiny_checkpoint, "--out", tmp_path / "bench", "--train", tmp_path / "train",
                 "--test", tmp_path / "test", "--baselines", "pixels")
    assert result.exit_code == 1 and "share 1 image(s) (b/001.png = b/002.png)" in result.stderr, result.output


def test_the_summary_does_not_credit_an_onnx_model_with_the_checkpoint_options():
    spec = ExtractorSpec(shifts=1)
    assert "shifts 1" in _describe(spec, [Path("runs/bb.ckpt"), Path("x.onnx")])
    assert "shifts" not in _describe(spec, [Path("x.onnx")]) and "diffclass info" in _describe(spec, [Path("x.onnx")])

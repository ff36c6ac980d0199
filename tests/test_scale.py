"""Feature files past memory: readers that go a chunk at a time, fit that reads only its rows,
a bounded unlabeled sample for the semi head, and float16 storage."""

import csv
import io
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from benchmarks.scale import PEAK_RSS
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features import h5
from diffclass_cli.features.h5 import FeatureWriter, open_feature_file, read_features
from diffclass_cli.heads.fit import fit_head
from diffclass_cli.heads.models import HeadKind, fit_rows, spread_sample
from diffclass_cli.heads.store import load_head
from tests.conftest import assert_one_line_error, write_feature_file


@pytest.fixture
def small_chunks(monkeypatch):
    """Files written in this test hold 7 rows per chunk, so every reader crosses many chunks."""
    monkeypatch.setattr(h5, "CHUNK_ROWS", 7)


@pytest.fixture
def chunked_digits(digit_files, small_chunks, tmp_path):
    """digits:train and digits:test raw pixels rewritten with 7-row chunks."""
    out = {}
    for split, path in digit_files.items():
        ff = read_features(path)
        out[split] = write_feature_file(tmp_path / f"{split}.h5", ff.features, ff.labels, ff.paths, ff.class_names)
    assert h5py.File(out["test"])["features"].chunks[0] == 7
    return out


def test_reader_goes_chunk_by_chunk_and_takes_only_asked_rows(chunked_digits):
    whole = read_features(chunked_digits["test"])
    with open_feature_file(chunked_digits["test"]) as reader:
        chunks = list(reader.chunks())
        assert max(len(c.paths) for c in chunks) == 7 and len(chunks) == -(-reader.rows // 7)
        np.testing.assert_array_equal(np.concatenate([c.features for c in chunks]), whole.features)
        assert [p for c in chunks for p in c.paths] == whole.paths
        index = np.sort(np.random.default_rng(0).choice(reader.rows, 50, replace=False))
        taken = reader.take(index)
        np.testing.assert_array_equal(taken.features, whole.features[index])
        np.testing.assert_array_equal(taken.labels, whole.labels[index])
        assert taken.paths == [whole.paths[i] for i in index]
        assert reader.take(np.array([], dtype=int)).features.shape == (0, 64)
        with pytest.raises(ValueError, match="sorted"):
            reader.take(np.array([5, 3]))


def test_predict_and_evaluate_stream_across_chunks(cli, chunked_digits, tmp_path):
    assert cli("fit", chunked_digits["train"], "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    head, info = load_head(tmp_path / "h.skops")
    test = read_features(chunked_digits["test"])
    expected = [info["class_names"][c] for c in head.predict(test.features)]

    result = cli("predict", chunked_digits["test"], "--head", tmp_path / "h.skops")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["path"] for r in rows] == test.paths and [r["label"] for r in rows] == expected

    report = json.loads(cli("evaluate", chunked_digits["test"], "--head", tmp_path / "h.skops", "--json").stdout)
    truth = [test.class_names[label] for label in test.labels]
    assert report["rows"] == len(truth)
    assert report["accuracy"] == pytest.approx(np.mean([t == g for t, g in zip(truth, expected)]))


def test_a_non_finite_row_in_a_later_chunk_is_named(cli, chunked_digits, tmp_path):
    assert cli("fit", chunked_digits["train"], "--out", tmp_path / "h.skops").exit_code == 0
    with h5py.File(chunked_digits["test"], "a") as f:
        f["features"][100, 3] = np.nan
        bad = f["paths"][100].decode()
    result = cli("predict", chunked_digits["test"], "--head", tmp_path / "h.skops", "--out", tmp_path / "p.csv")
    assert_one_line_error(result, bad)
    assert not (tmp_path / "p.csv").exists()


def test_spread_sample_is_one_row_per_run_reproducible_and_label_blind():
    rows = np.arange(3, 1003)
    sample = spread_sample(rows, 100, seed=1)
    assert len(sample) == 100 and np.all(np.diff(sample) > 0)
    assert np.array_equal(np.bincount((sample - 3) // 10, minlength=100), np.ones(100))  # one per run of 10
    assert np.array_equal(sample, spread_sample(rows, 100, seed=1))
    assert not np.array_equal(sample, spread_sample(rows, 100, seed=2))
    assert np.array_equal(spread_sample(rows, 5000, seed=1), rows)


def test_fit_rows_keeps_every_labeled_row_and_caps_the_unlabeled_ones():
    labels = np.repeat(np.arange(4), 250)
    labeled = np.array([0, 300, 600, 999])
    rows, targets = fit_rows(labels, labeled, HeadKind.semi, max_unlabeled=50, seed=0)
    assert len(rows) == 54 and np.all(np.diff(rows) > 0) and set(labeled) <= set(rows)
    assert np.array_equal(targets[np.isin(rows, labeled)], labels[labeled])
    assert (targets == -1).sum() == 50
    # With room for the whole pool, nothing changes: every row, labeled ones with their labels.
    rows, targets = fit_rows(labels, labeled, HeadKind.semi, max_unlabeled=10_000)
    assert np.array_equal(rows, np.arange(1000)) and (targets != -1).sum() == 4
    assert np.array_equal(fit_rows(labels, labeled, HeadKind.logreg, max_unlabeled=1)[0], labeled)


def test_semi_fit_on_a_capped_sample(cli, chunked_digits, tmp_path):
    capped = cli("fit", chunked_digits["train"], "--out", tmp_path / "c.skops", "--head", "semi", "--per-class", "3",
                 "--max-unlabeled", "400")
    assert capped.exit_code == 0, capped.output
    info = load_head(tmp_path / "c.skops")[1]["fitted_on"]
    assert info["unlabeled_rows"] == 400 and info["labeled_rows"] == 30 and info["max_unlabeled"] == 400
    report = json.loads(cli("evaluate", chunked_digits["test"], "--head", tmp_path / "c.skops", "--json").stdout)
    assert report["accuracy"] > 0.8  # digits pixels with 3 labels per class: about 0.9
    # A cap above the pool is the whole pool.
    for name, cap in (("a.skops", "100000"), ("b.skops", "20000")):
        assert cli("fit", chunked_digits["train"], "--out", tmp_path / name, "--head", "semi", "--per-class", "3",
                   "--max-unlabeled", cap).exit_code == 0
    test = read_features(chunked_digits["test"]).features
    np.testing.assert_array_equal(load_head(tmp_path / "a.skops")[0].predict_proba(test),
                                  load_head(tmp_path / "b.skops")[0].predict_proba(test))


def _peak_rss_mb(tmp_path, *args: str) -> float:
    """Peak resident memory of `diffclass ARGS` in a fresh process, measured as the scale benchmark does."""
    subprocess.run([sys.executable, "-c", PEAK_RSS, tmp_path / "rss", sys.executable, "-m", "diffclass_cli", *args],
                   check=True, stdout=subprocess.DEVNULL)
    return int((tmp_path / "rss").read_text()) / 1024


def test_memory_stays_flat_as_the_file_grows(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 1024)).astype(np.float32)

    def feature_file(name: str, rows: int):
        labels = np.arange(rows) % 4
        writer = FeatureWriter(tmp_path / name, 1024, {"extractor_sha256": "x", "source": "test"}, list("abcd"))
        for start in range(0, rows, 4096):
            part = labels[start:start + 4096]
            writer.append(centres[part] + rng.normal(size=(len(part), 1024)).astype(np.float32), part,
                          [f"r{i}" for i in range(start, start + len(part))], [], len(part))
        writer.close()
        return tmp_path / name

    small, big = feature_file("small.h5", 2_000), feature_file("big.h5", 60_000)  # 8 MB and 246 MB of features
    fit_head(small, tmp_path / "h.skops", HeadKind.logreg, per_class=5)
    # evaluate reads the file as predict does
    for command in (["predict", "{file}", "--head", str(tmp_path / "h.skops"), "--out", "{file}.csv"],
                    ["fit", "{file}", "--out", "{file}.skops", "--head", "logreg", "--per-class", "5"]):
        peak = {path.name: _peak_rss_mb(tmp_path, *[arg.format(file=path) for arg in command])
                for path in (small, big)}
        # Reading the whole file would add 238 MB at least; a chunk is 4 MB.
        assert peak["big.h5"] - peak["small.h5"] < 60, (command[0], peak)


def test_float16_features_are_half_the_size_and_read_back_as_float32(cli, tiny_onnx, tmp_path):
    common = ("digits:test", "--model", tiny_onnx, "--batch-size", 128)
    assert cli("featurize", common[0], tmp_path / "f32.h5", *common[1:]).exit_code == 0
    result = cli("featurize", common[0], tmp_path / "f16.h5", *common[1:], "--dtype", "float16")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "f16.h5") as f:
        assert f["features"].dtype == np.float16 and f.attrs["dtype"] == "float16"
    full, half = read_features(tmp_path / "f32.h5"), read_features(tmp_path / "f16.h5")
    assert half.features.dtype == np.float32
    np.testing.assert_allclose(half.features, full.features, rtol=1e-3, atol=1e-4)
    assert (tmp_path / "f16.h5").stat().st_size < 0.6 * (tmp_path / "f32.h5").stat().st_size
    # Every reader: fit, predict, evaluate, plot.
    assert cli("fit", tmp_path / "f16.h5", "--out", tmp_path / "h.skops", "--per-class", "5",
               "--head", "semi").exit_code == 0
    assert cli("predict", tmp_path / "f16.h5", "--head", tmp_path / "h.skops").exit_code == 0
    assert cli("evaluate", tmp_path / "f16.h5", "--head", tmp_path / "h.skops").exit_code == 0
    assert cli("plot", tmp_path / "f16.h5", "--out", tmp_path / "m.png", "--method", "pca").exit_code == 0


def test_float16_shards_merge_and_mixed_dtypes_are_refused(cli, tiny_onnx, tmp_path):
    parts = []
    for i, dtype in ((0, "float16"), (1, "float16"), (1, "float32")):
        parts.append(tmp_path / f"p{i}-{dtype}.h5")
        assert cli("featurize", "digits:test", parts[-1], "--model", tiny_onnx, "--shard", f"{i}/2",
                   "--dtype", dtype).exit_code == 0
    assert cli("merge", tmp_path / "m.h5", *parts[:2]).exit_code == 0
    with h5py.File(tmp_path / "m.h5") as f:
        assert f["features"].dtype == np.float16
    np.testing.assert_array_equal(read_features(tmp_path / "m.h5").features,
                                  np.concatenate([read_features(p).features for p in parts[:2]]))
    assert_one_line_error(cli("merge", tmp_path / "x.h5", parts[0], parts[2]), "differ in dtype")


def test_resume_refuses_another_dtype_and_float16_refuses_overflow(tmp_path):
    attrs = {"extractor_sha256": "x", "source": "s", "source_fingerprint": "f", "shard": "0/1"}
    writer = FeatureWriter(tmp_path / "p.h5", 2, attrs, ["a"], dtype="float16")
    with pytest.raises(DiffclassError, match="--dtype float32"):
        writer.append(np.array([[1.0, 1e6]], np.float32), np.zeros(1, np.int64), ["a.png"], [], 1)
    writer.close()
    with pytest.raises(DiffclassError, match="different dtype"):
        FeatureWriter(tmp_path / "p.h5", 2, attrs, ["a"], resume=True, dtype="float32")

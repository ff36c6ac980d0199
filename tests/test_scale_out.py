"""Featurizing in parts (--shard I/N + merge) and on Ray: the result is the single-process file."""

import numpy as np
import pytest

from diffclass_cli.data.sources import open_source
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.extract import Shard, featurize
from diffclass_cli.features.h5 import read_features
from tests.conftest import assert_same_feature_file, write_image


@pytest.fixture
def big_tree(class_tree):
    """The class tree (with its corrupt and non-image files) plus enough images for several batches."""
    for i in range(17):
        write_image(class_tree / ("cats" if i % 2 else "dogs") / f"x{i:02d}.png", seed=100 + i)
    (class_tree / "dogs" / "broken2.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return class_tree


def test_shard_blocks_cover_the_source_once():
    for n, count in ((10, 3), (7, 7), (5, 8)):
        blocks = [Shard(i, count).rows(n).tolist() for i in range(count)]
        assert sum(blocks, []) == list(range(n))
    assert Shard.parse("2/5") == Shard(2, 5) and str(Shard(2, 5)) == "2/5"
    for bad in ("5/5", "-1/2", "1", "a/b"):
        with pytest.raises(DiffclassError, match="--shard"):
            Shard.parse(bad)


def test_shards_merged_equal_one_run(cli, big_tree, tiny_onnx, tmp_path):
    whole = tmp_path / "whole.h5"
    assert cli("featurize", big_tree, whole, "--model", tiny_onnx, "--batch-size", 4).exit_code == 0
    parts = []
    for i in (2, 0, 1):  # any order, as a job array finishes
        part = tmp_path / f"part{i}.h5"
        result = cli("featurize", big_tree, part, "--model", tiny_onnx, "--batch-size", 3, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        parts.append(part)
    sizes = [len(read_features(p).paths) for p in sorted(parts)]
    assert 0 < min(sizes) and sum(sizes) == len(read_features(whole).paths)

    merged = tmp_path / "merged.h5"
    result = cli("merge", merged, *parts)
    assert result.exit_code == 0, result.output
    assert_same_feature_file(merged, whole)
    assert cli("merge", merged, *parts).exit_code == 1  # no silent overwrite
    assert not (tmp_path / "merged.h5.partial").exists()


def test_shards_without_readable_images_still_merge(cli, tiny_onnx, tmp_path):
    # Two good images and one corrupt one; 3 shards put the corrupt file alone, 4 leave one shard empty.
    folder = tmp_path / "few"
    for name in ("a.png", "b.png"):
        write_image(folder / name, (28, 28), "L", seed=len(name))
    (folder / "c.png").write_bytes(b"not a png")
    whole = tmp_path / "whole.h5"
    assert cli("featurize", folder, whole, "--model", tiny_onnx).exit_code == 0
    for count in (3, 4):
        parts = [tmp_path / f"{count}-{i}.h5" for i in range(count)]
        for i, part in enumerate(parts):
            result = cli("featurize", folder, part, "--model", tiny_onnx, "--shard", f"{i}/{count}")
            assert result.exit_code == 0, result.output
        assert min(len(read_features(p).paths) for p in parts) == 0
        merged = tmp_path / f"merged{count}.h5"
        result = cli("merge", merged, *parts)
        assert result.exit_code == 0, result.output
        np.testing.assert_array_equal(read_features(merged).features, read_features(whole).features)
        assert read_features(merged).paths == ["a.png", "b.png"]


def test_merge_refuses_missing_duplicate_and_foreign_parts(cli, big_tree, tiny_onnx, rgb_onnx, class_tree,
                                                          tmp_path):
    def part(name, shard, model=tiny_onnx, source=big_tree):
        assert cli("-q", "featurize", source, tmp_path / name, "--model", model, "--shard", shard).exit_code == 0
        return tmp_path / name

    a, b = part("a.h5", "0/2"), part("b.h5", "1/2")
    cases = [
        ([a], "shard(s) 1/2 missing"),
        ([a, a, b], "given twice"),
        ([a, part("c.h5", "1/3")], "different numbers of shards"),
        ([a, part("d.h5", "1/2", model=rgb_onnx)], "differ in extractor_sha256"),
        ([a, part("e.h5", "1/2", source="digits")], "differ in source"),
    ]
    for parts, message in cases:
        result = cli("merge", tmp_path / "m.h5", *parts)
        assert result.exit_code == 1 and message in result.stderr, (message, result.output)
        assert not (tmp_path / "m.h5").exists() and not (tmp_path / "m.h5.partial").exists()


def test_interrupted_shard_resumes(tiny_onnx, tmp_path, monkeypatch):
    source = open_source("digits:test")
    featurize(source, tmp_path / "clean.h5", tiny_onnx, device=Device.cpu, batch_size=32, shard=Shard(1, 2))
    import diffclass_cli.features.extract as run

    real, calls = run.ExtractorSession.__call__, []

    def failing(self, images):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(run.ExtractorSession, "__call__", failing)
    with pytest.raises(KeyboardInterrupt):
        featurize(source, tmp_path / "cut.h5", tiny_onnx, device=Device.cpu, batch_size=32, shard=Shard(1, 2))
    monkeypatch.setattr(run.ExtractorSession, "__call__", real)
    featurize(source, tmp_path / "cut.h5", tiny_onnx, device=Device.cpu, batch_size=32, shard=Shard(1, 2), resume=True)
    assert_same_feature_file(tmp_path / "cut.h5", tmp_path / "clean.h5")


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.ray
def test_ray_engine_shard_merges_into_the_single_process_file(local_ray, cli, big_tree, tiny_onnx, tmp_path):
    whole = tmp_path / "whole.h5"
    assert cli("featurize", big_tree, whole, "--model", tiny_onnx, "--batch-size", 4).exit_code == 0
    on_ray = tmp_path / "p0.h5"
    result = cli("featurize", big_tree, on_ray, "--model", tiny_onnx, "--batch-size", 4, "--engine", "ray",
                 "--workers", 2, "--shard", "0/2")
    assert result.exit_code == 0, result.output
    assert "2 actor(s)" in result.stderr and "skipped" in result.stderr
    featurize(open_source(str(big_tree)), tmp_path / "p1.h5", tiny_onnx, device=Device.cpu, batch_size=5,
              shard=Shard(1, 2))
    assert cli("merge", tmp_path / "m.h5", tmp_path / "p1.h5", on_ray).exit_code == 0
    assert_same_feature_file(tmp_path / "m.h5", whole)

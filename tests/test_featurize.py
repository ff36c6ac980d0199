import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from diffclass_cli.data.loading import iter_batches
from diffclass_cli.data.sources import open_source
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features import h5 as h5_module
from diffclass_cli.features.extract import featurize
from diffclass_cli.features.h5 import read_features
from diffclass_cli.features.runtime import CPU, CUDA, ExtractorSession, choose_providers
from tests.conftest import write_image
from tests.test_export import run_onnx


def test_class_tree_labels_paths_and_skipped(cli, class_tree, tiny_onnx, tmp_path):
    out = tmp_path / "f.h5"
    result = cli("featurize", class_tree, out, "--model", tiny_onnx, "--batch-size", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    ff = read_features(out)
    assert ff.class_names == ["cats", "dogs"]
    assert dict(zip(ff.paths, ff.labels.tolist())) == {
        "cats/c0.png": 0, "cats/c1.png": 0, "cats/c2.png": 0, "dogs/d0.jpg": 1, "dogs/more/d1.jpg": 1,
        "loose.bmp": -1}
    assert ff.features.shape == (6, ff.attrs["feature_dim"]) and ff.features.dtype == np.float32
    with h5py.File(out) as f:
        skipped = {p.decode(): r.decode() for p, r in f["skipped"][:]}
        assert f["features"].chunks[0] >= 1
    assert set(skipped) == {"dogs/broken.png"}  # notes.txt is no image: passed over, not skipped
    assert "skipped 1 file(s)" in result.stderr and "notes.txt" not in result.stderr
    assert ff.attrs["provider"] == CPU and ff.attrs["source"] == str(class_tree)
    assert ff.attrs["extractor_name"] == "tiny" and len(ff.attrs["extractor_sha256"]) == 64
    assert list(ff.attrs["taps"]) == ["mid", "up2"]
    assert not out.with_name("f.h5.partial").exists()


def test_features_equal_the_onnx_model_on_the_same_batch(class_tree, tiny_onnx, tmp_path):
    source = open_source(str(class_tree))
    featurize(source, tmp_path / "f.h5", tiny_onnx, device=Device.cpu, batch_size=4)
    batch = next(iter_batches(source, 28, 1, batch_size=100))
    direct = run_onnx(tiny_onnx, batch.images.astype(np.float32) / 255)
    np.testing.assert_allclose(read_features(tmp_path / "f.h5").features, direct, atol=1e-5)


def test_flat_folder_is_unlabeled_and_stdin_paths(cli, tmp_path, tiny_onnx, monkeypatch):
    paths = [write_image(tmp_path / "flat" / f"{i}.png", seed=i) for i in range(3)]
    assert cli("featurize", tmp_path / "flat", tmp_path / "a.h5", "--model", tiny_onnx).exit_code == 0
    flat = read_features(tmp_path / "a.h5")
    assert (flat.labels == -1).all() and flat.class_names == []
    monkeypatch.chdir(tmp_path)
    listing = "\n".join(str(p.relative_to(tmp_path)) for p in paths) + "\nmissing.png\n"
    result = cli("featurize", "-", "b.h5", "--model", tiny_onnx, input=listing)
    assert result.exit_code == 0, result.output
    piped = read_features(tmp_path / "b.h5")
    assert piped.paths == ["flat/0.png", "flat/1.png", "flat/2.png"]
    np.testing.assert_array_equal(piped.features, flat.features)
    assert "missing.png" in result.stderr


def test_a_file_name_that_is_not_utf8(tiny_onnx, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in (b"x\xff.png", b"ok.png"):  # Linux names are bytes; the first is no UTF-8
        write_image(Path(os.fsdecode(bytes(folder) + b"/" + name)), (28, 28), "L")
    featurize(open_source(str(folder)), tmp_path / "f.h5", tiny_onnx)
    listing = "\n".join(os.fsdecode(bytes(folder) + b"/" + name) for name in (b"x\xff.png", b"ok.png"))
    stdin = subprocess.run([sys.executable, "-m", "diffclass_cli", "-q", "featurize", "-", tmp_path / "g.h5",
                            "--model", tiny_onnx], input=os.fsencode(listing), capture_output=True)
    assert stdin.returncode == 0, stdin.stderr.decode()
    assert read_features(tmp_path / "f.h5").paths == ["ok.png", "x\\xff.png"]  # the odd byte kept as an escape
    assert len(read_features(tmp_path / "g.h5").paths) == 2


def test_builtin_source(cli, tiny_onnx, tmp_path):
    result = cli("featurize", "digits:test", tmp_path / "d.h5", "--model", tiny_onnx, "--workers", 0)
    assert result.exit_code == 0, result.output
    ff = read_features(tmp_path / "d.h5")
    assert len(ff.paths) == 359 and ff.paths[0].startswith("digits:") and set(ff.labels) == set(range(10))


def test_gray_and_rgb_inputs_are_converted(class_tree, tiny_onnx, rgb_onnx, tmp_path):
    source = open_source(str(class_tree))  # a mix of RGB and gray files
    featurize(source, tmp_path / "gray.h5", tiny_onnx)
    featurize(source, tmp_path / "rgb.h5", rgb_onnx)
    assert read_features(tmp_path / "gray.h5").features.shape[0] == 6
    assert read_features(tmp_path / "rgb.h5").features.shape == (6, 16)


def test_an_image_whose_colour_mode_cannot_be_converted_is_skipped(class_tree, tiny_onnx, tmp_path):
    Image.new("LAB", (20, 20)).save(class_tree / "cats" / "lab.tif")  # Pillow has no LAB -> L conversion
    featurize(open_source(str(class_tree)), tmp_path / "f.h5", tiny_onnx)
    with h5py.File(tmp_path / "f.h5") as f:
        skipped = {p.decode(): r.decode() for p, r in f["skipped"][:]}
    assert "cannot convert a LAB image" in skipped["cats/lab.tif"]
    assert read_features(tmp_path / "f.h5").features.shape[0] == 6


def test_errors_empty_folder_overwrite_strict(cli, tmp_path, tiny_onnx, class_tree):
    (tmp_path / "empty").mkdir()
    result = cli("featurize", tmp_path / "empty", tmp_path / "e.h5", "--model", tiny_onnx)
    assert result.exit_code == 1 and "no images found" in result.stderr
    out = tmp_path / "f.h5"
    out.write_text("precious")
    result = cli("featurize", class_tree, out, "--model", tiny_onnx)
    assert result.exit_code == 1 and "--overwrite" in result.stderr and out.read_text() == "precious"
    result = cli("featurize", class_tree, tmp_path / "s.h5", "--model", tiny_onnx, "--strict")
    assert result.exit_code == 1 and "--strict" in result.stderr
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.partial").exists()
    result = cli("featurize", class_tree, tmp_path / "m.h5", "--model", tmp_path / "nope.onnx")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def _interrupt_at_third_batch(source, model, out, monkeypatch) -> Path:
    """Featurize `source` into `out`, dying part-way through the third batch; the partial file."""
    real_append, calls = h5_module.FeatureWriter.append, []

    def dying_append(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed part-way through the third batch
        return real_append(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(h5_module.FeatureWriter, "append", dying_append)
        with pytest.raises(KeyboardInterrupt):
            featurize(source, out, model, batch_size=128)
    return out.with_name(out.name + ".partial")


def _assert_same_rows(path: Path, reference: Path) -> None:
    got, expected = read_features(path), read_features(reference)
    assert got.paths == expected.paths and np.array_equal(got.labels, expected.labels)
    assert np.array_equal(got.features, expected.features)


def test_interrupted_run_resumes_to_the_same_file(tiny_onnx, tmp_path, monkeypatch):
    source = open_source("mnist-sample:test")
    featurize(source, tmp_path / "clean.h5", tiny_onnx, batch_size=128)
    partial = _interrupt_at_third_batch(source, tiny_onnx, tmp_path / "resumed.h5", monkeypatch)
    with h5py.File(partial) as f:
        assert f.attrs["rows"] == 256 and not (tmp_path / "resumed.h5").exists()
    featurize(source, tmp_path / "resumed.h5", tiny_onnx, batch_size=128, resume=True)
    _assert_same_rows(tmp_path / "resumed.h5", tmp_path / "clean.h5")


def test_resume_keeps_only_what_was_committed(tiny_onnx, tmp_path, monkeypatch):
    # A kill while HDF5 flushes its metadata can leave rows, skipped files and the plain counters
    # past the last commit, the counters even disagreeing with each other (seen in CI: `rows` one
    # batch ahead of `source_rows_done`); resume must go by the commit alone.
    source = open_source("mnist-sample:test")
    featurize(source, tmp_path / "clean.h5", tiny_onnx, batch_size=128)
    partial = _interrupt_at_third_batch(source, tiny_onnx, tmp_path / "resumed.h5", monkeypatch)
    with h5py.File(partial, "a") as f:
        for name in ("features", "labels", "paths"):
            f[name].resize(300, axis=0)
        f["skipped"].resize(1, axis=0)
        f["skipped"][0] = np.array(["ghost.png", "never committed"], dtype=object)
        f.attrs["rows"] = 300
    featurize(source, tmp_path / "resumed.h5", tiny_onnx, batch_size=128, resume=True)
    _assert_same_rows(tmp_path / "resumed.h5", tmp_path / "clean.h5")
    with h5py.File(tmp_path / "resumed.h5") as f:
        assert f["skipped"].shape[0] == 0 and f.attrs["rows"] == f.attrs["source_rows_done"] == len(source)


def test_a_resume_stopped_while_rewriting_the_partial_file_resumes_again(tiny_onnx, tmp_path, monkeypatch):
    # Resume writes the committed rows back into a fresh partial file; stopped there, the
    # partial file is half-written and the saved copy of the rows is what the next resume uses.
    source = open_source("mnist-sample:test")
    featurize(source, tmp_path / "clean.h5", tiny_onnx, batch_size=128)
    out = tmp_path / "resumed.h5"
    partial = _interrupt_at_third_batch(source, tiny_onnx, out, monkeypatch)
    real_copy, calls = h5_module._copy_committed, []

    def dying_copy(src, dst):
        calls.append(1)
        if len(calls) == 2:  # the first call saves the copy, the second writes it back
            raise KeyboardInterrupt
        return real_copy(src, dst)

    with monkeypatch.context() as patch:
        patch.setattr(h5_module, "_copy_committed", dying_copy)
        with pytest.raises(KeyboardInterrupt):
            featurize(source, out, tiny_onnx, batch_size=128, resume=True)
    saved = partial.with_name(partial.name + ".resume")
    assert saved.exists() and partial.exists() and not out.exists()
    featurize(source, out, tiny_onnx, batch_size=128, resume=True)
    _assert_same_rows(out, tmp_path / "clean.h5")
    assert not saved.exists() and not partial.exists()


def test_a_run_started_over_drops_a_saved_copy_of_older_rows(tiny_onnx, tmp_path, monkeypatch):
    # A copy left by a stopped resume belongs to that partial file; a run without --resume
    # replaces the file, so a later --resume must resume the new rows, not restore the copy.
    source = open_source("mnist-sample:test")
    out = tmp_path / "resumed.h5"
    partial = _interrupt_at_third_batch(source, tiny_onnx, out, monkeypatch)
    saved = partial.with_name(partial.name + ".resume")
    saved.write_bytes(b"rows of an earlier run")
    featurize(source, out, tiny_onnx, batch_size=128)
    assert not saved.exists() and out.exists()


def test_provider_selection():
    assert choose_providers(Device.cpu, [CUDA, CPU]) == [CPU]
    assert choose_providers(Device.auto, [CUDA, CPU]) == [CUDA, CPU]
    assert choose_providers(Device.auto, [CPU]) == [CPU]
    assert choose_providers(Device.cuda, [CUDA, CPU]) == [CUDA, CPU]
    with pytest.raises(DiffclassError, match="onnxruntime-gpu"):
        choose_providers(Device.cuda, [CPU])
    assert choose_providers(Device.auto, [CUDA, CPU], driver=False) == [CPU]
    with pytest.raises(DiffclassError, match="NVIDIA driver"):
        choose_providers(Device.cuda, [CUDA, CPU], driver=False)


def test_cuda_without_a_gpu_is_a_clear_error(tiny_onnx):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(DiffclassError, match="cuda"):
        ExtractorSession(tiny_onnx, Device.cuda)
    assert ExtractorSession(tiny_onnx, Device.auto).provider == CPU

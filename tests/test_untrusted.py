"""Files and folders other people can write: a planted link is never written through, a feature
file never makes us read another file, and --overwrite replaces regular files only."""

import os

import h5py
import numpy as np
import pytest

from tests.conftest import assert_one_line_error, write_feature_file


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(5, 1, (20, 4))])
    labels = np.repeat([0, 1], 20)
    path = write_feature_file(tmp_path / "small.h5", features, labels, [f"{i}.png" for i in range(40)], ["a", "b"])
    return path


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim.txt"
    path.write_text("someone else's work")
    return path


def test_a_planted_partial_link_is_not_written_through(cli, small, victim, tmp_path):
    head = tmp_path / "h.skops"
    head.with_name("h.skops.partial").symlink_to(victim)
    assert_one_line_error(cli("fit", small, "--out", head, "--head", "logreg"), "is a symbolic link")
    (tmp_path / "f.h5.partial").symlink_to(victim)
    assert_one_line_error(cli("featurize", "digits:test", tmp_path / "f.h5"), "is a symbolic link")
    assert cli("fit", small, "--out", tmp_path / "ok.skops", "--head", "logreg").exit_code == 0
    (tmp_path / "p.csv.partial").symlink_to(victim)
    assert_one_line_error(cli("predict", small, "--head", tmp_path / "ok.skops", "--out", tmp_path / "p.csv"),
                          "is a symbolic link")
    assert victim.read_text() == "someone else's work" and not head.exists()


def test_overwrite_replaces_regular_files_only(cli, small, tmp_path):
    assert cli("fit", small, "--out", tmp_path / "ok.skops", "--head", "logreg").exit_code == 0
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    result = cli("predict", small, "--head", tmp_path / "ok.skops", "--out", pipe, "--overwrite")
    assert_one_line_error(result, "not a regular file")
    assert pipe.is_fifo()


def _forged(path, victim, how: str):
    """A feature file whose `features` (or `labels`) come from outside it."""
    with h5py.File(path, "w") as f:
        if how == "external-storage":
            f.create_dataset("features", shape=(4, 4), dtype="float32", external=[(str(victim), 0, 64)])
        elif how == "external-link":
            with h5py.File(victim.with_suffix(".h5"), "w") as other:
                other["features"] = np.zeros((4, 4), np.float32)
            f["features"] = h5py.ExternalLink(str(victim.with_suffix(".h5")), "features")
        elif how == "soft-link":
            f["hidden"] = np.zeros((4, 4), np.float32)
            f["features"] = h5py.SoftLink("/hidden")
        elif how == "virtual":
            with h5py.File(victim.with_suffix(".h5"), "w") as other:
                other["data"] = np.zeros((4, 4), np.float32)
            layout = h5py.VirtualLayout(shape=(4, 4), dtype="float32")
            layout[:] = h5py.VirtualSource(str(victim.with_suffix(".h5")), "data", shape=(4, 4))
            f.create_virtual_dataset("features", layout)
        f["labels"] = np.zeros(4, np.int64)
        f["paths"] = np.array([b"a", b"b", b"c", b"d"], dtype=h5py.string_dtype())
        f["class_names"] = np.array([b"x"], dtype=h5py.string_dtype())
        f["skipped"] = np.zeros((0, 2), dtype=h5py.string_dtype())
    return path


@pytest.mark.parametrize("how", ["external-storage", "external-link", "soft-link", "virtual"])
def test_a_feature_file_cannot_make_us_read_other_files(cli, small, victim, tmp_path, how):
    victim.write_bytes(np.arange(16, dtype=np.float32).tobytes() * 4)
    forged = _forged(tmp_path / f"{how}.h5", victim, how)
    assert cli("fit", small, "--out", tmp_path / "ok.skops", "--head", "logreg").exit_code == 0
    for args in (("fit", forged, "--out", tmp_path / "x.skops"), ("predict", forged, "--head", tmp_path / "ok.skops"),
                 ("evaluate", forged, "--head", tmp_path / "ok.skops"), ("info", forged),
                 ("merge", tmp_path / "m.h5", forged)):
        assert_one_line_error(cli(*args), "not a plain feature file")
    assert not (tmp_path / "m.h5").exists() and not (tmp_path / "x.skops").exists()

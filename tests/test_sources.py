import hashlib
import pickle
import struct

import numpy as np
import pytest

from diffclass_cli.data.loading import iter_batches, load_all, to_array
from diffclass_cli.data.sources import open_source, stratified_split
from diffclass_cli.errors import DiffclassError
from tests.conftest import write_image


def test_class_folder_labels_paths_and_bad_files(class_tree, caplog):
    source = open_source(str(class_tree))
    assert source.class_names == ["cats", "dogs"]
    by_id = dict(zip(source.ids, source.labels.tolist()))
    assert by_id == {"cats/c0.png": 0, "cats/c1.png": 0, "cats/c2.png": 0, "dogs/broken.png": 1,
                     "dogs/d0.jpg": 1, "dogs/more/d1.jpg": 1, "loose.bmp": -1}
    assert source.skipped == []  # cats/notes.txt is not an image by its extension: passed over quietly

    images, kept, skipped = load_all(source, size=16, channels=3)
    assert images.shape == (6, 3, 16, 16) and images.dtype == np.uint8
    assert [source.ids[i] for i in kept if source.ids[i] == "dogs/broken.png"] == []
    assert [name for name, _ in skipped] == ["dogs/broken.png"]
    warnings = caplog.text
    assert "dogs/broken.png" in warnings and "cats/notes.txt" not in warnings
    assert "skipped 1 file(s)" in warnings


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", seed=i)
    source = open_source(str(tmp_path))
    assert source.class_names == [] and (source.labels == -1).all() and not source.is_labeled


def test_empty_folder_says_what_was_searched(tmp_path):
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(DiffclassError, match="no images found in .*searched recursively"):
        open_source(str(tmp_path))


def test_unknown_source_and_split():
    with pytest.raises(DiffclassError, match="neither a folder nor a known source"):
        open_source("no-such-thing")
    with pytest.raises(DiffclassError, match="unknown split"):
        open_source("mnist-sample:validation")


def test_mnist_sample_split_sizes_stratified_and_fixed():
    train, test = open_source("mnist-sample:train"), open_source("mnist-sample:test")
    assert (len(train), len(test)) == (4000, 1000)
    assert not set(train.ids) & set(test.ids)
    assert np.bincount(test.labels).tolist() == [100] * 10
    assert np.bincount(train.labels).tolist() == [400] * 10
    assert to_array(train.load(0), 28, 1).shape == (1, 28, 28)
    # The split must never change: benchmarks depend on it.
    assert test.ids[:5] == ["mnist-sample:1", "mnist-sample:10", "mnist-sample:12",
                            "mnist-sample:15", "mnist-sample:21"]
    assert hashlib.sha256(",".join(test.ids).encode()).hexdigest()[:16] == "850b4ebe1e0fd616"


def test_digits_split_and_scaling():
    full, train, test = open_source("digits"), open_source("digits:train"), open_source("digits:test")
    assert len(full) == 1797 and len(train) + len(test) == 1797
    assert len(test) == 359
    assert hashlib.sha256(",".join(test.ids).encode()).hexdigest()[:16] == "175e35124d15e520"
    assert to_array(full.load(0), 8, 1).max() > 200  # 0..16 scaled to 0..255


def test_colour_scenario_is_mnist_sample_in_random_colours():
    gray, colour = open_source("mnist-sample:test"), open_source("mnist-sample-colour:test")
    assert np.array_equal(gray.labels, colour.labels) and len(colour) == 1000
    images = np.stack([np.asarray(colour.load(i), dtype=int) for i in range(50)])
    assert images.shape == (50, 32, 32, 3)
    corners = images[:, 0, 0]  # background
    assert len({tuple(c) for c in corners}) == 50  # each image its own background colour
    for image, digit in zip(images, (np.asarray(gray.load(i)) for i in range(50))):
        ink = np.pad(digit, 2) == 255
        if ink.any():  # full-ink pixels are the foreground colour, 64 or more from the background per channel
            assert (np.abs(image[ink][0] - image[0, 0]) >= 64).all()


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    train, test = stratified_split(labels)
    assert np.bincount(labels[test]).tolist() == [2, 4, 6, 8]
    assert np.array_equal(test, stratified_split(labels)[1])
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 100


def test_missing_torchvision_root_says_where_it_looked(tmp_path):
    with pytest.raises(DiffclassError, match=f"mnist not found under {tmp_path}.*--download"):
        open_source("mnist:train", data_root=tmp_path)
    with pytest.raises(DiffclassError, match="--data-root"):
        open_source("cifar10")


def _idx(path, array):
    header = struct.pack(">HBB", 0, 8, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    with open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_files_on_disk_are_read(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("t10k", 6)):  # torchvision wants both splits present
        _idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{split}-labels-idx1-ubyte", np.arange(n) % 3)
    source = open_source("mnist:test", data_root=tmp_path)
    assert len(source) == 6 and source.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert source.class_names[0].startswith("0")


def test_cifar_style_files_are_read(tmp_path, monkeypatch):
    from torchvision.datasets import cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    # torchvision checks the md5 of the real release files, which generated files cannot match.
    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: True)
    source = open_source("cifar10:test", data_root=tmp_path)
    assert len(source) == 4 and source.class_names[:2] == ["c0", "c1"]
    assert to_array(source.load(0), 32, 3).shape == (3, 32, 32)


def test_gray_to_rgb_and_rgb_to_gray_and_resize(class_tree):
    source = open_source(str(class_tree))
    gray = next(iter_batches(source, 12, 1, batch_size=8))
    rgb = next(iter_batches(source, 12, 3, batch_size=8))
    assert gray.images.shape[1:] == (1, 12, 12) and rgb.images.shape[1:] == (3, 12, 12)


def test_parallel_workers_keep_order(class_tree):
    source = open_source(str(class_tree))
    serial = list(iter_batches(source, 8, 1, batch_size=2))
    parallel = list(iter_batches(source, 8, 1, batch_size=2, workers=2))
    assert [b.rows.tolist() for b in serial] == [b.rows.tolist() for b in parallel]
    assert all(np.array_equal(a.images, b.images) for a, b in zip(serial, parallel))

"""Files and folders other people can write: a planted link is never written through, a feature
file never makes us read another file, and --overwrite replaces regular files only."""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.conftest import assert_one_line_error, write_feature_file, write_two_blobs


@pytest.fixture
def small(tmp_path):
    return write_two_blobs(tmp_path / "small.h5", per_class=20, dims=4, class_names=("a", "b"))


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


def test_any_file_name_works_and_is_printed_escaped(cli, rgb_onnx, tmp_path):
    from tests.conftest import write_image

    root = tmp_path / "imgs"
    odd_class = os.fsdecode(b"caf\xe9")  # a folder name that is not UTF-8
    for i, name in enumerate([" lead.png", "trail .png", os.fsdecode(b"\xff\xfe.png")]):
        write_image(root / odd_class / name, size=(16, 16), seed=i)
    write_image(root / "plain" / "p.png", size=(16, 16), seed=9)
    result = cli("featurize", root, tmp_path / "f.h5", "--model", rgb_onnx)
    assert result.exit_code == 0, result.output
    from diffclass_cli.features.h5 import read_features

    data = read_features(tmp_path / "f.h5")
    assert data.class_names == ["caf\\xe9", "plain"] and "caf\\xe9/ lead.png" in data.paths
    assert cli("fit", tmp_path / "f.h5", "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    predicted = cli("predict", root, "--head", tmp_path / "h.skops")
    assert predicted.exit_code == 0, predicted.output
    assert f"{root}/caf\\xe9/\\xff\\xfe.png," in predicted.stdout and f"{root}/caf\\xe9/trail .png," in predicted.stdout

    listed = "\0".join(str(root / odd_class / n) for n in [" lead.png", "trail .png"]) + "\0"
    piped = cli("predict", "-", "--head", tmp_path / "h.skops",
                input=listed.encode("utf-8", "surrogateescape"))  # as `find -print0` writes
    assert piped.exit_code == 0 and len(piped.stdout.splitlines()) == 3, piped.output
    assert piped.stdout.splitlines()[1].startswith(f"{root}/caf\\xe9/ lead.png,")


def test_a_linked_class_folder_never_takes_another_folders_images(tmp_path):
    from diffclass_cli.data.sources import open_source
    from tests.conftest import write_image

    root = tmp_path / "imgs"
    write_image(root / "zebra" / "z.png")
    write_image(root / "cat" / "c.png")
    (root / "alias").symlink_to(root / "zebra", target_is_directory=True)  # sorts before zebra
    source = open_source(str(root))
    assert dict(zip(source.ids, (source.class_names[x] for x in source.labels))) == {"cat/c.png": "cat",
                                                                                     "zebra/z.png": "zebra"}
    assert [name for name, _ in source.skipped] == ["alias"]


def test_memory_is_bounded_by_us_not_by_what_a_file_declares(cli, small, tmp_path):
    from diffclass_cli.features.h5 import READ_BYTES, open_feature_file

    huge = tmp_path / "huge-chunk.h5"
    huge.write_bytes(small.read_bytes())
    with h5py.File(huge, "a") as f:
        rows = f["features"][()]
        del f["features"]
        f.create_dataset("features", data=np.tile(rows, (1, 600)), maxshape=(None, 2400), chunks=(40_000, 2400),
                         compression="gzip")
    assert huge.stat().st_size < 2**20  # a small file declaring chunks of 384 MB
    assert cli("fit", small, "--out", tmp_path / "ok.skops", "--head", "logreg").exit_code == 0
    assert_one_line_error(cli("info", huge), "chunks larger than")

    wide = write_feature_file(tmp_path / "wide.h5", np.zeros((3, 200_000), np.float32), [0, 1, 0], ["a", "b", "c"],
                              ["x", "y"])
    with open_feature_file(wide) as reader:
        assert reader.chunk_rows * 4 * 200_000 <= READ_BYTES


def test_batches_of_large_images_shrink_to_fit():
    from diffclass_cli.features.extract import BATCH_BYTES, bounded_batch

    assert bounded_batch(256, {"channels": 1, "image_size": 28}) == 256
    shrunk = bounded_batch(256, {"channels": 3, "image_size": 4096})
    assert 1 <= shrunk < 256 and shrunk * 4 * 3 * 4096**2 <= BATCH_BYTES


def test_training_refuses_images_that_cannot_fit_in_memory_before_loading_them(cli, tmp_path):
    from tests.conftest import write_image

    for i in range(3):
        write_image(tmp_path / "imgs" / f"{i}.png", size=(8, 8), seed=i)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    side = 4096
    many = tmp_path / "many.txt"  # paths on stdin: the same three files, enough times to overflow memory
    count = total // (3 * side * side) + 1
    many.write_text("".join(f"{tmp_path / 'imgs' / f'{i % 3}.png'}\n" for i in range(count)))
    result = cli("train-backbone", "-", "--out", tmp_path / "bb.ckpt", "--image-size", side, "--channels", 3,
                 "--steps", 1, input=many.read_text())
    assert_one_line_error(result, "more than half of this machine's")


def test_paths_that_are_not_utf8_are_escaped_not_a_traceback(cli, tmp_path):
    path = write_two_blobs(tmp_path / "odd.h5")
    with h5py.File(path, "r+") as f:
        f["paths"][0] = b"\xff\xfe.png"  # bytes no UTF-8 text holds, as a crafted file may carry
    assert cli("fit", path, "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    predicted = cli("predict", path, "--head", tmp_path / "h.skops")
    assert predicted.exit_code == 0 and "\\xff\\xfe.png,x," in predicted.stdout
    for args in (("evaluate", path, "--head", tmp_path / "h.skops"), ("info", path),
                 ("plot", path, "--out", tmp_path / "m.png", "--method", "pca"), ("suggest", path, "--budget", 2),
                 ("merge", tmp_path / "m.h5", path)):
        result = cli(*args)
        assert result.exit_code in (0, 1) and "Traceback" not in result.output, args


def _declaring(path, grow):
    with h5py.File(path, "r+") as f:
        grow(f)
    return path


@pytest.mark.parametrize("grow", [
    lambda f: [f[name].resize(1_500_000_000, axis=0) for name in ("features", "labels", "paths")],
    lambda f: (f.__delitem__("class_names"), f.create_dataset("class_names", shape=(1,), dtype="S2000000000")),
], ids=["1.5e9-rows", "2GB-class-names"])
def test_a_small_file_declaring_gigabytes_is_refused_under_a_memory_limit(tmp_path, grow):
    """A bound is a fact, not a hope: the command runs under a 2 GB address-space limit."""
    crafted = _declaring(write_two_blobs(tmp_path / "crafted.h5"), grow)
    assert crafted.stat().st_size < 100_000
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from diffclass_cli.cli import app; sys.argv = ['diffclass', *sys.argv[1:]]; app()")
    for args in (["info", crafted], ["fit", crafted, "--out", tmp_path / "h.skops"], ["suggest", crafted]):
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("diffclass: error: ") and "declares" in result.stderr


def test_a_head_that_would_inflate_to_gigabytes_is_refused_before_inflating(cli, small, tmp_path):
    import zipfile

    assert cli("fit", small, "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    bomb = tmp_path / "bomb.skops"
    with zipfile.ZipFile(tmp_path / "h.skops") as good, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for member in good.infolist():
            out.writestr(member, good.read(member))
        with out.open("zeros.npy", "w", force_zip64=True) as stream:  # 3 GiB of zeros, a few MB on disk
            block = bytes(1 << 24)
            for _ in range(192):
                stream.write(block)
    assert bomb.stat().st_size < 20_000_000
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
            "from diffclass_cli.cli import app; sys.argv = ['diffclass', *sys.argv[1:]]; app()")
    for args in (["info", bomb], ["predict", small, "--head", bomb]):
        result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 1 and "over the 512 MB a head may hold" in result.stderr, result.stderr


@pytest.mark.parametrize("change", [
    lambda c: c["diffusion"].update(num_timesteps=10**10),
    lambda c: c["unet"].update(channel_mults=[1, 1_000_000]),
    lambda c: c["unet"].update(width="32"),
    lambda c: c.pop("unet"),
    lambda c: c["diffusion"].update(beta_end=7),
], ids=["1e10-steps", "1e6-channels", "text-width", "missing-key", "beta-over-1"])
def test_a_checkpoint_config_out_of_range_or_of_the_wrong_type_is_one_line(cli, tiny_checkpoint, tmp_path, change):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(tiny_checkpoint), "pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(metadata["config"])
    change(config)
    crafted = tmp_path / "crafted.ckpt"
    save_file(tensors, str(crafted), metadata={**metadata, "config": json.dumps(config)})
    for args in (("export", crafted, "--out", tmp_path / "x.onnx"), ("sample", crafted, "--out", tmp_path / "s.png")):
        result = cli(*args)
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert result.stderr.strip().splitlines()[-1].startswith("diffclass: error: ")
    assert not (tmp_path / "x.onnx").exists()

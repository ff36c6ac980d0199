import h5py
import numpy as np
import pytest
from PIL import Image

from diffclass_cli.features.h5 import read_features
from diffclass_cli.plot import Projection, plot_feature_map, subsample
from tests.conftest import write_feature_file


def _is_png(path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG"
        return image.size


def test_labeled_map_with_thumbnails_and_score(cli, digit_files, tmp_path):
    result = cli("plot", digit_files["test"], "--out", tmp_path / "map.png", "--method", "pca",
                 "--thumbnails", "digits:test")
    assert result.exit_code == 0, result.output
    path, name, score = result.stdout.strip().split("\t")
    assert name == "5nn_accuracy_in_map" and 0.3 < float(score) <= 1
    _is_png(tmp_path / "map.png")


def test_unlabeled_map_with_umap(digit_files, tmp_path):
    ff = read_features(digit_files["test"])
    flat = write_feature_file(tmp_path / "u.h5", ff.features[:60], -np.ones(60, int), ff.paths[:60], [])
    scores = plot_feature_map(flat, tmp_path / "u.png", method=Projection.umap)
    assert scores == {str(flat): None}
    _is_png(tmp_path / "u.png")


def test_comparison_side_by_side(cli, digit_files, tmp_path):
    result = cli("plot", digit_files["test"], "--out", tmp_path / "one.png", "--method", "tsne", "--max-points", 150)
    both = cli("plot", digit_files["test"], "--out", tmp_path / "two.png", "--method", "tsne", "--max-points", 150,
               "--compare", digit_files["train"])
    assert result.exit_code == 0 and both.exit_code == 0, both.output
    assert len(both.stdout.strip().splitlines()) == 2
    (w1, h1), (w2, h2) = _is_png(tmp_path / "one.png"), _is_png(tmp_path / "two.png")
    assert h1 == h2 and w2 == 2 * w1


def test_subsampling_is_reproducible():
    first = subsample(1000, 100, seed=0)
    assert len(first) == 100 and np.all(np.diff(first) > 0)
    assert np.array_equal(first, subsample(1000, 100, seed=0))
    assert not np.array_equal(first, subsample(1000, 100, seed=1))
    assert np.array_equal(subsample(50, 100, seed=0), np.arange(50))


def test_clear_errors(cli, digit_files, tmp_path):
    ff = read_features(digit_files["test"])
    tiny = write_feature_file(tmp_path / "tiny.h5", ff.features[:2], ff.labels[:2], ff.paths[:2], ff.class_names)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["labels"] = np.zeros(5, int)
    for path, message in ((tmp_path / "missing.h5", "does not exist"), (tiny, "at least 3"),
                          (tmp_path / "empty.h5", "no 'features' dataset")):
        result = cli("plot", path, "--out", tmp_path / "x.png", "--method", "pca")
        assert result.exit_code == 1 and message in result.stderr, result.output
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("method", ["pca"])
def test_refuses_to_overwrite(cli, digit_files, tmp_path, method):
    (tmp_path / "m.png").write_bytes(b"keep")
    result = cli("plot", digit_files["test"], "--out", tmp_path / "m.png", "--method", method)
    assert result.exit_code == 1 and (tmp_path / "m.png").read_bytes() == b"keep"


def test_show_predictions_marks_the_wrong_ones(cli, digit_files, tmp_path):
    from diffclass_cli.heads.fit import fit_head

    fit_head(digit_files["train"], tmp_path / "h.skops", per_class=1)
    csv_text = cli("predict", digit_files["test"], "--head", tmp_path / "h.skops").stdout
    result = cli("show-predictions", "-", "--source", "digits:test", "--out", tmp_path / "p.png", "--n", 20,
                 input=csv_text)
    assert result.exit_code == 0, result.output
    wrong = int(result.stderr.split("images, ")[1].split(" wrong")[0])
    rows = [line.split(",") for line in csv_text.splitlines()[1:]][::359 // 20][:20]
    source_labels = dict(zip(*_ids_and_labels("digits:test")))
    assert wrong == sum(source_labels[path] != label for path, label, *_ in rows)
    _is_png(tmp_path / "p.png")
    bad = cli("show-predictions", digit_files["test"], "--source", "digits:test", "--out", tmp_path / "q.png")
    assert bad.exit_code == 1 and "not a predictions CSV" in bad.stderr


def _ids_and_labels(spec):
    from diffclass_cli.data.sources import open_source

    source = open_source(spec)
    return source.ids, [source.class_names[label] for label in source.labels]

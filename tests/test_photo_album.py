"""A new user's own photos, second pass: every image mode read right, featurize saying what it did,
benchmark on the README's layout, outputs that chain into show-predictions and info, the Python API
as the command line, and the whole journey from the README on a built album."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffclass_cli.data.loading import to_array, to_mode
from diffclass_cli.errors import DiffclassError
from tests.album import CLASSES, album, drawing, nested_album, save_as
from tests.conftest import assert_one_line_error

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return album(tmp_path_factory.mktemp("album") / "photos", labeled=3, unlabeled=12, new=12)


# --- every image read right --------------------------------------------------------------------------------------

def _reference_gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), np.float64)


def test_sixteen_bit_and_float_gray_are_scaled_not_clipped(tmp_path):
    picture = drawing(0, seed=1)
    reference = _reference_gray(picture)
    wide = Image.open(save_as(picture, tmp_path / "wide.png", "I;16"))
    assert wide.mode.startswith("I")
    np.testing.assert_allclose(np.asarray(to_mode(wide, "L"), np.float64), reference, atol=1)
    as_float = Image.fromarray((reference / 255).astype(np.float32))  # mode F in 0..1
    np.testing.assert_allclose(np.asarray(to_mode(as_float, "L"), np.float64), reference, atol=1)


def test_transparent_pixels_are_white_and_cmyk_is_converted(tmp_path):
    picture = drawing(1, seed=2)
    rgba = Image.open(save_as(picture, tmp_path / "t.png", "RGBA"))
    rgb = np.asarray(to_mode(rgba, "RGB"))
    strip = rgba.size[0] // 8
    assert (rgb[:, :strip] == 255).all()  # the transparent strip
    np.testing.assert_array_equal(rgb[:, strip:], np.asarray(picture)[:, strip:])
    palette = picture.convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0  # the first palette colour is transparent
    shown = np.asarray(to_mode(palette, "RGB"))
    assert (shown[np.asarray(palette) == 0] == 255).all()
    cmyk = Image.open(save_as(picture, tmp_path / "c.jpg", "CMYK"))
    np.testing.assert_array_equal(np.asarray(to_mode(cmyk, "RGB")), np.asarray(cmyk.convert("RGB")))
    gray = to_array(Image.open(save_as(picture, tmp_path / "l.png", "I;16")), 28, 1)
    assert gray.shape == (1, 28, 28) and 0 < gray.mean() < 255


def test_featurize_says_what_it_does_to_photos_and_sums_up(cli, photos, tmp_path):
    extra = nested_album(photos["train"], n=2)
    try:
        result = cli("featurize", photos["train"], tmp_path / "t.h5")
    finally:
        for path in extra.iterdir():
            path.unlink()
        extra.rmdir()
        extra.parent.rmdir()
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "count as class '2023 holiday'" in err
    assert re.search(r"colour images of \d+x\d+ and others, read as 28x28 gray", err)
    assert "the shipped extractor was trained on 28x28 gray MNIST digits" in err
    assert re.search(r"7 classes \(2023 holiday 2, bag 3, cup 3, hat 3, key 3, lamp 3, shoe 3\): 20 labeled, "
                     r"12 unlabeled", err), err


# --- benchmark on the README's layout -----------------------------------------------------------------------------

def test_benchmark_takes_the_readmes_layout_and_keeps_finished_rows_when_stopped(cli, photos, tmp_path, monkeypatch):
    test = photos["train"].parent / "heldout"
    for label, name in enumerate(CLASSES):
        for i in range(2):
            save_as(drawing(label, 900 + 10 * label + i), test / name / f"h{i}.png", "RGB")
    model = ROOT / "exports" / "mnist-sample-ddpm.onnx"
    args = ["benchmark", model, "--train", photos["train"], "--test", test, "--heads", "logreg",
            "--baselines", "pixels", "--draws", "2", "--draws-few", "2"]
    result = cli(*args, "--out", tmp_path / "bench")
    assert result.exit_code == 0, result.output
    assert "labels per class: 1,2 (the smallest class, 'bag', has 3 labeled images)" in result.stderr
    assert "18 labeled and 12 unlabeled images" in (tmp_path / "bench" / "summary.md").read_text()
    too_many = cli(*args, "--quick", "--per-class", "9", "--out", tmp_path / "quick")
    assert_one_line_error(too_many, "class 'bag' has 3 labeled images")

    from diffclass_cli.benchmark import protocol

    fitted = protocol.head_accuracy

    def stop_after_three(*a, **k):
        stop_after_three.calls += 1
        if stop_after_three.calls > 3:
            raise KeyboardInterrupt
        return fitted(*a, **k)

    stop_after_three.calls = 0
    monkeypatch.setattr(protocol, "head_accuracy", stop_after_three)
    stopped = cli(*args, "--out", tmp_path / "stopped")
    assert stopped.exit_code != 0 and "stopped: what was finished is in" in stopped.stderr
    partial = Path(re.search(r"is in (\S+)/", stopped.stderr).group(1))
    rows = (partial / "results.csv").read_text().splitlines()
    assert rows[0].startswith("sweep,feature_set") and len(rows) == 4 and not (tmp_path / "stopped").exists()


def test_benchmark_never_writes_over_or_into_its_inputs(cli, photos, tmp_path):
    model = ROOT / "exports" / "mnist-sample-ddpm.onnx"
    for out in (photos["train"], photos["train"] / "results", photos["train"].parent):
        result = cli("benchmark", model, "--train", photos["train"], "--test", photos["new"], "--out", out,
                     "--overwrite")
        assert_one_line_error(result, "input of this command")
    assert len(list((photos["train"] / "bag").iterdir())) == 3


def test_the_fold_fits_in_the_labeled_rows_span_are_the_full_fits():
    from sklearn.linear_model import LogisticRegression

    from diffclass_cli.heads.models import fit_in_row_span

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 300)), np.repeat([0, 1, 2, 3], 10)
    plain = LogisticRegression(C=0.1, max_iter=5000, tol=1e-10).fit(X, y)
    spanned = fit_in_row_span(LogisticRegression(C=0.1, max_iter=5000, tol=1e-10), X, y)
    assert spanned.coef_.shape == plain.coef_.shape
    np.testing.assert_allclose(spanned.coef_, plain.coef_, atol=1e-5)
    test = rng.normal(size=(50, 300))
    np.testing.assert_allclose(spanned.predict_proba(test), plain.predict_proba(test), atol=1e-6)


# --- outputs that chain -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fitted(photos, tmp_path_factory) -> dict[str, Path]:
    from typer.testing import CliRunner

    from diffclass_cli.cli import app

    folder = tmp_path_factory.mktemp("fitted")
    run = CliRunner().invoke
    assert run(app, ["featurize", str(photos["train"]), str(folder / "train.h5")]).exit_code == 0
    assert run(app, ["fit", str(folder / "train.h5"), "--out", str(folder / "head.skops")]).exit_code == 0
    return {"features": folder / "train.h5", "head": folder / "head.skops"}


def test_show_predictions_reads_predicts_csv_and_json_lines_of_images(cli, photos, fitted, tmp_path, monkeypatch):
    monkeypatch.chdir(photos["new"].parent)
    for style in ("csv", "jsonl"):
        table = tmp_path / f"p.{style}"
        assert cli("predict", "new", "--head", fitted["head"], "--format", style, "--out", table).exit_code == 0
        shown = cli("show-predictions", table, "--out", tmp_path / f"{style}.png")
        assert shown.exit_code == 0, shown.output
        assert "12 images, 0 wrong" in shown.stderr  # no truth without --source: nothing is marked wrong
    with_truth = cli("show-predictions", tmp_path / "p.csv", "--source", "new", "--out", tmp_path / "t.png")
    assert with_truth.exit_code == 0 and "12 images" in with_truth.stderr
    folder_above = cli("show-predictions", tmp_path / "p.csv", "--source", ".", "--out", tmp_path / "u.png")
    assert folder_above.exit_code == 0 and "0 wrong" in folder_above.stderr
    assert "are none of the predicted ones" in folder_above.stderr


def test_show_predictions_of_a_feature_file_finds_its_images_by_source(cli, photos, fitted, tmp_path):
    table = tmp_path / "p.csv"
    assert cli("predict", fitted["features"], "--head", fitted["head"], "--out", table).exit_code == 0
    shown = cli("show-predictions", table, "--source", photos["train"], "--out", tmp_path / "g.png", "--n", 10)
    assert shown.exit_code == 0, shown.output
    assert_one_line_error(cli("show-predictions", table, "--out", tmp_path / "h.png"), "pass --source")


def test_info_says_what_each_file_we_wrote_is_and_which_are_not_ours(cli, photos, fitted, tmp_path):
    predictions = tmp_path / "p.jsonl"
    cli("predict", fitted["features"], "--head", fitted["head"], "--format", "jsonl", "--out", predictions)
    suggestions = tmp_path / "s.csv"
    assert cli("suggest", fitted["features"], "--budget", 3, "--out", suggestions).exit_code == 0
    assert cli("plot", fitted["features"], "--out", tmp_path / "map.png", "--method", "pca").exit_code == 0
    kinds = {}
    for path in (predictions, suggestions, tmp_path / "map.png", photos["truth"]):
        result = cli("info", path, "--json")
        assert result.exit_code == 0, result.output
        kinds[path.name] = json.loads(result.stdout)["kind"]
    assert kinds == {"p.jsonl": "predictions", "s.csv": "suggestions", "map.png": "picture",
                     "new-truth.csv": "labels table"}
    (tmp_path / "notes.txt").write_text("shopping list\nmilk\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    (tmp_path / "brace.bin").write_bytes(b"\xff" * 8 + b"{" + bytes(64))  # where safetensors keeps its header
    for foreign in (photos["train"] / "bag" / "IMG_0000.jpg", next(photos["train"].glob("*.png")),
                    tmp_path / "notes.txt", tmp_path / "blob.bin", tmp_path / "brace.bin", photos["train"]):
        assert_one_line_error(cli("info", foreign), "not")


# --- the Python API -----------------------------------------------------------------------------------------------

def test_the_api_takes_plain_strings_and_stores_the_commands_paths(cli, photos, tmp_path):
    from diffclass_cli import featurize, fit

    model = str(ROOT / "exports" / "mnist-sample-ddpm.onnx")
    in_memory = featurize(str(photos["train"]), model=model)
    written = cli("featurize", photos["train"], tmp_path / "cli.h5", "--model", model)
    assert written.exit_code == 0
    from diffclass_cli.features.h5 import read_features

    assert in_memory.paths == read_features(tmp_path / "cli.h5").paths
    info = fit(str(tmp_path / "cli.h5"), str(tmp_path / "h.skops"))
    assert info["chosen_head"] in ("semi", "logreg") and info["reason"]
    with pytest.raises(DiffclassError, match="--head takes one of auto, logreg, mlp, semi, not 'bogus'"):
        fit(tmp_path / "cli.h5", tmp_path / "x.skops", head="bogus")
    with pytest.raises(DiffclassError, match="--seed takes a whole number, not '3'"):
        fit(tmp_path / "cli.h5", tmp_path / "x.skops", seed="3")


def test_help_of_an_api_function_lists_every_option_with_its_default():
    import diffclass_cli
    from diffclass_cli.options import option_fields
    from diffclass_cli.runs import FeaturizeRun, FitRun

    for function, run in ((diffclass_cli.fit, FitRun), (diffclass_cli.featurize, FeaturizeRun)):
        for f in option_fields(run):
            if f.name not in ("features", "source", "out"):
                assert re.search(rf"^\s+{f.name} \((default|required)", function.__doc__, re.M), f.name


# --- the whole journey --------------------------------------------------------------------------------------------

def test_the_journey_from_the_readme_with_a_spreadsheet_saved_label_table(cli, tmp_path, monkeypatch):
    """A pool of unlabeled photos, suggest's list filled in by a spreadsheet (byte-order mark,
    semicolons, its own header names), fit, predict new photos, look at them, and ask info."""
    paths = album(tmp_path / "photos", labeled=0, unlabeled=60, new=12, seed=3)
    monkeypatch.chdir(tmp_path)
    assert cli("featurize", "photos/train", "pool.h5").exit_code == 0
    listed = cli("suggest", "pool.h5", "--budget", 12, "--classes", 6)
    assert listed.exit_code == 0, listed.output
    seen = dict(line.split(",") for line in paths["pool_truth"].read_text().splitlines()[1:])  # a user's eyes
    truth = {row.split(",")[0]: seen[row.split(",")[0]] for row in listed.stdout.splitlines()[1:]}
    sheet = "\ufeffFile name;Class\r\n" + "".join(f"{p};{label}\r\n" for p, label in truth.items())
    (tmp_path / "to-label.csv").write_bytes(sheet.encode("utf-8"))
    fitted = cli("fit", "pool.h5", "--labels", "to-label.csv", "--out", "head.skops")
    assert fitted.exit_code == 0, fitted.output
    info = json.loads(cli("info", "head.skops", "--json").stdout)
    assert set(info["classes"]) == set(truth.values()) and info["fitted_on"]["labeled_rows"] == len(truth)
    predicted = cli("predict", "photos/new", "--head", "head.skops", "--out", "predictions.csv")
    assert predicted.exit_code == 0, predicted.output
    assert cli("show-predictions", "predictions.csv", "--out", "grid.png").exit_code == 0
    assert json.loads(cli("info", "grid.png", "--json").stdout)["kind"] == "picture"
    assert json.loads(cli("info", "predictions.csv", "--json").stdout)["rows"] == 12

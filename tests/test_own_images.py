"""A user's own images, end to end: the README's own-images section run as written (with a tiny
backbone), labels from folders, tables and separate files, single images, heads that find their
extractor, `info` on every file, and the Unix conventions of the commands."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffclass_cli.benchmark.protocol import Split
from diffclass_cli.benchmark.suite import labels_per_class
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads.store import load_head
from tests.conftest import assert_one_line_error, write_feature_file

ROOT = Path(__file__).resolve().parent.parent
TINY_TRAINING = ["--width", "8", "--channel-mults", "1,2", "--batch-size", "4", "--warmup", "1"]


def _photo(path: Path, seed: int, mode: str, size: tuple[int, int]) -> None:
    """A picture with a class-like shape: bright blobs placed by `seed`, mixed sizes and modes."""
    rng = np.random.default_rng(seed)
    canvas = np.full((size[1], size[0], 3), rng.integers(0, 60), np.uint8)
    x, y = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    canvas[y:y + size[1] // 2, x:x + size[0] // 2] = rng.integers(150, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).convert(mode).save(path)


@pytest.fixture
def photos(tmp_path) -> Path:
    """photos/train/{cat,dog}/*.jpg (4 labeled each, RGB, mixed sizes), photos/train/*.png (12
    unlabeled, gray), photos/new/*.jpg (3), plus files that are not images."""
    root = tmp_path / "photos"
    for i in range(4):
        _photo(root / "train" / "cat" / f"cat{i}.jpg", i, "RGB", (40 + 4 * i, 36))
        _photo(root / "train" / "dog" / f"dog{i}.jpg", 100 + i, "RGB", (32, 48 - 2 * i))
    for i in range(12):
        _photo(root / "train" / f"u{i:02d}.png", 200 + i, "L", (30 + i, 30))
    for i in range(3):
        _photo(root / "new" / f"img{1000 + i}.jpg", 300 + i, "RGB", (36, 36))
    (root / "train" / "notes.txt").write_text("not an image")
    (root / "train" / "Thumbs.db").write_bytes(b"\0" * 16)
    return root


def readme_commands(section: str) -> list[str]:
    """The command lines of the first bash block after the README heading `section`."""
    text = (ROOT / "README.md").read_text()
    after = text[text.index(f"## {section}"):]
    block = re.search(r"```bash\n(.*?)```", after, flags=re.S).group(1)
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_readmes_own_images_section_runs_as_written(cli, photos, monkeypatch):
    monkeypatch.chdir(photos.parent)
    commands = readme_commands("Your own images")
    assert [shlex.split(c)[1] for c in commands] == ["train-backbone", "sample", "export", "featurize", "fit",
                                                     "predict"]
    for line in commands:
        args = shlex.split(line, comments=True)[1:]
        stdout_file = None
        if ">" in args:
            stdout_file = args[args.index(">") + 1]
            args = args[:args.index(">")]
        if args[0] == "train-backbone":  # the same command, at a size a test can afford
            args = [a if a != "5000" else "2" for a in args] + TINY_TRAINING
        result = cli(*args)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        if stdout_file:
            Path(stdout_file).write_text(result.stdout)
    rows = Path("predictions.csv").read_text().splitlines()
    assert rows[0] == "path,label,confidence" and len(rows) == 1 + 3
    assert {row.split(",")[0] for row in rows[1:]} == {f"photos/new/img{1000 + i}.jpg" for i in range(3)}
    assert {row.split(",")[1] for row in rows[1:]} <= {"cat", "dog"}
    _, info = load_head(Path("head.skops"))
    assert info["fitted_on"]["labeled_rows"] == 8 and info["fitted_on"]["unlabeled_rows"] == 12  # semi reachable
    assert info["params"]["choice"] in ("semi", "logreg") and info["params"]["reason"]
    assert read_features(Path("train.h5")).class_names == ["cat", "dog"]


@pytest.fixture
def own(cli, photos, rgb_onnx, tmp_path):
    """photos/train and photos/new featurized with a small RGB extractor, and a logreg head."""
    model = tmp_path / "bb.onnx"
    model.write_bytes(rgb_onnx.read_bytes())
    for name in ("train", "new"):
        assert cli("featurize", photos / name, tmp_path / f"{name}.h5", "--model", model).exit_code == 0
    head = tmp_path / "head.skops"
    assert cli("fit", tmp_path / "train.h5", "--out", head, "--head", "logreg").exit_code == 0
    return {"model": model, "head": head, "train": tmp_path / "train.h5", "new": tmp_path / "new.h5"}


def test_fit_takes_unlabeled_rows_from_other_files_of_the_same_extractor(cli, own, photos, rgb_onnx, tmp_path):
    assert cli("featurize", photos / "train" / "cat", tmp_path / "cats.h5", "--model", own["model"]).exit_code == 0
    result = cli("fit", own["train"], "--unlabeled", own["new"], "--unlabeled", tmp_path / "cats.h5",
                 "--out", tmp_path / "semi.skops", "--head", "semi")
    assert result.exit_code == 0, result.output
    _, info = load_head(tmp_path / "semi.skops")
    assert info["fitted_on"]["labeled_rows"] == 8
    assert info["fitted_on"]["unlabeled_rows"] == 12 + 3 + 4  # every row of the extra files is unlabeled
    assert len(info["fitted_on"]["unlabeled_files"]) == 2

    other = write_feature_file(tmp_path / "other.h5", np.zeros((3, 8)), [-1] * 3, ["a", "b", "c"], [], "abc")
    assert_one_line_error(cli("fit", own["train"], "--unlabeled", other, "--out", tmp_path / "x.skops"),
                          "featurize both with the same --model")


def test_labels_from_a_table_for_fit_and_for_featurize(cli, own, photos, tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("path,label\nphotos/train/u00.png,round\nu01.png,round\n./u02.png,square\nu03.png,square\n"
                     "gone.png,square\n")
    result = cli("fit", own["train"], "--labels", table, "--out", tmp_path / "t.skops", "--head", "logreg")
    assert result.exit_code == 0, result.output
    assert "1 of the 5 paths" in result.stderr and "gone.png" in result.stderr
    _, info = load_head(tmp_path / "t.skops")
    assert info["class_names"] == ["round", "square"] and info["fitted_on"]["labeled_rows"] == 4

    assert cli("featurize", photos / "train", tmp_path / "t.h5", "--model", own["model"], "--labels",
               table).exit_code == 0
    ff = read_features(tmp_path / "t.h5")
    assert ff.class_names == ["round", "square"]
    assert dict(zip(ff.paths, ff.labels.tolist()))["u02.png"] == 1 and (ff.labels == -1).sum() == 20 - 4

    bad = tmp_path / "bad.csv"
    bad.write_text("u00.png,round\nu00.png,square\n")
    assert_one_line_error(cli("fit", own["train"], "--labels", bad, "--out", tmp_path / "b.skops"),
                          "labeled both 'round' and 'square'")
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("elsewhere/a.png,cat\n")
    assert_one_line_error(cli("fit", own["train"], "--labels", nothing, "--out", tmp_path / "n.skops"),
                          "names an image here")


def test_predict_one_image_several_files_or_stdin_with_the_heads_own_extractor(cli, own, photos, tmp_path,
                                                                                monkeypatch):
    one = photos / "new" / "img1000.jpg"
    result = cli("predict", one, "--head", own["head"])  # no --model: the head knows its extractor
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()
    assert len(rows) == 2 and rows[1].startswith(f"{one},")

    two = [photos / "new" / "img1001.jpg", photos / "new" / "img1002.jpg"]
    assert len(cli("predict", *two, "--head", own["head"], "--no-header").stdout.splitlines()) == 2
    piped = cli("predict", "-", "--head", own["head"], "--format", "jsonl", input=f"{two[0]}\n{two[1]}\n")
    records = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in two] and all(r["label"] for r in records)
    monkeypatch.chdir(photos.parent)
    relative = cli("predict", "photos/new/img1000.jpg", "--head", own["head"]).stdout.splitlines()[1]
    absolute = cli("predict", "photos/new/img1000.jpg", "--head", own["head"], "--absolute-paths").stdout
    assert relative.startswith("photos/new/img1000.jpg,")
    assert absolute.splitlines()[1].startswith(f"{photos / 'new' / 'img1000.jpg'},")

    from_file = cli("predict", own["new"], "--head", own["head"]).stdout.splitlines()
    from_folder = cli("predict", photos / "new", "--head", own["head"]).stdout.splitlines()
    assert [r.split(",")[1:] for r in from_file] == [r.split(",")[1:] for r in from_folder]
    assert from_folder[1].split(",")[0] == f"{photos / 'new'}/img1000.jpg"  # as given, usable from here

    moved = tmp_path / "moved.onnx"
    own["model"].rename(moved)
    assert_one_line_error(cli("predict", one, "--head", own["head"]), "pass it with --model")
    assert cli("predict", one, "--head", own["head"], "--model", moved).exit_code == 0


def test_predict_output_formats(cli, own):
    head, new = own["head"], own["new"]
    top = cli("predict", new, "--head", head, "--top-k", 2, "--proba").stdout.splitlines()
    assert top[0] == "path,label,confidence,label_2,confidence_2,p_cat,p_dog"
    fields = top[1].split(",")
    assert {fields[1], fields[3]} == {"cat", "dog"} and float(fields[2]) >= float(fields[4])
    sure = cli("predict", new, "--head", head, "--min-confidence", 1.0, "--format", "jsonl").stdout.splitlines()
    record = json.loads(sure[0])
    assert record["label"] == "" and record["status"] == "below-min-confidence" and "confidence" in record
    assert_one_line_error(cli("predict", new, "--head", head, "--min-confidence", "nan"), "between 0 and 1")
    assert_one_line_error(cli("predict", new, "--head", head, "--top-k", 0), "at least 1")


def test_evaluate_folders_and_classes_the_head_never_saw(cli, own, photos, tmp_path):
    result = cli("evaluate", photos / "train", "--head", own["head"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows"] == 8 and set(report["per_class"]["cat"]) == {"precision", "recall", "f1", "support"}

    ff = read_features(own["train"])
    sha = ff.attrs["extractor_sha256"]
    foreign = write_feature_file(tmp_path / "foreign.h5", ff.features, np.where(ff.labels >= 0, 0, -1), ff.paths,
                                 ["horse"], sha)
    result = cli("evaluate", foreign, "--head", own["head"])
    assert_one_line_error(result, "none of the classes")
    assert "accuracy" not in result.stdout
    partly = write_feature_file(tmp_path / "partly.h5", ff.features, ff.labels, ff.paths, ["cat", "horse"], sha)
    result = cli("evaluate", partly, "--head", own["head"])
    assert result.exit_code == 0 and "never saw" in result.stderr and "horse" in result.stderr
    assert "site-packages" not in result.stderr


def test_info_reads_every_kind_of_file(cli, own, tiny_checkpoint):
    kinds = {}
    for path in (tiny_checkpoint, own["model"], own["head"], own["train"]):
        result = cli("info", path, "--json")
        assert result.exit_code == 0, result.output
        kinds[json.loads(result.stdout)["kind"]] = json.loads(result.stdout)
        assert cli("info", path).stdout.startswith("kind: ")
    assert set(kinds) == {"checkpoint", "extractor", "head", "features"}
    assert kinds["checkpoint"]["step"] == 30 and kinds["checkpoint"]["config"]["unet"]["width"] == 8
    assert kinds["head"]["classes"] == ["cat", "dog"] and kinds["head"]["head"] == "logreg"
    assert kinds["head"]["extractor_sha256"] == kinds["features"]["attributes"]["extractor_sha256"]
    assert kinds["features"]["rows_per_class"] == {"cat": 4, "dog": 4} and kinds["features"]["unlabeled_rows"] == 12
    assert kinds["features"]["skipped_files"] == 0  # notes.txt and Thumbs.db are not images: passed over


def test_files_that_are_not_images_do_not_fail_strict(cli, photos, rgb_onnx, tmp_path):
    result = cli("featurize", photos / "train", tmp_path / "s.h5", "--model", rgb_onnx, "--strict")
    assert result.exit_code == 0, result.output
    assert "notes.txt" not in result.stderr and "Thumbs.db" not in result.stderr


def test_dash_is_standard_output_for_text_and_refused_for_binary_outputs(cli, own, tmp_path):
    to_stdout = cli("predict", own["new"], "--head", own["head"], "--out", "-")
    assert to_stdout.exit_code == 0 and len(to_stdout.stdout.splitlines()) == 4 and not Path("-").exists()
    assert_one_line_error(cli("featurize", "digits:test", "-"), "binary file")
    assert_one_line_error(cli("fit", own["train"], "--out", "-"), "binary file")


def test_an_output_that_is_an_input_is_refused_even_with_overwrite(cli, own):
    before = own["train"].read_bytes()
    assert_one_line_error(cli("fit", own["train"], "--out", own["train"], "--overwrite"), "also an input")
    assert_one_line_error(cli("predict", own["new"], "--head", own["head"], "--out", own["new"], "--overwrite"),
                          "also an input")
    assert own["train"].read_bytes() == before


def test_quiet_after_the_command_and_flags_shown_as_flags(cli, own, tmp_path):
    loud = cli("fit", own["train"], "--out", tmp_path / "a.skops", "--head", "logreg")
    quiet = cli("fit", own["train"], "--out", tmp_path / "b.skops", "--head", "logreg", "-q")
    assert "wrote" in loud.stderr and quiet.exit_code == 0 and "wrote" not in quiet.stderr  # warnings stay
    helped = cli("featurize", "--help").stdout
    assert "diffclass[ray]" in helped and "<bool>" not in helped and "--overwrite " in helped
    assert "always measured on the held-out test split" not in cli("benchmark", "--help").stdout


def _run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "diffclass_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_progress_bars_only_on_a_terminal_unless_asked(tmp_path, rgb_onnx, photos):
    plain = _run("featurize", photos / "train", tmp_path / "a.h5", "--model", rgb_onnx)
    forced = _run("--progress", "featurize", photos / "train", tmp_path / "b.h5", "--model", rgb_onnx)
    assert plain.returncode == forced.returncode == 0, plain.stderr
    assert "featurizing:" not in plain.stderr and "featurizing:" in forced.stderr


def test_a_reader_that_stops_early_is_not_an_error(cli, own, tmp_path):
    ff = read_features(own["new"])
    big = write_feature_file(tmp_path / "big.h5", np.tile(ff.features, (4000, 1)), [-1] * 12000,
                             [f"x{i}.png" for i in range(12000)], [], ff.attrs["extractor_sha256"])
    reader = subprocess.Popen([sys.executable, "-m", "diffclass_cli", "predict", str(big), "--head",
                               str(own["head"]), "--proba"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.readline().startswith(b"path,label")
    reader.stdout.close()  # as `| head -1` does
    assert reader.wait(timeout=120) == 0
    assert b"Traceback" not in reader.stderr.read()


def test_benchmark_names_classes_and_defaults_to_what_the_labels_can_give(cli, tmp_path):
    pool = Split(np.zeros((7, 1, 4, 4), np.uint8), np.array([0, 0, 0, 1, 1, 1, 1]), [], ["cat", "dog"])
    assert labels_per_class(pool, (), "photos/labeled") == (1, 2)
    assert labels_per_class(pool, (3,), "photos/labeled") == (3,)
    with pytest.raises(DiffclassError, match=r"class 'cat' has 3 labeled images in photos/labeled, fewer than "
                                             r"the 100 per class"):
        labels_per_class(pool, (1, 100), "photos/labeled")

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "results.csv").write_text("mine")
    assert_one_line_error(cli("benchmark", "m.onnx", "--out", tmp_path / "bench"), "already holds files")
    assert (tmp_path / "bench" / "results.csv").read_text() == "mine"


def test_written_files_follow_the_umask(cli, tiny_checkpoint, tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    out = tmp_path / "grid.png"
    assert cli("sample", tiny_checkpoint, "--out", out, "--n", 2, "--ddim-steps", 2).exit_code == 0
    copy = tmp_path / "copy.ckpt"
    from diffclass_cli.backbone.checkpoint import load_checkpoint, save_checkpoint

    save_checkpoint(load_checkpoint(tiny_checkpoint), copy)
    for path in (out, copy):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_sample_does_not_overwrite_pngs_in_out_dir(cli, tiny_checkpoint, tmp_path):
    (tmp_path / "each").mkdir()
    (tmp_path / "each" / "sample_0001.png").write_bytes(b"mine")
    result = cli("sample", tiny_checkpoint, "--out", tmp_path / "g.png", "--n", 2, "--ddim-steps", 2,
                 "--out-dir", tmp_path / "each")
    assert_one_line_error(result, "already exists; pass --overwrite")
    assert (tmp_path / "each" / "sample_0001.png").read_bytes() == b"mine"

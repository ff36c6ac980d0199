"""Label tables as people write them: spreadsheets' byte-order marks and delimiters, headers named
as people name them, blank rows, quoted cells, and the JSON lines that `predict` writes; a table
that cannot be read unambiguously is refused in one line."""

import json

import numpy as np
import pytest

from diffclass_cli.data.labels_table import labels_for, read_labels_table
from diffclass_cli.errors import DiffclassError
from tests.conftest import assert_one_line_error, write_feature_file

PATHS = ["bag/a.jpg", "bag/b.jpg", "cup/c.jpg", "cup/d.jpg", "e.jpg", "f,g.jpg"]


def _table(tmp_path, text: str, encoding: str = "utf-8", name: str = "labels.csv"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def test_a_spreadsheets_csv_utf8_of_suggests_list_reads_its_label_column(tmp_path):
    """suggest's to-label.csv, filled in and saved as "CSV UTF-8": a byte-order mark before `path`."""
    text = ("path,rank,cluster,cluster_size,typicality,label,why\r\n"
            "e.jpg,1,0,40,0.9,cup,\"largest cluster, typical\"\r\n"
            "\"f,g.jpg\",2,1,30,0.8,,\"second, typical\"\r\n"
            "bag/a.jpg,3,2,20,0.7,bag,\r\n\r\n")
    path = _table(tmp_path, "\ufeff" + text)
    assert read_labels_table(path) == {"e.jpg": "cup", "bag/a.jpg": "bag"}


@pytest.mark.parametrize("text", [
    "File name,Class\ne.jpg,cup\nbag/a.jpg,bag\n",
    "IMAGE;Category\ne.jpg;cup\nbag/a.jpg;bag\n",
    "filename\tlabel\ne.jpg\tcup\nbag/a.jpg\tbag\n\n\n",
    "e.jpg,cup\nbag/a.jpg,bag\n\n",
    '"e.jpg","cup"\n"bag/a.jpg","bag"\n',
    '{"path": "e.jpg", "label": "cup", "confidence": 0.9}\n{"path": "bag/a.jpg", "label": "bag"}\n'
    '{"path": "f,g.jpg", "label": null}\n',
], ids=["spaced-header", "semicolons", "tabs-and-blank-rows", "no-header", "quoted", "jsonl"])
def test_tables_as_people_write_them(tmp_path, text):
    assert read_labels_table(_table(tmp_path, text)) == {"e.jpg": "cup", "bag/a.jpg": "bag"}


def test_a_quoted_path_may_hold_the_delimiter(tmp_path):
    assert read_labels_table(_table(tmp_path, 'path,label\n"f,g.jpg",cup\n')) == {"f,g.jpg": "cup"}


@pytest.mark.parametrize(("text", "message"), [
    ("e.jpg,cup,3\nbag/a.jpg,bag,4\n", "no header row names a path and a label column"),
    ("e.jpg cup\nbag/a.jpg bag\n", "one column"),
    ("path,label\ne.jpg,cup\ne.jpg,bag\n", "labeled both"),
    ('{"file": "e.jpg"}\n', "no path and label keys"),
    ("path,label\n" + "x" * 200_000 + ",cup\n", "not a labels table CSV"),
])
def test_ambiguous_or_broken_tables_are_refused_in_one_line(tmp_path, text, message):
    with pytest.raises(DiffclassError, match=message):
        read_labels_table(_table(tmp_path, text))


def test_numbers_for_labels_where_the_folders_have_names_are_refused(tmp_path):
    table = {"e.jpg": "1", "bag/a.jpg": "2"}
    with pytest.raises(DiffclassError, match="every label .* is a number"):
        labels_for(PATHS, table, tmp_path / "t.csv", folder_classes=["bag", "cup"])
    labels, names = labels_for(PATHS, table, tmp_path / "t.csv", folder_classes=["0", "1"])  # digits as classes
    assert names == ["1", "2"] and labels.tolist() == [1, -1, -1, -1, 0, -1]


def test_fit_reads_back_what_predict_writes_as_json_lines(cli, tmp_path):
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (20, 4)), rng.normal(5, 1, (20, 4))])
    paths = [f"img{i}.png" for i in range(40)]
    pool = write_feature_file(tmp_path / "pool.h5", features, np.full(40, -1), paths, [])
    table = _table(tmp_path, "\ufeffFile name;Class\nimg0.png;low\nimg1.png;low\nimg20.png;high\nimg21.png;high\n")
    assert cli("fit", pool, "--labels", table, "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    predicted = cli("predict", pool, "--head", tmp_path / "h.skops", "--format", "jsonl",
                    "--out", tmp_path / "p.jsonl")
    assert predicted.exit_code == 0, predicted.output
    again = cli("fit", pool, "--labels", tmp_path / "p.jsonl", "--out", tmp_path / "h2.skops", "--head", "logreg")
    assert again.exit_code == 0, again.output
    info = json.loads(cli("info", tmp_path / "h2.skops", "--json").stdout)
    assert info["classes"] == ["high", "low"] and info["fitted_on"]["labeled_rows"] == 40


def test_a_table_with_the_wrong_column_is_one_line_not_a_head(cli, tmp_path):
    rng = np.random.default_rng(0)
    folder_labels = np.array([0] * 5 + [1] * 5 + [-1] * 10)
    pool = write_feature_file(tmp_path / "pool.h5", rng.normal(size=(20, 4)), folder_labels,
                              [f"{'bag' if i < 5 else 'cup'}/{i}.png" for i in range(20)], ["bag", "cup"])
    table = _table(tmp_path, "".join(f"{i}.png,{i + 1}\n" for i in range(10, 20)))
    assert_one_line_error(cli("fit", pool, "--labels", table, "--out", tmp_path / "h.skops"), "is a number")

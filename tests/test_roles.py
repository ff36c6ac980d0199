"""Every command's inputs and outputs are declared on its run config, and one guard holds them
apart: no output may be an input (by device and inode, hard links too), lie inside an input
folder, or, for folder outputs, hold an input, whatever --overwrite says."""

import os
import typing
from pathlib import Path

import pytest

from diffclass_cli import runs
from diffclass_cli.options import INPUT, INPUT_ROOT, OUTPUT, OUTPUT_FOLDER, option_fields
from tests.conftest import assert_one_line_error, write_two_blobs

SOURCE_LIKE = {"source", "train", "test", "thumbnails", "choose_on", "predictions", "inputs", "init", "out"}
RUNS = [c for c in vars(runs).values() if isinstance(c, type) and issubclass(c, runs.Run) and c is not runs.Run]


@pytest.mark.parametrize("run_class", RUNS, ids=lambda c: c.__name__)
def test_every_file_or_folder_option_declares_its_role(run_class):
    hints = typing.get_type_hints(run_class)
    for f in option_fields(run_class):
        names_a_path = "Path" in str(hints[f.name]) or f.name in SOURCE_LIKE
        if names_a_path:
            assert f.metadata["role"] in (INPUT, INPUT_ROOT, OUTPUT, OUTPUT_FOLDER), f"{run_class.__name__}.{f.name}"
        else:
            assert f.metadata["role"] is None, f"{run_class.__name__}.{f.name}"


@pytest.fixture
def files(tmp_path):
    a, b = write_two_blobs(tmp_path / "a.h5"), write_two_blobs(tmp_path / "b.h5")
    table = tmp_path / "labels.csv"
    table.write_text("0.png,x\n15.png,y\n")
    images = tmp_path / "images"
    images.mkdir()
    from tests.conftest import write_image

    write_image(images / "cats" / "c.png")
    return {"a": a, "b": b, "table": table, "images": images, "root": tmp_path}


def _unchanged(paths):
    return {p: Path(p).read_bytes() for p in paths}


def test_no_command_writes_over_or_into_what_it_reads(cli, files, tmp_path):
    a, b, table, images = files["a"], files["b"], files["table"], files["images"]
    assert cli("fit", a, "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    head = tmp_path / "h.skops"
    os.link(a, tmp_path / "a-link.h5")
    before = _unchanged([a, b, table, head])
    refused = [
        ("predict", a, "--head", head, "--out", head, "--overwrite"),
        ("predict", a, "--head", head, "--out", a, "--overwrite"),
        ("merge", a, a, b, "--overwrite"),
        ("fit", a, "--labels", table, "--out", table, "--overwrite"),
        ("fit", a, "--out", tmp_path / "a-link.h5", "--overwrite"),
        ("featurize", images, images / "cats" / "c.h5"),
        ("featurize", images, a, "--model", a, "--overwrite"),
        ("plot", a, "--thumbnails", images, "--out", images / "x.png"),
        ("show-predictions", table, "--out", table, "--overwrite"),
        ("benchmark", a, "--train", images, "--test", images, "--out", images, "--overwrite"),
        ("benchmark", a, "--train", images, "--out", files["root"], "--overwrite"),
        ("suggest", a, "--copy-to", files["root"]),
    ]
    for args in refused:
        result = cli(*args)
        assert_one_line_error(result, "input of this command")
    assert _unchanged([a, b, table, head]) == before
    assert [p.name for p in (images / "cats").iterdir()] == ["c.png"]


def test_the_api_is_held_to_the_same_rule(files, tmp_path):
    from diffclass_cli import fit
    from diffclass_cli.errors import DiffclassError

    with pytest.raises(DiffclassError, match="input of this command"):
        fit(files["a"], files["a"], overwrite=True)


# --- one writer that never acts on a path twice ---------------------------------------------------------------------

@pytest.fixture
def victim(tmp_path):
    """Another file of the user's, private, that a planted link points at."""
    path = tmp_path / "private.txt"
    path.write_text("my secrets\n")
    path.chmod(0o600)
    return path


def _intact(victim):
    assert victim.read_text() == "my secrets\n" and (victim.stat().st_mode & 0o777) == 0o600


def test_planted_partials_are_refused_unread_and_unwritten(cli, files, victim, tmp_path):
    out = tmp_path / "h.skops"
    partial = tmp_path / "h.skops.partial"
    for plant in (lambda: os.link(victim, partial), lambda: partial.symlink_to(victim), lambda: os.mkfifo(partial)):
        plant()
        result = cli("fit", files["a"], "--out", out, "--head", "logreg")
        assert_one_line_error(result, "not a file this run made")
        assert not out.exists()
        partial.unlink()
    _intact(victim)


def test_a_link_swapped_in_while_writing_is_never_written_through_or_renamed(files, victim, tmp_path):
    from diffclass_cli.errors import DiffclassError
    from diffclass_cli.files import atomic_output

    out = tmp_path / "out.csv"
    with pytest.raises(DiffclassError, match="was replaced while this run wrote it"):
        with atomic_output(out) as name:
            link = tmp_path / "swap"
            link.symlink_to(victim)
            os.replace(link, tmp_path / "out.csv.partial")  # another user, in a shared folder
            with open(name, "w") as stream:  # the writer opens its output by the name it was given
                stream.write("path,label\n")
    _intact(victim)
    assert not out.exists()


def test_a_thread_swapping_links_during_real_runs_never_reaches_the_victim(cli, files, victim, tmp_path):
    import threading

    stop, out = threading.Event(), tmp_path / "h.skops"

    def swap():
        while not stop.is_set():
            link = tmp_path / f"link{threading.get_ident()}"
            try:
                link.symlink_to(victim)
                os.replace(link, tmp_path / "h.skops.partial")
            except OSError:
                pass

    thread = threading.Thread(target=swap)
    thread.start()
    try:
        for _ in range(5):
            result = cli("fit", files["a"], "--out", out, "--head", "logreg", "--overwrite")
            assert result.exit_code in (0, 1) and "Traceback" not in result.output
    finally:
        stop.set()
        thread.join()
    _intact(victim)
    assert not out.is_symlink()


def test_csv_cells_a_spreadsheet_would_run_are_quoted_and_read_back(cli, tmp_path):
    names = [f"=HYPERLINK(x){i}.png" if i % 2 else f"@{i}.png" for i in range(20)]
    pool = write_two_blobs(tmp_path / "p.h5", paths=names, class_names=("+low", "-high"))
    assert cli("fit", pool, "--out", tmp_path / "h.skops", "--head", "logreg").exit_code == 0
    result = cli("predict", pool, "--head", tmp_path / "h.skops", "--out", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    cells = [cell for line in (tmp_path / "p.csv").read_text().splitlines()[1:] for cell in line.split(",")[:2]]
    assert all(cell.startswith("'") for cell in cells)
    from diffclass_cli.data.labels_table import read_labels_table

    assert set(read_labels_table(tmp_path / "p.csv")) == set(names)
    assert set(read_labels_table(tmp_path / "p.csv").values()) <= {"+low", "-high"}

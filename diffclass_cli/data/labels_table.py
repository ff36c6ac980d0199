"""Labels from a table instead of class subfolders (`featurize --labels`, `fit --labels`): a
`path,label` CSV as people and spreadsheets write it, or JSON lines (what `predict --format
jsonl` and `suggest --format jsonl` write)."""

import csv
import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from diffclass_cli.console import log
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import existing_file

MAX_TABLE_BYTES = 256 * 1024 * 1024
MAX_CELL = 128 * 1024  # csv's own field limit: a longer cell is no path or label
SNIFFED_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
# Header names, compared lower-case without spaces, '_' or '-' ("File name" = "filename").
PATH_COLUMNS = ("path", "file", "filename", "filepath", "image", "imagepath", "imagename", "name")
LABEL_COLUMNS = ("label", "class", "category", "classname", "labelname", "target")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet may run as a formula (OWASP)


def spreadsheet_safe(cell: str) -> str:
    """A text cell for a CSV we write: one that a spreadsheet would take for a formula gets a
    leading apostrophe (read back without it by `table_rows`)."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def _unescaped(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS) else cell


def _column_name(cell: str) -> str:
    return "".join(c for c in cell.strip().lower() if c not in " _-")


def header_columns(row: list[str]) -> tuple[int, int] | None:
    """(path column, label column) when `row` is a header naming both, else None."""
    names = [_column_name(c) for c in row]
    found = [next((names.index(n) for n in wanted if n in names), None) for wanted in (PATH_COLUMNS, LABEL_COLUMNS)]
    return None if None in found else (found[0], found[1])


def read_labels_table(path: Path) -> dict[str, str]:
    """{path: label} from a labels table. CSV: any delimiter the sniffer finds, a byte-order mark,
    quoted cells and blank rows are taken as spreadsheets write them; a header row naming the path
    and label columns (path/file/filename/image, label/class/category, any case) may put them
    anywhere, and its rows with an empty label stay unlabeled (a list to fill in). Without a header
    the table must have two columns. JSON lines: objects with a path and a label key."""
    table: dict[str, str] = {}
    for number, name, label in table_rows(table_bytes(path, "labels table"), path):
        name = _normalised(name)
        if table.setdefault(name, label) != label:
            raise DiffclassError(f"{path}, line {number}: {name} is labeled both {table[name]!r} and {label!r}")
    if not table:
        raise DiffclassError(f"{path} has no labeled 'path,label' rows")
    return table


def table_bytes(source: Path | str, what: str) -> bytes:
    """The bytes of a table file, or of standard input for '-', at most MAX_TABLE_BYTES of them."""
    if str(source) == "-":
        data = sys.stdin.buffer.read(MAX_TABLE_BYTES + 1) if hasattr(sys.stdin, "buffer") \
            else sys.stdin.read().encode("utf-8", "surrogateescape")
    else:
        path = existing_file(source, what)
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise DiffclassError(f"{path} is larger than {MAX_TABLE_BYTES >> 20} MB; is it a {what}?")
        data = path.read_bytes()
    if len(data) > MAX_TABLE_BYTES:
        raise DiffclassError(f"standard input holds more than {MAX_TABLE_BYTES >> 20} MB; is it a {what}?")
    return data


def table_rows(data: bytes, name: Path | str):
    """(line number, path, label) of each labeled row of a table's bytes (CSV or JSON lines, as
    `read_labels_table` reads them); `name` is what errors call it."""
    text = data.decode("utf-8-sig", "surrogateescape")
    return _json_rows(text, name) if text.lstrip().startswith("{") else _csv_rows(text, name)


def _csv_rows(text: str, path: Path):
    """(line number, path, label) of each labeled row of a CSV table."""
    delimiter = _delimiter(text)
    previous = csv.field_size_limit(MAX_CELL)
    try:
        rows = [(number, row) for number, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter), 1)
                if any(cell.strip() for cell in row)]
    except csv.Error as err:
        raise DiffclassError(f"{path} is not a labels table CSV ({err})") from None
    finally:
        csv.field_size_limit(previous)
    if not rows:
        return
    columns = header_columns(rows[0][1])
    if columns is not None:
        rows = rows[1:]
    else:
        widths = sorted({len(row) for _, row in rows})
        if widths != [2]:
            first = delimiter.join(rows[0][1])[:80]
            hint = " (one column: separate path and label by a comma, semicolon or tab)" if widths[-1] == 1 else ""
            raise DiffclassError(
                f"{path}: no header row names a path and a label column, and its rows have {widths[-1]} columns, not "
                f"2 (first row {first!r}){hint}; add a header such as 'path,label'")
        columns = (0, 1)
    for number, row in rows:
        if len(row) <= max(columns) or not row[columns[0]].strip():
            raise DiffclassError(f"{path}, line {number}: expected a path and a label, got {','.join(row)[:80]!r}")
        label = _unescaped(row[columns[1]].strip())
        if label:  # rows not filled in yet stay unlabeled
            yield number, _unescaped(row[columns[0]]), label


def _delimiter(text: str) -> str:
    """The delimiter whose split of the first line is a header naming path and label columns,
    else the one csv's sniffer finds, else a comma. Quotes are always double quotes."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    for delimiter in DELIMITERS:
        try:
            if header_columns(next(csv.reader([first[:MAX_CELL]], delimiter=delimiter), [])):
                return delimiter
        except csv.Error:
            continue
    try:
        return csv.Sniffer().sniff(text[:SNIFFED_BYTES], delimiters=DELIMITERS).delimiter
    except csv.Error:  # one column, or nothing to tell by
        return ","


def _json_rows(text: str, path: Path):
    """(line number, path, label) of each labeled object of a JSON lines table."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            raise DiffclassError(f"{path}, line {number}: not a JSON object") from None
        if not isinstance(record, dict):
            raise DiffclassError(f"{path}, line {number}: not a JSON object")
        columns = header_columns(list(record))
        if columns is None:
            raise DiffclassError(f"{path}, line {number}: no path and label keys (has {', '.join(record)[:80]})")
        name, label = (list(record.values())[c] for c in columns)
        if not isinstance(name, str) or not isinstance(label, str | int | type(None)):
            raise DiffclassError(f"{path}, line {number}: the path and the label must be text")
        if label is not None and str(label).strip():
            yield number, name, str(label).strip()


def labels_for(paths: list[str], table: dict[str, str], table_path: Path,
               folder_classes: list[str] = ()) -> tuple[np.ndarray, list[str]]:
    """Labels `[N]` (UNLABELED for paths the table does not name) and the sorted class names.

    A table path matches a row's path exactly, or after dropping leading folders
    (`photos/train/cat/1.jpg` names the row `cat/1.jpg` of a feature file of `photos/train`),
    or by file name alone when only one row has that name. Labels that are all numbers where
    the class folders have names are refused: the table's label column is most likely another
    one (a rank, a count)."""
    _refuse_numbers_for_names(table, folder_classes, table_path)
    where = {_normalised(p): i for i, p in enumerate(paths)}
    by_name: dict[str, list[int]] = {}
    for p, i in where.items():
        by_name.setdefault(PurePosixPath(p).name, []).append(i)
    class_names = sorted(set(table.values()))
    code = {name: i for i, name in enumerate(class_names)}
    labels = np.full(len(paths), UNLABELED, dtype=np.int64)
    unmatched = []
    for name, label in table.items():
        row = _match(name, where, by_name)
        if row is None:
            unmatched.append(name)
        else:
            labels[row] = code[label]
    if len(unmatched) == len(table):
        here = f"here: {paths[0]!r}, ..." if paths else "no images here"
        raise DiffclassError(f"none of the {len(table)} paths of {table_path} names an image here "
                             f"(e.g. {unmatched[0]!r}; {here})")
    if unmatched:
        log.warning(f"{len(unmatched)} of the {len(table)} paths of {table_path} name no image here: "
                    + ", ".join(unmatched[:3]) + (", ..." if len(unmatched) > 3 else ""))
    log.info(f"labels from {table_path}: {int((labels != UNLABELED).sum())} labeled images in "
             f"{len(class_names)} classes, {int((labels == UNLABELED).sum())} unlabeled")
    return labels, class_names


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _refuse_numbers_for_names(table: dict[str, str], folder_classes, table_path: Path) -> None:
    names = [c for c in folder_classes if not _is_number(c)]
    if names and all(_is_number(label) for label in table.values()):
        shown = ", ".join(sorted(set(table.values()), key=float)[:5])
        raise DiffclassError(f"every label in {table_path} is a number ({shown}, ...) while the class folders have "
                             f"names ({', '.join(names[:3])}, ...): is the label column the right one? Name it "
                             "'label' in a header row")


def _normalised(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).as_posix()  # never stripped: a name may hold spaces


def _match(name: str, where: dict[str, int], by_name: dict[str, list[int]]) -> int | None:
    parts = PurePosixPath(name).parts
    for start in range(len(parts)):
        row = where.get(PurePosixPath(*parts[start:]).as_posix())
        if row is not None:
            return row
    same_name = by_name.get(parts[-1], []) if parts else []
    return same_name[0] if len(same_name) == 1 else None

"""The documentation stays true to the code: the generated reference is fresh, every command line
in the README and the guide parses against the CLI, the README's results come from the results
file, and the project's files speak of the project only."""

import csv
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer.main

from diffclass_cli.benchmark.report import summary_markdown
from diffclass_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent
COMMAND_DOCS = [ROOT / "README.md", ROOT / "docs" / "guide.md"]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_is_generated_from_the_code_and_up_to_date():
    reference = _load_script("cli_reference").reference()
    assert (ROOT / "docs" / "cli.md").read_text() == reference, "run: python scripts/cli_reference.py"
    for command in app.registered_commands:
        assert f"## `diffclass {command.name or command.callback.__name__.replace('_', '-')}`" in reference


def command_lines(text: str) -> list[str]:
    """Every `diffclass ...` invocation in fenced bash blocks and inline code spans, continuations joined."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            found += _invocations(line)
    for span in re.findall(r"(?<!`)`(diffclass [^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S)):
        if len(span.split()) > 2:  # `diffclass predict` alone names a command, it is no command line
            found += _invocations(span)
    return found


def _invocations(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    tokens, commands, current = list(lexer), [], None
    for token in tokens:
        if token in ("|", "||", "&&", ";", ">", ">>", "<", "&", "2>"):
            current = None
        elif current is None and token == "diffclass":
            current = []
            commands.append(current)
        elif current is not None:
            current.append(token)
    return [shlex.join(["diffclass", *args]) for args in commands]


def _parse(args: list[str]) -> None:
    """Parse like the CLI would, without running the command: an unknown command or option, a bad
    choice or a value out of range raises."""
    group = typer.main.get_command(app)
    context = group.make_context("diffclass", list(args), resilient_parsing=False)
    rest = [*getattr(context, "_protected_args", []), *context.args] or list(getattr(context, "protected_args", []))
    if rest:
        name, command, sub_args = group.resolve_command(context, rest)
        command.make_context(name, sub_args, parent=context, resilient_parsing=False)


def test_the_readme_and_the_guide_show_commands_the_cli_accepts():
    lines = [line for doc in COMMAND_DOCS for line in command_lines(doc.read_text())]
    assert len(lines) >= 15, lines
    for line in lines:
        try:
            _parse(shlex.split(line)[1:])
        except Exception as err:  # noqa: BLE001 - every kind of refusal is a documentation bug here
            pytest.fail(f"{line!r} does not parse: {type(err).__name__}: {err}")


def test_a_wrong_command_line_in_the_docs_would_be_caught():
    with pytest.raises(Exception):  # noqa: B017 - the parser's own exception types are Typer's internals
        _parse(["fit", "train.h5", "--out", "h.skops", "--no-such-option"])
    with pytest.raises(Exception):  # noqa: B017
        _parse(["fitt", "train.h5"])
    assert command_lines("```bash\ndiffclass fit a.h5 \\\n  --out h.skops | head  # note\n```") == [
        "diffclass fit a.h5 --out h.skops"]


def _table_rows(text: str, header: str) -> list[str]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


@pytest.mark.parametrize("document", ["README.md", "exports/mnist-sample-ddpm.md"])
def test_the_headline_results_come_from_the_results_file(document):
    with open(ROOT / "docs" / "benchmark" / "results.csv") as f:
        rows = [{**row, "per_class": int(row["per_class"]), "accuracy": float(row["accuracy"])}
                for row in csv.DictReader(f)]
    generated = set(summary_markdown(rows).splitlines())
    shown = _table_rows((ROOT / document).read_text(), "| feature set | head | 1 | 2 | 5 | 10 | 32 | 100 |")
    assert len(shown) >= 4
    for row in shown:
        assert row in generated, f"{document}: {row} is not in docs/benchmark/results.csv"


# Spelled in two parts so that this file does not match itself. In code, "session" is onnxruntime's
# (or pytest's fixture scope), so there only a numbered one counts.
WORK_SESSION_IN_PROSE = re.compile(r"\bsess" r"ions?\b", re.I)
WORK_SESSION_IN_CODE = re.compile(r"\bsess" r"ions? ?[0-9]", re.I)
RUNTIME_SESSION = re.compile(r"inference ?session|onnxruntime session", re.I)
ISSUE_NUMBER = re.compile(r"\biss" r"ues? ?#?[0-9]+", re.I)


def _project_files():
    yield from (ROOT / name for name in ("README.md", "CHANGELOG.md"))
    for folder, pattern in (("docs", "*.md"), ("exports", "*.md"), ("diffclass_cli", "*.py"), ("tests", "*.py"),
                            ("benchmarks", "*.py"), ("scripts", "*")):
        yield from sorted((ROOT / folder).rglob(pattern))


def test_the_project_speaks_of_itself_not_of_work_sessions_or_issue_numbers():
    found = []
    for path in _project_files():
        work_session = WORK_SESSION_IN_PROSE if path.suffix == ".md" else WORK_SESSION_IN_CODE
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if ISSUE_NUMBER.search(line) or (work_session.search(line) and not RUNTIME_SESSION.search(line)):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not found, "\n".join(found)


def test_the_front_doors_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    card = (ROOT / "exports" / "mnist-sample-ddpm.md").read_text()
    assert len(card.splitlines()) <= 150
    for section in ("Model details", "Intended use", "Out-of-scope", "Training data", "Evaluation", "Metrics",
                    "Limitations", "How to reproduce", "Licence"):
        assert f"## {section}" in card, section

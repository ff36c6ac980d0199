"""Write docs/cli.md, the reference of every command and option, from the command line itself.

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 if docs/cli.md is out of date

It reads the commands' declarations (their Typer options and docstrings), not a rendered
`--help`, so the reference does not change with Typer's formatting. tests/test_docs.py runs
the check, so the reference cannot drift from the code.
"""

import argparse
import enum
import inspect
import sys
import types
import typing
from pathlib import Path

from typer.models import ArgumentInfo, OptionInfo

from diffclass_cli.cli import app

TARGET = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
TYPE_NAMES = {int: "integer", float: "number", str: "text", Path: "path", bool: "flag"}


def _parameters(function) -> list[tuple[str, type, OptionInfo | ArgumentInfo, object]]:
    """(name, type, Typer info, default) of each parameter declared with Annotated[T, typer.X(...)]."""
    hints = typing.get_type_hints(function, include_extras=True)
    found = []
    for name, parameter in inspect.signature(function).parameters.items():
        base, *extras = typing.get_args(hints[name]) or (hints[name],)
        info = next((extra for extra in extras if isinstance(extra, OptionInfo | ArgumentInfo)), None)
        if info is not None:  # not the Context a command may take
            found.append((name, base, info, parameter.default))
    return found


def _bare(annotation) -> type:
    """int | None -> int; list[Path] -> Path."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation


def _type_name(annotation) -> str:
    bare = _bare(annotation)
    if isinstance(bare, type) and issubclass(bare, enum.Enum):
        return " \\| ".join(f"`{member.value}`" for member in bare)
    name = TYPE_NAMES.get(bare, getattr(bare, "__name__", str(bare)))
    return f"{name} (several)" if typing.get_origin(annotation) is list else name


def _names(name: str, annotation, info) -> str:
    if isinstance(info, ArgumentInfo):
        return f"`{name.upper()}`"
    # typer.Option("--quiet", "-q"): Typer takes a first argument that starts with "-" as a name, not a default.
    given = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str) and d.startswith("-")]
    decls = given or [f"--{name.replace('_', '-')}"]
    if _bare(annotation) is bool and not given:
        decls = [f"{decls[0]} / --no-{decls[0][2:]}"]
    return ", ".join(f"`{d}`" for d in decls)


def _default(annotation, default) -> str:
    if default is inspect.Parameter.empty:
        return "required"
    if default is None or _bare(annotation) is bool:
        return ""
    return f"`{default.value if isinstance(default, enum.Enum) else default}`"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def _table(function) -> list[str]:
    lines = ["| argument / option | type | default | meaning |", "|---|---|---|---|"]
    for name, annotation, info, default in _parameters(function):
        lines.append(f"| {_names(name, annotation, info)} | {_type_name(annotation)} | "
                     f"{_default(annotation, default)} | {_one_line(info.help)} |")
    return lines


def _command_section(name: str, function) -> list[str]:
    doc = inspect.cleandoc(function.__doc__ or "").replace("\\n", "")
    summary, _, rest = doc.partition("\n\n")
    lines = [f"## `diffclass {name}`", "", " ".join(summary.split()), ""]
    description, _, examples = rest.partition("Examples:")
    if description.strip():
        lines += [" ".join(description.split()), ""]
    if examples.strip():
        lines += ["```bash", *(line.strip() for line in examples.strip().splitlines() if line.strip()), "```", ""]
    return [*lines, *_table(function), ""]


def reference() -> str:
    lines = ["# Command reference", "",
             "Generated from the command line's declarations by `python scripts/cli_reference.py`; do not edit by "
             "hand. `diffclass COMMAND --help` prints the same, with examples.", "",
             " ".join((app.info.help or "").split()), "",
             "## `diffclass`", "", "Options given before the command:", "",
             *_table(app.registered_callback.callback), ""]
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")
        lines += _command_section(name, command.callback)
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is out of date")
    text = reference()
    if parser.parse_args().check:
        if not TARGET.is_file() or TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

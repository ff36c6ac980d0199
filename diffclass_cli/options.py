"""Options declared once: a dataclass field made with `option(...)` carries its default, help
text, range and command-line spelling. The configs validate their fields with `check_options`
(the Python API's errors), and the command line builds its Typer options from the same fields
(cli.py), so a default, a range or a help text is written in one place.

No heavy imports: the command line imports this to build itself."""

import math
import numbers
import os
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields
from enum import Enum
from pathlib import Path
from types import UnionType
from typing import Union, get_args, get_origin, get_type_hints

from diffclass_cli.errors import DiffclassError

INT_LIMIT = 2**31 - 1  # no count, size or step of ours comes near it; past it libraries overflow
SEED_HIGH = 2**32 - 1  # what numpy and torch take as a seed
MAX_PROCESSES = 1024


INPUT, OUTPUT, OUTPUT_FOLDER = "input", "output", "output folder"  # what a path option is to its command
INPUT_ROOT = "input root"  # a folder a library reads its own files from (torchvision's): outputs may lie in it


def option(help: str, default=MISSING, *, low: float | None = None, high: float | None = None, above: bool = False,
           flags: tuple[str, ...] = (), metavar: str | None = None, argument: bool = False, negatable: bool = False,
           text: Callable | None = None, show_default: bool | str = True, role: str | None = None) -> Field:
    """A config field that is also an option. `low`/`high`: its range (`above`: low itself is
    refused); `flags`: its spelling (default `--field-name`); `argument`: positional on the command
    line; `negatable`: a flag with a `--no-` form; `text`: it is typed as text and parsed by this
    function (e.g. '1,2,2' -> (1, 2, 2)); `role`: for a file or folder, INPUT (read), INPUT_ROOT,
    OUTPUT (a file written) or OUTPUT_FOLDER (a folder written), which
    files.refuse_inputs_as_outputs holds apart."""
    metadata = {"help": help, "low": low, "high": high, "above": above, "flags": flags, "metavar": metavar,
                "argument": argument, "negatable": negatable, "text": text, "show_default": show_default,
                "role": role}
    return field(default=default, metadata=metadata)


def seed_option(default: int = 0) -> Field:
    return option("Random seed; the same seed gives the same result.", default, low=0, high=SEED_HIGH)


def refuse_unknown(given, known, what: str = "option") -> None:
    """One line naming the keyword arguments that are none of `known` (a typo is not ignored)."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise DiffclassError(f"unknown {what}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def is_option(f: Field) -> bool:
    return "help" in f.metadata


def option_fields(cls) -> list[Field]:
    return [f for f in fields(cls) if is_option(f)]


def flag_of(f: Field) -> str:
    return f.metadata["flags"][0] if f.metadata["flags"] else "--" + f.name.replace("_", "-")


def check_value(f: Field, value) -> None:
    """Refuse a value outside the field's range, and NaN or infinities, in one line that names its flag."""
    low, high, above = f.metadata.get("low"), f.metadata.get("high"), f.metadata.get("above")
    if value is None or isinstance(value, bool) or (low is None and high is None):
        return
    high = INT_LIMIT if high is None else high
    if isinstance(value, float) and math.isnan(value):
        raise DiffclassError(f"{flag_of(f)} must be between {low:g} and {high:g}, not {_shown(value)}")
    if value <= low if above else value < low:
        raise DiffclassError(f"{flag_of(f)} must be {'above' if above else 'at least'} {low:g}, not {_shown(value)}")
    if value > high:
        raise DiffclassError(f"{flag_of(f)} must be at most {high:g}, not {_shown(value)}")


def _shown(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def coerced(f: Field, hint, value):
    """`value` as the type `hint` of the field: text or a path-like as a Path, a choice's value as
    the Enum, an int as a float, a number as text; a single item as a list of one. Anything else that is not of the
    type is one line naming the flag (the Python API's keyword arguments arrive unchecked)."""
    arms = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) in (Union, UnionType) else [hint]
    if value is None:
        if len(arms) < len(get_args(hint)) or hint is type(None):
            return None
        raise DiffclassError(f"{flag_of(f)} needs a value")
    kind = arms[0]
    if get_origin(kind) is list:
        values = [value] if isinstance(value, str | os.PathLike) else value
        if not isinstance(values, list | tuple):
            raise DiffclassError(f"{flag_of(f)} takes a list, not {value!r}")
        return [_coerced_one(f, get_args(kind)[0], v) for v in values]
    return _coerced_one(f, kind, value)


def _coerced_one(f: Field, kind, value):
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value.value if isinstance(value, Enum) else value)
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise DiffclassError(f"{flag_of(f)} takes one of {choices}, not {value!r}") from None
    number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    if kind is str and (isinstance(value, str | os.PathLike) or number):  # a timestep may come as 50 or "50"
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if kind is int and number and float(value).is_integer() and not isinstance(value, float):
        return int(value)
    if kind is float and number:
        return float(value)
    if kind is bool and (isinstance(value, bool) or type(value).__name__ == "bool_"):  # numpy's too
        return bool(value)
    if kind not in (Path, str, int, float, bool):
        return value
    name = {Path: "a path", str: "text", int: "a whole number", float: "a number", bool: "True or False"}[kind]
    raise DiffclassError(f"{flag_of(f)} takes {name}, not {value!r}")


def coerce_options(config) -> None:
    """Each option field of a frozen dataclass instance made its declared type (`coerced`)."""
    hints = get_type_hints(type(config))
    for f in option_fields(type(config)):
        object.__setattr__(config, f.name, coerced(f, hints[f.name], getattr(config, f.name)))


def check_options(config) -> None:
    """`check_value` on each option field of a dataclass instance (call it in `__post_init__`)."""
    for f in option_fields(type(config)):
        check_value(f, getattr(config, f.name))


def parse_ints(text: str | tuple, option: str = "the option") -> tuple[int, ...]:
    """'1,2,2' -> (1, 2, 2); a tuple passes through."""
    if not isinstance(text, str):
        return tuple(text)
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise DiffclassError(f"{option} takes comma-separated whole numbers, not {text!r}") from None
    if not values:
        raise DiffclassError(f"{option} needs at least one number")
    return values

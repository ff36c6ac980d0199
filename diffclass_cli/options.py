"""Options declared once: a dataclass field made with `option(...)` carries its default, help
text, range and command-line spelling. The configs validate their fields with `check_options`
(the Python API's errors), and the command line builds its Typer options from the same fields
(cli.py), so a default, a range or a help text is written in one place.

No heavy imports: the command line imports this to build itself."""

import math
from collections.abc import Callable
from dataclasses import MISSING, Field, field, fields

from diffclass_cli.errors import DiffclassError

INT_LIMIT = 2**31 - 1  # no count, size or step of ours comes near it; past it libraries overflow
SEED_HIGH = 2**32 - 1  # what numpy and torch take as a seed
MAX_PROCESSES = 1024


def option(help: str, default=MISSING, *, low: float | None = None, high: float | None = None, above: bool = False,
           flags: tuple[str, ...] = (), metavar: str | None = None, argument: bool = False, negatable: bool = False,
           text: Callable | None = None, show_default: bool | str = True) -> Field:
    """A config field that is also an option. `low`/`high`: its range (`above`: low itself is
    refused); `flags`: its spelling (default `--field-name`); `argument`: positional on the command
    line; `negatable`: a flag with a `--no-` form; `text`: it is typed as text and parsed by this
    function (e.g. '1,2,2' -> (1, 2, 2))."""
    metadata = {"help": help, "low": low, "high": high, "above": above, "flags": flags, "metavar": metavar,
                "argument": argument, "negatable": negatable, "text": text, "show_default": show_default}
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

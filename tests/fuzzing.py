"""Seeded fuzz cases for the command line: odd option values on otherwise valid commands, and
forged feature files, extractor metadata and head fields. Each case must end in exit 0, 1 or 2,
with no traceback and, for exit 1, one `diffclass: error:` line. tests/test_fuzz.py runs a
bounded sample in the suite; a longer run:

    DIFFCLASS_FUZZ_CASES=2000 python -m pytest tests/test_fuzz.py -q
"""

import enum
import inspect
import json
import random
import typing
from pathlib import Path

import h5py
import numpy as np
import onnx
from typer.models import ArgumentInfo, OptionInfo

from diffclass_cli.cli import app

SKIPPED_OPTIONS = {"engine", "device", "download"}  # a Ray cluster or a CUDA device: tested on their own
NUMBERS = ["-1", "0", "1", "3.5", "nan", "inf", "-inf", "1e20", "99999999999999999999", "2147483648", "²", "٣",
           "", " ", "0x10"]
TEXTS = ["", " ", "-", "--", "²/3", "1/0", "0/0", "3/2", "x" * 300, "a,b", ",", "1,,2", "../..", "auto", "\t",
         "名前", "0", "-1", "nan", "global", "100x100", "2x3", "1,2,0"]


def options(command: str) -> list[tuple[str, object]]:
    """(option name, its bare type) of every option of `command` (flags left out)."""
    function = next(c.callback for c in app.registered_commands
                    if (c.name or c.callback.__name__.replace("_", "-")) == command)
    hints = typing.get_type_hints(function, include_extras=True)
    found = []
    for name in inspect.signature(function).parameters:
        base, *extras = typing.get_args(hints[name]) or (hints[name],)
        info = next((e for e in extras if isinstance(e, OptionInfo | ArgumentInfo)), None)
        if not isinstance(info, OptionInfo):  # an argument, or the Context a command takes
            continue
        bare = next((a for a in typing.get_args(base) if a is not type(None)), base) if typing.get_args(base) else base
        if bare is bool or name in SKIPPED_OPTIONS:
            continue
        decls = [d for d in (info.default, *(info.param_decls or ())) if isinstance(d, str) and d.startswith("--")]
        found.append((decls[0] if decls else f"--{name.replace('_', '-')}", bare))
    return found


def odd_value(kind, rng: random.Random) -> str:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return rng.choice(["", "AUTO", "none", "x", *(m.value for m in kind)])
    if kind in (int, float):
        return rng.choice(NUMBERS)
    return rng.choice(TEXTS + NUMBERS)


def option_case(rng: random.Random, bases: dict[str, list[str]]) -> list[str]:
    """A valid command line of `bases` with one or two of its options set to odd values."""
    command = rng.choice(sorted(bases))
    args = list(bases[command])
    for name, kind in rng.sample(options(command), k=min(2, len(options(command)))):
        if name in args:  # replace the base's value of that option
            at = args.index(name)
            del args[at:at + 2]
        args += [name, odd_value(kind, rng)]
    return [command, *args]


def forged_feature_file(source: Path, out: Path, rng: random.Random) -> str:
    """A copy of a feature file with one thing forged; returns what."""
    out.write_bytes(source.read_bytes())
    how = rng.choice(["labels-float", "labels-string", "labels-range", "labels-2d", "class-names-int",
                      "class-names-scalar", "no-features", "features-0-columns", "features-int", "features-3d",
                      "paths-int", "attr-sha-int", "attr-rows-huge", "attr-committed-junk", "skipped-1d",
                      "attr-feature-dim-string", "class-names-long", "paths-short", "drop-attrs", "no-skipped"])
    with h5py.File(out, "a") as f:
        replace = {
            "labels-float": ("labels", lambda d: d.astype(np.float32) + 0.5),
            "labels-string": ("labels", lambda d: np.array([b"cat"] * len(d), dtype=h5py.string_dtype())),
            "labels-range": ("labels", lambda d: d + 10**9),
            "labels-2d": ("labels", lambda d: np.stack([d, d], axis=1)),
            "class-names-int": ("class_names", lambda d: np.arange(len(d))),
            "class-names-scalar": ("class_names", lambda d: np.array(b"one", dtype=h5py.string_dtype())),
            "features-0-columns": ("features", lambda d: d[:, :0]),
            "features-int": ("features", lambda d: d.astype(np.int64)),
            "features-3d": ("features", lambda d: d[:, :, None]),
            "paths-int": ("paths", lambda d: np.arange(len(d))),
            "skipped-1d": ("skipped", lambda d: np.array([b"x"], dtype=h5py.string_dtype())),
            "class-names-long": ("class_names", lambda d: np.array([b"n" * 100_000] * max(1, len(d)),
                                                                   dtype=h5py.string_dtype())),
            "paths-short": ("paths", lambda d: d[:1]),
        }
        if how in replace:
            name, change = replace[how]
            data = change(f[name][()])
            del f[name]
            f[name] = data
        elif how in ("no-features", "no-skipped"):
            del f[how[3:]]
        elif how == "attr-sha-int":
            f.attrs["extractor_sha256"] = 7
        elif how == "attr-rows-huge":
            f.attrs["rows"] = 10**15
        elif how == "attr-committed-junk":
            f.attrs["committed"] = np.array([-5.5, 1e30])
        elif how == "attr-feature-dim-string":
            f.attrs["feature_dim"] = "many"
        elif how == "drop-attrs":
            for key in list(f.attrs):
                del f.attrs[key]
    return how


def forged_extractor(source: Path, out: Path, rng: random.Random) -> str:
    """A copy of an extractor with one metadata value forged; returns what."""
    model = onnx.load(str(source))
    props = {p.key: p for p in model.metadata_props}
    key = rng.choice(sorted(props))
    value = rng.choice(['"x"', "-1", "0", "1e9", "[]", "{}", "null", "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]",
                        json.dumps([1] * 10_000), "not json", '{"a": ' * 2000 + "1" + "}" * 2000])
    props[key].value = value
    onnx.save(model, str(out))
    return f"{key}={value[:30]}"


def forged_head(source: Path, out: Path, rng: random.Random) -> str:
    """A copy of a head with one field of its info forged; returns what."""
    from diffclass_cli.heads.store import FORMAT, load_head, sio

    head, info = load_head(source)
    key = rng.choice(["class_names", "feature_dim", "extractor_sha256", "extractor_path", "head", "format"])
    value = rng.choice([None, 7, "x", [], ["a"], {"a": 1}, -1, "/etc/passwd", 10**12])
    content = {"format": FORMAT, "head": head, "info": {**info, key: value}}
    if key == "format":
        content["format"] = value
    sio.dump(content, out)
    return f"{key}={value!r}"

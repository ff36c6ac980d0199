"""No input a user can give ends in a traceback: seeded fuzz cases (tests/fuzzing.py) over option
values, forged feature files, forged extractor and classifier metadata and forged head fields."""

import os
import random

import numpy as np
import pytest

from tests.conftest import write_feature_file, write_image
from tests.fuzzing import forged_extractor, forged_feature_file, forged_head, option_case

CASES = int(os.environ.get("DIFFCLASS_FUZZ_CASES", "120"))  # per kind; 2000 and more outside the suite
SEED = int(os.environ.get("DIFFCLASS_FUZZ_SEED", "0"))


def assert_handled(result, case) -> None:
    """Exit 0, 1 or 2; no exception escaped; a user error is one line."""
    escaped = result.exception if result.exception and not isinstance(result.exception, SystemExit) else None
    assert escaped is None, f"{case}: {type(escaped).__name__}: {escaped}"
    assert result.exit_code in (0, 1, 2), f"{case}: exit {result.exit_code}"
    assert "Traceback" not in result.output, f"{case}: {result.output[-2000:]}"
    if result.exit_code == 1:
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("diffclass: error: ") and "\n" not in last, f"{case}: {result.stderr[-500:]}"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_checkpoint, tiny_onnx):
    """Small valid inputs for every command, so that only the odd value can go wrong; the
    commands run in a folder of their own (an odd value may well name a file to write)."""
    from typer.testing import CliRunner

    from diffclass_cli.cli import app

    root = tmp_path_factory.mktemp("fuzz")
    home = os.getcwd()
    os.chdir(root)
    for i in range(4):
        write_image(root / "imgs" / ("a" if i % 2 else "b") / f"{i}.png", size=(28, 28), mode="L", seed=i)
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(0, 1, (12, 6)), rng.normal(4, 1, (12, 6))])
    small = write_feature_file(root / "small.h5", features, np.repeat([0, 1], 12), [f"{i}.png" for i in range(24)],
                               ["a", "b"])
    runner = CliRunner()
    assert runner.invoke(app, ["fit", str(small), "--out", str(root / "h.skops"), "--head", "logreg"]).exit_code == 0
    for args in (["featurize", "imgs", "imgs.h5", "--model", tiny_onnx], ["fit", "imgs.h5", "--out", "imgs.skops",
                 "--head", "logreg"], ["export-classifier", "imgs.skops", "--out", "classifier.onnx"]):
        assert runner.invoke(app, [str(a) for a in args]).exit_code == 0, args
    out = str(root / "out")
    bases = {
        "train-backbone": [str(root / "imgs"), "--out", f"{out}.ckpt", "--steps", "1", "--width", "8",
                           "--channel-mults", "1,2", "--batch-size", "2", "--warmup", "1", "--overwrite"],
        "sample": [str(tiny_checkpoint), "--out", f"{out}.png", "--n", "1", "--ddim-steps", "1", "--overwrite"],
        "export": [str(tiny_checkpoint), "--out", f"{out}.onnx", "--overwrite"],
        "featurize": [str(root / "imgs"), f"{out}.h5", "--model", str(tiny_onnx), "--overwrite"],
        "fit": [str(small), "--out", f"{out}.skops", "--head", "logreg", "--overwrite"],
        "suggest": [str(small), "--budget", "2"],
        "predict": [str(small), "--head", str(root / "h.skops")],
        "evaluate": [str(small), "--head", str(root / "h.skops")],
        "plot": [str(small), "--out", f"{out}-map.png", "--method", "pca", "--overwrite"],
        "benchmark": [str(root / "missing.onnx"), "--out", str(root / "bench")],
        "merge": [f"{out}-merged.h5", str(small), "--overwrite"],
        "export-classifier": [str(root / "imgs.skops"), "--out", f"{out}-classifier.onnx", "--overwrite"],
    }
    yield {"root": root, "runner": runner, "app": app, "bases": bases, "small": small, "onnx": tiny_onnx,
           "head": root / "h.skops", "classifier": root / "classifier.onnx"}
    os.chdir(home)


def _invoke(world, args):
    return world["runner"].invoke(world["app"], [str(a) for a in args])


def test_odd_option_values_are_one_line(world):
    rng = random.Random(SEED)
    for _ in range(CASES):
        args = option_case(rng, world["bases"])
        assert_handled(_invoke(world, args), args)


def test_forged_feature_files_are_one_line(world):
    rng = random.Random(SEED)
    for i in range(CASES):
        forged = world["root"] / f"forged-{i % 7}.h5"
        how = forged_feature_file(world["small"], forged, rng)
        command = rng.choice([["fit", forged, "--out", world["root"] / "f.skops", "--overwrite"],
                              ["predict", forged, "--head", world["head"]],
                              ["evaluate", forged, "--head", world["head"]],
                              ["info", forged], ["suggest", forged, "--budget", "2"],
                              ["merge", world["root"] / "m.h5", forged, "--overwrite"]])
        assert_handled(_invoke(world, command), (how, command[0]))


def test_forged_extractor_metadata_and_head_fields_are_one_line(world):
    rng = random.Random(SEED)
    for i in range(max(1, CASES // 4)):
        forged = world["root"] / f"forged-{i % 5}.onnx"
        how = forged_extractor(world["onnx"], forged, rng)
        command = rng.choice([["info", forged], ["featurize", world["root"] / "imgs", world["root"] / "x.h5",
                                                 "--model", forged, "--overwrite"]])
        assert_handled(_invoke(world, command), (how, command[0]))
        head = world["root"] / f"forged-{i % 5}.skops"
        how = forged_head(world["head"], head, rng)
        command = rng.choice([["predict", world["small"], "--head", head], ["info", head],
                              ["evaluate", world["small"], "--head", head]])
        assert_handled(_invoke(world, command), (how, command[0]))
        classifier = world["root"] / f"forged-{i % 5}-classifier.onnx"
        how = forged_extractor(world["classifier"], classifier, rng)
        command = rng.choice([["info", classifier], ["predict", world["root"] / "imgs", "--head", classifier],
                              ["evaluate", world["root"] / "imgs.h5", "--head", classifier]])
        assert_handled(_invoke(world, command), (how, command[0]))


@pytest.mark.parametrize("command, option, value", [
    ("featurize", "--shard", "²/3"), ("featurize", "--threads", "99999999999999"),
    ("featurize", "--threads", "100000"),
    ("train-backbone", "--augment-shift", "99999999999999999999"), ("train-backbone", "--augment-shift", "28"),
    ("fit", "--C", "nan"), ("fit", "--seed", "-1"), ("fit", "--seed", "100000000000000000000"),
    ("train-backbone", "--epochs", "nan"), ("train-backbone", "--lr", "inf"), ("export", "--timestep", "²"),
    ("export", "--pool", "²x²"), ("predict", "--min-confidence", "nan")])
def test_the_odd_values_users_found_are_one_line(world, command, option, value):
    args = list(world["bases"][command])
    if command == "export" and option == "--pool":
        args += ["--timestep", "100"]
    result = _invoke(world, [command, *args, option, value])
    assert_handled(result, (command, option, value))
    assert result.exit_code == 1 and option.lstrip("-") in result.stderr.splitlines()[-1]

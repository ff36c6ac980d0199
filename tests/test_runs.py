"""One contract per command: each command's options are the fields of its run config
(diffclass_cli/runs.py, and the training and backbone configs for train-backbone), so the
command line and the Python API take the same defaults and refuse the same values."""

import inspect
import typing
from dataclasses import MISSING

import pytest

from diffclass_cli import featurize, fit, runs
from diffclass_cli.backbone.config import BACKBONES, TrainConfig
from diffclass_cli.cli import app
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import open_feature_file
from diffclass_cli.heads.store import load_head
from diffclass_cli.options import flag_of, option_fields
from tests.conftest import assert_one_line_error

RUNS = {"train-backbone": runs.TrainRun, "sample": runs.SampleRun, "export": runs.ExportRun, "info": runs.InfoRun,
        "featurize": runs.FeaturizeRun, "merge": runs.MergeRun, "fit": runs.FitRun,
        "export-classifier": runs.ExportClassifierRun, "suggest": runs.SuggestRun, "predict": runs.PredictRun,
        "evaluate": runs.EvaluateRun, "benchmark": runs.BenchmarkRun, "plot": runs.PlotRun,
        "show-predictions": runs.ShowPredictionsRun, "label": runs.LabelRun}


def _declared(command) -> dict[str, object]:
    """The Typer parameters of a registered command: name -> default."""
    return {name: p.default for name, p in inspect.signature(command.callback).parameters.items() if name != "ctx"}


def test_every_command_is_built_from_its_run_config():
    commands = {c.name: c for c in app.registered_commands}
    assert set(commands) == set(RUNS)
    for name, run in RUNS.items():
        declared = _declared(commands[name])
        fields = option_fields(run) + (runs.training_options() if run is runs.TrainRun else [])
        assert list(declared) == [f.name for f in fields], name
        for f in fields:
            if f.default is MISSING:
                assert declared[f.name] is inspect.Parameter.empty, (name, f.name)  # required
            elif not f.metadata["text"]:
                assert declared[f.name] == f.default, (name, f.name)


def test_train_backbone_offers_the_training_loop_and_every_kind_options_with_their_defaults():
    names = {f.name: f for f in runs.training_options()}
    assert {f.name for f in option_fields(TrainConfig)} <= set(names)
    for kind in BACKBONES.values():
        assert {f.name for f in kind.train_options()} <= set(names)
    assert names["steps"].default == TrainConfig.steps and names["channel_mults"].default == (1, 2, 2)
    hints = typing.get_type_hints(next(c for c in app.registered_commands if c.name == "train-backbone").callback,
                                  include_extras=True)
    assert typing.get_args(hints["channel_mults"])[0] is str  # typed as text, parsed by the config's rule


def test_the_command_line_and_the_api_fit_with_the_same_defaults(cli, digit_files, tmp_path):
    result = cli("fit", digit_files["train"], "--out", tmp_path / "cli.skops", "--per-class", 3, "--head", "logreg")
    assert result.exit_code == 0, result.output
    fit(digit_files["train"], tmp_path / "api.skops", per_class=3, head="logreg")
    by_cli, by_api = load_head(tmp_path / "cli.skops")[1], load_head(tmp_path / "api.skops")[1]
    assert by_cli["params"] == by_api["params"] and by_cli["fitted_on"] == {**by_api["fitted_on"]}
    assert by_cli["params"]["C"] == runs.FitRun.C and by_cli["fitted_on"]["max_unlabeled"] == runs.FitRun.max_unlabeled


def test_the_api_refuses_what_the_command_line_refuses(cli, digit_files, tiny_onnx, tmp_path):
    with pytest.raises(DiffclassError, match="--batch-size must be at least 1, not 0"):
        featurize("digits:test", model=tiny_onnx, batch_size=0)
    assert_one_line_error(cli("featurize", "digits:test", tmp_path / "o.h5", "--batch-size", 0),
                          "--batch-size must be at least 1, not 0")
    with pytest.raises(DiffclassError, match="unknown option"):
        fit(digit_files["train"], tmp_path / "h.skops", per_klass=3)
    with pytest.raises(DiffclassError, match="--C must be above 0, not 0"):
        fit(digit_files["train"], tmp_path / "h.skops", C=0.0)
    assert not (tmp_path / "h.skops").exists()


def test_a_range_is_declared_once_and_named_by_its_flag():
    field = next(f for f in option_fields(runs.FitRun) if f.name == "C")
    assert flag_of(field) == "--C"
    with pytest.raises(DiffclassError, match="--top-k must be at least 1, not 0"):
        runs.PredictRun(inputs=["x.h5"], head="h.skops", top_k=0)
    with pytest.raises(DiffclassError, match="--min-confidence must be between 0 and 1, not nan"):
        runs.PredictRun(inputs=["x.h5"], head="h.skops", min_confidence=float("nan"))
    with pytest.raises(DiffclassError, match="--steps must be at least 1, not 0"):
        TrainConfig(steps=0)


def test_steps_and_epochs_are_one_or_the_other(cli, tmp_path):
    assert_one_line_error(cli("train-backbone", "digits", "--out", tmp_path / "x.ckpt", "--steps", 5, "--epochs", 1),
                          "give --steps or --epochs, not both")
    assert not (tmp_path / "x.ckpt").exists()


def test_what_featurize_records_is_what_its_run_said(cli, tiny_onnx, tmp_path):
    out = featurize("digits:test", tmp_path / "d.h5", model=tiny_onnx, batch_size=64, dtype="float16")
    with open_feature_file(out) as reader:
        assert reader.attrs["extractor_path"] == str(tiny_onnx) and reader.attrs["dtype"] == "float16"

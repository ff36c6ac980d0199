"""The `diffclass` command line: thin commands that parse options and call the library.

Data goes to stdout, everything else to stderr. A DiffclassError (a user mistake: a value out
of range, a missing or damaged file) or an OSError (a full disk, no permission) becomes one
line on stderr and exit code 1; Typer's own usage errors (an unknown option, a missing
argument, a value that is not a choice) exit with 2.

Each command's options are built from its run config (runs.py): the fields' types, defaults,
ranges and help texts are declared there once, and the command receives the config.
"""

import inspect
import os
import sys
from contextlib import closing
from dataclasses import MISSING, Field
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from diffclass_cli import __version__, runs
from diffclass_cli.backbone.config import UNetConfig
from diffclass_cli.console import configure, log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.options import check_value, flag_of, option_fields

TRAINING_MODULES = {"torch", "torchvision", "onnxscript", "safetensors"}  # the [train] extra


GLOBAL_FLAGS = ("-q", "--quiet", "--progress")  # accepted after the command too


class _UserErrorsAsExitCodes(TyperGroup):
    """Turns the errors a user can cause into one line and an exit code."""

    def main(self, *args, **kwargs):
        """An OSError (a full disk, no permission) is one line, whether a command raised it or what
        runs before one (--help, --version)."""
        try:
            return super().main(*args, **kwargs)
        except OSError as err:  # Typer has handled a broken pipe itself by then
            _say_error(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else ""))
            sys.exit(1)

    def parse_args(self, ctx, args):
        """`diffclass fit ... -q` means `diffclass -q fit ...`: the global flags may follow the command."""
        end = args.index("--") if "--" in args else len(args)
        lifted = [a for a in args[:end] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]
        return super().parse_args(ctx, lifted + rest)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): all it wanted, so exit 0
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(0) from None
        except DiffclassError as err:
            _fail(str(err))
        except ModuleNotFoundError as err:
            if (err.name or "").partition(".")[0] not in TRAINING_MODULES:
                raise
            _fail(f"{ctx.invoked_subcommand} needs {err.name}, which the base install leaves out: "
                  "pip install 'diffclass[train]'")


def _say_error(message: str) -> None:
    try:
        typer.echo(f"diffclass: error: {message}", err=True)
    except OSError:  # standard error is gone too: the exit code says it
        pass


def _fail(message: str) -> None:
    _say_error(message)
    raise typer.Exit(1)



app = typer.Typer(
    cls=_UserErrorsAsExitCodes,
    help="Few-shot image classification with features of a diffusion model trained on "
    "unlabeled images.\n\nPipeline: train-backbone -> export -> featurize -> fit -> predict.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,  # help text is plain: "diffclass[ray]" stays as written
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"diffclass {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only warnings and errors on stderr (also accepted after the command).")] = False,
    show_progress: Annotated[bool, typer.Option(
        "--progress", help="Show progress bars even when stderr is not a terminal (by default they are shown only "
        "on a terminal).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    configure(quiet, show_progress)


def _parameter(f: Field) -> inspect.Parameter:
    """The Typer parameter of an option field."""
    meta, kind = f.metadata, f.type
    default = f.default if f.default is not MISSING else inspect.Parameter.empty
    if meta["text"]:
        kind, default = str, default if default is inspect.Parameter.empty else ",".join(map(str, default))
    if meta["argument"]:
        info = typer.Argument(help=meta["help"], show_default=False, metavar=meta["metavar"])
    else:
        flags = meta["flags"] or (() if meta["negatable"] or kind is not bool else (flag_of(f),))
        info = typer.Option(*flags, help=meta["help"], metavar=meta["metavar"], show_default=meta["show_default"],
                            callback=lambda value: check_value(f, value) or value)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def _parsed(f: Field, value):
    return f.metadata["text"](value, flag_of(f)) if f.metadata["text"] and value is not None else value


def command(run_class: type, extra: list[Field] = (), name: str | None = None):
    """Register `handler(run, **given_extra)` as a command whose options are the option fields
    of `run_class` and `extra` (these passed on only where the user gave them, so that their
    configs apply their own defaults); the run class's docstring is its help."""

    def register(handler):
        def entry(ctx: typer.Context, **values):
            given = {f.name: _parsed(f, values[f.name]) for f in extra
                     if ctx.get_parameter_source(f.name).name != "DEFAULT"}
            handler(run_class(**{f.name: _parsed(f, values[f.name]) for f in option_fields(run_class)}), **given)

        parameters = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
                      *(_parameter(f) for f in (*option_fields(run_class), *extra))]
        entry.__signature__ = inspect.Signature(parameters)
        entry.__annotations__ = {p.name: p.annotation for p in parameters}
        entry.__doc__, entry.__name__ = run_class.__doc__, handler.__name__
        app.command(name or handler.__name__.replace("_", "-"))(entry)
        return handler

    return register


@command(runs.TrainRun, extra=runs.training_options(), name="train-backbone")
def train_backbone(run: runs.TrainRun, **options) -> None:
    from diffclass_cli.backbone.train import train_run
    from diffclass_cli.data.sources import open_source

    train_run(run, open_source(run.source, run.data_root, run.download), **options)


@command(runs.SampleRun)
def sample(run: runs.SampleRun) -> None:
    from diffclass_cli.backbone.sampling import sample_to_png
    from diffclass_cli.device import torch_device

    run.call(sample_to_png, device=torch_device(run.device))


@command(runs.ExportRun)
def export(run: runs.ExportRun) -> None:
    from diffclass_cli.extractors.onnx_export import export_pixels, export_run

    if run.out is None and not run.list_taps:
        raise typer.BadParameter("missing: give the ONNX file to write (or --list-taps)", param_hint="'--out'")
    if run.pixels:
        UNetConfig(image_size=run.image_size, channels=run.channels)  # the same size rules as a backbone
        run.call(export_pixels)
        return
    if run.checkpoint is None:
        raise DiffclassError("give a CHECKPOINT (or --pixels)")
    if run.list_taps:
        from diffclass_cli.backbone.checkpoint import load_checkpoint

        config = load_checkpoint(run.checkpoint).config
        for tap in config.build().taps():
            shape = "vector" if tap.size is None else f"{tap.size}x{tap.size}"
            typer.echo(f"{tap.name}\t{tap.channels} channels\t{shape}")
        for group, names in config.tap_groups.items():
            typer.echo(f"{group}\t{','.join(names)}")
        return
    export_run(run)


@command(runs.InfoRun)
def info(run: runs.InfoRun) -> None:
    import json

    from diffclass_cli.describe import describe, format_description

    description = describe(run.path)
    typer.echo(json.dumps(description, indent=2, ensure_ascii=False) if run.as_json
               else format_description(description))


@command(runs.FeaturizeRun)
def featurize(run: runs.FeaturizeRun) -> None:
    from diffclass_cli.data.sources import open_source
    from diffclass_cli.features.extract import featurize_run

    featurize_run(run, open_source(run.source, run.data_root, run.download))


@command(runs.MergeRun)
def merge(run: runs.MergeRun) -> None:
    from diffclass_cli.features.merge import merge

    run.call(merge)


@command(runs.FitRun)
def fit(run: runs.FitRun) -> None:
    from diffclass_cli.heads.fit import fit_head

    run.call(fit_head)


@command(runs.ExportClassifierRun, name="export-classifier")
def export_classifier(run: runs.ExportClassifierRun) -> None:
    from diffclass_cli.heads.to_onnx import export_classifier

    run.call(export_classifier, head_path=run.head)


def _write_text(out: str | None, overwrite: bool, inputs, write) -> int | None:
    """`write(stream)` to standard output (`out` None or '-') or, atomically, to the file `out`
    (then returns what `write` returned)."""
    from diffclass_cli.files import STDOUT, atomic_output

    if out in (None, STDOUT):
        write(sys.stdout)
        return None
    with atomic_output(Path(out), overwrite, inputs=inputs) as tmp, \
            open(tmp, "w", newline="", encoding="utf-8", errors="surrogateescape") as stream:
        return write(stream)


@command(runs.SuggestRun)
def suggest(run: runs.SuggestRun) -> None:
    from diffclass_cli.files import STDOUT, refuse_overwrite
    from diffclass_cli.heads import suggest

    inputs = (run.candidates, run.labeled)
    if run.out not in (None, STDOUT):
        refuse_overwrite(Path(run.out), run.overwrite, inputs=inputs)
    paths, chosen = run.call(suggest.suggest)
    _write_text(run.out, run.overwrite, inputs,
                lambda stream: suggest.write_suggestions(paths, chosen, stream, run.output_format))
    if run.copy_to is not None:
        log.info(f"copied {suggest.copy_suggested(run.candidates, paths, chosen, run.copy_to)} images to {run.copy_to}")


def _scored_inputs(run: runs.EvaluateRun, absolute_paths: bool = False):
    """The feature files of `run.inputs`, or (None, its images as an ImageSource)."""
    from diffclass_cli.describe import feature_files

    features = feature_files(run.inputs)
    if features is not None:
        if run.model is not None:
            raise DiffclassError(f"{run.inputs[0]} is a feature file; --model is for images")
        return features, None
    from diffclass_cli.data.sources import open_inputs

    return None, open_inputs(run.inputs, run.data_root, absolute_paths)


@command(runs.PredictRun)
def predict(run: runs.PredictRun) -> None:
    from diffclass_cli.heads import apply as heads

    style = heads.PredictionFormat(run.output_format, run.top_k, run.proba, run.min_confidence,
                                   header=not run.no_header)
    features, source = _scored_inputs(run, absolute_paths=run.absolute_paths)
    if features is not None:
        names, chunks = heads.predict(features, run.head)
    else:
        names, chunks = run.call(heads.predict_images, source=source, head_path=run.head)
    with closing(chunks):  # on an error, the progress bar ends before the message, not at exit
        rows = _write_text(run.out, run.overwrite, features or (),
                           lambda stream: heads.write_predictions(chunks, stream, names, style))
    if rows is not None:  # written to a file
        log.info(f"wrote {rows} predictions to {run.out}")


@command(runs.EvaluateRun)
def evaluate(run: runs.EvaluateRun) -> None:
    import json

    from diffclass_cli.heads.apply import evaluate, evaluate_images, format_report

    features, source = _scored_inputs(run)
    if features is not None:
        if len(features) > 1:
            raise DiffclassError("evaluate takes one feature file")
        report = evaluate(features[0], run.head)
    else:
        report = run.call(evaluate_images, source=source, head_path=run.head)
    typer.echo(json.dumps(report, indent=2) if run.as_json else format_report(report))


@command(runs.BenchmarkRun)
def benchmark(run: runs.BenchmarkRun) -> None:
    from diffclass_cli.benchmark.suite import benchmark_run

    typer.echo(benchmark_run(run))


@command(runs.PlotRun)
def plot(run: runs.PlotRun) -> None:
    from diffclass_cli.plot import plot_feature_map

    scores = run.call(plot_feature_map)
    for path, score in scores.items():
        typer.echo(f"{path}\t5nn_accuracy_in_map\t{'n/a' if score is None else f'{score:.4f}'}")


@command(runs.ShowPredictionsRun, name="show-predictions")
def show_predictions(run: runs.ShowPredictionsRun) -> None:
    from diffclass_cli.plot import prediction_grid

    shown, wrong = run.call(prediction_grid, source_spec=run.source)
    log.info(f"wrote {run.out}: {shown} images, {wrong} wrong")


@command(runs.LabelRun)
def label(run: runs.LabelRun) -> None:
    from diffclass_cli.labeling import serve

    serve(run)

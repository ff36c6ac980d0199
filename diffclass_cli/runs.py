"""What each command takes, declared once: one frozen dataclass per command whose fields carry
type, default, range and help text (`options.option`). The command line's options are built
from these classes (cli.py) and the Python API builds the same objects (api.py), so both have
the same defaults and the same checks. What a backbone kind or the training loop itself takes
is declared on its config (backbone/config.py) and joins `train-backbone` from there.

No heavy imports: the command line imports this to build itself."""

import inspect
from dataclasses import Field, dataclass, fields
from pathlib import Path

from diffclass_cli.backbone.config import BACKBONES, DEFAULT_KIND, TrainConfig, Weights
from diffclass_cli.choices import Device, Engine, FeatureDtype, HeadKind, LabelChoice, OutputFormat, Projection
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractors.spec import DEFAULT_POOL, DEFAULT_TIMESTEPS, ExtractorSpec, pool_name
from diffclass_cli.files import refuse_inputs_as_outputs
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.options import (
    INPUT,
    INPUT_ROOT,
    MAX_PROCESSES,
    OUTPUT,
    OUTPUT_FOLDER,
    SEED_HIGH,
    check_options,
    coerce_options,
    option,
    option_fields,
    parse_ints,
    refuse_unknown,
    seed_option,
)

SOURCE_HELP = ("A folder of images (subfolders = classes), '-' for paths on stdin, or a built-in source: "
               "mnist-sample[:train|:test], digits[:train|:test], mnist-sample-colour[:train|:test] (the same digits "
               "as 32x32 RGB in random colours), mnist / fashion-mnist / cifar10[:train|:test] (with --data-root).")
CHECKPOINT_HELP = ("Backbone checkpoint, or diffusers:PATH: a pretrained diffusers UNet2DModel folder (safetensors "
                   "weights; a hub id where online).")
INPUTS_HELP = ("Feature files made by `diffclass featurize`, or images: image files, folders (class subfolders = the "
               "true classes), '-' for paths on standard input, or one built-in source.")
HEAD_HELP = ("A head file made by `diffclass fit` (.skops), or a classifier made by `diffclass export-classifier` "
             "(.onnx).")
HEAD_MODEL_HELP = ("With images and a skops head: the extractor (.onnx) to featurize them with (default: the one the "
                   "head was fitted on, found where featurize ran it, or the shipped one).")
TAPS_HELP = ("Blocks to take features from, comma-separated (see export --list-taps), or the groups encoder, decoder, "
             "all (default: ddpm: mid and the up block after it; vae: the encoder blocks and the latent mean).")
LABELS_HELP = ("A CSV table of 'path,label' rows (a header is optional) that labels the images instead of their class "
               "folders; images it does not name are unlabeled.")


def _source():
    return option(SOURCE_HELP, argument=True, role=INPUT)


def _overwrite():
    return option("Replace an existing output file.", False, flags=("--overwrite",))


def _device():
    return option("Where to run: auto picks CUDA when usable.", Device.auto)


def _data_root():
    return option("Folder with torchvision's dataset files.", None, role=INPUT_ROOT)


def _workers(default: int, help: str = "Processes that decode images in parallel."):
    return option(help, default, low=0, high=MAX_PROCESSES)


def _batch_size():
    return option("Images per onnxruntime call.", 256, low=1)


def _flag(name: str, help: str):
    return option(help, False, flags=(name,))


class Run:
    """Validates the option fields of the dataclass that inherits this."""

    def __post_init__(self):
        coerce_options(self)
        check_options(self)
        refuse_inputs_as_outputs(*(
            [getattr(self, f.name) for f in option_fields(type(self)) if f.metadata["role"] == role]
            for role in (INPUT, OUTPUT, OUTPUT_FOLDER, INPUT_ROOT)))

    def call(self, function, **given):
        """`function(**given)`, its other parameters filled from this run's fields of the same name."""
        names = [name for name in inspect.signature(function).parameters if name not in given and hasattr(self, name)]
        return function(**{name: getattr(self, name) for name in names}, **given)

    @classmethod
    def of(cls, **values):
        """From keyword arguments, as the Python API takes them: a name it does not know is an error."""
        refuse_unknown(values, {f.name for f in fields(cls)})
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class TrainRun(Run):
    """Train an unconditional diffusion backbone (or a VAE) on the images of SOURCE (labels are ignored).

    Examples:\n
      diffclass train-backbone photos/ --out runs/bb.ckpt --steps 5000\n
      diffclass train-backbone mnist-sample:train --out runs/bb.ckpt --steps 300\n
      diffclass train-backbone mnist-sample:train --out runs/bb.ckpt --steps 600 --resume\n
      diffclass train-backbone mnist-sample:train --out runs/vae.ckpt --kind vae --latent-dim 32\n
      diffclass train-backbone photos/unlabeled --out runs/ft.ckpt --init diffusers:ddpm-cifar10 --steps 2000 --lr 1e-4
    """

    source: str = _source()
    out: Path = option("Checkpoint file to write (safetensors).", role=OUTPUT)
    kind: str = option("; ".join(f"{name}: {kind.summary}" for name, kind in BACKBONES.items()) + ".",
                       DEFAULT_KIND, metavar="[" + "|".join(BACKBONES) + "]")
    init: str | None = option(
        "Fine-tune a pretrained model instead of training one from scratch: diffusers:PATH, a diffusers UNet2DModel "
        "folder (or hub id, online). Its architecture, image size, channels and noise schedule are the model's; "
        "images are resized to it.", None, metavar="diffusers:PATH", role=INPUT)
    epochs: float | None = option("Passes over the images (instead of --steps).", None, low=0, above=True)
    image_size: int | None = option(
        "Side of the square images the backbone sees (a multiple of 4) (default: the first image's).", None,
        low=4, high=4096)
    channels: int | None = option("1 (gray) or 3 (RGB) (default: the first image's).", None, low=1, high=3)
    resume: bool = _flag("--resume", "Continue from --out if it exists, with its recipe; --steps (which may grow), "
                         "--save-every and --snapshot-every are this run's.")
    compiled: bool = option(
        "Run the network through torch.compile: shorter steps after a minute of compiling (needs a C++ compiler on "
        "CPU; docs/guide.md). Not part of the recipe: a run may switch it on or off when it resumes.", False,
        flags=("--compile",))
    device: Device = _device()
    workers: int = _workers(0)
    data_root: Path | None = _data_root()
    download: bool = _flag("--download", "Let torchvision download a missing dataset.")
    overwrite: bool = _overwrite()

    def __post_init__(self):
        super().__post_init__()
        if self.kind not in BACKBONES:  # the kinds registered when it runs: a test or plug-in may add one
            raise DiffclassError(f"--kind takes one of {', '.join(BACKBONES)}, not {self.kind!r}")


def training_options() -> list[Field]:
    """The training loop's options and every backbone kind's, each once (by name): what joins
    TrainRun's own fields in `train-backbone`."""
    found = {f.name: f for f in option_fields(TrainConfig)}
    for kind in BACKBONES.values():
        found.update({f.name: f for f in kind.train_options() if f.name not in found})
    return list(found.values())


@dataclass(frozen=True, kw_only=True)
class SampleRun(Run):
    """Generate images from a backbone, to see what it learned.

    Examples:\n
      diffclass sample runs/bb.ckpt --out grid.png --n 16 --ddim-steps 50
    """

    checkpoint: Path = option(CHECKPOINT_HELP, argument=True, role=INPUT)
    out: Path = option("PNG file for the grid of samples.", role=OUTPUT)
    n: int = option("How many images.", 16, low=1, flags=("--n",))
    ddim_steps: int | None = option("Sample with DDIM in this many steps (fast) instead of all DDPM steps.", None,
                                    low=1)
    out_dir: Path | None = option("Also save each image as a PNG here.", None, role=OUTPUT_FOLDER)
    weights: Weights = option("The averaged (EMA) or the raw trained weights.", Weights.ema)
    device: Device = _device()
    seed: int = seed_option()
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class ExtractorOptions(Run):
    """What an extractor computes beyond the backbone's weights, as `export` and `benchmark` take it."""

    timestep: str | None = option(f"Diffusion step the images are noised to (default: {DEFAULT_TIMESTEPS[0]}).", None)
    timesteps: str | None = option("Several steps, comma-separated (e.g. 25,100): their features are concatenated.",
                                   None)
    taps: str | None = option(TAPS_HELP, None)
    pool: str = option("'global' average per block, or an RxR grid of averages such as '2x2' (a block's map "
                       "smaller than the grid is kept whole).",
                       pool_name(DEFAULT_POOL))
    noise_draws: int = option("Average the features over this many fixed noise tensors.", 1, low=1, high=1024)
    noise_seed: int = option("Seed of the fixed noise stored in the extractor.", 0, low=0, high=SEED_HIGH)
    shifts: int = option(
        "Average the features over the image moved by N fixed small shifts (1: none; 5: itself and one pixel up, "
        "down, left, right; 9: also the diagonals). Costs N times the compute.", 1, low=1, high=9)

    def spec(self) -> ExtractorSpec:
        return self._spec(self.timestep, self.taps)

    def _spec(self, timestep: str | None, taps: str | None) -> ExtractorSpec:
        if timestep is not None and not str(timestep).isdecimal():
            raise DiffclassError(f"--timestep is a whole number of steps, not {timestep!r}")
        return ExtractorSpec.from_options(
            timestep=None if timestep is None else int(timestep),
            timesteps=parse_ints(self.timesteps, "--timesteps") if self.timesteps else (), taps=taps,
            pool=self.pool, noise_seed=self.noise_seed, noise_draws=self.noise_draws, shifts=self.shifts)


AUTO = "auto"


@dataclass(frozen=True, kw_only=True)
class ExportRun(ExtractorOptions):
    """Freeze a backbone into a deterministic ONNX feature extractor (no PyTorch needed to run it).

    Examples:\n
      diffclass export --list-taps runs/bb.ckpt\n
      diffclass export runs/bb.ckpt --out exports/bb.onnx\n
      diffclass export runs/bb.ckpt --out bb.onnx --timestep auto --taps auto --choose-on photos/unlabeled\n
      diffclass export runs/bb.ckpt --out bb.onnx --timesteps 25,100 --noise-draws 4 --taps mid,up1 --pool global\n
      diffclass export diffusers:models/ddpm-cifar10 --out cifar.onnx --timestep 100 --taps mid,up3\n
      diffclass export --pixels --image-size 28 --channels 1 --out pixels.onnx
    """

    checkpoint: Path | None = option(CHECKPOINT_HELP, None, argument=True, role=INPUT)
    out: Path | None = option("ONNX file to write.", None, role=OUTPUT)
    pixels: bool = _flag("--pixels", "Write the raw-pixel baseline extractor instead (needs --image-size, --channels).")
    image_size: int = option("With --pixels: side of the square images.", 28, low=4, high=4096)
    channels: int = option("With --pixels: 1 (gray) or 3 (RGB).", 1, low=1, high=3)
    list_taps: bool = _flag("--list-taps", "Print the backbone's taps and exit.")
    timestep: str | None = option(
        f"Diffusion step the images are noised to (default: {DEFAULT_TIMESTEPS[0]}), or 'auto': chosen from "
        "unlabeled images (--choose-on), no labels, among the default and the larger steps whose signal is at "
        "least 1.5 times the noise (none above the default on the default schedule; up to 430 of the cosine one): "
        "the step whose features keep their nearest neighbours under another "
        "noise draw and a one-pixel shift and form well-separated clusters, if it does so on both halves of the "
        "sample too; else the default (a minute or two; docs/guide.md).", None)
    taps: str | None = option(
        TAPS_HELP + " Or 'auto': chosen from unlabeled images like --timestep auto (after it), among the default "
        "set and the default set with one more decoder tap.", None)
    choose_on: str | None = option(
        "With --timestep auto or --taps auto: the unlabeled images to choose on, any SOURCE (default: the images the "
        "backbone was trained on).", None, role=INPUT)
    data_root: Path | None = _data_root()
    opset: int = option("ONNX opset (17 to 20).", 18, low=17, high=20)
    weights: Weights = option("The averaged (EMA) or the raw trained weights.", Weights.ema)
    overwrite: bool = _overwrite()

    @property
    def auto_timestep(self) -> bool:
        return self.timestep == AUTO

    @property
    def auto_taps(self) -> bool:
        return self.taps == AUTO

    def spec(self) -> ExtractorSpec:
        """The spec of the options given, `auto` ones left at their defaults (to be chosen)."""
        if self.auto_timestep and self.timesteps:
            raise DiffclassError("give --timestep or --timesteps, not both")
        if self.timestep is not None and not (self.auto_timestep or str(self.timestep).isdecimal()):
            raise DiffclassError(f"--timestep is a whole number of steps or 'auto', not {self.timestep!r}")
        return self._spec(None if self.auto_timestep else self.timestep, None if self.auto_taps else self.taps)


@dataclass(frozen=True, kw_only=True)
class InfoRun(Run):
    """Print what a checkpoint, extractor, head or feature file holds and how it was made.

    Examples:\n
      diffclass info exports/mnist-sample-ddpm.onnx\n
      diffclass info head.skops      (classes, kind, what auto chose and why, the extractor, fitted rows)\n
      diffclass info train.h5 --json (rows, labeled and unlabeled per class, extractor, skipped files)
    """

    path: Path = option("A file diffclass wrote: a checkpoint, an extractor (.onnx), a head (.skops) or a feature "
                        "file (.h5), or a table, picture or benchmark folder it wrote.", argument=True, role=INPUT)
    as_json: bool = _flag("--json", "Print it as JSON.")


@dataclass(frozen=True, kw_only=True)
class FeaturizeRun(Run):
    """Turn the images of SOURCE into a feature file, with onnxruntime (CUDA when usable).

    Examples:\n
      diffclass featurize photos/ photos.h5 --model exports/bb.onnx\n
      find photos -name '*.jpg' | diffclass featurize - photos.h5 --model exports/bb.onnx\n
      diffclass featurize mnist-sample:test test.h5\n
      diffclass featurize photos/ part-3.h5 --model bb.onnx --shard 3/8    (then: diffclass merge ...)\n
      diffclass featurize photos/ photos.h5 --model bb.onnx --engine ray --workers 8
    """

    source: str = _source()
    out: Path = option("HDF5 feature file to write.", argument=True, role=OUTPUT)
    model: Path | None = option("Exported extractor (.onnx) (default: the shipped mnist-sample-ddpm.onnx).", None,
                                role=INPUT)
    device: Device = _device()
    batch_size: int = _batch_size()
    threads: int | None = option("onnxruntime threads (default: all cores).", None, low=1, high=MAX_PROCESSES)
    workers: int = _workers(1, "local: processes that decode images in parallel; ray: actors, each with its own "
                            "onnxruntime session.")
    shard: str | None = option("Only shard I of N (0-based, e.g. 3/8): a fixed block of the source, for job arrays; "
                               "join the parts with `diffclass merge`.", None)
    engine: Engine = option("local: this process; ray: a Ray Data actor pool (RAY_ADDRESS=auto joins a running "
                            "cluster; needs diffclass[ray]).", Engine.local)
    resume: bool = _flag("--resume", "Continue OUT.partial from an interrupted run.")
    strict: bool = _flag("--strict", "Stop at the first unreadable image.")
    dtype: FeatureDtype = option("How features are stored: float16 halves the file (readers get float32 back; "
                                 "docs/scale.md measures the accuracy change).", FeatureDtype.float32)
    labels: Path | None = option(LABELS_HELP, None, role=INPUT)
    data_root: Path | None = _data_root()
    download: bool = _flag("--download", "Let torchvision download a missing dataset.")
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class MergeRun(Run):
    """Join the files of `featurize --shard I/N` into the file one `featurize` run would write.

    Every shard must be there exactly once, from the same extractor and the same source.

    Examples:\n
      diffclass merge photos.h5 parts/part-*.h5
    """

    out: Path = option("Feature file to write.", argument=True, role=OUTPUT)
    parts: list[Path] = option("The shard files (any order).", argument=True, role=INPUT)
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class FitRun(Run):
    """Fit a small classifier on the labeled rows of a feature file (only the rows it uses are read).

    Labeled images whose features sit with another class's labeled images are listed on stderr
    (path, given class, the class they look like, a score) and in `diffclass info HEAD`.

    Examples:\n
      diffclass fit train.h5 --out head.skops\n
      diffclass fit labeled.h5 --unlabeled pool.h5 --out head.skops\n
      diffclass fit pool.h5 --labels labels.csv --out head.skops\n
      diffclass fit train.h5 --out head.skops --per-class 10 --seed 1 --head logreg
    """

    features: Path = option("A feature file made by `diffclass featurize`.", argument=True, role=INPUT)
    out: Path = option("Head file to write (.skops).", role=OUTPUT)
    head: HeadKind = option(
        "auto: semi where the unlabeled rows help, else logreg, decided from this file's rows (cross-validation over "
        "the labeled rows; with one label per class, the clusters' stability) and printed; logreg: scaled logistic "
        "regression on the labeled rows; mlp: one hidden ReLU layer; semi: also learns from the unlabeled rows "
        "(pseudo-labels from spectral clustering, named by the labeled rows).", HeadKind.auto)
    per_class: int | None = option("Use only K labeled rows per class, drawn with --seed (the rest count as "
                                   "unlabeled).", None, low=1)
    seed: int = seed_option()
    C: float = option("logreg: inverse regularisation strength.", 1.0, low=0, above=True, flags=("--C",))
    alpha: float = option("mlp: L2 penalty.", 1e-3, low=0)
    hidden: int = option("mlp: hidden units.", 128, low=1)
    cv: int | None = option("Choose --C / --alpha by K-fold cross-validation on the labeled rows.", None, low=2)
    max_unlabeled: int = option(
        "semi / auto: cluster at most this many unlabeled rows, a sample spread evenly over the file (drawn with "
        "--seed); bounds time and memory on large files.", MAX_UNLABELED, low=1)
    unlabeled: list[Path] | None = option(
        "semi / auto: another feature file of the same extractor whose rows are all used as unlabeled, whatever "
        "their folders (repeat the option for several).", None, role=INPUT)
    labels: Path | None = option(LABELS_HELP, None, role=INPUT)
    strict_labels: bool = _flag("--strict-labels", "Fail, instead of warning, when labeled images sit with another "
                                "class.")
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class ExportClassifierRun(Run):
    """Join a head and the extractor it was fitted on into one ONNX file: images in, class
    probabilities (and features) out.

    It runs anywhere onnxruntime does, without diffclass, scikit-learn or torch; `predict`,
    `evaluate` and `info` take it in place of the head, on images or on feature files of the
    same extractor. Class names, head kind and how it was fitted are in its metadata.

    Examples:\n
      diffclass export-classifier head.skops --out classifier.onnx\n
      diffclass predict photos/new --head classifier.onnx
    """

    head: Path = option("A head file made by `diffclass fit`.", argument=True, role=INPUT)
    out: Path = option("Classifier file to write (.onnx).", role=OUTPUT)
    model: Path | None = option("The extractor (.onnx) the head was fitted on, checked by sha256 (default: found "
                                "where featurize ran it, or the shipped one).", None, role=INPUT)
    overwrite: bool = _overwrite()


def _out(what: str):
    return option(f"Write the {what} here instead of standard output ('-': standard output).", None,
                  flags=("--out", "-o"), role=OUTPUT)


@dataclass(frozen=True, kw_only=True)
class SuggestRun(Run):
    """Suggest which images to label first: the most typical image of each of the largest clusters of
    the pool that no labeled image covers yet (TypiClust), chosen without any label.

    The list (path, rank, cluster, cluster size, typicality, an empty label column, why) is best first.
    Fill in its label column and pass it to `fit --labels`, or sort the --copy-to folder into class
    subfolders and featurize it.

    Examples:\n
      diffclass suggest pool.h5 --budget 10 > to-label.csv\n
      diffclass fit pool.h5 --labels to-label.csv --out head.skops     (after filling in the labels)\n
      diffclass suggest pool.h5 --budget 20 --labeled labeled.h5 --copy-to to-label/
    """

    candidates: Path = option("A feature file of unlabeled (and maybe some labeled) images.", argument=True,
                              role=INPUT)
    budget: int = option("How many images to suggest.", 10, low=1)
    labeled: Path | None = option("A feature file of images labeled already (same extractor): their clusters count "
                                  "as covered.", None, role=INPUT)
    output_format: OutputFormat = option("csv or jsonl.", OutputFormat.csv, flags=("--format",))
    out: str | None = _out("list")
    copy_to: Path | None = option("Also copy the suggested images into this folder, to sort into class subfolders.",
                                  None, role=OUTPUT_FOLDER)
    classes: int | None = option("How many classes the images hold, if you know: the pool is cut into at least "
                                 "that many clusters, and when the labels cannot cover them all, suggest names the "
                                 "clusters it leaves without a label.", None, low=2)
    seed: int = seed_option()
    max_rows: int = option("Cluster at most this many unlabeled rows, spread evenly over the file.", MAX_UNLABELED,
                           low=2)
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class EvaluateRun(Run):
    """Score a head on labeled rows or images: accuracy, balanced accuracy, per-class precision, recall
    and F1, and the confusion matrix.

    Classes the head never saw are counted as errors (with a warning); data none of whose classes the
    head knows is refused.

    Examples:\n
      diffclass evaluate test.h5 --head head.skops\n
      diffclass evaluate photos/heldout --head head.skops\n
      diffclass evaluate test.h5 --head head.skops --json | jq .accuracy
    """

    inputs: list[str] = option(INPUTS_HELP, argument=True, role=INPUT)
    head: Path = option(HEAD_HELP, flags=("--head",), role=INPUT)
    model: Path | None = option(HEAD_MODEL_HELP, None, role=INPUT)
    as_json: bool = _flag("--json", "Print the metrics as JSON.")
    batch_size: int = _batch_size()
    workers: int = _workers(1)
    device: Device = _device()
    data_root: Path | None = _data_root()


@dataclass(frozen=True, kw_only=True)
class PredictRun(EvaluateRun):
    """Label every row of feature files, or every image given: one row each (CSV `path,label,confidence`
    or JSON lines) on standard output, written as it goes.

    Images are featurized in memory with the extractor the head was fitted on.

    Examples:\n
      diffclass predict new.h5 --head head.skops > predictions.csv\n
      diffclass predict photos/new --head head.skops > predictions.csv\n
      diffclass predict photos/new/img1009.png --head head.skops --top-k 3\n
      find photos/new -name '*.jpg' | diffclass predict - --head head.skops --format jsonl --min-confidence 0.8\n
      diffclass predict new.h5 --head head.skops --proba --out predictions.csv
    """

    as_json: bool = False  # not an option of predict: --format jsonl
    output_format: OutputFormat = option("csv: path,label,confidence[,...]; jsonl: one JSON object per line.",
                                         OutputFormat.csv, flags=("--format",))
    top_k: int = option("Also give the next K-1 most likely classes of each row.", 1, low=1)
    min_confidence: float | None = option("Below this probability a row gets no label, and its status says so.",
                                          None, low=0, high=1)
    proba: bool = _flag("--proba", "Add one probability column per class.")
    no_header: bool = _flag("--no-header", "CSV without its header line.")
    absolute_paths: bool = _flag("--absolute-paths",
                                 "Images' paths as absolute paths (default: as given on the command line).")
    out: str | None = _out("predictions")
    overwrite: bool = _overwrite()


BASELINES = ("pixels", "pca", "cnn")


@dataclass(frozen=True, kw_only=True)
class BenchmarkRun(ExtractorOptions):
    """Few-shot accuracy curves of diffusion features against raw pixels, PCA and a supervised CNN.

    Accuracy is measured on the held-out test split (or, with --on-validation, on a validation part of the
    train split), as mean and std over seeded draws of the labeled set.

    Examples:\n
      diffclass benchmark runs/bb.ckpt --out bench/\n
      diffclass benchmark runs/bb.ckpt --out bench/ --sweep-timestep 10,25,50,100,250,500 --sweep-taps\n
      diffclass benchmark exports/mnist-sample-ddpm.onnx --out bench/ --quick
    """

    models: list[Path] = option("Backbone checkpoints or exported extractors (.onnx); each is one feature set.",
                                argument=True, role=INPUT)
    out: Path = option("Folder for results.csv, summary.md and the plots.", role=OUTPUT_FOLDER)
    train: str = option("Labeled images the few labels are drawn from.", "mnist-sample:train", role=INPUT)
    test: str = option("Held-out labeled split accuracy is measured on.", "mnist-sample:test", role=INPUT)
    per_class: str | None = option("Labels per class, comma-separated (default: those of 1,2,5,10,32,100 that every "
                                   "class of the train split can give).", None, show_default=False)
    draws: int = option("Seeded draws of the labeled set per K.", 5, low=1)
    draws_few: int = option("Draws per K at 1 and 2 labels per class, where results are bimodal (the worst draw is "
                            "reported).", 20, low=1)
    heads: str | None = option("Heads, comma-separated: auto, logreg, mlp, semi (default: auto,logreg,semi; with "
                               "--quick: auto,logreg).", None, show_default=False)
    baselines: str | None = option(
        "Comparisons, comma-separated: pixels, pca (of pixels), cnn (supervised, from scratch) (default: pixels, pca, "
        "and cnn where its first fit says all its draws take at most 2 minutes).", None, show_default=False)
    cnn_steps: int = option("Training steps of the supervised CNN per draw.", 300, low=1)
    sweep_timestep: str | None = option("Also compare these timesteps (e.g. 10,25,50,100,250,500; 50+100 "
                                        "concatenates two), logreg head, on a validation part of the train split.",
                                        None)
    sweep_taps: bool = _flag("--sweep-taps", "Also compare the tap sets `--taps auto` chooses among: the default "
                             "taps, them with each other tap, all taps.")
    sweep_pool: bool = _flag("--sweep-pool", "Also compare global, 2x2, 3x3 pooling.")
    quick: bool = _flag("--quick", "A small grid for smoke tests (a couple of minutes).")
    labels: LabelChoice = option(
        "How the labeled images of each draw are chosen: random (K per class), suggest (K x classes, as `diffclass "
        "suggest` picks them from the pool's features, their true labels then revealed; one draw per seed of its "
        "clustering) or pool (K x classes drawn at random from the whole pool, so a class may get none, as when "
        "a user labels images without suggest).", LabelChoice.random)
    on_validation: bool = _flag("--on-validation", "Score on a validation part of the train split instead of the "
                                "test split: use this to choose checkpoints or options.")
    seed: int = seed_option()
    data_root: Path | None = _data_root()
    overwrite: bool = _flag("--overwrite", "Replace the files of an existing --out folder.")

    @property
    def baseline_names(self) -> tuple[str, ...]:
        chosen = tuple(b.strip() for b in (self.baselines or "").split(",") if b.strip())
        if set(chosen) - set(BASELINES):
            raise DiffclassError(f"unknown baseline(s) {sorted(set(chosen) - set(BASELINES))}; choose from "
                                 f"{sorted(BASELINES)}")
        return chosen

    @property
    def sweep_timesteps(self) -> tuple[tuple[int, ...], ...]:
        return tuple(parse_ints(group.replace("+", ","), "--sweep-timestep")
                     for group in self.sweep_timestep.split(",")) if self.sweep_timestep else ()


@dataclass(frozen=True, kw_only=True)
class PlotRun(Run):
    """Draw a feature file as a 2-D map coloured by class, and print how well classes separate
    (5-NN accuracy in the map, cross-validated over the labeled rows).

    Examples:\n
      diffclass plot train.h5 --out map.png\n
      diffclass plot train.h5 --out map.png --compare pixels.h5 --thumbnails mnist-sample:train
    """

    features: Path = option("A feature file made by `diffclass featurize`.", argument=True, role=INPUT)
    out: Path = option("PNG file to write.", role=OUTPUT)
    method: Projection = option("How to project to 2-D: tsne (seconds for a few thousand rows), umap (its first "
                                "call compiles for about ten seconds), pca.", Projection.tsne)
    compare: Path | None = option("A second feature file drawn beside the first (e.g. raw pixels).", None,
                                  role=INPUT)
    thumbnails: str | None = option("The SOURCE the features came from: draw a sample of its images at their "
                                    "positions.", None, role=INPUT)
    max_points: int | None = option("Plot a reproducible sample of at most N rows.", 5000, low=3)
    seed: int = seed_option()
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class ShowPredictionsRun(Run):
    """Draw predicted images with their labels; wrong ones (when SOURCE knows the truth) in red.

    Examples:\n
      diffclass predict photos/new --head head.skops > p.csv; diffclass show-predictions p.csv --out p.png\n
      diffclass predict test.h5 --head head.skops | diffclass show-predictions - --source mnist-sample:test --out p.png
    """

    predictions: str = option("predict's CSV or JSON lines, or - for standard input.", argument=True, role=INPUT)
    source: str | None = option("The SOURCE the predicted images came from: needed for predictions of feature files, "
                                "and where the truth comes from (its class folders); default: the predicted paths "
                                "themselves, as image files.", None, role=INPUT)
    out: Path = option("PNG file to write.", role=OUTPUT)
    n: int = option("How many images.", 40, low=1, flags=("--n",))
    overwrite: bool = _overwrite()


@dataclass(frozen=True, kw_only=True)
class LabelRun(Run):
    """Label images in the browser: a local page shows the images `suggest` picks, most valuable
    first; type a class (or press its number) and Enter. Every answer is saved at once to the
    labels table, so closing the page loses nothing and running the command again goes on where
    it stopped. After the budget: check the labels that look wrong, fit the head, label more.

    Examples:\n
      diffclass label pool.h5 --budget 20 --out head.skops\n
      diffclass label pool.h5 --budget 10 --classes cat,dog,bird --labels my-labels.csv --no-browser
    """

    pool: Path = option("A feature file of the images to label (made by `diffclass featurize`).", argument=True,
                        role=INPUT)
    budget: int = option("How many labels to reach this round (those already in the labels table count).", 10,
                         low=1)
    labels: Path | None = option("The labels table the answers go to, read first if it exists (default: "
                                 "POOL's name with -labels.csv).", None, role=OUTPUT)
    out: Path | None = option("Head file the page fits (.skops); without it the page only labels.", None,
                              role=OUTPUT)
    classes: str | None = option("The class names, comma-separated, offered from the start (others can be typed).",
                                 None)
    source: str | None = option("The SOURCE the pool was featurized from, where its images are read (default: the "
                                "one the file records).", None, role=INPUT)
    host: str = option("Address to serve the page on (only this machine by default).", "127.0.0.1")
    port: int = option("Port to serve on (0: a free one).", 0, low=0, high=65535)
    no_browser: bool = _flag("--no-browser", "Print the page's address without opening a browser.")
    seed: int = seed_option()

    @property
    def labels_table(self) -> Path:
        return self.labels or self.pool.with_name(self.pool.stem + "-labels.csv")

    @property
    def class_names(self) -> list[str]:
        return [c.strip() for c in (self.classes or "").split(",") if c.strip()]

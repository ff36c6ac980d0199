"""Candidate extractors side by side: onnxruntime images/s, and (with --validate-on) accuracy on
a validation part of a train split, so that speed and accuracy come from one run.

Speed: the models take their batches in turn, so a load that comes and goes on a shared
machine hits them alike; the median batch of each is reported with its time relative to the
first. Accuracy: `diffclass benchmark --on-validation` with the logreg and auto heads at 1, 10
and 100 labels per class (20 draws at 1, 5 above), never the test split.

    python benchmarks/extractor_speed.py A.onnx B.onnx [--batch-size 256] [--repeats 5] [--threads 2]
        [--validate-on mnist-sample:train digits:train]
"""

import argparse
import csv
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from diffclass_cli.device import Device
from diffclass_cli.features.runtime import ExtractorSession

VALIDATION_K = (1, 10, 100)


def images_per_second(models: list[Path], batch_size: int, repeats: int, threads: int | None) -> list[float]:
    """Median images/s of each model on random batches, the models taking turns."""
    sessions = [ExtractorSession(model, Device.cpu, threads) for model in models]
    seconds: list[list[float]] = [[] for _ in sessions]
    batches = []
    for session in sessions:
        meta = session.metadata
        shape = (batch_size, meta["channels"], meta["image_size"], meta["image_size"])
        batches.append(np.random.default_rng(0).random(shape, dtype=np.float32))
        session(batches[-1])  # warm-up
    for _ in range(repeats):
        for session, batch, times in zip(sessions, batches, seconds):
            began = time.perf_counter()
            session(batch)
            times.append(time.perf_counter() - began)
    return [batch_size / statistics.median(times) for times in seconds]


def validation_accuracy(models: list[Path], train: str) -> dict[tuple[str, str, int], float]:
    """Mean validation accuracy by (model stem, head, K)."""
    from diffclass_cli.benchmark.protocol import Protocol
    from diffclass_cli.benchmark.suite import run_benchmark
    from diffclass_cli.choices import HeadKind
    from diffclass_cli.extractors.spec import ExtractorSpec

    with tempfile.TemporaryDirectory() as tmp:
        protocol = Protocol(per_class=VALIDATION_K, heads=(HeadKind.logreg, HeadKind.auto), cnn_steps=0)
        run_benchmark(models, Path(tmp) / "out", ExtractorSpec(), protocol, train=train, baselines=(),
                      on_validation=True)
        scores = defaultdict(list)
        with open(Path(tmp) / "out" / "results.csv") as f:
            for row in csv.DictReader(f):
                if row["sweep"] == "main":
                    scores[row["feature_set"].partition(":")[2], row["head"], int(row["per_class"])].append(
                        float(row["accuracy"]))
    return {key: float(np.mean(values)) for key, values in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: onnxruntime's)")
    parser.add_argument("--validate-on", nargs="*", default=[], metavar="TRAIN",
                        help="train splits to measure validation accuracy on (e.g. mnist-sample:train)")
    args = parser.parse_args()

    speeds = images_per_second(args.models, args.batch_size, args.repeats, args.threads)
    accuracy = {train: validation_accuracy(args.models, train) for train in args.validate_on}
    columns = [f"{train} {head} K={k}" for train in args.validate_on for head in ("logreg", "auto")
               for k in VALIDATION_K]
    print(f"batch {args.batch_size}, median of {args.repeats} batches each, taken in turn; accuracy: mean over "
          "draws on the validation part of each train split\n")
    print("| extractor | images/s | time vs first |" + "".join(f" {c} |" for c in columns))
    print("|---|---|---|" + "---|" * len(columns))
    for model, speed in zip(args.models, speeds):
        cells = [f"{accuracy[train][model.stem, head, k]:.3f}" for train in args.validate_on
                 for head in ("logreg", "auto") for k in VALIDATION_K]
        print(f"| {model.name} | {speed:.0f} | {speeds[0] / speed:.2f}x |" + "".join(f" {c} |" for c in cells))


if __name__ == "__main__":
    main()

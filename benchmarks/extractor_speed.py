"""onnxruntime images/s of several exported extractors, measured side by side in one run: the
models take their batches in turn, so a load that comes and goes on a shared machine hits them
alike, and the median batch of each is reported with its ratio to the first.

    python benchmarks/extractor_speed.py A.onnx B.onnx [--batch-size 256] [--repeats 5] [--threads 2]
"""

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from diffclass_cli.device import Device
from diffclass_cli.featurize.runtime import ExtractorSession


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: onnxruntime's)")
    args = parser.parse_args()

    sessions = [ExtractorSession(model, Device.cpu, args.threads) for model in args.models]
    seconds: list[list[float]] = [[] for _ in sessions]
    batches = []
    for session in sessions:
        meta = session.metadata
        shape = (args.batch_size, meta["channels"], meta["image_size"], meta["image_size"])
        batches.append(np.random.default_rng(0).random(shape, dtype=np.float32))
        session(batches[-1])  # warm-up
    for _ in range(args.repeats):
        for session, batch, times in zip(sessions, batches, seconds):
            began = time.perf_counter()
            session(batch)
            times.append(time.perf_counter() - began)

    base = statistics.median(seconds[0])
    print(f"batch {args.batch_size}, median of {args.repeats} batches each, taken in turn")
    for model, times in zip(args.models, seconds):
        median = statistics.median(times)
        print(f"{model}: {args.batch_size / median:8.0f} images/s, {median / base:.2f}x the time of the first")


if __name__ == "__main__":
    main()

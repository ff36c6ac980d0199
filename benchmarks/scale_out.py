"""Featurize throughput of one process against `--engine ray`, side by side in one run on the
same folder of PNG files and the same extractor:

  (a) `diffclass featurize` in one process (one onnxruntime session with all cores' threads,
      decoding in --workers processes)
  (b) `diffclass featurize --engine ray --workers 2` on a local Ray instance (2 actors,
      one onnxruntime thread each)

Each is timed as a whole command (start-up included) and checked to give the same file.

    python benchmarks/scale_out.py [--model exports/mnist-sample-ddpm.onnx] [--images 20000]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.featurize import write_pngs
from diffclass_cli.features.h5 import read_features

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "exports" / "mnist-sample-ddpm.onnx"


def timed(command: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffclass_cli", "-q", *command], check=True)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes of the one-process run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "pngs"
        folder.mkdir()
        write_pngs(folder, args.images)
        common = ["--model", str(args.model), "--batch-size", str(args.batch_size), "--device", "cpu"]
        one = timed(["featurize", str(folder), str(tmp / "one.h5"), *common, "--workers", str(args.workers)])
        ray = timed(["featurize", str(folder), str(tmp / "ray.h5"), *common, "--engine", "ray", "--workers", "2"])
        a, b = read_features(tmp / "one.h5"), read_features(tmp / "ray.h5")
        same = a.paths == b.paths and np.array_equal(a.features, b.features)

    print(f"{args.images} PNGs, {args.model.name}, batch {args.batch_size}")
    print(f"(a) one process          {args.images / one:8.0f} images/s ({one:.1f} s)")
    print(f"(b) --engine ray, 2 CPUs {args.images / ray:8.0f} images/s ({ray:.1f} s, Ray start-up included)")
    print(f"(b)/(a) = {one / ray:.2f}; identical files: {same}")


if __name__ == "__main__":
    main()

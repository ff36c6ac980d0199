"""The GPU path, in one prepared run for a machine with an NVIDIA GPU and onnxruntime-gpu:
featurize with the CUDA execution provider and with the CPU, fit a head, join it into one ONNX
classifier and predict with it on both providers; prints whether the results agree and the
images/s of each, as JSON. Exits 2, saying why, where the CUDA provider cannot run.

    python benchmarks/gpu_check.py [--images mnist-sample:test] [--batch-size 256]
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from diffclass_cli import featurize, fit
from diffclass_cli.classifier_format import PROBABILITIES
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import INPUT_NAME
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.features.runtime import CPU, CUDA, cuda_driver_present
from diffclass_cli.heads.to_onnx import export_classifier


def timed(run, *args, **kwargs):
    began = time.perf_counter()
    result = run(*args, **kwargs)
    return result, time.perf_counter() - began


def classifier_proba(path: Path, images: np.ndarray, provider: str, batch_size: int) -> tuple[np.ndarray, float]:
    session = ort.InferenceSession(str(path), providers=[provider] + ([CPU] if provider != CPU else []))
    if session.get_providers()[0] != provider:
        raise DiffclassError(f"onnxruntime could not start {provider}")
    session.run([PROBABILITIES], {INPUT_NAME: images[:batch_size]})  # warm-up
    began = time.perf_counter()
    proba = np.concatenate([session.run([PROBABILITIES], {INPUT_NAME: images[i:i + batch_size]})[0]
                            for i in range(0, len(images), batch_size)])
    return proba, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default="mnist-sample:test")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
        print(f"no CUDA provider in this onnxruntime ({', '.join(ort.get_available_providers())}): "
              "install onnxruntime-gpu", file=sys.stderr)
        return 2
    if not cuda_driver_present():
        print("no NVIDIA driver on this machine (libcuda could not be loaded)", file=sys.stderr)
        return 2
    report = {"onnxruntime": ort.__version__, "images": args.images}
    cpu, cpu_seconds = timed(featurize, args.images, device=Device.cpu, batch_size=args.batch_size)
    gpu, gpu_seconds = timed(featurize, args.images, device=Device.cuda, batch_size=args.batch_size)
    scale = float(np.abs(cpu.features).max())
    report["featurize"] = {"rows": len(cpu.features), "cpu_images_per_s": len(cpu.features) / cpu_seconds,
                           "cuda_images_per_s": len(gpu.features) / gpu_seconds,
                           "max_abs_difference": float(np.abs(cpu.features - gpu.features).max()),
                           "max_abs_feature": scale}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        featurize(args.images, work / "f.h5", device=Device.cpu)
        fit(work / "f.h5", work / "head.skops", head="logreg", per_class=10)
        export_classifier(work / "head.skops", work / "classifier.onnx", DEFAULT_MODEL)
        from diffclass_cli.data.loading import load_all, to_unit_range
        from diffclass_cli.data.sources import open_source
        from diffclass_cli.extractor_format import read_metadata

        meta = read_metadata(DEFAULT_MODEL)
        pixels, _, _ = load_all(open_source(args.images), meta["image_size"], meta["channels"])
        images = to_unit_range(pixels)
        on_cpu, cpu_seconds = classifier_proba(work / "classifier.onnx", images, CPU, args.batch_size)
        on_gpu, gpu_seconds = classifier_proba(work / "classifier.onnx", images, CUDA, args.batch_size)
    report["classifier"] = {"cpu_images_per_s": len(images) / cpu_seconds,
                            "cuda_images_per_s": len(images) / gpu_seconds,
                            "max_abs_probability_difference": float(np.abs(on_cpu - on_gpu).max()),
                            "labels_identical": bool((on_cpu.argmax(1) == on_gpu.argmax(1)).all())}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Featurizing speed, measured side by side in one run on one extractor and one batch size:

  (a) the onnxruntime session alone, on preloaded arrays
  (b) PyTorch eager running the same feature module
  (c) the whole `diffclass featurize` command on a folder of PNG files (decode, resize, write)

Prints images/s for each and the ratios (a)/(b) and (c)/(a).

    python benchmarks/featurize.py [--checkpoint runs/bb.ckpt] [--images 20000] [--batch-size 256]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from diffclass_cli.backbone.checkpoint import Checkpoint, save_checkpoint
from diffclass_cli.backbone.config import DDPMConfig
from diffclass_cli.backbone.unet import UNet
from diffclass_cli.data.sources import open_source
from diffclass_cli.device import Device
from diffclass_cli.extractors.onnx_export import build_extractor, export_onnx
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.features.runtime import ExtractorSession


def images_per_second(run, batch: np.ndarray, repeats: int) -> float:
    run(batch)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        run(batch)
    return repeats * len(batch) / (time.perf_counter() - began)


def write_pngs(folder: Path, count: int) -> None:
    source = open_source("mnist-sample")
    for i in range(count):
        source.load(i % len(source)).save(folder / f"{i:06d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="backbone (default: a randomly initialised default UNet)")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            config = DDPMConfig()
            torch.manual_seed(0)
            weights = UNet(config.unet).state_dict()
            checkpoint = tmp / "random.ckpt"
            save_checkpoint(Checkpoint(config, 0, weights, weights), checkpoint)
        model = tmp / "bb.onnx"
        meta = export_onnx(checkpoint, model, ExtractorSpec())
        shape = (args.batch_size, meta["channels"], meta["image_size"], meta["image_size"])
        batch = np.random.default_rng(0).random(shape, dtype=np.float32)

        session = ExtractorSession(model, Device.cpu)
        onnx_rate = images_per_second(session, batch, args.repeats)
        extractor, _ = build_extractor(checkpoint, ExtractorSpec())
        with torch.inference_mode():
            torch_rate = images_per_second(lambda b: extractor(torch.from_numpy(b)), batch, args.repeats)

        folder = tmp / "pngs"
        folder.mkdir()
        write_pngs(folder, args.images)
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "diffclass_cli", "-q", "featurize", str(folder), str(tmp / "f.h5"),
                        "--model", str(model), "--batch-size", str(args.batch_size), "--device", "cpu",
                        "--workers", str(args.workers)], check=True)
        command_rate = args.images / (time.perf_counter() - began)

    print(f"extractor: {meta['feature_dim']} features from {meta['taps']} at t={meta['timesteps']}, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    print(f"(a) onnxruntime session       {onnx_rate:8.0f} images/s")
    print(f"(b) PyTorch eager             {torch_rate:8.0f} images/s")
    print(f"(c) featurize, {args.images} PNGs   {command_rate:8.0f} images/s (start-up included)")
    print(f"(a)/(b) = {onnx_rate / torch_rate:.2f}   (c)/(a) = {command_rate / onnx_rate:.2f}")


if __name__ == "__main__":
    main()

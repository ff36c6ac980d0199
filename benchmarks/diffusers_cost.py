"""Cost per image of features from a CIFAR-10-sized pretrained DDPM: the architecture of
google/ddpm-cifar10-32 (as its config.json lists it) with random weights, since its real
weights cannot be downloaded here; cost does not depend on the weights, accuracy does and is
not measured. Exported with a few tap choices and timed side by side in onnxruntime.

    python benchmarks/diffusers_cost.py [--batch-size 64] [--repeats 5] [--threads 2]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from extractor_speed import images_per_second

from diffclass_cli.backbone.diffusers_unet import diffusers_package
from diffclass_cli.extractors.onnx_export import export_onnx
from diffclass_cli.extractors.spec import ExtractorSpec

CIFAR10_DDPM = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                    block_out_channels=(128, 256, 256, 256), attention_head_dim=None, norm_num_groups=32,
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1)
TAP_CHOICES = [("mid",), ("mid", "up3"), ("mid", "up3", "up2"), ("mid", "up3", "up2", "up1", "up0")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    diffusers = diffusers_package()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ddpm-cifar10-architecture"
        torch.manual_seed(0)
        model = diffusers.UNet2DModel(**CIFAR10_DDPM)
        model.save_pretrained(folder)
        diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder)
        params = sum(p.numel() for p in model.parameters())
        exported = []
        for taps in TAP_CHOICES:
            out = Path(tmp) / f"{'-'.join(taps)}.onnx"
            export_onnx(Path(f"diffusers:{folder}"), out, ExtractorSpec(timesteps=(100,), taps=taps))
            exported.append(out)
        speeds = images_per_second(exported, args.batch_size, args.repeats, args.threads)
    print(f"UNet2DModel, the architecture of google/ddpm-cifar10-32 ({params / 1e6:.1f} M parameters, random "
          f"weights), 32x32 RGB, onnxruntime on {args.threads} CPU threads, batch {args.batch_size}, median of "
          f"{args.repeats}\n")
    print("| taps | images/s | ms per image |\n|---|---|---|")
    for taps, speed in zip(TAP_CHOICES, speeds):
        print(f"| {','.join(taps)} | {speed:.1f} | {1000 / speed:.1f} |")


if __name__ == "__main__":
    main()

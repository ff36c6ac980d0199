"""Training cost per step of backbone variants, measured side by side in one run (batch 128,
28x28 gray unless a variant's name says another image size, CPU or the default device): the
variants take their steps in turn, so a load that comes and goes on a shared machine hits them
alike, and the median step of each is reported.

    python benchmarks/train_speed.py [--steps 20] [--batch-size 128] [--only default,compile]
"""

import argparse
import contextlib
import statistics
import time

import torch

from diffclass_cli.backbone.config import DDPMConfig, UNetConfig, VAEConfig

VARIANTS = {  # name: (config, options of make_step); the first is the baseline
    "default": (DDPMConfig(), {}),  # UNet width 32, 1,2,2
    "channels-last": (DDPMConfig(), {"channels_last": True}),
    "bf16": (DDPMConfig(), {"bf16": True}),  # bfloat16 autocast
    "compile": (DDPMConfig(), {"compiled": True}),  # torch.compile (inductor)
    "width48": (DDPMConfig(unet=UNetConfig(width=48)), {}),
    "blocks2": (DDPMConfig(unet=UNetConfig(blocks_per_level=2)), {}),  # 2 ResBlocks per level
    "vae": (VAEConfig(), {}),  # width 32, 1,2,2, latent 32
    "rgb32": (DDPMConfig(unet=UNetConfig(image_size=32, channels=3)), {}),  # the default UNet on other images
    "rgb64": (DDPMConfig(unet=UNetConfig(image_size=64, channels=3)), {}),
}


def make_step(config, batch: torch.Tensor, channels_last: bool = False, bf16: bool = False, compiled: bool = False):
    torch.manual_seed(0)
    model = config.build()
    if channels_last:
        model, batch = model.to(memory_format=torch.channels_last), batch.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = config.loss_fn(torch.device("cpu"))
    network = torch.compile(model) if compiled else model
    generator = torch.Generator().manual_seed(0)

    def step() -> float:
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = loss_fn(network, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return time.perf_counter() - began

    step()  # warm-up (and compilation)
    return model, step


def batch_for(config, batch_size: int) -> torch.Tensor:
    shape = (batch_size, config.channels, config.image_size, config.image_size)
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--only", help=f"comma-separated variants to run (default: all of {', '.join(VARIANTS)})")
    args = parser.parse_args()
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, median of {args.steps} steps each, "
          "taken in turn")
    variants = {name: v for name, v in VARIANTS.items() if not args.only or name in args.only.split(",")}
    steps = {name: make_step(config, batch_for(config, args.batch_size), **options)
             for name, (config, options) in variants.items()}
    times = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, (_, step) in steps.items():
            times[name].append(step())
    base = statistics.median(times[next(iter(variants))])
    for name, (model, _) in steps.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        median = statistics.median(times[name])
        print(f"{name:14s} {params:.2f} M parameters  {median:.3f} s/step  {median / base:.2f}x the first")


if __name__ == "__main__":
    main()

"""Training cost per step of each backbone kind, measured side by side in one run (default
sizes, batch 128, 28x28 gray, CPU or the default device), to compare backbones by CPU time.

    python benchmarks/train_speed.py [--steps 20] [--batch-size 128]
"""

import argparse
import time

import torch

from diffclass_cli.backbone.config import DDPMConfig, VAEConfig


def seconds_per_step(config, batch: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    model = config.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = config.loss_fn(torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)

    def step():
        loss = loss_fn(model, batch, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    began = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    batch = torch.rand(args.batch_size, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    print(f"batch {args.batch_size}, {torch.get_num_threads()} threads, {args.steps} steps each")
    rates = {}
    for name, config in (("ddpm (UNet width 32, 1,2,2)", DDPMConfig()),
                         ("vae (width 32, 1,2,2, latent 32)", VAEConfig())):
        rates[name] = seconds_per_step(config, batch, args.steps)
        params = sum(p.numel() for p in config.build().parameters()) / 1e6
        print(f"{name:34s} {params:.2f} M parameters  {rates[name]:.3f} s/step")
    ddpm, vae = rates.values()
    print(f"vae / ddpm time per step = {vae / ddpm:.2f}")


if __name__ == "__main__":
    main()

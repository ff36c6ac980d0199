"""The diffusion backbone: UNet (network), diffusion (math), checkpoint and training."""

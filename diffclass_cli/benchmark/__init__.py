"""Honest few-shot curves: heads on diffusion features vs. baselines, measured on held-out images."""

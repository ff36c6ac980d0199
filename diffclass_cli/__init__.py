"""diffclass: few-shot image classification with features of a diffusion model."""

__version__ = "0.1.0"

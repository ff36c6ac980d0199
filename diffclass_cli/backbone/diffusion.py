"""DDPM math: noise schedules, forward noising, the training loss and the samplers.

Pure functions of tensors and a schedule; nothing here knows the network's layers.
Images live in [-1, 1] here (`to_model_range` maps [0, 1] pixels there).
"""

import math

import torch
from torch import nn

from diffclass_cli.backbone.config import DiffusionConfig, Prediction, Schedule
from diffclass_cli.console import progress


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> the [-1, 1] range the UNet is trained on."""
    return pixels * 2 - 1


def betas(config: DiffusionConfig) -> torch.Tensor:
    """`[T]` float64 noise variances of each step."""
    T = config.num_timesteps
    if config.schedule == Schedule.linear:
        return torch.linspace(config.beta_start, config.beta_end, T, dtype=torch.float64)
    # Nichol & Dhariwal's cosine schedule, clipped as in improved-diffusion.
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


def alphas_cumprod(config: DiffusionConfig) -> torch.Tensor:
    """`[T]` float64 abar_t = prod_{s<=t} (1 - beta_s)."""
    return torch.cumprod(1 - betas(config), dim=0)


def q_sample(x0: torch.Tensor, abar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise; `abar_t` is `[N]`."""
    abar_t = _per_image(abar_t, x0)
    return abar_t.sqrt() * x0 + (1 - abar_t).sqrt() * noise


def _per_image(abar_t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return abar_t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def v_target(x0: torch.Tensor, abar_t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0."""
    abar_t = _per_image(abar_t, x0)
    return abar_t.sqrt() * noise - (1 - abar_t).sqrt() * x0


def predicted_noise(output: torch.Tensor, x_t: torch.Tensor, abar_t: torch.Tensor,
                    prediction: Prediction) -> torch.Tensor:
    """The UNet's output as a noise estimate (a v output: noise = sqrt(abar_t) v + sqrt(1 - abar_t) x_t)."""
    if prediction == Prediction.eps:
        return output
    abar_t = _per_image(abar_t, x_t)
    return abar_t.sqrt() * output + (1 - abar_t).sqrt() * x_t


def training_loss(model: nn.Module, x0: torch.Tensor, abar: torch.Tensor, generator: torch.Generator,
                  *, prediction: Prediction = Prediction.eps, min_snr: float = 0.0) -> torch.Tensor:
    """MSE of the noise (or v) prediction at uniformly drawn timesteps. With `min_snr` = gamma > 0
    each image's error is weighted by min(SNR_t, gamma) / SNR_t for noise targets and
    min(SNR_t, gamma) / (SNR_t + 1) for v targets (Min-SNR-gamma), which takes weight off the
    nearly noise-free steps, where the network has little to learn."""
    t = torch.randint(0, len(abar), (x0.shape[0],), generator=generator, device=x0.device)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device)
    abar_t = abar[t]
    target = noise if prediction == Prediction.eps else v_target(x0, abar_t, noise)
    errors = (model(q_sample(x0, abar_t, noise), t).float() - target).pow(2).flatten(1).mean(1)
    if min_snr > 0:
        snr = abar_t / (1 - abar_t)
        errors = errors * snr.clamp(max=min_snr) / (snr if prediction == Prediction.eps else snr + 1)
    return errors.mean()


@torch.no_grad()
def sample(model: nn.Module, abar: torch.Tensor, prediction: Prediction, shape: tuple[int, ...],
           generator: torch.Generator, *, ddim_steps: int | None = None) -> torch.Tensor:
    """Generate images `[N, C, H, W]` in [-1, 1] with the schedule `abar` `[T]` (float64):
    ancestral DDPM over all steps, or deterministic DDIM (eta = 0) over `ddim_steps` evenly
    spaced steps."""
    device = next(model.parameters()).device
    abar = abar.to(device)
    T = len(abar)
    steps = (torch.linspace(T - 1, 0, ddim_steps).round().long().unique_consecutive()
             if ddim_steps else torch.arange(T - 1, -1, -1)).tolist()
    x = torch.randn(shape, generator=generator, device=device)
    for i, t in enumerate(progress(steps, desc="sampling", unit="step")):
        prev = steps[i + 1] if i + 1 < len(steps) else -1
        a_t, x_t = abar[t], x.double()
        eps = predicted_noise(model(x, torch.full((shape[0],), t, device=device)).double(), x_t, a_t, prediction)
        a_prev = abar[prev] if prev >= 0 else torch.ones((), dtype=abar.dtype, device=device)
        x0 = ((x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()).clamp(-1, 1)
        if ddim_steps:
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        else:
            beta_t = 1 - a_t / a_prev
            mean = (a_prev.sqrt() * beta_t * x0 + (1 - beta_t).sqrt() * (1 - a_prev) * x_t) / (1 - a_t)
            var = beta_t * (1 - a_prev) / (1 - a_t)
            noise = torch.randn(shape, generator=generator, device=device).double()
            x = mean + (var.sqrt() * noise if prev >= 0 else 0)
        x = x.float()
    return x

"""Turn samples of a backbone into PNG files."""

from pathlib import Path

import torch
from PIL.PngImagePlugin import PngInfo
from torchvision.transforms.functional import to_pil_image
from torchvision.utils import make_grid

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import Weights
from diffclass_cli.console import log
from diffclass_cli.files import atomic_output, png_metadata, refuse_overwrite


def grid_columns(n: int) -> int:
    return max(1, round(n ** 0.5))


def _save_png(image: torch.Tensor, path: Path, description: str) -> None:
    """A `[C, H, W]` image in [0, 1] as a PNG that says what it is (files.png_metadata)."""
    info = PngInfo()
    for key, value in png_metadata(description).items():
        info.add_text(key, value)
    to_pil_image(image).save(path, format="png", pnginfo=info)


def sample_to_png(checkpoint: Path, out: Path, n: int, *, ddim_steps: int | None, out_dir: Path | None,
                  weights: Weights, device: torch.device, seed: int, overwrite: bool) -> None:
    """Sample `n` images (DDPM/DDIM steps, or VAE prior draws) and save them as one grid PNG
    (and one PNG each in `out_dir`)."""
    refuse_overwrite(out, overwrite, inputs=[checkpoint])
    each = [out_dir / f"sample_{i:04d}.png" for i in range(n)] if out_dir is not None else []
    for path in each:
        refuse_overwrite(path, overwrite)  # before minutes of sampling, not after
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build(weights).to(device)
    config = ckpt.config
    generator = torch.Generator(device).manual_seed(seed)
    images = config.sample(model, n, generator, ddim_steps)
    pixels = ((images.cpu() + 1) / 2).clamp(0, 1)
    with atomic_output(out, overwrite, inputs=[checkpoint]) as tmp:
        _save_png(make_grid(pixels, nrow=grid_columns(n)), tmp, f"sample: {n} images from {checkpoint}")
    for i, (path, image) in enumerate(zip(each, pixels)):
        with atomic_output(path, overwrite, inputs=[checkpoint]) as tmp:
            _save_png(image, tmp, f"sample: image {i} from {checkpoint}")
    log.info(f"wrote {n} samples to {out}" + (f" and {out_dir}/" if out_dir else ""))

"""Moving images by whole pixels, the edge pixels repeated into the gap (so any background
colour stays the background): training's random shifts and the extractor's fixed ones."""

import torch
import torch.nn.functional as F


def shifted(images: torch.Tensor, offset: tuple[int, int]) -> torch.Tensor:
    """`images` `[N, C, S, S]` moved by `offset` (dy, dx): down and right for positive values."""
    dy, dx = offset
    margin = max(abs(dy), abs(dx))
    if margin == 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (margin,) * 4, mode="replicate")
    return padded[..., margin - dy:margin - dy + size, margin - dx:margin - dx + size]


def random_shifts(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by its own random offset, up to `max_shift` pixels each way."""
    if max_shift == 0:
        return images
    offsets = torch.randint(-max_shift, max_shift + 1, (len(images), 2), generator=generator, device=images.device)
    return torch.cat([shifted(images[i:i + 1], (y, x)) for i, (y, x) in enumerate(offsets.tolist())])

"""Choosing extractor settings from unlabeled images alone: features that describe what an
image shows should give it the same nearest neighbours when only a nuisance changes (another
fixed noise tensor, the image moved by a pixel)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler, normalize

from diffclass_cli.export.extractor import shifted
from diffclass_cli.export.onnx_export import build_extractor
from diffclass_cli.export.spec import ExtractorSpec

# The second view of each image: (added to the noise seed, shift (dy, dx)).
VIEWS = {"noise": (1, (0, 0)), "shift": (0, (0, 1)), "noise+shift": (1, (0, 1))}
NEIGHBOURS = 10


def extract(checkpoint: Path, spec: ExtractorSpec, images: torch.Tensor, view: str | None = None,
            batch_size: int = 256) -> np.ndarray:
    """Features of `images` `[N, C, H, W]` in [0, 1] (or of their second `view`)."""
    offset = (0, 0)
    if view is not None:
        seed_step, offset = VIEWS[view]
        spec = replace(spec, noise_seed=spec.noise_seed + seed_step)
    extractor, _ = build_extractor(checkpoint, spec)
    with torch.inference_mode():
        return np.concatenate([extractor(shifted(images[i:i + batch_size], offset)).numpy()
                               for i in range(0, len(images), batch_size)])


def neighbour_agreement(first: np.ndarray, second: np.ndarray, k: int = NEIGHBOURS) -> float:
    """The mean fraction of each row's `k` nearest neighbours (by angle, after standardising
    each column) that the two views of the same rows share."""
    neighbours = []
    for features in (first, second):
        space = normalize(StandardScaler().fit_transform(features))
        found = NearestNeighbors(n_neighbors=k + 1).fit(space).kneighbors(space, return_distance=False)
        neighbours.append(found[:, 1:])
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(*neighbours)]))

"""Feature sets compared by the benchmark: each maps the train and test images to feature
matrices without ever seeing a label. Adding one is adding one function here."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.decomposition import PCA

from diffclass_cli.console import progress
from diffclass_cli.data.loading import to_unit_range
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.extractors.onnx_export import pytorch_features
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.features.runtime import ExtractorSession

PCA_COMPONENTS = 50


@dataclass
class FeatureSet:
    name: str
    train: np.ndarray  # [N_train, D]
    test: np.ndarray  # [N_test, D]


def _in_batches(run, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """uint8 `[N, C, H, W]` -> features `[N, D]`, batch by batch."""
    out = [run(to_unit_range(images[i:i + batch_size]))
           for i in progress(range(0, len(images), batch_size), desc="features", unit="batch", leave=False)]
    return np.concatenate(out)


def model_input_shape(model: Path) -> tuple[int, int]:
    """(image size, channels) a checkpoint or ONNX extractor expects."""
    if model.suffix == ".onnx":
        meta = read_metadata(model)
        return meta["image_size"], meta["channels"]
    from diffclass_cli.backbone.checkpoint import load_checkpoint

    config = load_checkpoint(model).config
    return config.image_size, config.channels


def extractor_features(name: str, model: Path, spec: ExtractorSpec, train: np.ndarray,
                       test: np.ndarray) -> FeatureSet:
    """Features of an exported extractor (run by onnxruntime) or of a checkpoint with `spec`
    (run by the same PyTorch module that export writes out)."""
    if model.suffix == ".onnx":
        run = ExtractorSession(model)
    else:
        features = pytorch_features(model, spec)
        run = lambda batch: features(torch.from_numpy(batch))  # noqa: E731

    return FeatureSet(name, _in_batches(run, train), _in_batches(run, test))


def pixel_features(train: np.ndarray, test: np.ndarray) -> FeatureSet:
    flat = lambda images: to_unit_range(images.reshape(len(images), -1))  # noqa: E731
    return FeatureSet("pixels", flat(train), flat(test))


def pca_features(train: np.ndarray, test: np.ndarray, seed: int = 0) -> FeatureSet:
    """PCA of raw pixels, fitted on the train images (no labels)."""
    pixels = pixel_features(train, test)
    pca = PCA(n_components=min(PCA_COMPONENTS, *pixels.train.shape), random_state=seed).fit(pixels.train)
    return FeatureSet(f"pca{pca.n_components_}", pca.transform(pixels.train), pca.transform(pixels.test))

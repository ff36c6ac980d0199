"""Write a TapExtractor (any backbone kind's) as one self-describing ONNX file (its format: extractor_format.py).

The metadata carries everything a consumer needs: preprocessing, what the columns are, where
the weights came from.
"""

import json
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import torch

from diffclass_cli import __version__
from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import Weights, config_to_json
from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import FORMAT, FORMAT_VERSION, INPUT_NAME, OUTPUT_NAME, metadata_props
from diffclass_cli.extractors.extractor import make_extractor
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.files import atomic_output, refuse_overwrite
from diffclass_cli.runs import ExportRun

MAX_OPSET = 20  # GroupNorm becomes GroupNormalization at 21, which not every provider runs


def build_extractor(checkpoint: Path, spec: ExtractorSpec, weights: Weights = Weights.ema):
    """The PyTorch extractor of a checkpoint, and the checkpoint it came from."""
    ckpt = load_checkpoint(checkpoint)
    return make_extractor(ckpt.build(weights), ckpt.config, spec), ckpt


def pytorch_features(checkpoint: Path, spec: ExtractorSpec, weights: Weights = Weights.ema,
                     batch_size: int = 256) -> Callable[[torch.Tensor], np.ndarray]:
    """Images `[N, C, H, W]` in [0, 1] -> the features `[N, D]` the exported extractor gives,
    computed by the PyTorch module that export writes out, `batch_size` images at a time."""
    extractor, _ = build_extractor(checkpoint, spec, weights)

    def run(images: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([extractor(images[i:i + batch_size]).numpy()
                                   for i in range(0, len(images), batch_size)])

    return run


def export_onnx(checkpoint: Path, out: Path, spec: ExtractorSpec, *, weights: Weights = Weights.ema,
                opset: int = 18, overwrite: bool = False, notes: dict | None = None) -> dict:
    """Export the extractor of `checkpoint` to `out`; returns the metadata written (with `notes`,
    such as how an option was chosen, added)."""
    refuse_overwrite(out, overwrite)
    extractor, ckpt = build_extractor(checkpoint, spec, weights)
    described = {
        "backbone_kind": ckpt.config.kind,
        **extractor.describe(),
        "feature_groups": [asdict(g) for g in extractor.feature_groups()],
        "weights": weights.value,
        "checkpoint_sha256": ckpt.sha256,
        "checkpoint_step": ckpt.step,
        "trained_on": ckpt.training.get("data", {}),
        "backbone_config": json.loads(config_to_json(ckpt.config)),
        **(notes or {}),
    }
    return _write_onnx(extractor, ckpt.config.image_size, ckpt.config.channels, described, out, opset=opset,
                       overwrite=overwrite)


def export_run(run: ExportRun) -> dict:
    """`export` of a checkpoint: its extractor as `run` says, with the timestep and taps chosen
    from unlabeled images first where `run` asks for `auto`."""
    if (run.choose_on or run.data_root) and not (run.auto_timestep or run.auto_taps):
        raise DiffclassError("--choose-on and --data-root are for --timestep auto and --taps auto")
    spec, notes = run.spec(), {}
    if run.auto_timestep or run.auto_taps:
        from diffclass_cli.extractors.choose import choose_unlabeled

        refuse_overwrite(run.out, run.overwrite)  # before minutes of choosing, not after
        spec, notes = choose_unlabeled(run.checkpoint, spec, timestep=run.auto_timestep, taps=run.auto_taps,
                                       images=run.choose_on, data_root=run.data_root)
    return run.call(export_onnx, spec=spec, notes=notes)


class PixelExtractor(torch.nn.Module):
    """The raw-pixel baseline as an extractor: `[N, C, H, W]` -> `[N, C*H*W]`."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.flatten(1)


def export_pixels(out: Path, image_size: int, channels: int, opset: int = 18, overwrite: bool = False) -> dict:
    """An extractor whose features are the resized pixels themselves, for baselines that go
    through the same featurize / fit / plot pipeline."""
    refuse_overwrite(out, overwrite)
    dim = channels * image_size * image_size
    described = {"backbone_kind": "pixels", "timesteps": [], "taps": [], "pool": "none",
                 "feature_groups": [{"name": "pixels", "start": 0, "stop": dim}]}
    return _write_onnx(PixelExtractor(), image_size, channels, described, out, opset=opset, overwrite=overwrite)


def _write_onnx(module: torch.nn.Module, image_size: int, channels: int, described: dict, out: Path,
                *, opset: int, overwrite: bool) -> dict:
    """Export `module` with a dynamic batch, add the metadata, check, write atomically."""
    if not 17 <= opset <= MAX_OPSET:
        raise DiffclassError(f"--opset must be between 17 and {MAX_OPSET}, not {opset}")
    example = torch.rand(2, channels, image_size, image_size)
    program = torch.onnx.export(
        module.eval(), (example,), dynamo=True, opset_version=opset, verbose=False,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    model = program.model_proto
    feature_dim = described["feature_groups"][-1]["stop"]
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "image_size": image_size,
        "channels": channels,
        "input_range": [0.0, 1.0],
        **described,
        "feature_dim": feature_dim,
        "diffclass_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    onnx.helper.set_model_props(model, metadata_props(metadata))
    model.doc_string = (f"diffclass feature extractor: images [N, {channels}, {image_size}, {image_size}] "
                        f"in [0, 1] -> features [N, {feature_dim}]")
    onnx.checker.check_model(model, full_check=True)
    with atomic_output(out, overwrite) as tmp:
        onnx.save(model, str(tmp))
    groups = ", ".join(g["name"] for g in described["feature_groups"])
    log.info(f"wrote {out}: {feature_dim} features per image ({groups})")
    return metadata

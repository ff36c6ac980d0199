"""Backbone checkpoints: one safetensors file holding weights, optimizer state and config.

safetensors stores only tensors and strings, so loading a checkpoint never runs code
from the file. The config in the file is all that is needed to rebuild the network.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from diffclass_cli import __version__
from diffclass_cli.backbone.config import Backbone, Weights, config_from_json, config_to_json
from diffclass_cli.backbone.diffusers_config import is_diffusers_ref
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import atomic_output, existing_file, sha256_file

FORMAT = "diffclass-backbone"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    config: Backbone
    step: int
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict | None = None
    training: dict = field(default_factory=dict)  # options and data, for resume and model cards
    sha256: str = ""  # of the file it was read from (of a pretrained model's weights)

    def build(self, weights: Weights = Weights.ema) -> torch.nn.Module:
        """The network with the EMA (default) or raw weights, in eval mode on the CPU."""
        model = self.config.build()
        model.load_state_dict(self.ema if weights == Weights.ema else self.model)
        return model.eval()


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    """Write atomically: a kill leaves either the old file or the new one, never half of one."""
    tensors = {f"model/{k}": v for k, v in ckpt.model.items()}
    tensors |= {f"ema/{k}": v for k, v in ckpt.ema.items()}
    groups = None
    if ckpt.optimizer is not None:
        for index, state in ckpt.optimizer["state"].items():
            tensors |= {f"optim/{index}/{k}": torch.as_tensor(v) for k, v in state.items()}
        groups = ckpt.optimizer["param_groups"]
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "diffclass_version": __version__,
        "config": config_to_json(ckpt.config),
        "step": str(ckpt.step),
        "training": json.dumps(ckpt.training),
        "optimizer_groups": json.dumps(groups),
    }
    tensors = {k: v.detach().cpu().clone() for k, v in tensors.items()}  # safetensors refuses shared memory
    data = save(tensors, metadata=metadata)  # bytes: safetensors' own file writer renames a file of its own
    with atomic_output(path, overwrite=True) as tmp:
        try:
            Path(tmp).write_bytes(data)
        except OSError as err:  # a full disk, a file-size limit: the last checkpoint stays as it was
            raise DiffclassError(f"cannot write {path}: {err.strerror or err}") from None


def read_checkpoint_metadata(path: Path) -> dict[str, str]:
    """The checkpoint's metadata; a clear error when the file is not a diffclass backbone."""
    path = existing_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise DiffclassError(f"{path} is not a diffclass checkpoint (not a safetensors file: {err})") from err
    if metadata.get("format") != FORMAT:
        raise DiffclassError(f"{path} is not a diffclass checkpoint (no '{FORMAT}' metadata)")
    if int(metadata["format_version"]) > FORMAT_VERSION:
        raise DiffclassError(f"{path} was written by a newer diffclass ({metadata['diffclass_version']})")
    return metadata


def load_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint file, or a pretrained model named `diffusers:PATH` (backbone/diffusers_unet.py)."""
    if is_diffusers_ref(path):
        from diffclass_cli.backbone.diffusers_unet import load_pretrained

        return load_pretrained(str(path))
    metadata = read_checkpoint_metadata(path)
    config = config_from_json(metadata.get("config", ""))  # checked before any tensor is read
    try:
        return _checkpoint(path, metadata, config)
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as err:
        raise DiffclassError(f"{path} is damaged or not a diffclass checkpoint ({type(err).__name__}: "
                             f"{str(err)[:200]})") from None


def _checkpoint(path: Path, metadata: dict[str, str], config: Backbone) -> Checkpoint:
    tensors = load_file(str(path))
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for key, value in tensors.items():
        part, _, name = key.partition("/")
        parts[part][name] = value
    groups = json.loads(metadata["optimizer_groups"])
    optimizer = None
    if groups is not None:
        state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in parts["optim"].items():
            index, _, key = name.partition("/")
            state.setdefault(int(index), {})[key] = value
        optimizer = {"state": state, "param_groups": groups}
    return Checkpoint(
        config=config,
        step=int(metadata["step"]),
        model=parts["model"],
        ema=parts["ema"],
        optimizer=optimizer,
        training=json.loads(metadata["training"]),
        sha256=sha256_file(path),
    )

"""The network and the loading of a `diffusers:PATH` backbone (diffusers_config.py): a
UNet2DModel behind our UNet's interface, and a pretrained folder read as a Checkpoint. Weights
are read from safetensors only, never pickle."""

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from diffclass_cli.backbone.blocks import Tap, TapCollector
from diffclass_cli.backbone.checkpoint import Checkpoint
from diffclass_cli.backbone.diffusers_config import PREFIX, DiffusersConfig
from diffclass_cli.errors import DiffclassError

SCHEDULER_FILE = "scheduler_config.json"


def diffusers_package():
    """The diffusers package, or one line saying how to get it."""
    try:
        import diffusers
    except ModuleNotFoundError:
        raise DiffclassError("diffusers:PATH needs the diffusers package: pip install 'diffclass[diffusers]'") from None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


class DiffusersUNet(nn.Module):
    """A UNet2DModel behind our UNet's interface: `forward(x, t)` predicts the noise (or v),
    `forward_intermediates` stops after the deepest tap asked for, `taps()` names the blocks."""

    def __init__(self, config: DiffusersConfig):
        super().__init__()
        self.config = config
        self.model = diffusers_package().UNet2DModel.from_config(config.unet)

    def taps(self) -> list[Tap]:
        """The named blocks with their output channels and sizes (from one dry run, before any
        pruning, kept)."""
        if not hasattr(self, "_taps"):
            size, channels = self.config.image_size, self.config.channels
            with torch.no_grad():
                found = self.forward_intermediates(torch.zeros(1, channels, size, size), torch.zeros(1),
                                                   self.config.tap_names)
            self._taps = [Tap(name, found[name].shape[1], found[name].shape[-1]) for name in self.config.tap_names]
        return self._taps

    def prune_intermediate_layers(self, taps: Sequence[str]) -> None:
        """Drop every block after the deepest of `taps` and the output layers."""
        order = self.config.tap_names
        deepest = max(order.index(name) for name in taps)
        levels = self.config.levels
        for j in range(levels):
            if order.index(f"up{levels - 1 - j}") > deepest:
                self.model.up_blocks[j] = nn.Identity()
        for i in range(levels):
            if order.index(f"down{i}") > deepest:
                self.model.down_blocks[i] = nn.Identity()
        if order.index("mid") > deepest:
            self.model.mid_block = None
        self.model.conv_norm_out = self.model.conv_act = self.model.conv_out = nn.Identity()

    def forward_intermediates(self, x: torch.Tensor, timesteps: torch.Tensor,
                              taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """UNet2DModel.forward's own steps, block by block, up to the deepest tap."""
        model, levels = self.model, self.config.levels
        collector = TapCollector(taps, self.config.tap_names)
        keep, found = collector.keep, collector.found
        if model.config.center_input_sample:
            x = 2 * x - 1.0
        emb = model.time_embedding(model.time_proj(timesteps).to(x.dtype))
        h = model.conv_in(x)
        skips = (h,)
        for i, block in enumerate(model.down_blocks):
            h, residuals = block(hidden_states=h, temb=emb)
            skips += residuals
            if keep(f"down{i}", h):
                return found
        if model.mid_block is not None:
            h = model.mid_block(h, emb)
        if keep("mid", h):
            return found
        for j, block in enumerate(model.up_blocks):
            residuals, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            h = block(h, residuals, emb)
            if keep(f"up{levels - 1 - j}", h):
                return found
        return found

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.model(x, timesteps).sample


def load_pretrained(ref: str):
    """`diffusers:PATH` as a Checkpoint: its config, its weights as both the raw and the EMA
    weights, step 0, and `sha256` of its weights file (of its config for a hub model)."""
    name = ref[len(PREFIX):]
    folder = Path(name)
    if folder.is_dir() and (folder / "unet").is_dir():  # a pipeline folder
        folder = folder / "unet"
    diffusers = diffusers_package()
    try:
        model = diffusers.UNet2DModel.from_pretrained(str(folder) if folder.is_dir() else name, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise DiffclassError(f"cannot load the diffusers model {name!r} ({str(err).splitlines()[0][:200]}); "
                             "give a folder saved with save_pretrained (safetensors weights)") from None
    config = DiffusersConfig(unet=json.loads(json.dumps(dict(model.config))), scheduler=_scheduler_config(folder),
                             source=name)
    weights = {f"model.{key}": value for key, value in model.state_dict().items()}
    config_sha256 = hashlib.sha256(json.dumps(config.unet, sort_keys=True).encode()).hexdigest()
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    data = {"source": name, "config_sha256": config_sha256}
    return Checkpoint(config, 0, weights, dict(weights), training={"data": data},
                      sha256=digest.hexdigest() if files else config_sha256)


def _scheduler_config(folder: Path) -> dict:
    """The model's noise schedule: its scheduler_config.json (beside it, or in the pipeline's
    scheduler/ folder), else DDPMScheduler's defaults (the DDPM paper's linear schedule)."""
    for candidate in (folder / SCHEDULER_FILE, folder.parent / "scheduler" / SCHEDULER_FILE):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DiffclassError(f"{candidate} is not a scheduler config ({err})") from None
    return dict(diffusers_package().DDPMScheduler().config)

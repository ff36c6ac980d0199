"""Backbones trained on unlabeled images (or pretrained ones), and their checkpoints.

Each kind's config registers itself in config.BACKBONES where it is defined; importing this
package imports every kind's config module (none of them imports torch)."""

from diffclass_cli.backbone import config, diffusers_config  # noqa: F401

"""Which torch device a command runs on (torch is imported only when one is asked for)."""

from diffclass_cli.choices import Device
from diffclass_cli.errors import DiffclassError

__all__ = ["Device", "torch_device"]


def torch_device(device: Device):
    """`auto` is CUDA when a GPU is usable, else the CPU; asking for an absent GPU is an error."""
    import torch

    if device == Device.cuda and not torch.cuda.is_available():
        raise DiffclassError("--device cuda was asked for, but PyTorch sees no usable CUDA GPU")
    if device == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)

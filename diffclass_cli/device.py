"""Which torch device a command runs on."""

from enum import Enum

import torch

from diffclass_cli.errors import DiffclassError


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def torch_device(device: Device) -> torch.device:
    """`auto` is CUDA when a GPU is usable, else the CPU; asking for an absent GPU is an error."""
    if device == Device.cuda and not torch.cuda.is_available():
        raise DiffclassError("--device cuda was asked for, but PyTorch sees no usable CUDA GPU")
    if device == Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device.value)

"""The onnxruntime session that runs an extractor: CUDA when usable, else the CPU, and
always saying which one actually runs."""

import ctypes
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from diffclass_cli.console import log
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import INPUT_NAME, OUTPUT_NAME, check_output, open_session, validated_metadata

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def cuda_driver_present() -> bool:
    """Whether the NVIDIA driver library loads; without it onnxruntime's CUDA provider cannot
    start (and asking for it anyway fills stderr with loader errors)."""
    try:
        ctypes.CDLL("libcuda.so.1" if sys.platform != "win32" else "nvcuda.dll")
        return True
    except OSError:
        return False


def choose_providers(device: Device, available: list[str], driver: bool = True) -> list[str]:
    """Providers to ask onnxruntime for, best first."""
    if device == Device.cpu:
        return [CPU]
    if device == Device.cuda and CUDA in available and not driver:
        raise DiffclassError("--device cuda: no NVIDIA driver found (libcuda could not be loaded)")
    if CUDA in available and driver:
        return [CUDA, CPU]
    if device == Device.cuda:
        raise DiffclassError(
            "--device cuda needs onnxruntime-gpu with its CUDA provider; this onnxruntime offers "
            f"{', '.join(available)}"
        )
    return [CPU]


def _preload_cuda_libraries() -> None:
    # onnxruntime-gpu can load the CUDA and cuDNN libraries that the torch wheels install.
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except (OSError, RuntimeError) as err:
            log.debug(f"could not preload CUDA libraries: {err}")


@dataclass
class FeatureBatch:
    rows: np.ndarray  # source rows that decoded, in order
    features: np.ndarray  # float32 [len(rows), D]
    skipped: list[tuple[int, str]]  # (source row, reason)
    provider: str  # the onnxruntime provider that computed it


MetadataReader = Callable[[ort.InferenceSession, Path], dict]


class ExtractorSession:
    """An extractor loaded into onnxruntime, its metadata checked by `reads` (a classifier file
    has its own reader: it computes the features too); `provider` is the one that actually runs."""

    def __init__(self, model: Path, device: Device = Device.auto, threads: int | None = None,
                 reads: MetadataReader = validated_metadata):
        providers = choose_providers(device, ort.get_available_providers(), cuda_driver_present())
        if CUDA in providers:
            _preload_cuda_libraries()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # onnxruntime's own fallback warnings: we report it ourselves
        self.session = open_session(model, options, providers)
        self.model, self.metadata = model, reads(self.session, model)
        self.provider = self.session.get_providers()[0]
        if device == Device.cuda and self.provider != CUDA:
            raise DiffclassError("--device cuda: onnxruntime could not start its CUDA provider "
                                 "(no usable GPU or CUDA libraries)")
        if CUDA in providers and self.provider != CUDA:
            log.info("no usable GPU for onnxruntime; running on the CPU")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """float32 `[N, C, H, W]` in [0, 1] -> float32 `[N, D]`."""
        features = self.session.run([OUTPUT_NAME], {INPUT_NAME: images})[0]
        check_output(features, self.metadata, self.model)
        return features

"""`featurize --engine ray`: the same decoding and onnxruntime session, run by
Ray Data actors (`map_batches`), one session per actor, GPUs as actor resources.

With RAY_ADDRESS set (e.g. `auto` on a cluster node) it joins that cluster; otherwise it
starts a local Ray instance. Results stream back in source order to the HDF5 writer.
"""

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffclass_cli.console import log
from diffclass_cli.data.loading import decode_rows, to_unit_range
from diffclass_cli.data.sources import ImageSource
from diffclass_cli.device import Device
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.runtime import ExtractorSession, FeatureBatch


class ExtractActor:
    """One Ray actor: decodes its rows of the source and runs its own onnxruntime session."""

    def __init__(self, source: ImageSource, model: str, image_size: int, channels: int, device: Device,
                 threads: int):
        self.source, self.size, self.channels = source, image_size, channels
        self.session = ExtractorSession(Path(model), device, threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = batch["row"]
        decoded = decode_rows(self.source, rows, self.size, self.channels)
        ok = np.isin(rows, decoded.rows)
        reasons = dict(decoded.skipped)
        out = np.zeros((len(rows), self.session.metadata["feature_dim"]), np.float32)
        if len(decoded.rows):
            out[ok] = self.session(to_unit_range(decoded.images))
        return {"row": rows, "ok": ok, "reason": np.array([reasons.get(int(r), "") for r in rows], dtype=object),
                "features": out, "provider": np.array([self.session.provider] * len(rows), dtype=object)}


def ray_feature_batches(source: ImageSource, model: Path, meta: dict, *, batch_size: int, workers: int,
                        start: int, device: Device) -> Iterator[FeatureBatch]:
    """Feature batches of rows `start..` in source order, computed by `workers` actors."""
    if start >= len(source):
        return
    try:
        import ray
    except ImportError:
        raise DiffclassError("--engine ray needs Ray: pip install 'diffclass[ray]'") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its failures raise; its chatter is noise here
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # rows come back in source order
    context.enable_progress_bars = False  # ours is enough
    actors = max(1, workers)
    gpus = 1 if device != Device.cpu and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if device == Device.cuda and not gpus:
        raise DiffclassError("--device cuda: the Ray cluster has no GPU")
    log.info(f"Ray: {actors} actor(s) with 1 CPU{' and 1 GPU' if gpus else ''} each "
             f"(the cluster has {ray.cluster_resources().get('CPU', 0):.0f} CPUs)")
    # One block per batch, already in the object store (no read tasks to compete with the actors
    # for CPUs): blocks are what the actors share out, and what streams back in order.
    rows = np.arange(start, len(source), dtype=np.int64)
    blocks = np.array_split(rows, -(-len(rows) // batch_size))
    dataset = ray.data.from_numpy(blocks).rename_columns({"data": "row"})
    results = dataset.map_batches(
        ExtractActor, batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1, num_gpus=gpus,
        fn_constructor_kwargs={"source": source, "model": str(model.resolve()), "image_size": meta["image_size"],
                               "channels": meta["channels"], "device": Device.cuda if gpus else Device.cpu,
                               "threads": 1},
    )
    for block in results.iter_batches(batch_size=None, batch_format="numpy"):
        ok = block["ok"]
        skipped = [(int(row), str(reason)) for row, reason in zip(block["row"][~ok], block["reason"][~ok])]
        yield FeatureBatch(block["row"][ok], block["features"][ok],
                           skipped, str(block["provider"][0]))

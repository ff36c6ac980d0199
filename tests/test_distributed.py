"""Training under torch.distributed: 2 CPU processes with gloo, as torchrun would start them."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.backbone.config import DDPMConfig, TrainConfig, UNetConfig, VAEConfig
from diffclass_cli.backbone.distributed import Launch, detect_launch, rank_rows
from diffclass_cli.backbone.train import run_training
from diffclass_cli.data.sources import open_source

CONFIGS = {
    "ddpm": DDPMConfig(unet=UNetConfig(image_size=8, channels=1, width=8, channel_mults=(1, 2))),
    "vae": VAEConfig(image_size=8, channels=1, width=8, channel_mults=(1, 2), latent_dim=4),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world_size: int, port: int, kind: str, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    train = TrainConfig(steps=4, batch_size=16, warmup=1, save_every=2)
    ckpt = run_training(open_source("digits:train"), CONFIGS[kind], train, Path(folder) / "bb.ckpt",
                        torch.device("cpu"))
    save_file({f"model/{k}": v.contiguous() for k, v in ckpt.model.items()}
              | {f"ema/{k}": v.contiguous() for k, v in ckpt.ema.items()}, f"{folder}/rank{rank}.safetensors")


def test_launch_detection_and_rank_shards(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert detect_launch() == Launch() and not Launch().is_distributed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert detect_launch() == Launch(1, 2, 1)
    shards = [rank_rows(7, Launch(r, 2)).tolist() for r in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5, 0]]  # DistributedSampler pads the last shard


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    for kind in CONFIGS:
        folder = tmp_path / kind
        folder.mkdir()
        mp.spawn(_rank_worker, args=(2, _free_port(), kind, str(folder)), nprocs=2, join=True)
        ranks = [load_file(str(folder / f"rank{r}.safetensors")) for r in range(2)]
        saved = load_checkpoint(folder / "bb.ckpt")
        assert saved.step == 4 and saved.config == CONFIGS[kind]
        assert saved.training["data"]["processes"] == 2
        assert saved.training["data"]["images"] >= len(open_source("digits:train"))
        initial = CONFIGS[kind].build().state_dict()
        for name, value in ranks[0].items():
            assert torch.equal(value, ranks[1][name]), name  # DDP kept the ranks in step
            part, _, key = name.partition("/")
            assert torch.equal(value, getattr(saved, part)[key])  # rank 0 wrote what it held
        assert any(not torch.equal(ranks[0][f"model/{k}"], v) for k, v in initial.items())


def test_torchrun_launch_of_the_cli_trains_and_resumes(tmp_path):
    ckpt = tmp_path / "bb.ckpt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "diffclass_cli", "train-backbone", "digits", "--out", str(ckpt), "--width", "8",
               "--channel-mults", "1,2", "--batch-size", "8", "--warmup", "1", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*command, "--steps", "3"], capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("8 per rank x 2 ranks = 16 (effective batch size)") == 1  # rank 0 logs alone
    assert load_checkpoint(ckpt).step == 3
    resumed = subprocess.run([*command, "--steps", "5", "--resume"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr and load_checkpoint(ckpt).step == 5

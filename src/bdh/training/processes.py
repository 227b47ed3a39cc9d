"""Processes of a run: `Dist` (rank, world, the process group; gloo on CPU, NCCL on CUDA), the device, and the
parent-death signal of the local processes `bdh.training.trainer.launch` starts."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

import torch


@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @classmethod
    def from_env(cls, device_pref: str) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        owns = False
        if not dist.is_initialized():
            cuda = device_pref != "cpu" and torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(local)
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        return cls(rank, world, local, owns)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.world
        return x

    def close(self) -> None:
        if self.owns_group:
            torch.distributed.destroy_process_group()


def pick_device(pref: str, dist: Dist) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"train.device = {pref!r}: CUDA is not available on this machine; use cpu or auto")
        return torch.device(f"cuda:{dist.local_rank}" if dist.world > 1 or pref == "cuda" else pref)
    return torch.device("cpu")


def die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGTERM this process when `parent` (the launching `bdh train`) dies
    (PR_SET_PDEATHSIG), so that killing it never leaves its training processes running on. torch.multiprocessing
    asks for SIGINT, which a process started as a background job (`bdh train ... &`, nohup) ignores. Elsewhere
    nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


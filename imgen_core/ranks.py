"""Several processes working on one job (torchrun): joining the group, sharing out, gathering.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is one process of one.
"""
from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

# CPU threads per process where results must be the same however a run is split: torchrun's own
# default, so that one process and several compute alike.
REPRODUCIBLE_THREADS = 1


def world() -> tuple[int, int]:
    """(rank, number of processes)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> torch.device:
    """Join the process group when started by torchrun (NCCL on CUDA, else gloo); the device of
    this process: on CUDA, the GPU of its LOCAL_RANK."""
    _, size = world()
    if size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def share(items: list) -> list:
    """This process's share of `items`: every WORLD_SIZE-th, from its rank on."""
    rank, size = world()
    return items[rank::size]


def gather(obj) -> list:
    """`obj` of every process, in rank order, on every process."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def leave():
    """Leave the group together: a process that exits while another still writes can take gloo's
    threads down with it (an abort at exit)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def fixed_threads(threads: int):
    """Compute with `threads` CPU threads inside the block. A matrix product's rounding follows the
    thread count, and torchrun gives each process one thread: a fixed count makes one process and
    several give the same results."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer of at least 1, got {threads!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)

"""Process-group set-up for deepspeed / torchrun / plain python launches, and a clean teardown.

Plain `python` gets a world of one: MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE/LOCAL_RANK default to a local,
free-port group. gloo on CPU, NCCL on GPUs. Teardown matters: a multi-process gloo run that exits with live
DeepSpeed engine and process group aborts with "terminate called without an active exception".
"""
from __future__ import annotations

import datetime
import gc
import os
import socket
import sys
import warnings

from typing import Optional

import torch
import torch.distributed as dist


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(local_rank_flag=None, timeout_minutes: float = 10.0) -> dict:
    """Initialise torch.distributed through DeepSpeed; returns rank, world_size, local_rank and the device.

    `timeout_minutes` (--distributed-timeout-minutes) bounds every collective of the world group: gloo raises, and
    NCCL's asynchronous error handling aborts the communicator instead of waiting for ever."""
    # DeepSpeed 0.19 still calls the collectives newer torch renamed (all_gather_into_tensor, reduce_scatter_tensor);
    # the FutureWarning is for DeepSpeed, and under ZeRO-3 it repeats on every rank from every call site
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated\. Please use",
                            category=FutureWarning)
    if "WORLD_SIZE" not in os.environ:
        os.environ.setdefault("RANK", "0")
        os.environ["WORLD_SIZE"] = "1"
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    if local_rank_flag is not None:
        os.environ["LOCAL_RANK"] = str(local_rank_flag)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    if torch.cuda.is_available():
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
        if "OMP_NUM_THREADS" not in os.environ:  # the deepspeed launcher does not split the cores
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", min(world_size, os.cpu_count() or 1)))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, local_world)))
    import deepspeed
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                               timeout=datetime.timedelta(minutes=timeout_minutes))
    if backend == "gloo" and world_size > 1:
        dist.barrier()  # every rank has mapped its peers' segments: the names may go
        unlink_shared_memory_name(dist.get_rank())
    return dict(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def unlink_shared_memory_name(rank: int) -> None:
    """Remove the name of this rank's /dev/shm segment of DeepSpeed's CPU allreduce (its op never does), once every
    rank has mapped it: the mapping lives on until the process exits, and no run, however it ends, leaves 66 MB
    per rank behind in /dev/shm (a full /dev/shm is memory the machine no longer has)."""
    name = (f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank}")
    try:
        os.remove(name)
    except FileNotFoundError:
        pass


def is_communication_failure(err: BaseException) -> bool:
    """Whether an exception comes from a collective or send/receive that timed out or lost its peer."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(mark in text for mark in ("gloo/transport", "NCCL", "Timed out"))


def agree(problem: Optional[str]) -> Optional[str]:
    """Collective: the first rank's problem (a one-line message) if any rank has one, else None on every rank.

    Checks that may fail on some ranks only (a directory unwritable on one node, a file that rank 0 verified) end
    with every rank raising the same error instead of the others hanging in the next collective."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return problem
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, problem)
    return next((p for p in found if p is not None), None)


def all_reduce_mean(values: list, device) -> list:
    """The mean of each value over every rank of the world (float64)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return (t / dist.get_world_size()).tolist()


def teardown(engine=None, barrier: bool = True) -> None:
    """Barrier, destroy the engine and the process group, flush: every run and ZeRO stage exits 0.

    After an error on this rank (`barrier=False`) peers may never reach a barrier, so none is entered.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            if engine is not None and hasattr(engine, "destroy"):
                engine.destroy()
            dist.destroy_process_group()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()

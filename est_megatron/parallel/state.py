"""Process groups for tensor (TP), pipeline (PP) and data (DP) parallelism, and the `mpu` handed to DeepSpeed.

Megatron's rank order: TP ranks are adjacent, then DP, then PP (rank = tp + TP * (dp + DP * pp)). This is
DeepSpeed's `PipeModelDataParallelTopology` (axes pipe, data, model), so `ParallelState` is a
`PipelineParallelGrid` on that topology: a pipeline run hands the same topology to `PipelineModule`, and a
non-pipeline run passes the state as `mpu=` to `deepspeed.initialize`. DeepSpeed then partitions ZeRO states
over the data-parallel group and sums gradient norms over the model-parallel group (TP x PP), counting
parameters without a `tensor_model_parallel` mark on TP rank 0 only, which gives the true global norm.
"""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist

from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology, PipelineParallelGrid

from est_megatron.errors import UsageError


class ParallelState(PipelineParallelGrid):
    """The mpu: TP/PP/DP ranks and groups with the method names DeepSpeed and Megatron code call.

    `get_model_parallel_*` is the TP x PP group (what DeepSpeed reduces norms and overflow flags over);
    `get_tensor_model_parallel_*` the TP group; `get_data_parallel_*` the DP group.
    """

    def __init__(self, tensor_parallel: int = 1, pipeline_parallel: int = 1):
        world = dist.get_world_size()
        if world % (tensor_parallel * pipeline_parallel):
            raise UsageError(f"world size {world} is not divisible by --tensor-model-parallel-size "
                             f"{tensor_parallel} x --pipeline-model-parallel-size {pipeline_parallel}; launch a "
                             f"multiple of {tensor_parallel * pipeline_parallel} processes")
        dp = world // (tensor_parallel * pipeline_parallel)
        super().__init__(topology=PipeModelDataParallelTopology(num_pp=pipeline_parallel, num_mp=tensor_parallel,
                                                                 num_dp=dp))

    @property
    def tp_size(self) -> int:
        return self.get_tensor_model_parallel_world_size()

    @property
    def tp_rank(self) -> int:
        return self.get_tensor_model_parallel_rank()

    @property
    def tp_group(self) -> Optional[dist.ProcessGroup]:
        """The TP group for the model's layers; None without tensor parallelism (no communication at all)."""
        return self.get_tensor_model_parallel_group() if self.tp_size > 1 else None

    def get_tensor_model_parallel_group(self):
        return self.get_slice_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        """Global rank of TP rank 0 in this rank's TP group."""
        return self.global_rank - self.get_tensor_model_parallel_rank()

    def get_pipeline_model_parallel_group(self):
        return self.get_pipe_parallel_group()

    def describe(self) -> str:
        return (f"rank {self.global_rank}: tp {self.tp_rank}/{self.tp_size}, pp {self.get_pipe_parallel_rank()}/"
                f"{self.get_pipe_parallel_world_size()}, dp {self.get_data_parallel_rank()}/"
                f"{self.get_data_parallel_world_size()}")


def initialize_model_parallel(tensor_parallel: int = 1, pipeline_parallel: int = 1,
                              backend: Optional[str] = None) -> ParallelState:
    """Initialise torch.distributed (and deepspeed.comm) if needed and build every group; all ranks call it."""
    import deepspeed
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend or "gloo")
    else:
        deepspeed.init_distributed(dist_backend=dist.get_backend())
    return ParallelState(tensor_parallel, pipeline_parallel)

"""Batches of sample indices for data-parallel pretraining, resumable from a consumed-sample count.

Global step s covers samples [consumed + s*G, consumed + (s+1)*G) with G = micro_batch_size * data_parallel_size;
rank r takes the r-th micro-batch-sized slice. Samples are a fixed, pre-shuffled stream (the dataset's shuffle
index), so restarting with the consumed count from a checkpoint continues exactly where training stopped.
"""
from typing import Iterator, List, Sequence

import numpy as np
import torch

from est_megatron.errors import UsageError


class PretrainingSampler:
    """Batch sampler for torch DataLoader(batch_sampler=...); yields lists of sample indices for this rank."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, data_parallel_rank: int,
                 data_parallel_size: int) -> None:
        if micro_batch_size < 1 or data_parallel_size < 1:
            raise UsageError(f"micro batch size ({micro_batch_size}) and data-parallel size ({data_parallel_size}) "
                             f"must be positive")
        if not 0 <= data_parallel_rank < data_parallel_size:
            raise UsageError(f"data-parallel rank {data_parallel_rank} is outside [0, {data_parallel_size})")
        if total_samples < micro_batch_size * data_parallel_size:
            raise UsageError(f"the dataset has {total_samples} samples, fewer than one global micro-batch of "
                             f"{micro_batch_size * data_parallel_size}; request more samples or a smaller batch")
        if not 0 <= consumed_samples < total_samples:
            raise UsageError(f"consumed samples {consumed_samples} is not below the dataset's {total_samples} "
                             f"samples; training already went through it: raise the sample count to go on")
        self.total_samples, self.consumed_samples = total_samples, consumed_samples
        self.micro_batch_size, self.rank, self.world = micro_batch_size, data_parallel_rank, data_parallel_size

    def __len__(self) -> int:
        """Micro-batches this rank will yield (incomplete final global batches are dropped)."""
        return (self.total_samples - self.consumed_samples) // (self.micro_batch_size * self.world)

    def __iter__(self) -> Iterator[List[int]]:
        global_batch = self.micro_batch_size * self.world
        first = self.consumed_samples + self.rank * self.micro_batch_size
        for step in range(len(self)):
            start = first + step * global_batch
            yield list(range(start, start + self.micro_batch_size))


def collate(samples: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack samples (int64 arrays of seq_length+1 tokens) into a LongTensor [batch, seq_length+1]."""
    return torch.from_numpy(np.stack(samples).astype(np.int64, copy=False))

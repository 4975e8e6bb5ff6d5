"""The dense model's loss on held-out data during training: the same first --eval-iters global batches each time,
averaged over the data-parallel ranks; corpora given apart (`CorpusSets`) are each measured, then weighted.

Validation always runs the dense model (no plan): under pipeline parallelism the stages read the plan from the
shared holder, so it is set to None first.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from est_megatron.data import CorpusSets
from est_megatron.data.sampler import PretrainingSampler
from est_megatron.training.data_hooks import DataHooks
from est_megatron.training.distributed import all_reduce_mean
from est_megatron.training.packed_documents import PackedDocuments, model_batch, pipeline_batch


def evaluate(engine, dataset, args, dp_rank, dp_size, device, hooks: DataHooks, pipe_step_plan=None,
             packing: Optional[PackedDocuments] = None) -> Optional[float]:
    """Mean validation loss of the dense model over the first --eval-iters global batches (same each time), with
    the training's packed-document flags (`packing`)."""
    if dataset is None or args.eval_iters == 0:
        return None
    accumulation = args.global_batch_size // (args.micro_batch_size * dp_size)
    sampler = PretrainingSampler(len(dataset), 0, args.micro_batch_size, dp_rank, dp_size)
    total, count = 0.0, 0
    engine.eval()
    with torch.no_grad():
        for i, indices in enumerate(sampler):
            if i >= args.eval_iters * accumulation:
                break
            batch = model_batch(packing, *hooks.split(hooks.collate([dataset[j] for j in indices]).to(device)))
            if pipe_step_plan is not None:  # pipeline stages read the plan from the holder: the dense model
                pipe_step_plan.set(None)
                total += float(engine.eval_batch(iter([pipeline_batch(*batch)]), num_micro_batches=1))
            else:
                inputs, labels, documents = batch
                total += float(engine(inputs, plan=None, labels=labels, documents=documents))
            count += 1
    engine.train()
    mean_total, mean_count = all_reduce_mean([total, count], device)
    return mean_total / max(mean_count, 1e-9)


def validation_losses(engine, data, args, dp_rank, dp_size, device, hooks: DataHooks, pipe_step_plan=None,
                      packing: Optional[PackedDocuments] = None) -> Tuple[Optional[float], Dict[str, float]]:
    """(loss, {corpus: loss}): one dataset's loss and no corpora, or for `CorpusSets` each corpus's loss and their
    weighted mean."""
    def run(dataset):
        return evaluate(engine, dataset, args, dp_rank, dp_size, device, hooks, pipe_step_plan, packing)

    if not isinstance(data, CorpusSets):
        return run(data), {}
    by_corpus = {name: run(dataset) for name, dataset in zip(data.names, data.datasets)}
    return float(sum(w * loss for w, loss in zip(data.weights, by_corpus.values()))), by_corpus

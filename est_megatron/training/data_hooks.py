"""Where a run's batches come from: `DataHooks` (build the tokenizer and datasets, collate samples, split a batch
into inputs and labels) and the pretraining hooks over --data-path shards; launch/finetune.py plugs SFT data in.

Rank 0 builds the datasets' index caches first, then the first rank of every other node (each node may cache on
its own disk), then the other ranks read them; an error on a builder reaches every rank as one UsageError.
Validation data comes as `CorpusSets`, one dataset per corpus, so validation reports each on its own: the corpora
given apart (--valid-data-path, --test-data-path), or the valid and test parts of --split of each corpus of a
--data-path blend. Without --test-data-path the test part of --split is the test set, evaluated once the run
completes, as in Megatron.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from est_megatron.data import build_corpus_sets, build_datasets, parse_data_path, parse_split, split_ranges
from est_megatron.data.corpus import Corpus
from est_megatron.data.gpt_dataset import INDEX_VERSION
from est_megatron.data.integrity import check_shards_tokenizer
from est_megatron.data.sampler import collate
from est_megatron.data.tokenizer import spec_from_args
from est_megatron.errors import UsageError
from est_megatron.training.distributed import agree
from est_megatron.training.preflight import check_directories


def build_data(args, dist_info):
    """Tokenizer, datasets (rank 0 builds the index caches first, then each node's first rank, then the others read
    them). The training set is --data-path's split (or all of --train-data-path); validation and test data come as
    CorpusSets, one dataset per corpus (a blend's parts of --split, or the --valid-data-path / --test-data-path
    corpora), so validation reports each on its own."""
    tokenizer = spec_from_args(args).load()
    check_directories([("--data-cache-dir", args.data_cache_dir, 0)])
    train_samples, eval_samples = args.train_steps * args.global_batch_size, args.eval_iters * args.global_batch_size

    def build():
        check_shards_tokenizer([args.data_path, args.train_data_path, args.valid_data_path, args.test_data_path],
                               tokenizer, args.tokenizer_model)
        if args.train_data_path:
            train, valid, test = build_datasets(args.train_data_path, "1", args.seq_length, args.seed,
                                                (train_samples, 0, 0), cache_dir=args.data_cache_dir)
        else:
            split_valid = 0 if args.valid_data_path else eval_samples
            split_test = 0 if args.test_data_path else split_test_samples(args.data_path, args.split, eval_samples)
            train, valid, test = build_datasets(args.data_path, args.split, args.seq_length, args.seed,
                                                (train_samples, split_valid, split_test),
                                                cache_dir=args.data_cache_dir, corpora_apart=True)
        separate = {}
        for name, path in (("valid", args.valid_data_path), ("test", args.test_data_path)):
            if path and eval_samples:
                separate[name] = build_corpus_sets(path, args.seq_length, args.seed, eval_samples, name,
                                                   args.data_cache_dir)
        return train, separate.get("valid", valid), separate.get("test", test)

    # Rank 0 builds first, so an error reaches every rank as one line; then the first rank of each other node
    # builds what its own cache lacks (nodes need not share a file system: each may have its --data-cache-dir);
    # then every other rank reads what its node built.
    rank, first_on_node = dist_info["rank"], dist_info["local_rank"] == 0
    datasets = None
    for turn, builder in ((rank == 0, "rank 0"), (first_on_node and rank != 0, "the first rank of a node"),
                          (not first_on_node, "a rank")):
        error = None
        if turn:
            try:
                datasets = build()
            except UsageError as err:
                error = err
        problem = agree(None if error is None else str(error))
        if error is not None:
            raise error
        if problem is not None:
            raise UsageError(f"{builder} could not build the datasets (see its error above)")
    return tokenizer, datasets


def split_test_samples(data_path, split: str, eval_samples: int) -> int:
    """Samples to draw from --split's test part: none where some corpus has no document in it (the default split
    on a small corpus), so that such runs train as before instead of failing on an empty test set."""
    weights = parse_split(split)
    corpora = [Corpus(prefix) for _, prefix in parse_data_path(data_path)]
    has_documents = all(end > begin for begin, end in (split_ranges(len(c), weights)[2] for c in corpora))
    return eval_samples if weights[2] > 0 and has_documents else 0


def split_tokens(batch: torch.Tensor):
    """Pretraining batches are (batch, seq+1) tokens: inputs and next-token labels."""
    return batch[:, :-1], batch[:, 1:]


@dataclass(frozen=True)
class DataHooks:
    """Where batches come from: pretraining shards by default; launch/finetune.py plugs in SFT data here."""

    build_data: Callable  # (args, dist_info) -> (tokenizer, (train, valid, test)); valid/test may be CorpusSets
    collate: Callable  # list of samples -> batch
    split: Callable = split_tokens  # batch -> (input_ids, labels)
    order_version: Optional[int] = None  # the sample order's version, checked on resume (None: not checked)


def pretraining_hooks() -> DataHooks:
    return DataHooks(build_data, collate, split_tokens, INDEX_VERSION)

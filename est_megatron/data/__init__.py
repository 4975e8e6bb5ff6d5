"""Data pipeline: raw text -> SentencePiece tokens -> Megatron shards -> packed, blended training samples.

`build_datasets` is what the training loop calls; `sampler.PretrainingSampler` and `sampler.collate` feed a
torch DataLoader from the datasets it returns. `build_corpus_sets` keeps corpora apart, for validation and
evaluation that report each corpus on its own.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from est_megatron.data.blend import BlendedDataset, cached_blending_indices, normalise, parse_data_path
from est_megatron.data.corpus import Corpus
from est_megatron.data.gpt_dataset import GPTDataset
from est_megatron.errors import UsageError

SPLIT_NAMES = ("train", "valid", "test")
Dataset = Union[GPTDataset, BlendedDataset]


def parse_split(split: Union[str, float]) -> np.ndarray:
    """'969,30,1' -> normalised weights of train/valid/test (missing trailing parts are 0)."""
    try:
        parts = [float(p) for p in str(split).replace("/", ",").split(",")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise UsageError(f"--split {split!r} must be up to three non-negative weights with a positive sum, "
                         f"e.g. '969,30,1'")
    parts += [0.0] * (3 - len(parts))
    return normalise(parts)


def split_ranges(num_documents: int, weights: Sequence[float]) -> List[Tuple[int, int]]:
    """Contiguous document ranges [(begin, end)] * 3 in proportion to the split weights."""
    bounds = np.round(np.cumsum(np.concatenate([[0.0], weights])) * num_documents).astype(np.int64)
    bounds[-1] = num_documents
    return [(int(bounds[i]), int(bounds[i + 1])) for i in range(3)]


def build_datasets(data_path: Sequence[str], split: str, seq_length: int, seed: int, num_samples: Sequence[int],
                   cache_dir: Optional[str] = None,
                   corpora_apart: bool = False) -> Tuple[Optional[Union[Dataset, "CorpusSets"]], ...]:
    """(train, valid, test) datasets of packed samples; a split with weight 0 or 0 samples is None.

    data_path: Megatron's --data-path words (prefixes, or weight/prefix pairs; prefixes alone are weighted by
    their token counts). num_samples: samples wanted per split; each dataset has exactly that many, drawn from
    as many epochs as needed. Indices are cached beside the first corpus' shards, or in cache_dir.
    corpora_apart: the valid and test parts of several corpora come as CorpusSets, each corpus's part with that
    many samples, so that validation reports every corpus (weighted by the blend: the blended loss's expectation).
    """
    if len(num_samples) != 3 or any(int(n) < 0 for n in num_samples):
        raise UsageError(f"num_samples {num_samples} must be three non-negative counts (train, valid, test)")
    entries = parse_data_path(data_path)
    corpora = [Corpus(prefix) for _, prefix in entries]
    weights = [w for w, _ in entries]
    if weights[0] is None:
        weights = [c.num_tokens for c in corpora]
    split_weights = parse_split(split)
    ranges = [split_ranges(len(c), split_weights) for c in corpora]
    blend_cache = cache_dir or os.path.dirname(os.path.abspath(corpora[0].prefix))
    result = []
    for s, name in enumerate(SPLIT_NAMES):
        size = int(num_samples[s])
        if split_weights[s] == 0 or size == 0:
            result.append(None)
            continue

        def part(k: int, n: int, name: str = name, s: int = s) -> GPTDataset:
            return GPTDataset(corpora[k], *ranges[k][s], seq_length, n, seed, name, cache_dir)

        if len(corpora) == 1:
            result.append(part(0, size))
            continue
        if corpora_apart and name != "train":
            names = corpus_names([c.prefix for c in corpora])
            result.append(CorpusSets(names, normalise(weights), [part(k, size) for k in range(len(corpora))]))
            continue
        dataset_index, dataset_sample_index = cached_blending_indices(weights, size, blend_cache)
        counts = np.bincount(dataset_index, minlength=len(corpora))
        parts = [part(k, int(n)) if n else None for k, n in enumerate(counts)]
        result.append(BlendedDataset(parts, dataset_index, dataset_sample_index))
    return tuple(result)


@dataclass
class CorpusSets:
    """One dataset per corpus of a blend, kept apart so each corpus' loss can be reported on its own; `weights`
    (normalised: the blend's, else token counts) combine them into one figure."""

    names: List[str]
    weights: np.ndarray
    datasets: List[GPTDataset]

    def __len__(self) -> int:
        return len(self.datasets)


def corpus_names(prefixes: Sequence[str]) -> List[str]:
    """Short, distinct labels for logs: each prefix's basename, the whole prefix where basenames collide."""
    bases = [os.path.basename(os.path.normpath(p)) or p for p in prefixes]
    return [b if bases.count(b) == 1 else p for b, p in zip(bases, prefixes)]


def build_corpus_sets(data_path: Sequence[str], seq_length: int, seed: int, num_samples: Optional[int], split_name: str,
                      cache_dir: Optional[str] = None) -> CorpusSets:
    """Every document of each corpus of `data_path` as its own packed dataset (the training datasets' code).

    num_samples: samples per corpus; None takes one epoch, so every token but a final partial window is predicted
    exactly once. split_name only names the cached indices.
    """
    entries = parse_data_path(data_path)
    prefixes = [prefix for _, prefix in entries]
    if len(set(prefixes)) != len(prefixes):
        raise UsageError(f"--data-path names a corpus twice ({' '.join(prefixes)}); give each prefix once")
    corpora = [Corpus(prefix) for prefix in prefixes]
    weights = [w for w, _ in entries]
    if weights[0] is None:
        weights = [c.num_tokens for c in corpora]
    datasets = []
    for corpus in corpora:
        size = num_samples if num_samples is not None else (corpus.num_tokens - 1) // seq_length
        if size < 1:
            raise UsageError(f"{corpus.prefix} holds {corpus.num_tokens} tokens, not one sample of --seq-length "
                             f"{seq_length} + 1; lower --seq-length or add data")
        datasets.append(GPTDataset(corpus, 0, len(corpus), seq_length, size, seed, split_name, cache_dir))
    return CorpusSets(corpus_names(prefixes), normalise(weights), datasets)

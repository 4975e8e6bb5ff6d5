"""Weighted blending of corpora: Megatron's `--data-path 0.7 PREFIX_A 0.3 PREFIX_B` syntax and sample mixing.

The blend is Megatron's greedy schedule: sample i goes to the corpus whose share lags most behind its weight
(largest weight*max(i, 1) - count), so after any number of samples every corpus' share is within one sample of
exact, and the schedule is the same on every run (no randomness: resumption needs none).
"""
import os

import numpy as np

from est_megatron.data.atomic import save_npy
from est_megatron.data.gpt_dataset import cache_key, load_index
from est_megatron.errors import UsageError


def parse_data_path(data_path):
    """['0.7', 'A', '0.3', 'B'] -> [(0.7, 'A'), (0.3, 'B')]; ['A', 'B'] -> [(None, 'A'), (None, 'B')].

    Items may also hold several whitespace-separated words (one quoted string on a command line or in a config).
    """
    words = [w for item in data_path for w in str(item).split()]
    if not words:
        raise UsageError("--data-path is empty; pass PREFIX or weighted pairs like '0.7 PREFIX_A 0.3 PREFIX_B'")

    def number(word):
        try:
            return float(word)
        except ValueError:
            return None

    weights = [number(w) for w in words]
    if all(w is None for w in weights):
        return [(None, w) for w in words]
    pairs_ok = len(words) % 2 == 0 and all(w is not None for w in weights[0::2]) \
        and all(w is None for w in weights[1::2])
    if not pairs_ok:
        raise UsageError(f"--data-path {' '.join(words)!r} mixes weights and prefixes; give either only prefixes "
                         f"or weight/prefix pairs like '0.7 PREFIX_A 0.3 PREFIX_B'")
    pairs = [(weights[i], words[i + 1]) for i in range(0, len(words), 2)]
    for weight, prefix in pairs:
        if not weight > 0 or weight == float("inf"):
            raise UsageError(f"--data-path weight {weight} for {prefix} must be a positive number; drop the "
                             f"corpus instead of giving it weight 0")
    return pairs


def normalise(weights):
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def blending_indices(weights, size):
    """(dataset_index int16, dataset_sample_index int64) of `size` blended samples (Megatron's greedy rule)."""
    weights = [float(w) for w in normalise(weights)]
    counts = [0] * len(weights)
    chosen, within = [0] * size, [0] * size
    pairs = list(enumerate(weights))
    for i in range(size):
        s = i if i > 1 else 1.0
        best, best_error = 0, weights[0] * s - counts[0]
        for k, w in pairs[1:]:
            error = w * s - counts[k]
            if error > best_error:
                best, best_error = k, error
        chosen[i], within[i] = best, counts[best]
        counts[best] += 1
    return np.array(chosen, dtype=np.int16), np.array(within, dtype=np.int64)


def cached_blending_indices(weights, size, cache_dir):
    """`blending_indices`, loaded from or saved to `cache_dir` (they depend only on the weights and size)."""
    key = cache_key(version=1, weights=[float(w) for w in normalise(weights)], size=size)
    paths = [os.path.join(cache_dir, f"blend_{key}_{part}.npy") for part in ("dataset", "sample")]
    if all(os.path.isfile(p) for p in paths):
        return tuple(load_index(p) for p in paths)
    arrays = blending_indices(weights, size)
    os.makedirs(cache_dir, exist_ok=True)
    for path, array in zip(paths, arrays):
        save_npy(path, array)
    return arrays


class BlendedDataset:
    """Sample i is sample `dataset_sample_index[i]` of dataset `dataset_index[i]`."""

    def __init__(self, datasets, dataset_index, dataset_sample_index):
        self.datasets = datasets
        self.dataset_index, self.dataset_sample_index = dataset_index, dataset_sample_index

    def __len__(self):
        return self.dataset_index.size

    def __getitem__(self, i):
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

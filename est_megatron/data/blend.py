"""Weighted blending of corpora: Megatron's `--data-path 0.7 PREFIX_A 0.3 PREFIX_B` syntax and sample mixing.

The blend is Megatron's greedy schedule: sample i goes to the corpus whose share lags most behind its weight
(largest weight*max(i, 1) - count), so after any number of samples every corpus' share is within one sample of
exact, and the schedule is the same on every run (no randomness: resumption needs none).
"""
import os
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from est_megatron.data.atomic import save_npy
from est_megatron.data.gpt_dataset import cache_key, load_index
from est_megatron.errors import UsageError

if TYPE_CHECKING:
    from est_megatron.data.gpt_dataset import GPTDataset


def parse_data_path(data_path: Sequence[str]) -> List[Tuple[Optional[float], str]]:
    """['0.7', 'A', '0.3', 'B'] -> [(0.7, 'A'), (0.3, 'B')]; ['A', 'B'] -> [(None, 'A'), (None, 'B')].

    Items may also hold several whitespace-separated words (one quoted string on a command line or in a config).
    """
    words = [w for item in data_path for w in str(item).split()]
    if not words:
        raise UsageError("--data-path is empty; pass PREFIX or weighted pairs like '0.7 PREFIX_A 0.3 PREFIX_B'")

    def number(word: str) -> Optional[float]:
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


def normalise(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return w / w.sum()


def blending_indices(weights: Sequence[float], size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(dataset_index int16, dataset_sample_index int64) of `size` blended samples (Megatron's greedy rule).

    Sample i goes to the first corpus k with the largest `w[k] * max(i, 1) - count[k]` in float64, as Megatron's
    helper does. The rule is sequential, so it runs in lanes: the samples are cut into chunks, each chunk but the
    first starts `_OVERLAP` samples early from estimated counts (those nearest the weights), and all chunks
    advance together, one numpy step per position. The rule corrects a count error within a few samples, so a
    chunk's counts where it starts normally equal the counts its predecessor ends with, and from there on the two
    agree. A chunk whose counts differ is run again from its predecessor's, until every chunk starts where the one
    before it ended; the result is the sequential rule's, bit for bit.
    """
    w = normalise(weights)
    if int(size) < 0:
        raise UsageError(f"blend size {size} is negative; ask for zero or more samples")
    return _lanes(w, int(size), _CHUNK, _OVERLAP)


_CHUNK = 2048  # samples per lane: each numpy step advances about size / _CHUNK lanes
_OVERLAP = 256  # samples a lane runs before its chunk, to settle on the exact counts
_GROUP = 4096  # lanes advanced together (bounds the working arrays)


def _estimated_counts(w: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(K, len(starts)) integer counts (as float64) summing to each start, nearest w * start: the largest
    remainders round up."""
    ideal = w[:, None] * starts[None, :].astype(np.float64)
    counts = np.floor(ideal)
    missing = starts - counts.sum(axis=0).astype(np.int64)
    order = np.argsort(counts - ideal, axis=0, kind="stable")  # most negative first: largest remainder
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(w.size)[:, None].repeat(starts.size, axis=1), axis=0)
    return counts + (rank < missing[None, :])


def _advance(w: np.ndarray, begin: np.ndarray, counts: np.ndarray, steps: int,
             keep: Sequence[int] = ()) -> Tuple[np.ndarray, np.ndarray, Dict[int, np.ndarray]]:
    """Runs lanes from sample `begin[j]` with counts `counts[:, j]` (float64, K x lanes) for `steps` samples.

    Returns the (steps, lanes) choices, the (steps, lanes) count of the chosen corpus before each choice (its sample
    index), and the counts after t samples for each t in `keep`. Each decision makes the sequential rule's float64
    operations and keeps the first largest error, as its strict '>' scan does.
    """
    lanes = begin.size
    counts = counts.copy()
    flat = counts.reshape(-1)
    first = begin.astype(np.float64)
    choices = np.empty((steps, lanes), dtype=np.int16)
    within = np.empty((steps, lanes), dtype=np.int64)
    offsets = np.arange(lanes)
    kept = {}
    for t in range(steps + 1):
        if t in keep:
            kept[t] = counts.copy()
        if t == steps:
            break
        s = first + t if t > 1 else np.maximum(first + t, 1.0)  # max(i, 1): only sample 0 differs
        best = np.zeros(lanes, dtype=np.int64)
        best_error = w[0] * s - counts[0]
        for k in range(1, w.size):
            error = w[k] * s - counts[k]
            best[error > best_error] = k
            np.maximum(best_error, error, out=best_error)
        choices[t] = best
        index = best * lanes + offsets
        chosen_count = flat.take(index)
        within[t] = chosen_count
        flat.put(index, chosen_count + 1.0)
    return choices, within, kept


def _lanes(w: np.ndarray, size: int, chunk: int, overlap: int) -> Tuple[np.ndarray, np.ndarray]:
    n = -(-size // chunk)
    starts = np.arange(n, dtype=np.int64) * chunk
    dataset_index = np.empty((n, chunk), dtype=np.int16)  # lane-major: row j is chunk j
    sample_index = np.empty((n, chunk), dtype=np.int64)
    at_start, at_end = np.empty((w.size, n)), np.empty((w.size, n))  # the last chunk's end is never compared
    for group in range(0, n, _GROUP):
        lanes = slice(group, min(group + _GROUP, n))
        begin = np.maximum(starts[lanes] - overlap, 0)
        choices, within, kept = _advance(w, begin, _estimated_counts(w, begin), chunk + overlap,
                                         keep=(0, overlap, chunk, chunk + overlap))
        dataset_index[lanes], sample_index[lanes] = choices[overlap:].T, within[overlap:].T
        at_start[:, lanes], at_end[:, lanes] = kept[overlap], kept[chunk + overlap]
        if group == 0:  # chunk 0 starts at sample 0 with no overlap: its counts, zeros, are exact
            dataset_index[0], sample_index[0] = choices[:chunk, 0], within[:chunk, 0]
            at_start[:, 0], at_end[:, 0] = kept[0][:, 0], kept[chunk][:, 0]
    while True:
        redo = np.flatnonzero((at_start[:, 1:] != at_end[:, :-1]).any(axis=0)) + 1
        if redo.size == 0:
            break
        # Every chunk before the first one in `redo` is exact, so that one becomes exact now: the loop ends.
        at_start[:, redo] = at_end[:, redo - 1]
        for group in range(0, redo.size, _GROUP):
            lanes = redo[group:group + _GROUP]
            choices, within, kept = _advance(w, starts[lanes], at_start[:, lanes], chunk, keep=(chunk,))
            dataset_index[lanes], sample_index[lanes] = choices.T, within.T
            at_end[:, lanes] = kept[chunk]
    return dataset_index.reshape(-1)[:size], sample_index.reshape(-1)[:size]


def cached_blending_indices(weights: Sequence[float], size: int, cache_dir: str) -> Tuple[np.ndarray, np.ndarray]:
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

    def __init__(self, datasets: Sequence[Optional["GPTDataset"]], dataset_index: np.ndarray,
                 dataset_sample_index: np.ndarray) -> None:
        self.datasets = datasets
        self.dataset_index, self.dataset_sample_index = dataset_index, dataset_sample_index

    def __len__(self) -> int:
        return self.dataset_index.size

    def __getitem__(self, i: int) -> np.ndarray:
        return self.datasets[int(self.dataset_index[i])][int(self.dataset_sample_index[i])]

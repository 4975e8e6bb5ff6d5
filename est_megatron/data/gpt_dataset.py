"""Packed language-model samples over one corpus split (Megatron GPTDataset semantics).

Each epoch shuffles the split's documents; the epochs' token streams are concatenated, and sample j is the
seq_length+1 tokens starting at token j*seq_length, so consecutive samples overlap by one token (the last input
token of one sample is the first of the next) and every token is an input exactly once per epoch. Then the samples
are shuffled within each epoch (in blocks of at most SHUFFLE_BLOCK). Nothing in the order depends on the number of
samples asked for: a shorter run reads exactly the first samples of a longer one (dense given EST's FLOPs sees what
EST saw, in the same order). The three index arrays are built with numpy (cumsum + searchsorted, no per-token or
per-sample Python loop) and cached as .npy files named by a hash of everything they depend on.
"""
import hashlib
import json
import os
from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple

import numpy as np

from est_megatron.data.atomic import save_npy
from est_megatron.errors import UsageError

if TYPE_CHECKING:
    from est_megatron.data.corpus import Corpus

INDEX_VERSION = 2  # 2: the order no longer depends on the number of samples (1 drew it from that number too)
SHUFFLE_BLOCK = 1 << 22  # samples shuffled together at most (8.6B tokens at sequence 2048): bounds a short run's index


def cache_key(**params: Any) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:20]


def shuffle_blocks(num_samples: int, tokens_per_epoch: int, seq_length: int) -> List[Tuple[int, int]]:
    """[begin, end) of the blocks of samples shuffled together, up to the one holding sample num_samples - 1: each
    epoch's samples (those whose tokens all lie in it; the one across an epoch's end opens the next block), cut at
    every multiple of SHUFFLE_BLOCK."""
    blocks, begin, epoch = [], 0, 1
    while begin < num_samples:
        while (epoch * tokens_per_epoch - 1) // seq_length <= begin:
            epoch += 1
        end = min((epoch * tokens_per_epoch - 1) // seq_length, (begin // SHUFFLE_BLOCK + 1) * SHUFFLE_BLOCK)
        blocks.append((begin, end))
        begin = end
    return blocks


def build_indices(sizes: np.ndarray, num_samples: int, seq_length: int,
                  order: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document_index, sample_index, shuffle_index) for `num_samples` samples of documents with `sizes`.

    document_index: document ids of the epochs in order; sample_index[j] = (position in document_index, token
    offset) where sample j starts, for every sample of the shuffle blocks read; shuffle_index[i]: the sample read
    i-th. `order` (integers) seeds the document permutations, drawn epoch after epoch, and each block's shuffle
    with its first sample: none of it depends on num_samples.
    """
    tokens_per_epoch = int(sizes.sum())
    blocks = shuffle_blocks(num_samples, tokens_per_epoch, seq_length)
    built = blocks[-1][1]
    epochs = -(-(built * seq_length + 1) // tokens_per_epoch)
    doc_dtype = np.int32 if sizes.size < 2**31 else np.int64
    documents = np.random.default_rng(np.random.SeedSequence(list(order)))
    document_index = np.concatenate([documents.permutation(sizes.size).astype(doc_dtype) for _ in range(epochs)])
    ends = np.cumsum(sizes[document_index])
    starts = np.arange(built + 1, dtype=np.int64) * seq_length
    position = np.searchsorted(ends, starts, side="right")
    offset = starts - (ends[position] - sizes[document_index[position]])
    sample_index = np.stack([position, offset], axis=1).astype(np.int64)
    shuffle_index = np.concatenate([
        begin + np.random.default_rng(np.random.SeedSequence([*order, begin])).permutation(end - begin)
        for begin, end in blocks])[:num_samples].astype(np.int64)
    return document_index, sample_index, shuffle_index


def load_index(path: str) -> np.ndarray:
    """A cached index array (memory-mapped); a damaged cache file is one line naming it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise UsageError(f"index cache {path} is damaged ({str(err).splitlines()[0][:120]}); delete it and it is "
                         "rebuilt") from None


class GPTDataset:
    """`ds[i]` -> int64 array of seq_length+1 tokens; documents [doc_begin, doc_end) of `corpus`."""

    def __init__(self, corpus: "Corpus", doc_begin: int, doc_end: int, seq_length: int, num_samples: int, seed: int,
                 split_name: str, cache_dir: Optional[str] = None) -> None:
        if doc_end <= doc_begin:
            raise UsageError(f"{corpus.prefix}: the {split_name} split holds no documents (only {len(corpus)} in "
                             f"all); give that split a larger weight in --split or add data")
        if seq_length < 1 or num_samples < 1:
            raise UsageError(f"seq_length ({seq_length}) and {split_name} samples ({num_samples}) must be positive")
        self.corpus, self.doc_begin = corpus, doc_begin
        self.seq_length, self.num_samples = seq_length, num_samples
        sizes = corpus.sizes[doc_begin:doc_end]
        if sizes.sum() == 0:
            raise UsageError(f"{corpus.prefix}: the {split_name} split's documents hold no tokens; add data")
        order = dict(version=INDEX_VERSION, corpus=corpus.fingerprint(), docs=[doc_begin, doc_end],
                     seq_length=seq_length, seed=seed, split=split_name)
        self.key = cache_key(num_samples=num_samples, **order)
        cache_dir = cache_dir or os.path.dirname(os.path.abspath(corpus.prefix))
        stem = os.path.join(cache_dir, f"{os.path.basename(corpus.prefix)}_{split_name}_{self.key}")
        paths = [f"{stem}_{name}.npy" for name in ("doc", "sample", "shuffle")]
        if all(os.path.isfile(p) for p in paths):
            arrays = [load_index(p) for p in paths]
        else:
            arrays = build_indices(sizes, num_samples, seq_length, (seed, int(cache_key(**order)[:8], 16)))
            try:
                os.makedirs(cache_dir, exist_ok=True)
                for path, array in zip(paths, arrays):
                    save_npy(path, array)
            except OSError as err:
                raise UsageError(f"cannot write the sample index cache in {cache_dir} ({err.strerror}); pass a "
                                 f"writable cache_dir (--data-cache-path)") from None
        self.document_index, self.sample_index, self.shuffle_index = arrays
        self.cache_files = paths

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < self.num_samples:
            raise IndexError(f"sample {i} out of range [0, {self.num_samples})")
        return self.unshuffled(int(self.shuffle_index[i]))

    def unshuffled(self, j: int) -> np.ndarray:
        """Sample j of the concatenated epoch stream (before the sample shuffle)."""
        position, offset = (int(v) for v in self.sample_index[j])
        need, parts = self.seq_length + 1, []
        while need > 0:
            doc = self.doc_begin + int(self.document_index[position])
            part = self.corpus.tokens(doc, offset, need)
            parts.append(part)
            need -= part.size
            position, offset = position + 1, 0
        return np.concatenate(parts).astype(np.int64)

"""A corpus: all shards named by one --data-path PREFIX, seen as one list of documents.

PREFIX is what tools/preprocess_data.py's --output-prefix named (its shards are listed in PREFIX.manifest.json)
or one shard's own prefix (PREFIX_00000 with .bin/.idx, e.g. a shard written by Megatron's tools).
Each sequence of a shard is a document, as in Megatron's GPTDataset.
"""
import hashlib
import json
import os
from typing import List, Optional

import numpy as np

from est_megatron.data.indexed import IndexedDataset
from est_megatron.data.shard_writer import manifest_path
from est_megatron.errors import UsageError


def shard_prefixes(prefix: str) -> List[str]:
    """The shard prefixes of a data-path PREFIX (manifest first, then a single shard)."""
    mpath = manifest_path(prefix)
    if os.path.isfile(mpath):
        try:
            with open(mpath) as f:
                shards = json.load(f)["shards"]
            names = [s["prefix"] for s in shards]
        except (ValueError, KeyError, TypeError) as err:
            raise UsageError(f"{mpath} is not a shard manifest ({err}); rerun tools/preprocess_data.py") from None
        return [os.path.join(os.path.dirname(prefix), name) for name in names]
    if os.path.isfile(f"{prefix}.idx") or os.path.isfile(f"{prefix}.bin"):
        return [prefix]
    raise UsageError(f"data path {prefix!r} names no data: neither {mpath} nor {prefix}.bin/.idx exists; pass the "
                     f"--output-prefix given to tools/preprocess_data.py or a shard prefix such as {prefix}_00000")


class Corpus:
    """Documents of several shards back to back: `sizes[d]` tokens, `tokens(d, offset, length)`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.shards = [IndexedDataset(p) for p in shard_prefixes(prefix)]
        counts = np.array([len(s) for s in self.shards], dtype=np.int64)
        self.first_doc = np.concatenate([[0], np.cumsum(counts)])
        self.sizes = np.concatenate([s.sizes for s in self.shards]).astype(np.int64) if self.shards \
            else np.zeros(0, np.int64)
        if self.sizes.size == 0:
            raise UsageError(f"data path {prefix!r} holds no documents; preprocess some text into it")

    def __len__(self) -> int:
        return self.sizes.size

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum())

    def tokens(self, doc: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        shard = int(np.searchsorted(self.first_doc, doc, side="right")) - 1
        return self.shards[shard].get(doc - int(self.first_doc[shard]), offset, length)

    def fingerprint(self) -> str:
        """Identifies the content layout (shard names and document sizes) for index caching."""
        h = hashlib.sha256()
        for s in self.shards:
            h.update(os.path.basename(s.prefix).encode())
            h.update(np.ascontiguousarray(s.sizes).tobytes())
        return h.hexdigest()

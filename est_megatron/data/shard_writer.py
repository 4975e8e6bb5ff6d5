"""Documents into PREFIX_00000, PREFIX_00001, ...: a shard is closed once it holds --shard-size tokens.

Resumable: the open shard is written under fixed temporary names (PREFIX_NNNNN.bin.partial, its document sizes in
PREFIX_NNNNN.lengths.partial) and `state()` says how much of them is valid once `sync()` has put it on disk, so a
killed preprocessing run reopens the shard where its progress record left it (`ShardedWriter(..., state)`).
A shard gets its real names (.bin, then .idx last) only when complete, so a partial one is never read as data.
"""
import os
from typing import Any, Dict, List, Optional

import numpy as np

from est_megatron.data.indexed import IndexedDataset, IndexedDatasetWriter, bin_path, idx_path
from est_megatron.errors import UsageError


def manifest_path(prefix: str) -> str:
    """The manifest naming a preprocessing run's shards; written last, so it marks the run complete."""
    return f"{prefix}.manifest.json"


def shard_prefix(prefix: str, index: int) -> str:
    return f"{prefix}_{index:05d}"


def partial_paths(prefix: str) -> List[str]:
    """The open shard's temporary files (token file, document sizes)."""
    return [f"{bin_path(prefix)}.partial", f"{prefix}.lengths.partial"]


class ShardedWriter:
    """Writes documents into shards of at least `shard_size` tokens (documents are never split)."""

    def __init__(self, prefix: str, dtype: np.dtype, shard_size: int, state: Optional[Dict[str, Any]] = None) -> None:
        self.prefix, self.dtype, self.shard_size = prefix, np.dtype(dtype), shard_size
        self.shards = list(state["shards"]) if state else []
        self.max_token_id = state["max_token_id"] if state else -1
        self._writer = self._lengths = None
        if state and state["open_documents"]:
            self._reopen(state["open_documents"])

    def _reopen(self, documents: int) -> None:
        prefix = shard_prefix(self.prefix, len(self.shards))
        bin_partial, lengths_partial = partial_paths(prefix)
        if not os.path.isfile(bin_partial) and os.path.isfile(idx_path(prefix)):
            # The shard was completed after the record was written: make it partial again, at the record's length.
            shard = IndexedDataset(prefix)
            sizes = np.array(shard.sizes[:documents], dtype=np.int64)
            del shard
            os.replace(bin_path(prefix), bin_partial)
            os.remove(idx_path(prefix))
            sizes.tofile(lengths_partial)
        if not (os.path.isfile(bin_partial) and os.path.isfile(lengths_partial)) or \
                os.path.getsize(lengths_partial) < 8 * documents:
            raise UsageError(f"the partial shard {bin_partial} of the interrupted run is missing or short; "
                             f"start over with --restart")
        sizes = np.fromfile(lengths_partial, dtype=np.int64, count=documents)
        self._writer = IndexedDatasetWriter.reopen(prefix, self.dtype, bin_partial, sizes)
        self._lengths = open(lengths_partial, "r+b")
        self._lengths.truncate(8 * documents)
        self._lengths.seek(8 * documents)

    def _open(self) -> None:
        prefix = shard_prefix(self.prefix, len(self.shards))
        bin_partial, lengths_partial = partial_paths(prefix)
        self._writer = IndexedDatasetWriter(prefix, self.dtype, partial_bin=bin_partial)
        self._lengths = open(lengths_partial, "wb")

    def add(self, lengths: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.size:
            self.max_token_id = max(self.max_token_id, int(tokens.max()))
        start_doc, start_tok = 0, 0
        while start_doc < lengths.size:
            if self._writer is None:
                self._open()
            room = self.shard_size - self._writer.num_tokens
            cum = np.cumsum(lengths[start_doc:])
            take = min(int(np.searchsorted(cum, room, side="left")) + 1, cum.size)
            n_tok = int(cum[take - 1])
            part = lengths[start_doc:start_doc + take]
            self._writer.add_documents(tokens[start_tok:start_tok + n_tok], part)
            self._lengths.write(np.ascontiguousarray(part, dtype=np.int64).tobytes())
            start_doc, start_tok = start_doc + take, start_tok + n_tok
            if self._writer.num_tokens >= self.shard_size:
                self._close_shard()

    def _close_shard(self) -> None:
        w = self._writer
        w.finalize()
        self._lengths.close()
        os.remove(self._lengths.name)
        self.shards.append({"prefix": os.path.basename(w.prefix), "documents": w.num_documents,
                            "tokens": w.num_tokens})
        self._writer = self._lengths = None

    def sync(self) -> None:
        """Put the open shard on disk, so that `state()` may be recorded."""
        if self._writer is not None:
            self._writer.sync()
            self._lengths.flush()
            os.fsync(self._lengths.fileno())

    def state(self) -> Dict[str, Any]:
        return {"shards": list(self.shards), "max_token_id": self.max_token_id,
                "open_documents": self._writer.num_documents if self._writer is not None else 0}

    def finish(self) -> None:
        if self._writer is not None:
            self._close_shard()

    def close(self) -> None:
        """Stop writing, keeping the partial shard for a resumed run."""
        if self._writer is not None:
            self._writer.close()
            self._lengths.close()


def remove_shards(prefix: str) -> None:
    """Remove every shard and partial shard named PREFIX_NNNNN (a run started over)."""
    index = 0
    while True:
        names = [bin_path(shard_prefix(prefix, index)), idx_path(shard_prefix(prefix, index)),
                 *partial_paths(shard_prefix(prefix, index))]
        present = [n for n in names if os.path.exists(n)]
        if not present:
            return
        for name in present:
            os.remove(name)
        index += 1

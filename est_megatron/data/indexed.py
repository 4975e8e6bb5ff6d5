"""Megatron's indexed binary format (MMIDIDX version 1): a token file (.bin) and its index (.idx).

The layout matches megatron-core's `_IndexWriter`/`_IndexReader` byte for byte, so shards written here load in
megatron-core's `IndexedDataset` and vice versa:

    .idx: b"MMIDIDX\\x00\\x00" | <Q version=1 | <B dtype code | <Q sequence count | <Q document-index count
          | int32 sizes[sequence count] | int64 pointers[sequence count] (byte offsets into .bin)
          | int64 document_indices[document-index count]
    .bin: the token ids of all sequences back to back, in the dtype of the code.

`document_indices` starts with 0 and has one entry per document end (so it holds documents + 1 values, and the
header's document count field is that length, as Megatron writes it). We write one sequence per document.
"""
import os
import struct
from typing import Optional, Sequence

import numpy as np

from est_megatron.data.atomic import temp_path
from est_megatron.errors import UsageError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_SIZE = len(MAGIC) + 8 + 1 + 8 + 8
DTYPE_CODES = {
    1: np.dtype(np.uint8), 2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32),
    5: np.dtype(np.int64), 6: np.dtype(np.float64), 7: np.dtype(np.float32), 8: np.dtype(np.uint16),
}
CODE_OF_DTYPE = {dtype: code for code, dtype in DTYPE_CODES.items()}


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (ids < 65536), else int32: halves the disk and page cache for Llama's 32k."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.int32)


def bin_path(prefix: str) -> str:
    return f"{prefix}.bin"


def idx_path(prefix: str) -> str:
    return f"{prefix}.idx"


class IndexedDatasetWriter:
    """Streams documents into PREFIX.bin; `finalize` writes PREFIX.idx and renames .bin then .idx into place.

    Until `finalize`, only temporary files exist, so an interrupted run never leaves a shard that looks complete.
    A resumable writer (preprocessing) names its temporary .bin itself (`partial_bin`), so that a later process can
    `reopen` it at a known length with the document sizes it recorded.
    """

    def __init__(self, prefix: str, dtype: np.dtype, partial_bin: Optional[str] = None) -> None:
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_OF_DTYPE:
            raise UsageError(f"token dtype {self.dtype} has no MMIDIDX code; use one of "
                             f"{sorted(str(d) for d in CODE_OF_DTYPE)}")
        self._bin_tmp = partial_bin or temp_path(bin_path(prefix))
        self._bin = open(self._bin_tmp, "wb")
        self._sizes = []
        self.num_tokens = 0

    @classmethod
    def reopen(cls, prefix: str, dtype: np.dtype, partial_bin: str, sizes: np.ndarray) -> "IndexedDatasetWriter":
        """Continue a partial shard after its first `sizes` documents; bytes written after them are dropped."""
        writer = cls.__new__(cls)
        writer.prefix, writer.dtype, writer._bin_tmp = prefix, np.dtype(dtype), partial_bin
        writer._sizes = [np.asarray(sizes, dtype=np.int64)]
        writer.num_tokens = int(writer._sizes[0].sum())
        length = writer.num_tokens * writer.dtype.itemsize
        if os.path.getsize(partial_bin) < length:
            raise UsageError(f"{partial_bin} is shorter than its progress record says ({length} bytes); "
                             f"start over with --restart")
        writer._bin = open(partial_bin, "r+b")
        writer._bin.truncate(length)
        writer._bin.seek(length)
        return writer

    def sync(self) -> None:
        """Everything added so far is on disk (before a progress record claims it)."""
        self._bin.flush()
        os.fsync(self._bin.fileno())

    @property
    def num_documents(self) -> int:
        return sum(len(s) for s in self._sizes)

    def add_document(self, tokens: Sequence[int]) -> None:
        """Append one document (a sequence of token ids)."""
        tokens = np.asarray(tokens, dtype=self.dtype)
        self.add_documents(tokens, np.array([tokens.size], dtype=np.int64))

    def add_documents(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append several documents at once: `tokens` back to back, `lengths` their sizes (fast path)."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != tokens.size:
            raise ValueError(f"lengths sum to {int(lengths.sum())} but {tokens.size} tokens were given")
        self._bin.write(tokens.tobytes())
        self._sizes.append(lengths)
        self.num_tokens += tokens.size

    def finalize(self) -> None:
        """Write the index and move both files into place (.bin first, .idx last: the .idx marks completion)."""
        self._bin.close()
        sizes = np.concatenate(self._sizes) if self._sizes else np.zeros(0, dtype=np.int64)
        if sizes.size and sizes.max() > np.iinfo(np.int32).max:
            raise UsageError(f"{self.prefix}: a document of {int(sizes.max())} tokens exceeds the int32 size field")
        pointers = np.zeros(sizes.size, dtype=np.int64)
        np.cumsum(sizes[:-1] * self.dtype.itemsize, out=pointers[1:])
        document_indices = np.arange(sizes.size + 1, dtype=np.int64)
        idx_tmp = temp_path(idx_path(self.prefix))
        with open(idx_tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", VERSION))
            f.write(struct.pack("<B", CODE_OF_DTYPE[self.dtype]))
            f.write(struct.pack("<Q", sizes.size))
            f.write(struct.pack("<Q", document_indices.size))
            f.write(sizes.astype(np.int32).tobytes())
            f.write(pointers.tobytes())
            f.write(document_indices.tobytes())
        os.replace(self._bin_tmp, bin_path(self.prefix))
        os.replace(idx_tmp, idx_path(self.prefix))

    def close(self) -> None:
        """Stop writing; the temporary file stays (a resumable writer reopens it)."""
        self._bin.close()

    def abort(self) -> None:
        """Drop the partial shard (its temporary file)."""
        self._bin.close()
        if os.path.exists(self._bin_tmp):
            os.remove(self._bin_tmp)


class IndexedDataset:
    """Memory-mapped reader of one shard: `ds[i]` is sequence i as a read-only numpy array view."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        ipath, bpath = idx_path(prefix), bin_path(prefix)
        for path in (ipath, bpath):
            if not os.path.isfile(path):
                raise UsageError(f"{path} does not exist; pass the prefix of a shard written by "
                                 f"tools/preprocess_data.py (PREFIX_00000 for PREFIX_00000.bin/.idx)")
        self._idx = np.memmap(ipath, dtype=np.uint8, mode="r") if os.path.getsize(ipath) else np.zeros(0, np.uint8)
        header = bytes(self._idx[:HEADER_SIZE])
        fix = "rerun tools/preprocess_data.py to rewrite the shard"
        if len(header) < HEADER_SIZE or header[:len(MAGIC)] != MAGIC:
            raise UsageError(f"{ipath} is not an MMIDIDX index (bad magic); {fix}")
        version, code, seq_count, doc_count = struct.unpack("<QBQQ", header[len(MAGIC):])
        if version != VERSION:
            raise UsageError(f"{ipath} has index version {version}, only version 1 is supported; {fix}")
        if code not in DTYPE_CODES:
            raise UsageError(f"{ipath} has unknown dtype code {code}; {fix}")
        self.dtype = DTYPE_CODES[code]
        expected = HEADER_SIZE + seq_count * (4 + 8) + doc_count * 8
        if self._idx.size != expected:
            raise UsageError(f"{ipath} is {self._idx.size} bytes but its header implies {expected} "
                             f"(truncated or corrupt); {fix}")
        offset = HEADER_SIZE
        self.sizes = np.frombuffer(self._idx, dtype=np.int32, count=seq_count, offset=offset)
        offset += self.sizes.nbytes
        self.pointers = np.frombuffer(self._idx, dtype=np.int64, count=seq_count, offset=offset)
        offset += self.pointers.nbytes
        self.document_indices = np.frombuffer(self._idx, dtype=np.int64, count=doc_count, offset=offset)
        bin_size = os.path.getsize(bpath)
        expected_bin = int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize if seq_count else 0
        if bin_size != expected_bin:
            raise UsageError(f"{bpath} is {bin_size} bytes but {ipath} describes {expected_bin} "
                             f"(the .bin and .idx do not belong together or one is truncated); {fix}")
        self._bin = np.memmap(bpath, dtype=self.dtype, mode="r") if bin_size else np.zeros(0, self.dtype)

    def __len__(self) -> int:
        return self.sizes.size

    def __getitem__(self, i: int) -> np.ndarray:
        start = int(self.pointers[i]) // self.dtype.itemsize
        return self._bin[start:start + int(self.sizes[i])]

    def get(self, i: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset+length) of sequence i, without touching the rest."""
        size = int(self.sizes[i])
        length = size - offset if length is None else min(length, size - offset)
        start = int(self.pointers[i]) // self.dtype.itemsize + offset
        return self._bin[start:start + length]

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

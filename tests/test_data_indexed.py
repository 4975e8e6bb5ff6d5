"""MMIDIDX writer/reader: round trips, the exact byte layout, megatron-core compatibility, corrupt files."""
import os
import struct

import numpy as np
import pytest

from est_megatron.data.indexed import IndexedDataset, IndexedDatasetWriter, token_dtype
from est_megatron.errors import UsageError

DOCS = [[5, 6, 7], [1], [65535, 0, 42, 9]]


def write(prefix, docs, dtype=np.uint16):
    w = IndexedDatasetWriter(str(prefix), dtype)
    for d in docs:
        w.add_document(d)
    w.finalize()
    return str(prefix)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, np.uint8])
def test_round_trip(tmp_path, dtype):
    rng = np.random.default_rng(0)
    hi = min(np.iinfo(dtype).max, 70000)
    docs = [rng.integers(0, hi, size=rng.integers(1, 50)) for _ in range(40)]
    ds = IndexedDataset(write(tmp_path / "rt", docs, dtype))
    assert len(ds) == 40 and ds.dtype == np.dtype(dtype)
    for got, want in zip((ds[i] for i in range(len(ds))), docs):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ds.sizes, [len(d) for d in docs])
    np.testing.assert_array_equal(ds.document_indices, np.arange(41))
    np.testing.assert_array_equal(ds.get(3, offset=1, length=2), docs[3][1:3])


def test_bulk_add_matches_single_adds(tmp_path):
    w = IndexedDatasetWriter(str(tmp_path / "bulk"), np.uint16)
    w.add_documents(np.concatenate([np.array(d) for d in DOCS]), [len(d) for d in DOCS])
    w.finalize()
    write(tmp_path / "single", DOCS)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"bulk{ext}").read_bytes() == (tmp_path / f"single{ext}").read_bytes()


def test_byte_layout(tmp_path):
    prefix = write(tmp_path / "lay", DOCS, np.uint16)
    expected_idx = (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
                    + struct.pack("<Q", 3) + struct.pack("<Q", 4)
                    + struct.pack("<3i", 3, 1, 4) + struct.pack("<3q", 0, 6, 8) + struct.pack("<4q", 0, 1, 2, 3))
    assert open(prefix + ".idx", "rb").read() == expected_idx
    assert open(prefix + ".bin", "rb").read() == struct.pack("<8H", 5, 6, 7, 1, 65535, 0, 42, 9)
    prefix32 = write(tmp_path / "lay32", DOCS[:1], np.int32)
    assert open(prefix32 + ".idx", "rb").read()[17] == 4
    assert open(prefix32 + ".bin", "rb").read() == struct.pack("<3i", 5, 6, 7)


def test_token_dtype_boundary():
    assert token_dtype(65536) == np.uint16 and token_dtype(32000) == np.uint16
    assert token_dtype(65537) == np.int32 and token_dtype(128256) == np.int32


def test_megatron_core_reads_our_shards(tmp_path):
    pytest.importorskip("megatron.core.datasets.indexed_dataset")
    from megatron.core.datasets.indexed_dataset import IndexedDataset as MegatronIndexedDataset

    prefix = write(tmp_path / "mc", DOCS)
    theirs = MegatronIndexedDataset(prefix)
    assert len(theirs) == 3
    np.testing.assert_array_equal(theirs.document_indices, [0, 1, 2, 3])
    for i, d in enumerate(DOCS):
        np.testing.assert_array_equal(theirs[i], d)


def test_no_complete_looking_shard_before_finalize(tmp_path):
    w = IndexedDatasetWriter(str(tmp_path / "part"), np.uint16)
    w.add_document([1, 2, 3])
    assert not os.path.exists(tmp_path / "part.bin") and not os.path.exists(tmp_path / "part.idx")
    w.abort()
    assert os.listdir(tmp_path) == []


def test_corrupt_files_name_the_file(tmp_path):
    prefix = write(tmp_path / "bad", DOCS)
    with pytest.raises(UsageError, match="missing.idx does not exist"):
        IndexedDataset(str(tmp_path / "missing"))
    idx = bytearray(open(prefix + ".idx", "rb").read())
    open(prefix + ".idx", "wb").write(b"XXXXXXXX" + idx[8:])
    with pytest.raises(UsageError, match=r"bad\.idx is not an MMIDIDX index \(bad magic\)"):
        IndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(bytes(idx[:-8]))
    with pytest.raises(UsageError, match=r"bad\.idx .*truncated or corrupt"):
        IndexedDataset(prefix)
    open(prefix + ".idx", "wb").write(bytes(idx))
    with open(prefix + ".bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(UsageError, match=r"bad\.bin is 18 bytes but .*bad\.idx describes 16"):
        IndexedDataset(prefix)

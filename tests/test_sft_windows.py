"""SFT windows are indexed lazily and equal, window for window, the ones built eagerly from the same examples."""
import numpy as np
import pytest

from est_megatron.data.sft import IGNORE, SFTDataset
from est_megatron.errors import UsageError


def eager_windows(examples, seq_length, num_samples, seed, packing, pad_id):
    """Every window built up front, one epoch (seeded permutation) after another."""
    width = seq_length + 1
    rng = np.random.default_rng(seed)
    windows = []
    while len(windows) < num_samples:
        order = rng.permutation(len(examples))
        if packing == "pad":
            for i in order:
                tokens, labels = (list(x[:width]) for x in examples[i])
                pad = width - len(tokens)
                windows.append(np.array([tokens + [pad_id] * pad, labels + [IGNORE] * pad], dtype=np.int64))
        else:
            tokens = np.concatenate([examples[i][0] for i in order]).astype(np.int64)
            labels = np.concatenate([examples[i][1] for i in order]).astype(np.int64)
            for start in range(0, len(tokens) - width + 1, width):
                windows.append(np.stack([tokens[start:start + width], labels[start:start + width]]))
    return windows[:num_samples]


def corpus(n, seed=0, longest=40):
    """n examples of 1..longest tokens; prompt labels are IGNORE, response labels the tokens."""
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(n):
        size = int(rng.integers(1, longest + 1))
        tokens = rng.integers(3, 30000, size).tolist()
        prompt = int(rng.integers(0, size + 1))
        examples.append((tokens, [IGNORE] * prompt + tokens[prompt:]))
    return examples


@pytest.mark.parametrize("packing", ["pad", "pack"])
@pytest.mark.parametrize("seq_length,num_samples,seed", [(16, 1, 0), (16, 150, 1), (7, 333, 2), (63, 40, 3)])
def test_lazy_windows_equal_eager_ones(packing, seq_length, num_samples, seed):
    examples = corpus(37, seed)  # several epochs for most shapes; pad truncates the longer examples at 8 and 17
    want = eager_windows(examples, seq_length, num_samples, seed, packing, pad_id=2)
    ds = SFTDataset(examples, seq_length, num_samples, seed, packing, pad_id=2)
    assert len(ds) == len(want) == num_samples
    for i, window in enumerate(want):
        got = ds[i]
        assert got.dtype == np.int64 and got.shape == (2, seq_length + 1)
        np.testing.assert_array_equal(got, window)
    np.testing.assert_array_equal(ds[-1], want[-1])
    with pytest.raises(IndexError):
        ds[num_samples]


def test_index_is_small_beside_the_windows():
    """A long run's windows (100k x 2 x 2049 int64, 3.3 GB) are not built; the index is a few MB."""
    examples = corpus(2000, longest=900)
    for packing in ("pad", "pack"):
        ds = SFTDataset(examples, 2048, 100_000, 0, packing, pad_id=2)
        held = sum(v.nbytes for v in vars(ds).values() if isinstance(v, np.ndarray))
        assert held < 0.005 * 100_000 * 2 * 2049 * 8, (packing, held)
        assert ds[99_999].shape == (2, 2049)


def test_packing_needs_one_full_window():
    with pytest.raises(UsageError, match="less than one packed window of 65"):
        SFTDataset([([1, 2, 3], [1, 2, 3])], 64, 4, 0, "pack", pad_id=2)
    with pytest.raises(UsageError, match="--sft-packing 'zip' is unknown"):
        SFTDataset([([1, 2, 3], [1, 2, 3])], 64, 4, 0, "zip", pad_id=2)
